"""One package store for every engine test of a run (tests/integration, tests/e2e).

Each test keeps its own state folder, but the files a lock pins are content-addressed and checked on
the way in, so sharing them is safe: it spares the mirror and the index one download of the same .debs
and CUDA wheels per test, and on a machine that ran the tests before (CI's next run) a build fetches
nothing. A test that needs an empty store (a build from a bundle alone) sets DLENV_STORE_DIR itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_store() -> str:
    """dlenv's default store of this user (the state folder's), also when a test points DLENV_STATE_DIR elsewhere."""
    home = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(home, "dlenv", "store")


@pytest.fixture(autouse=True)
def _shared_package_store(monkeypatch):
    if not os.environ.get("DLENV_STORE_DIR"):
        monkeypatch.setenv("DLENV_STORE_DIR", shared_store())
