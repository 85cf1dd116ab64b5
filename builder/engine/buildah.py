"""The optional buildah engine: the same build through `buildah build`, so that one lock gives one image id.

Why buildah: with `--format oci --timestamp <epoch> --identity-label=false` and a base written as an
image archive (engine/buildah_store.py), two `--no-cache` builds of one lock give the same image id,
also on another machine (measured with the prototype of issue #17). The Dockerfile it builds is the
variant of builder.plan.buildah_variant.

Owns finding buildah (and its version), dlenv's own buildah storage (`--root`/`--runroot` under the
state folder, so that cleaning up touches only dlenv's containers and images), running the build with
its progress, stopping it, cleaning up after it, and its failure as the same BuildError the SDK's.
Only this module and buildah_store run buildah.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from builder import paths
from builder.engine.buildlog import LOG_TAIL, BuildProgress, StepClock, _build_hint, _short_build_error
from builder.engine.processes import append_lines, run_logged
from builder.errors import BuildError, EngineError
from builder.names import BUILDAH_HOST_PROXY_ENV, CA_SECRET_ID

MIN_VERSION = (1, 28)
_VERSION = re.compile(r"^Version:\s+(\d+)\.(\d+)(?:\.(\d+))?", re.M)
_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\] )?STEP (\d+)/(\d+): (.*)$")
_ERROR = re.compile(r"^Error: (.*)$")
_AT_STEP = re.compile(r'^building at STEP "(.*)": (.*)$')
_COMMIT = re.compile(r"^(?:\[(\d+)/(\d+)\] )?COMMIT\b")
_CACHE_HIT = re.compile(r"^--> Using cache\b")
_STAGE_NAME = re.compile(r"^FROM\s.*\s[Aa][Ss]\s+(\S+)\s*$")
_COPY_FROM = re.compile(r"^(?:COPY|ADD)\s.*--from=(\S+)")
# Stages built at once: the runtime stage's apt step runs while the build stage builds (the templates
# render those two); the image id does not depend on it (measured, issue #17 report: chainer 87 s -> 77 s).
JOBS = 2
STOP_STEPS = ((signal.SIGTERM, 10), (signal.SIGKILL, 5))    # buildah ends its RUN containers on SIGTERM
HINT = "install Debian's buildah (scripts/setup-host.sh does) or build with --engine sdk"


def storage_root() -> Path:
    """dlenv's own buildah storage (images and layers), under the state folder."""
    return paths.state_dir() / "buildah" / "storage"


def storage_args() -> list[str]:
    """buildah's global flags for dlenv's own storage, under the state folder."""
    return ["--root", str(storage_root()), "--runroot", str(paths.state_dir() / "buildah" / "run")]


def find_buildah(environ=os.environ) -> tuple[str, str]:
    """(path, version) of a buildah >= 1.28; EngineError (one line) when there is none."""
    path = shutil.which("buildah", path=environ.get("PATH"))
    if path is None:
        raise EngineError("buildah is not installed; the buildah engine needs it", hint=HINT)
    try:
        proc = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"cannot run {path} version: {exc}", hint=HINT) from None
    m = _VERSION.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise EngineError(f"{path} version did not say its version (exit status {proc.returncode})", hint=HINT)
    if (int(m[1]), int(m[2])) < MIN_VERSION:
        raise EngineError(f"buildah {m[1]}.{m[2]} is too old; dlenv needs 1.28 or newer", hint=HINT)
    return path, f"{m[1]}.{m[2]}.{m[3] or 0}"


