"""SIGTERM and SIGHUP become the interrupt Ctrl-C is (builder/cli/signals.py), and an interrupt waits for an
engine call that makes something (builder/engine/containers.py); real signals to real dlenv processes are in
tests/integration (test_faults, test_shell_run, test_slurm)."""

from __future__ import annotations

import signal
import time

import pytest

from builder.cli import signals
from builder.engine.containers import INTERRUPTS, interrupts_deferred


@pytest.fixture
def restore_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_waits_for_a_deferred_engine_call(restore_handlers, sig):
    """A container's create and start, the lock container, sbatch: a signal during them arrives once they
    are done, so the caller holds what they made and removes (or cancels) it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals.catch_termination()
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(sig)
            time.sleep(0.1)             # undeferred, the handler would have raised by now
            finished.append(sig)
    assert finished == [sig]
    assert not INTERRUPTS & signal.pthread_sigmask(signal.SIG_BLOCK, [])    # the mask is as it was
