"""What a build says: its progress, how long each step took, and on failure the error, step and hint
read from its log.

Shared by the engines (builder.engine.sdk, buildkit, buildah): BuildProgress, the StepClock that times
the steps (a duration line per step and a closing table of the slowest, in the log on disk; the few
slowest for `dlenv build` to print), the length of the log tail a BuildError carries, and the one-line
error and the hint a user gets (missing or mismatched pins, an unreachable base, an untrusted index).
Pure: reads lines and a clock, runs nothing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

LOG_TAIL = 30
LOG_MARK = "[dlenv]"        # starts the lines dlenv adds to an engine's build log
LOG_SLOWEST = 10            # steps the closing table of a build log lists
SLOWEST_STEPS = 5           # steps `dlenv build` names after a build that ran some
MIN_STEP_SECONDS = 1.0      # a step that ran for less is no figure a slow build is explained by

_MISSING_APT = re.compile(r"Version '([^']+)' for '([^']+)' was not found")
_MISSING_PIP = re.compile(r"No matching distribution found for (\S+)")


@dataclass
class BuildProgress:
    step: int = 0
    total: int = 0
    instruction: str = ""


@dataclass
class StepTime:
    """One Dockerfile step of a build and how long it took."""
    step: int
    total: int
    instruction: str
    stage: str = ""         # BuildKit and buildah number steps per stage: its name
    seconds: float = 0.0
    cached: bool = False    # the engine took it from its layer cache

    @property
    def label(self) -> str:
        return f"step {self.step}/{self.total}" + (f" [{self.stage}]" if self.stage else "")

    @property
    def ran(self) -> bool:
        """It did work: not from the cache, and no FROM (which names the image a stage starts from)."""
        return not self.cached and not self.instruction.lstrip().upper().startswith("FROM ")


class StepClock:
    """How long each step of one build took, from its progress. A step starts when the engine says so
    and ends when the next step of its stage starts (`start`), at a time the caller knows better (`end`,
    buildah's stages running at once), or when the build ends (`finish`); BuildKit reports its own
    figure (`add`). `start`, `end` and `finish` return the duration lines for the build log."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.steps: list[StepTime] = []
        self._open: dict = {}        # stage -> (StepTime, started)

    def start(self, step: int, total: int, instruction: str, stage: str = "") -> list[str]:
        lines = self.end(stage)
        timed = StepTime(step, total, instruction, stage)
        self.steps.append(timed)
        self._open[stage] = (timed, self.now())
        return lines

    def add(self, timed: StepTime) -> None:
        self.steps.append(timed)

    def cached(self, stage: str | None = None) -> None:
        """The step that started last (in `stage`) came from the layer cache."""
        if stage is not None:
            if stage in self._open:
                self._open[stage][0].cached = True
        elif self._open:
            max(self._open.values(), key=lambda entry: entry[1])[0].cached = True

    def open_step(self, stage: str) -> tuple | None:
        """(StepTime, started) of the step `stage` is at, or None."""
        return self._open.get(stage)

    def restart(self, stage: str, at: float) -> None:
        """The step `stage` is at started later than announced, at `at` (it waited for another stage)."""
        if stage in self._open:
            timed, started = self._open[stage]
            self._open[stage] = (timed, max(started, at))

    def end(self, stage: str = "", at: float | None = None) -> list[str]:
        if stage not in self._open:
            return []
        timed, started = self._open.pop(stage)
        timed.seconds = max(0.0, (self.now() if at is None else at) - started)
        return [duration_line(timed)]

    def finish(self) -> list[str]:
        """End every step still open (the build ended): their duration lines, then the closing table."""
        lines = []
        for stage in list(self._open):
            lines += self.end(stage)
        return lines + summary_lines(self.steps)


def duration_line(timed: StepTime) -> str:
    return f"{LOG_MARK} {timed.label} took {timed.seconds:.1f}s" + (" (cached)" if timed.cached else "")


def slowest(steps: list, count: int = SLOWEST_STEPS) -> list[StepTime]:
    """The `count` longest steps that ran, none shorter than MIN_STEP_SECONDS; empty for a build from
    the cache alone."""
    ran = [s for s in steps if s.ran and s.seconds >= MIN_STEP_SECONDS]
    return sorted(ran, key=lambda s: -s.seconds)[:count]


def step_row(timed: StepTime, width: int = 100) -> str:
    """`  41.2s  step 7/23  RUN ...`: a step of the slowest-steps table, its instruction cut to `width`."""
    text = " ".join(timed.instruction.split())
    text = text if len(text) <= width else text[: width - 3] + "..."
    return f"{timed.seconds:7.1f}s  {timed.label}  {text}"


def summary_lines(steps: list) -> list[str]:
    """The closing table of a build log: how many steps ran, and the slowest of them."""
    if not steps:
        return []
    ran = [s for s in steps if s.ran]
    if not ran:
        return [f"{LOG_MARK} {len(steps)} steps, none ran: all from the cache"]
    top = sorted(ran, key=lambda s: -s.seconds)[:LOG_SLOWEST]
    return ([f"{LOG_MARK} {len(steps)} steps, {len(ran)} ran; the slowest:"]
            + [f"{LOG_MARK} {step_row(s)}" for s in top])


def _short_build_error(message: str, progress: BuildProgress) -> str:
    text = " ".join(message.split())
    if progress.step:
        return f"build failed at step {progress.step}/{progress.total}: {text[:300]}"
    return f"build failed: {text[:300]}"


def _pin_hint(lines: list) -> str | None:
    """A locked build whose pins are gone says which ones, and how to resolve them again."""
    missing = [f"{m[2]}={m[1]}" for ln in lines for m in [_MISSING_APT.search(ln)] if m]
    missing += [m[1] for ln in lines for m in [_MISSING_PIP.search(ln)] if m]
    fix = ("`dlenv lock STACK` resolves them again and lists what changes (or `dlenv build --relock`); "
           "a registry copy of the image keeps the old environment byte for byte")
    if missing:
        return f"pinned versions no longer available: {', '.join(missing[:8])}; {fix}"
    if any("DO NOT MATCH THE HASHES" in ln for ln in lines):
        return "a downloaded file does not match the sha256 in the lock: the index serves different bytes; " + fix
    if any(re.search(r"orig\.tar\.\w+: FAILED", ln) for ln in lines):
        return "a Debian source tarball does not match the sha256 in the lock; " + fix
    return None


def _build_hint(message: str, lines: list | None = None) -> str | None:
    pinned = _pin_hint((lines or []) + [message])
    if pinned:
        return pinned
    if "pull access denied" in message or "manifest unknown" in message or "no such host" in message \
            or "dial tcp" in message:
        return "the base image must exist locally or come from a reachable registry; run `dlenv base` for the default base"
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return "pip does not trust the index's certificate: pass --ca-bundle or set DLENV_CA_BUNDLE"
    return None
