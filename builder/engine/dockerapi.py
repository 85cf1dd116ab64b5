"""The Docker engine, through the Docker SDK (docker-py): connect, build, tag, inspect, import.

Only this module (and verify) talks to Docker. Errors become `EngineError` / `BuildError`
with the hint a user needs; the daemon's JSON stream is read for errors because docker-py
does not raise on them.
"""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import requests.exceptions

from builder.errors import BuildError, EngineError

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
LOG_TAIL = 30


def connect(timeout: int = 600) -> docker.DockerClient:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise _explain_connect(exc, host) from None
    except requests.exceptions.RequestException as exc:
        raise _explain_connect(exc, host) from None


def _explain_connect(exc: Exception, host: str) -> EngineError:
    text = str(exc)
    if "Permission denied" in text or "PermissionError" in text:
        return EngineError(f"permission denied on the Docker socket ({host})",
                           hint="add your user to the 'docker' group (then log in again) or run as root")
    if "No such file" in text or "Connection refused" in text or "ConnectionError" in text or "Connection aborted" in text:
        return EngineError(f"cannot reach the Docker engine at {host}",
                           hint="start it (sudo dockerd, or systemctl start docker) or fix DOCKER_HOST")
    return EngineError(f"Docker engine at {host} failed: {' '.join(text.split())[:200]}",
                       hint="check DOCKER_HOST and that dockerd is running")


def image_attrs(client, ref: str) -> dict | None:
    try:
        return client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            return None
        raise EngineError(f"cannot inspect image {ref}: {exc.explanation}") from None


def image_labels(attrs: dict | None) -> dict:
    if not attrs:
        return {}
    return (attrs.get("Config") or {}).get("Labels") or {}


def tag(client, image_id: str, ref: str) -> None:
    repo, _, tag_ = ref.rpartition(":")
    if not client.api.tag(image_id, repo, tag_, force=True):
        raise EngineError(f"the engine refused to tag {image_id[:19]} as {ref}")


def untag(client, ref: str) -> None:
    try:
        client.api.remove_image(ref, noprune=True)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 404:
            raise EngineError(f"cannot remove tag {ref}: {exc.explanation}") from None


@dataclass
class BuildProgress:
    step: int = 0
    total: int = 0
    instruction: str = ""


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
                                      forcerm=True, decode=True, nocache=nocache, pull=False)
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


def _short_build_error(message: str, progress: BuildProgress) -> str:
    text = " ".join(message.split())
    if progress.step:
        return f"build failed at step {progress.step}/{progress.total}: {text[:300]}"
    return f"build failed: {text[:300]}"


_MISSING_APT = re.compile(r"Version '([^']+)' for '([^']+)' was not found")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MISSING_PIP = re.compile(r"No matching distribution found for (\S+)")


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


def import_rootfs(client, tarball: Path, ref: str, changes: list[str]) -> str:
    repo, _, tag_ = ref.rpartition(":")
    try:
        result = client.api.import_image_from_file(str(tarball), repository=repo, tag=tag_, changes=changes)
    except docker.errors.APIError as exc:
        raise EngineError(f"docker import failed: {exc.explanation}") from None
    text = result if isinstance(result, str) else str(result)
    if '"error"' in text:
        raise EngineError(f"docker import failed: {text[:300]}")
    attrs = image_attrs(client, ref)
    if attrs is None:
        raise EngineError(f"docker import did not create {ref}")
    return attrs["Id"]
