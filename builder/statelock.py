"""The per-stack mutex: one dlenv process at a time builds, locks or pulls a stack (an fcntl lock
on a file under the state folder). Not to be confused with a stack's lock file (plan.lockfile)."""

from __future__ import annotations

import contextlib
import fcntl

from builder import paths


@contextlib.contextmanager
def stack_lock(name: str, log=lambda msg: None):
    """One dlenv process at a time builds or locks a stack; the others wait, and say so."""
    lock_dir = paths.state_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another dlenv process that builds or locks {name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
