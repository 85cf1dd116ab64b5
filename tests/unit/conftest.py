"""Fixtures for the engine-free unit tests: the CLI through click's CliRunner, and small fake
catalogs (component folders and stack files written into tmp_path)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.plan.catalog import Catalog
from builder.cli.app import main
from dlenv_unit import CLI_ENV, write_component


# click 8.2 keeps stderr apart by default (and dropped `mix_stderr`); click 8.1 needs it asked for.
_CLICK = tuple(int(p) for p in version("click").split(".")[:2])
_RUNNER_ARGS = {} if _CLICK >= (8, 2) else {"mix_stderr": False}


@pytest.fixture
def cli(tmp_path):
    """Invoke `dlenv ARGS...` in-process; stdout and stderr are kept apart (click >= 8.2)."""

    def invoke(*args, env: dict | None = None):
        full_env = dict(CLI_ENV, DLENV_STATE_DIR=str(tmp_path / "state"))
        full_env.update(env or {})
        return CliRunner(**_RUNNER_ARGS).invoke(main, [str(a) for a in args], env=full_env)

    return invoke


@pytest.fixture
def fake(tmp_path):
    """A tmp catalog: `fake.component(...)` adds a component, `fake.stack(name, text)` a stack,
    `fake.load(name)` merges it, `fake.resolve(name)` resolves it against the fake catalog."""

    class Fake:
        components = tmp_path / "components"
        stacks = tmp_path / "stacks"

        def __init__(self):
            self.components.mkdir()
            self.stacks.mkdir()

        def component(self, name, **kwargs):
            return write_component(self.components, name, **kwargs)

        def stack(self, name: str, text: str) -> Path:
            path = self.stacks / f"{name}.yaml"
            path.write_text(text)
            return path

        @property
        def catalog(self) -> Catalog:
            return Catalog(self.components)

        def load(self, ref: str):
            from builder.spec.stack import load_stack
            return load_stack(ref, self.stacks)

        def resolve(self, ref: str):
            from builder.plan.resolve import resolve
            return resolve(self.load(ref), self.catalog)

    return Fake()
