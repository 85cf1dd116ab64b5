"""The optional BuildKit engine: the same build through a Docker CLI that builds with BuildKit.

Why a CLI: docker-py drives only the classic builder. BuildKit adds cache mounts (apt's archives and
lists, pip's cache survive between builds without reaching a layer) and secret mounts (the CA bundle
reaches the steps that talk to the package index and no layer at all, not even the build stage's).

Owns finding a CLI that builds with BuildKit and running `docker build` with it: the command line, the
plain progress it prints, stopping it, and its failure as the same BuildError the SDK build raises.
The Dockerfile it builds is the variant of builder.plan.buildkit_variant.

Only this module runs the Docker CLI.
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

from builder.engine.buildlog import LOG_TAIL, BuildProgress, StepClock, StepTime, _build_hint, _short_build_error
from builder.engine.processes import append_lines, run_logged
from builder.errors import BuildError, EngineError
from builder.names import CA_SECRET_ID

CLI_ENV_VAR = "DLENV_BUILDKIT_CLI"             # one CLI to use instead of probing the candidates
CLI_CANDIDATES = ("/usr/bin/docker", "docker")  # Debian's docker.io client first: the first `docker` on
#                                                  PATH may be a newer client without buildx


def _probe(path: str) -> tuple[bool, str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    try:
        proc = subprocess.run([path, "build", "--help"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    # With BuildKit on, `build --help` lists --secret; a client without buildx refuses with status 1.
    if proc.returncode == 0 and "--secret" in proc.stdout:
        return True, ""
    why = (proc.stderr or proc.stdout).strip().splitlines()
    return False, why[0] if why else f"exit status {proc.returncode}"


def find_cli(environ=os.environ) -> str:
    """The first Docker CLI that builds with BuildKit: $DLENV_BUILDKIT_CLI alone when set, else
    /usr/bin/docker, then `docker` on PATH."""
    explicit = environ.get(CLI_ENV_VAR)
    candidates = [explicit] if explicit else list(CLI_CANDIDATES)
    tried, seen = [], set()
    for cand in candidates:
        path = cand if os.path.isabs(cand) else shutil.which(cand, path=environ.get("PATH"))
        if not path or not os.access(path, os.X_OK):
            tried.append(f"{cand}: not found")
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        ok, why = _probe(path)
        if ok:
            return path
        tried.append(f"{path}: {why}")
    raise EngineError(f"no Docker CLI that builds with BuildKit ({'; '.join(tried)})",
                      hint=f"install Debian's docker.io (its /usr/bin/docker does) or the buildx plugin, set {CLI_ENV_VAR} "
                           "to such a client, or build with --engine sdk")


_VERTEX = re.compile(r"^#(\d+) \[(?:([^\]\s]+) )?(\d+)/(\d+)\] (.*)$")
_VERTEX_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
_VERTEX_OUT = re.compile(r"^#\d+ \d+\.\d+ ?")
_VERTEX_DONE = re.compile(r"^#(\d+) DONE (\d+(?:\.\d+)?)s$")
_VERTEX_CACHED = re.compile(r"^#(\d+) CACHED$")
STOP_STEPS = ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5))   # as a user's Ctrl-C would, then harder


def _command(cli: str, context_dir: Path, tag_ref: str, buildargs: dict, iid_file: Path,
             secret_file: Path | None, nocache: bool) -> list[str]:
    # --network host: dlenv's package repository is on the host's loopback.
    cmd = [cli, "build", "--progress=plain", "--network", "host", "--iidfile", str(iid_file), "-t", tag_ref]
    if nocache:
        cmd.append("--no-cache")
    # Values travel in the environment (`--build-arg NAME`), so proxy credentials stay out of `ps`.
    for name in sorted(buildargs):
        cmd += ["--build-arg", name]
    if secret_file is not None:
        cmd += ["--secret", f"id={CA_SECRET_ID},src={secret_file}"]
    cmd.append(str(context_dir))
    return cmd


def _environment(buildargs: dict) -> dict:
    return {**os.environ, **{k: str(v) for k, v in buildargs.items()}, "DOCKER_BUILDKIT": "1",
            "BUILDKIT_PROGRESS": "plain", "NO_COLOR": "1"}


class _PlainLog:
    """Reads the CLI's plain progress: the step of each vertex, how long each took (BuildKit says it:
    `#7 DONE 41.2s`, `#7 CACHED`; steps of different stages run at once), the first vertex that failed,
    the tail."""

    def __init__(self, clock: StepClock | None = None):
        self.progress = BuildProgress()
        self.clock = clock if clock is not None else StepClock()
        self.tail: collections.deque = collections.deque(maxlen=LOG_TAIL)
        self.vertices: dict[str, tuple] = {}
        self.steps: dict[str, StepTime] = {}     # vertex -> its step
        self.timed: set = set()                  # vertices whose figure the clock has
        self.failed = None

    def feed(self, line: str) -> list[str]:
        """Read one line; dlenv's lines for the log before it (none: BuildKit writes its own figures)."""
        self.tail.append(line)
        m = _VERTEX.match(line)
        if m:
            stage = m[2] or "stage"
            self.vertices[m[1]] = (int(m[3]), int(m[4]), f"[{stage}] {m[5]}")
            self.progress.step, self.progress.total, self.progress.instruction = self.vertices[m[1]]
            self.steps.setdefault(m[1], StepTime(int(m[3]), int(m[4]), m[5], stage))
        done, cached = _VERTEX_DONE.match(line), _VERTEX_CACHED.match(line)
        ended = done or cached
        if ended and ended[1] in self.steps and ended[1] not in self.timed:
            timed = self.steps[ended[1]]
            timed.seconds, timed.cached = (float(done[2]), False) if done else (0.0, True)
            self.timed.add(ended[1])
            self.clock.add(timed)
        e = _VERTEX_ERROR.match(line)
        if e and self.failed is None:
            self.failed = (self.vertices.get(e[1]), e[2])
        return []


