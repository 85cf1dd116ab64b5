"""Paths and helpers shared by the unit tests (a module of its own: `conftest` is ambiguous as an
import name once tests/ and tests/unit/ both have one)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
STACK_FIXTURES = ROOT / "tests" / "fixtures" / "stacks"
BAD = STACK_FIXTURES / "bad"
GOOD = STACK_FIXTURES / "good"
# The four stacks the catalog ships with (the catalog may grow; tests use the list it has).
SHIPPED_STACKS = ["chainer", "chainer-gpu", "chainermn", "datascience", "python"]
CATALOG_NAMES = sorted(p.stem for p in (ROOT / "stacks").glob("*.yaml"))

# What a plain, non-interactive terminal looks like: no forced colour, no catalog overrides.
CLI_ENV = {
    "NO_COLOR": "1",
    "COLUMNS": "80",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "DLENV_STACKS_DIR": None,
    "DLENV_TEMPLATES_DIR": None,
}


def write_component(root: Path, name: str, *, group: str = "python", versions: dict, default: str,
                    requires: dict | None = None, **extra) -> Path:
    """A fake component: `versions` maps version text -> {requires: {...}} (or None)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    data = {"schema": 1, "name": name, "group": group, "default": default,
            "versions": {v: (entry or {}) for v, entry in versions.items()}}
    if requires:
        data["requires"] = requires
    data.update(extra)
    (folder / "component.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (folder / "build.j2").write_text("RUN echo {{ name | q }} {{ version | q }}\n")
    return folder
