"""Shared fixtures. Tests that need the Docker engine use the `docker_client` fixture: with
DLENV_REQUIRE_ENGINE=1 (CI, `make test`) a missing engine fails them loudly; otherwise they skip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Test-only helpers (tests/security.py, tests/registry_fixture.py) import by their module name.
sys.path.insert(0, str(ROOT / "tests"))
FIXTURES = ROOT / "tests" / "fixtures"

# The Ctrl-C tests send SIGINT to the dlenv processes they start, as a terminal would. A suite run in
# the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so would every
# dlenv it starts (measured: all Ctrl-C tests then fail): give them a terminal's default back. A Python
# handler here becomes SIG_DFL in each child at exec; an ignored signal would stay ignored.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def dlenv_bin() -> str:
    candidate = Path(sys.executable).parent / "dlenv"
    return str(candidate) if candidate.exists() else (shutil.which("dlenv") or "dlenv")


@pytest.fixture(scope="session")
def dlenv_path() -> str:
    return dlenv_bin()


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=900)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        if os.environ.get("DLENV_REQUIRE_ENGINE") == "1":
            pytest.fail(f"DLENV_REQUIRE_ENGINE=1 but the Docker engine is unreachable: {exc}", pytrace=False)
        pytest.skip(f"no Docker engine: {exc}")
    return client


@pytest.fixture
def run_dlenv(tmp_path):
    """Run the real CLI in a subprocess, with an isolated state dir unless told otherwise."""

    def run(*args, env=None, timeout=3600, check=False, input=None, cwd=None):
        full_env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
        full_env.setdefault("DLENV_STATE_DIR", str(tmp_path / "state"))
        if env:
            full_env.update(env)
        proc = subprocess.run([dlenv_bin(), *args], capture_output=True, text=True, env=full_env,
                              timeout=timeout, input=input, cwd=cwd)
        if check and proc.returncode != 0:
            raise AssertionError(f"dlenv {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
