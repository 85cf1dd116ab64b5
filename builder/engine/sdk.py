"""The classic-builder build, through the Docker SDK (docker-py).

Owns `build`: the context goes to the daemon, its JSON stream is read for progress and for errors
(docker-py does not raise on them) and for the duration of each step (written into the log), and a
failure becomes a BuildError with the step, the log tail and the hint of builder.engine.buildlog.
The BuildKit engine is builder.engine.buildkit.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Callable

import docker.errors
import requests.exceptions

from builder.engine.buildlog import LOG_TAIL, BuildProgress, StepClock, _build_hint, _short_build_error
from builder.engine.dockerapi import image_attrs
from builder.errors import BuildError, EngineError

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CACHE_HIT = " ---> Using cache"


class _Stream:
    """Reads the classic builder's JSON stream: the step it is at, how long each step took (the builder
    runs one step at a time: a step lasts until the next one starts), the image id and the error."""

    def __init__(self, clock: StepClock):
        self.progress = BuildProgress()
        self.clock = clock
        self.image_id = None
        self.error = None

    def feed(self, chunk: dict) -> list[tuple[str, bool]]:
        """(line, from the engine) of one chunk, in order: the engine's lines, and dlenv's duration line
        of a step before the line that starts the next."""
        out = []
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                line = _ANSI.sub("", line)
                m = STEP_RE.match(line)
                if m:
                    out += [(ln, False) for ln in self.clock.start(int(m[1]), int(m[2]), m[3])]
                    self.progress.step, self.progress.total, self.progress.instruction = int(m[1]), int(m[2]), m[3]
                elif line.rstrip() == _CACHE_HIT:
                    self.clock.cached()
                out.append((line, True))
        if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        if "error" in chunk or "errorDetail" in chunk:
            self.error = chunk.get("error") or chunk["errorDetail"].get("message", "build failed")
            out.append((self.error, True))
        return out


def build(client, context_dir: Path, tag_ref: str, buildargs: dict, log_path: Path,
          on_progress: Callable[[BuildProgress, str], None] | None = None, nocache: bool = False,
          clock: StepClock | None = None) -> str:
    """Build `context_dir`, tag it `tag_ref`, return the image id. The full log goes to `log_path`, with
    the duration of each step and a closing table of the slowest; `clock` keeps the figures."""
    reader = _Stream(clock if clock is not None else StepClock())
    tail: collections.deque = collections.deque(maxlen=LOG_TAIL)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        def emit(line: str, engine: bool):
            line = _ANSI.sub("", line)  # the classic builder colours a step's stderr
            log.write(line + "\n")
            if engine:
                tail.append(line)
                if on_progress:
                    on_progress(reader.progress, line)
        try:
            stream = client.api.build(path=str(context_dir), tag=tag_ref, buildargs=buildargs, rm=True,
                                      forcerm=True, decode=True, nocache=nocache, pull=False,
                                      network_mode="host")   # dlenv's package repository is on the host's loopback
            for chunk in stream:
                for line, engine in reader.feed(chunk):
                    emit(line, engine)
                if reader.error is not None:
                    progress = reader.progress
                    step = f"step {progress.step}/{progress.total}: {progress.instruction}" if progress.step else None
                    raise BuildError(_short_build_error(reader.error, progress), step=step, log_tail=list(tail),
                                     log_path=str(log_path), hint=_build_hint(reader.error, list(tail)))
        except docker.errors.APIError as exc:
            raise EngineError(f"build request failed: {exc.explanation or exc}") from None
        except requests.exceptions.ConnectionError:
            raise EngineError("lost the connection to the Docker engine during the build",
                              hint="check that dockerd is still running") from None
        finally:
            for line in reader.clock.finish():
                log.write(line + "\n")
    image_id = reader.image_id
    if image_id is None:
        attrs = image_attrs(client, tag_ref)
        if attrs is None:
            raise BuildError("the engine finished without an image", log_tail=list(tail), log_path=str(log_path))
        image_id = attrs["Id"]
    return image_id
