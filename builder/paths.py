"""Where dlenv's data lives: the catalog (templates/, stacks/) and the user's state.

In a checkout the catalog is the repository's top-level `templates/` and `stacks/`; in an
installed wheel the same folders are shipped inside the package (see pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    shipped = _PACKAGE / name
    if shipped.is_dir():
        return shipped
    return _PACKAGE.parent / name


def templates_dir() -> Path:
    return Path(os.environ.get("DLENV_TEMPLATES_DIR") or _data_dir("templates"))


def stacks_dir() -> Path:
    return Path(os.environ.get("DLENV_STACKS_DIR") or _data_dir("stacks"))


def components_dir() -> Path:
    return templates_dir() / "components"


def state_dir() -> Path:
    """Logs, locks and bootstrap tarballs; never inside an image."""
    root = os.environ.get("DLENV_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state"), "dlenv")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def refreshed_locks_dir() -> Path:
    """The locks builds refreshed for catalog stacks (their shipped locks are read-only data): one
    `<stack>.lock` each. Not `locks/`, which holds the per-stack mutexes (builder.statelock)."""
    return state_dir() / "refreshed-locks"


def store_dir() -> Path:
    """The package store (engine/store.py): DLENV_STORE_DIR, else `store` in the state folder. Files in it
    are named by their sha256 and checked on the way in, so machines' users or test runs may share one."""
    return Path(os.environ.get("DLENV_STORE_DIR") or state_dir() / "store")
