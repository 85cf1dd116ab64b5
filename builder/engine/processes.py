"""Stopping an engine's command-line build (BuildKit's docker CLI, buildah) and everything it started:
each runs as the leader of its own process group (start_new_session), so signalling the group reaches
its children and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, steps: tuple) -> None:
    """Send each (signal, seconds to wait) of `steps` to the group until the leader has exited, then
    SIGKILL whatever is left in the group (the leader is gone: nothing to wait for)."""
    for sig, wait in steps:
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
