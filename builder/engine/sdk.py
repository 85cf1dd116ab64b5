"""The classic-builder build, through the Docker SDK (docker-py).

Owns `build`: the context goes to the daemon, its JSON stream is read for progress and for errors
(docker-py does not raise on them), and a failure becomes a BuildError with the step, the log tail
and the hint of builder.engine.buildlog. The BuildKit engine is builder.engine.buildkit.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Callable

import docker.errors
import requests.exceptions

from builder.engine.buildlog import LOG_TAIL, BuildProgress, _build_hint, _short_build_error
from builder.engine.dockerapi import image_attrs
from builder.errors import BuildError, EngineError

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def build(client, context_dir: Path, tag_ref: str, buildargs: dict, log_path: Path,
          on_progress: Callable[[BuildProgress, str], None] | None = None, nocache: bool = False) -> str:
    """Build `context_dir`, tag it `tag_ref`, return the image id. The full log goes to `log_path`."""
    progress = BuildProgress()
    tail: collections.deque = collections.deque(maxlen=LOG_TAIL)
    image_id = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        def emit(line: str):
            line = _ANSI.sub("", line)  # the classic builder colours a step's stderr
            log.write(line + "\n")
            tail.append(line)
            if on_progress:
                on_progress(progress, line)
        try:
            stream = client.api.build(path=str(context_dir), tag=tag_ref, buildargs=buildargs, rm=True,
                                      forcerm=True, decode=True, nocache=nocache, pull=False,
                                      network_mode="host")   # dlenv's package repository is on the host's loopback
            for chunk in stream:
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        m = STEP_RE.match(line)
                        if m:
                            progress.step, progress.total, progress.instruction = int(m[1]), int(m[2]), m[3]
                        emit(line)
                if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk or "errorDetail" in chunk:
                    message = chunk.get("error") or chunk["errorDetail"].get("message", "build failed")
                    emit(message)
                    step = f"step {progress.step}/{progress.total}: {progress.instruction}" if progress.step else None
                    raise BuildError(_short_build_error(message, progress), step=step, log_tail=list(tail),
                                     log_path=str(log_path), hint=_build_hint(message, list(tail)))
        except docker.errors.APIError as exc:
            raise EngineError(f"build request failed: {exc.explanation or exc}") from None
        except requests.exceptions.ConnectionError:
            raise EngineError("lost the connection to the Docker engine during the build",
                              hint="check that dockerd is still running") from None
    if image_id is None:
        attrs = image_attrs(client, tag_ref)
        if attrs is None:
            raise BuildError("the engine finished without an image", log_tail=list(tail), log_path=str(log_path))
        image_id = attrs["Id"]
    return image_id