def _run_cli(cli: str, cmd: list[str], env: dict, log_path: Path, plain: _PlainLog,
             on_progress: Callable[[BuildProgress, str], None] | None) -> int:
    """Runs the CLI to its end, every line to `log_path`; returns its exit status. However this ends
    (Ctrl-C included), the CLI does not build on."""
    def on_line(line: str) -> None:
        if on_progress:
            on_progress(plain.progress, _VERTEX_OUT.sub("", line))
    return run_logged(cmd, env, log_path, on_line, STOP_STEPS, notes=plain.feed)


def _failure(cli: str, code: int, plain: _PlainLog, log_path: Path) -> BuildError:
    """The BuildError of a failed CLI: its last error line, at the vertex that failed."""
    lines = list(plain.tail)
    failed = plain.failed
    message = next((ln.split("error: ", 1)[-1] if ln.startswith("error: ") else ln
                    for ln in reversed(lines) if ln.startswith(("error: ", "failed to solve", "ERROR:"))),
                   failed[1] if failed else f"{cli} build exited with status {code}")
    vertex = failed[0] if failed else None
    where = BuildProgress(*vertex) if vertex else BuildProgress()
    step = f"step {where.step}/{where.total}: {where.instruction}" if vertex else None
    return BuildError(_short_build_error(message, where), step=step, log_tail=lines,
                      log_path=str(log_path), hint=_build_hint(message, lines))


def build(cli: str, context_dir: Path, tag_ref: str, buildargs: dict, log_path: Path, *,
          secret_file: Path | None = None, on_progress: Callable[[BuildProgress, str], None] | None = None,
          nocache: bool = False, clock: StepClock | None = None) -> str:
    """`docker build` with BuildKit of `context_dir` (its Dockerfile is the variant), tagged `tag_ref`;
    returns the image id. The full log goes to `log_path`, closed by a table of the slowest steps (`clock`
    keeps the figures); a failure raises BuildError like the SDK's."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    iid_dir = Path(tempfile.mkdtemp(prefix="iid-"))
    iid_file = iid_dir / "iid"
    cmd = _command(cli, context_dir, tag_ref, buildargs, iid_file, secret_file, nocache)
    plain = _PlainLog(clock)
    try:
        try:
            code = _run_cli(cli, cmd, _environment(buildargs), log_path, plain, on_progress)
        finally:
            append_lines(log_path, plain.clock.finish())
        if code != 0:
            raise _failure(cli, code, plain, log_path)
        if not iid_file.is_file() or not iid_file.read_text().strip():
            raise BuildError("the BuildKit build finished without an image id", log_tail=list(plain.tail),
                             log_path=str(log_path))
        return iid_file.read_text().strip()
    finally:
        shutil.rmtree(iid_dir, ignore_errors=True)
