"""Running an engine's command-line build (BuildKit's docker CLI, buildah) with its log, and stopping it
and everything it started: each runs as the leader of its own process group (start_new_session), so
signalling the group reaches its children and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

from builder.errors import EngineError


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


def run_logged(cmd: list[str], env: dict, log_path: Path, on_line: Callable[[str], None], stop_steps: tuple,
               hint: str | None = None, notes: Callable[[str], list] | None = None) -> int:
    """Run `cmd` in its own process group to its end, every output line to `log_path` and `on_line`;
    its exit status. `notes(line)`: dlenv's own lines to write into the log before that line (how long
    the step it ends took). However this ends (Ctrl-C included), the group is stopped by `stop_steps`:
    the build must not go on without dlenv."""
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                    start_new_session=True)
        except OSError as exc:
            raise EngineError(f"cannot run {cmd[0]}: {exc}", hint=hint) from None
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                for note in notes(line) if notes else ():
                    log.write(note + "\n")
                log.write(line + "\n")
                on_line(line)
            return proc.wait()
        finally:
            stop_group(proc, stop_steps)


def append_lines(log_path: Path, lines: list) -> None:
    """Add dlenv's closing lines to a build log (nothing when there are none, or no log)."""
    if lines and log_path.is_file():
        with open(log_path, "a", encoding="utf-8") as log:
            log.writelines(line + "\n" for line in lines)
