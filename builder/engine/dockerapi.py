"""The Docker engine's client helpers, through the Docker SDK (docker-py): connect, inspect, tag,
untag, import a rootfs, ask an image whether it has apt sources.

Owns the connection to the daemon and the calls on images that every stage shares; errors become
`EngineError` with the hint a user needs. Builds are builder.engine.sdk (classic builder) and
builder.engine.buildkit (BuildKit CLI).
"""

from __future__ import annotations

import os
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from builder.errors import EngineError
from builder.names import APT_SOURCES_DIR, APT_SOURCES_LIST, ROLE_LABEL

# Prints something when the image has an apt source (a buildah-built image has none: its builds
# mount the host's Debian sources instead).
HAS_APT_SOURCES = (f"grep -rhsE '^[[:space:]]*(deb |deb-src |URIs:)' {APT_SOURCES_LIST} {APT_SOURCES_DIR} "
                   "| sed -n 1p || true")


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


def has_apt_sources(client, ref: str) -> bool:
    """Whether the image `ref` can run apt-get update by itself (a throwaway container)."""
    try:
        out = client.containers.run(ref, ["bash", "-c", HAS_APT_SOURCES], user="0:0", remove=True,
                                    labels={ROLE_LABEL: "probe"}, network_disabled=True)
    except docker.errors.DockerException as exc:
        raise EngineError(f"cannot look for apt sources in {ref}: {' '.join(str(exc).split())[:200]}") from None
    return bool(out.strip())


def image_labels(attrs: dict | None) -> dict:
    if not attrs:
        return {}
    return (attrs.get("Config") or {}).get("Labels") or {}


def history_steps(client, ref: str) -> list[tuple]:
    """The history of the image `ref`, oldest step first: (created, created_by, comment) each ([] when
    the engine has no such image)."""
    try:
        steps = client.api.history(ref)
    except docker.errors.ImageNotFound:
        return []
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            return []
        raise EngineError(f"cannot read the history of {ref}: {exc.explanation}") from None
    return [(s.get("Created"), s.get("CreatedBy"), s.get("Comment")) for s in reversed(steps or [])]


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