def run_buildah(cli: str, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """One buildah command in dlenv's storage; EngineError (one line) when it fails and `check`."""
    try:
        proc = subprocess.run([cli, *storage_args(), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"buildah {args[0]} failed: {exc}", hint=HINT) from None
    if check and proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise EngineError(f"buildah {args[0]} failed: {why[-1] if why else f'exit status {proc.returncode}'}",
                          hint="see `dlenv doctor`; dlenv's buildah storage is " + str(paths.state_dir() / "buildah"))
    return proc


def cleanup(cli: str, prune: bool = True) -> None:
    """Remove every working container in dlenv's storage and (`prune`) the images no tagged image needs:
    what an interrupted or failed build leaves. Touches nothing outside dlenv's own storage."""
    run_buildah(cli, "rm", "--all", check=False)
    if prune:
        run_buildah(cli, "rmi", "--prune", check=False)


def command(cli: str, context_dir: Path, tag_ref: str, buildargs: dict, iid_file: Path, *, epoch: int,
            secret_file: Path | None, nocache: bool) -> list[str]:
    """The command line that gives one image id per lock (report of issue #17, §0)."""
    cmd = [cli, *storage_args(), "build", "--layers", "--format", "oci", "--timestamp", str(int(epoch)),
           "--identity-label=false", "--pull=never", "--jobs", str(JOBS), "--iidfile", str(iid_file), "-t", tag_ref,
           "--network", "host"]    # dlenv's package repository is on the host's loopback
    if nocache:
        cmd.append("--no-cache")
    for name in sorted(buildargs):     # values travel in the environment: credentials stay out of `ps`
        cmd += ["--build-arg", name]
    if secret_file is not None:
        cmd += ["--secret", f"id={CA_SECRET_ID},src={secret_file}"]
    return cmd + ["-f", str(context_dir / "Dockerfile"), str(context_dir)]


def build_environment(buildargs: dict, environ=os.environ) -> dict:
    """buildah's environment for a build: the host's without its proxy variables (buildah would hand them
    to every RUN step; no step needs them, and a host no_proxy could keep apt and pip from dlenv's
    repository), and the values of the build arguments (which travel in it: not in `ps`)."""
    return {**{k: v for k, v in environ.items() if k not in BUILDAH_HOST_PROXY_ENV},
            **{k: str(v) for k, v in buildargs.items()}}


class _StepLog:
    """Reads buildah's output: the step it is at, its error line, the tail, and how long each step took.

    With --jobs, stages run at once and their lines interleave: a step lasts until the next step of its
    stage starts. A stage that copies from another (`COPY --from=build`) first waits for it: the source's
    last step ends with its last output line before the copying stage moves on, and the copy is timed
    from then."""

    def __init__(self, clock: StepClock | None = None):
        self.progress = BuildProgress()
        self.clock = clock if clock is not None else StepClock()
        self.tail: collections.deque = collections.deque(maxlen=LOG_TAIL)
        self.error = None
        self.stages: dict[str, str] = {}     # "[i/n]" and a stage's name or index in --from -> its label
        self.last_output: float | None = None

    def _stage(self, m) -> str:
        """The label of a step's stage: its name (`FROM ... AS build`), else `stage i/n`; "" for one stage."""
        if not m[1]:
            return ""
        key = f"{m[1]}/{m[2]}"
        if key not in self.stages:
            named = _STAGE_NAME.match(m[5]) if m[3] == "1" else None
            self.stages[key] = named[1] if named else f"stage {key}"
            self.stages.setdefault(str(int(m[1]) - 1), self.stages[key])
            if named:
                self.stages.setdefault(named[1], self.stages[key])
        return self.stages[key]

    def _waited(self, stage: str) -> list[str]:
        """When `stage`'s step was a copy from a stage still running, that stage ended before the copy
        could: its last step ends at its last output line, and the copy starts then."""
        current = self.clock.open_step(stage)
        copy = _COPY_FROM.match(current[0].instruction) if current else None
        source = self.stages.get(copy[1]) if copy else None
        opened = self.clock.open_step(source) if source is not None and source != stage else None
        if opened is None:
            return []
        ended = max(opened[1], self.last_output if self.last_output is not None else opened[1])
        self.clock.restart(stage, ended)
        return self.clock.end(source, at=ended)

    def feed(self, line: str) -> list[str]:
        """Read one line; dlenv's lines for the log before it (how long the step it ends took)."""
        self.tail.append(line)
        notes = []
        m = _STEP.match(line)
        c = _COMMIT.match(line) if m is None else None
        if m:
            stage = self._stage(m)
            notes += self._waited(stage)
            notes += self.clock.start(int(m[3]), int(m[4]), m[5], stage)
            prefix = f"[stage {m[1]}/{m[2]}] " if m[1] else ""
            self.progress.step, self.progress.total, self.progress.instruction = int(m[3]), int(m[4]), prefix + m[5]
        elif c:
            stage = self.stages.get(f"{c[1]}/{c[2]}", "") if c[1] else ""
            notes += self._waited(stage) + self.clock.end(stage)
        elif _CACHE_HIT.match(line):
            self.clock.cached()
        else:
            self.last_output = self.clock.now()
        e = _ERROR.match(line)
        if e and self.error is None:
            self.error = e[1]
        return notes


def _run(cmd: list[str], env: dict, log_path: Path, steps: _StepLog,
         on_progress: Callable[[BuildProgress, str], None] | None) -> int:
    def on_line(line: str) -> None:
        if on_progress:
            on_progress(steps.progress, line)
    return run_logged(cmd, env, log_path, on_line, STOP_STEPS, hint=HINT, notes=steps.feed)


def failure(code: int, steps: _StepLog, log_path: Path) -> BuildError:
    """The BuildError of a failed buildah build: its error, at the step it was at."""
    message = steps.error or f"buildah build exited with status {code}"
    m = _AT_STEP.match(message)
    if m:
        message = m[2]
    where = steps.progress
    step = f"step {where.step}/{where.total}: {where.instruction}" if where.total else None
    lines = list(steps.tail)
    return BuildError(_short_build_error(message, where), step=step, log_tail=lines, log_path=str(log_path),
                      hint=_build_hint(message, lines))


def build(cli: str, context_dir: Path, tag_ref: str, buildargs: dict, log_path: Path, *, epoch: int,
          secret_file: Path | None = None, on_progress: Callable[[BuildProgress, str], None] | None = None,
          nocache: bool = False, clock: StepClock | None = None) -> str:
    """`buildah build` of `context_dir` (its Dockerfile is the variant) in dlenv's storage, tagged
    `tag_ref`; returns the image id. The full log goes to `log_path`, with the duration of each step and
    a closing table of the slowest (`clock` keeps the figures). Whatever way it ends (Ctrl-C included),
    buildah is stopped and its working containers are removed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    iid_dir = Path(tempfile.mkdtemp(prefix="iid-"))
    iid_file = iid_dir / "iid"
    cmd = command(cli, context_dir, tag_ref, buildargs, iid_file, epoch=epoch, secret_file=secret_file, nocache=nocache)
    env = build_environment(buildargs)
    steps = _StepLog(clock)
    ok = False
    try:
        try:
            code = _run(cmd, env, log_path, steps, on_progress)
        finally:
            append_lines(log_path, steps.clock.finish())
        if code != 0:
            raise failure(code, steps, log_path)
        image_id = iid_file.read_text().strip() if iid_file.is_file() else ""
        if not image_id:
            raise BuildError("the buildah build finished without an image id", log_tail=list(steps.tail),
                             log_path=str(log_path))
        ok = True
        return image_id if image_id.startswith("sha256:") else "sha256:" + image_id
    finally:
        shutil.rmtree(iid_dir, ignore_errors=True)
        cleanup(cli, prune=not ok)   # a good build keeps its intermediate images: they are the layer cache


def doctor_status(required: bool, environ=os.environ) -> tuple[str, str, str | None]:
    """(ok|warn|fail|skip, detail, fix) for `dlenv doctor`: buildah's presence, version and dlenv's storage."""
    try:
        cli, version = find_buildah(environ)
    except EngineError as exc:
        return ("fail" if required else "skip"), exc.message, exc.hint
    root = storage_root()
    if not root.is_dir():
        return "ok", f"buildah {version} ({cli}); dlenv's storage {root} is not made yet (the first build makes it)", None
    proc = run_buildah(cli, "images", "--all", "--quiet", check=False, timeout=60)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        return "warn", f"buildah {version}: cannot read dlenv's storage {root}: {why[-1] if why else proc.returncode}", \
            f"remove {root.parent} (dlenv's own buildah storage) and build again"
    count = len(proc.stdout.split())
    return "ok", f"buildah {version} ({cli}); dlenv's storage {root}: {count} image(s)", None
