"""SIGTERM and SIGHUP become the interrupt Ctrl-C is (builder/cli/signals.py); real signals to real
processes are in tests/integration (test_faults, test_shell_run)."""

from __future__ import annotations

import signal

import pytest

from builder.cli import signals


@pytest.fixture
def restore_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig,code,said", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                            (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_a_termination_signal_is_an_interrupt_once(restore_handlers, sig, code, said):
    signals.catch_termination()
    with pytest.raises(KeyboardInterrupt) as caught:
        signal.raise_signal(sig)
    assert signals.exit_code(caught.value) == code and signals.stopped_by(caught.value) == said
    # The cleanup that follows is not interrupted by a second one.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_ctrl_c_keeps_130_and_an_ignored_sighup_stays_ignored(restore_handlers):
    assert signals.exit_code(KeyboardInterrupt()) == 130 and signals.stopped_by(KeyboardInterrupt()) == "interrupted"
    signal.signal(signal.SIGHUP, signal.SIG_IGN)      # as under nohup
    signals.catch_termination()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signals._terminate
