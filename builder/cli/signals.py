"""SIGTERM and SIGHUP as Ctrl-C: what `timeout`, CI runners, systemd and Slurm's `scancel` send stops a
command the way an interrupt does (every `finally` and `except KeyboardInterrupt` cleans up), and the
command exits 128 + the signal's number (143, 129) instead of Ctrl-C's 130."""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be: every `finally` and `except KeyboardInterrupt`
    that cleans up after an interrupt runs for it too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, _frame):
    # Once: the cleanup that follows must not be interrupted by a second TERM (SIGKILL still ends it).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def catch_termination() -> None:
    if threading.current_thread() is not threading.main_thread():
        return                      # only the main thread may set handlers (a test runner's thread)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:    # nohup's SIGHUP stays ignored
            signal.signal(sig, _terminate)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status of an interrupted command: 130 for Ctrl-C, 128 + N for signal N."""
    return 128 + exc.signum if isinstance(exc, Terminated) else 130


def stopped_by(exc: KeyboardInterrupt) -> str:
    return f"stopped by {exc.args[0]}" if isinstance(exc, Terminated) else "interrupted"
