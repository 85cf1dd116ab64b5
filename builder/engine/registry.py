"""Prebuilt images in a registry: push and pull by content hash, through the Docker SDK.

The image of a lock is named by its content hash everywhere, so in a registry it is
`REGISTRY/dlenv/<stack>:<hash16>` (REGISTRY may carry a path prefix). A push sends the promoted
local image (`dlenv/<stack>:<hash16>`, label checked) under that name; a pull fetches it, requires
its `org.dlenv.content-hash` label to equal the stack's content hash and only then moves the
promoted tags. `try_pull` is the pull-before-build of `dlenv build`.

docker-py does not raise on errors the daemon reports inside its JSON stream (and raises
`APIError` for those it reports before the stream starts): both are read here and turned into a
`RegistryError` with a one-line message and a hint. A pull counts as done only when the stream
ended with the engine's own confirmation and the local image carries the digest the registry
served: a failed pull never moves a tag and a stale local image is never reported as pulled.

Credentials: `DLENV_REGISTRY_USER` and `DLENV_REGISTRY_PASSWORD` (both) are sent as the
request's auth config; otherwise docker-py sends what the Docker config holds for the host
(`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential helpers included), which is
what `docker login HOST` writes. Credentials never appear in a message.
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import docker.errors
import requests.exceptions

from builder.engine import dockerapi as engine
from builder.engine.images import promoted_image
from builder.names import HASH_LABEL, TAG_CHARS
from builder.outputs.exports.common import registry_host
from builder.outputs.exports.common import registry_ref as remote_ref
from builder.plan.lockimages import refusal
from builder.plan.plan import Plan
from builder.statelock import stack_lock
from builder.errors import EngineError, RegistryError

USER_ENV = "DLENV_REGISTRY_USER"
PASSWORD_ENV = "DLENV_REGISTRY_PASSWORD"


@dataclass
class LayerEvent:
    """One status report about one layer, as the daemon sends it."""

    layer: str
    status: str
    current: int | None = None
    total: int | None = None


@dataclass
class TransferResult:
    remote: str
    image_id: str
    digest: str
    seconds: float
    layers: dict = field(default_factory=dict)  # layer -> last status
    fresh: bool = True  # pull: the promoted tag now names an image it did not name before

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.layers.values() if s in statuses)


ProgressCallback = Callable[[LayerEvent], None]


# ---------------------------------------------------------------------------- names and credentials

def credentials(registry: str, environ=os.environ) -> dict | None:
    """The auth config to send, or None to let docker-py use the Docker config for the host."""
    user, password = environ.get(USER_ENV) or "", environ.get(PASSWORD_ENV) or ""
    if user and password:
        return {"username": user, "password": password, "serveraddress": registry_host(registry)}
    if user or password:
        missing = PASSWORD_ENV if user else USER_ENV
        raise RegistryError(f"{missing} is not set but {USER_ENV if user else PASSWORD_ENV} is",
                            kind="config", hint=f"set both {USER_ENV} and {PASSWORD_ENV}, or neither "
                                                "to use the Docker config (`docker login HOST`)")
    return None


def _secrets(auth: dict | None) -> list[str]:
    if not auth:
        return []
    user, password = auth.get("username", ""), auth.get("password", "")
    pair = f"{user}:{password}".encode()
    return [s for s in (password, base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()) if s]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(//[^/\s:@]+:)[^@\s/]+@", r"\1***@", text)  # user:password@host in a URL


# ---------------------------------------------------------------------------------- error reports

_UNAUTHORIZED = ("unauthorized", "authentication required", "no basic auth credentials", "requested access to the "
                 "resource is denied", "incorrect username or password", "401 unauthorized", "denied:")
_NOT_FOUND = ("manifest unknown", "name unknown", "repository does not exist")
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host",
                "connection timed out", "context deadline exceeded", "server misbehaving", "dial tcp")
_BROKEN = ("unexpected eof", "connection reset", "broken pipe", "short read", "use of closed network connection",
           "http2: server sent goaway", "download failed after attempts")


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(message: str, *, verb: str, remote: str, registry: str, plan: Plan, auth: dict | None,
             status_code: int | None = None, midway: bool = False) -> RegistryError:
    """Turn what the daemon said into a one-line RegistryError with the hint a user needs.
    `midway`: layers had started moving, so a lost registry means the transfer broke off."""
    error = _classify(message, verb=verb, remote=remote, registry=registry, plan=plan, auth=auth,
                      status_code=status_code)
    if midway and error.kind == "unreachable":
        detail = _one_line(_scrub(message, _secrets(auth)))
        return RegistryError(f"the {verb} of {remote} broke off: registry {registry_host(registry)} became "
                             f"unreachable ({detail})", kind="broken", hint=_broken_hint(verb))
    return error


def _broken_hint(verb: str) -> str:
    if verb == "pull":
        return "no tag was moved; run it again once the registry is back"
    return "the registry got no manifest, so nothing is published under that name; run it again once it is back"


def _classify(message: str, *, verb: str, remote: str, registry: str, plan: Plan, auth: dict | None,
              status_code: int | None = None) -> RegistryError:
    detail = _one_line(_scrub(message, _secrets(auth)))
    low = detail.lower()
    host = registry_host(registry)
    stack = plan.resolved.name
    if "repository does not exist" in low or (verb == "pull" and (status_code == 404
                                                                  or any(s in low for s in _NOT_FOUND))):
        said = f" ({detail})" if "login" in low else ""  # Docker Hub cannot tell "missing" from "private"
        return RegistryError(f"{remote} is not in the registry{said}", kind="not_found",
                             hint=f"push it from a machine that built it (`dlenv push {stack} --registry {registry}`) "
                                  f"or build it here with `dlenv build {stack}`")
    if any(s in low for s in _UNAUTHORIZED):
        if auth:
            hint = f"check {USER_ENV} and {PASSWORD_ENV} (they were sent instead of the Docker config)"
        else:
            hint = f"run `docker login {host}` or set {USER_ENV} and {PASSWORD_ENV}"
        return RegistryError(f"registry {host} refused the {verb} of {remote}: unauthorized ({detail})",
                             kind="unauthorized", hint=hint)
    if "server gave http response to https client" in low:
        return RegistryError(f"registry {host} speaks plain HTTP but the engine expects HTTPS ({detail})",
                             kind="tls",
                             hint=f'add "{host}" to "insecure-registries" in /etc/docker/daemon.json '
                                  "(127.0.0.0/8 is insecure by default) or serve it over TLS")
    if "x509" in low or "certificate" in low:
        return RegistryError(f"the engine does not trust the TLS certificate of registry {host} ({detail})",
                             kind="tls",
                             hint=f"put the registry's CA in /etc/docker/certs.d/{host}/ca.crt")
    if any(s in low for s in _BROKEN):
        return RegistryError(f"the {verb} of {remote} broke off: {detail}", kind="broken", hint=_broken_hint(verb))
    if any(s in low for s in _UNREACHABLE):
        return RegistryError(f"registry {host} is unreachable: {detail}", kind="unreachable",
                             hint="check that the registry is running and that --registry (or DLENV_REGISTRY) "
                                  "names the right HOST:PORT")
    return RegistryError(f"{verb} of {remote} failed: {detail}", kind="other")


def _chunk_error(chunk: dict) -> str | None:
    if "error" in chunk or "errorDetail" in chunk:
        detail = chunk.get("errorDetail") or {}
        return chunk.get("error") or detail.get("message") or "the engine reported an error"
    return None


def _event(chunk: dict) -> LayerEvent | None:
    layer, status = chunk.get("id"), chunk.get("status") or ""
    if not layer or not status or status.startswith(("Pulling from ", "Pushing repository")):
        return None
    detail = chunk.get("progressDetail") or {}
    total = detail.get("total")
    return LayerEvent(layer, status, detail.get("current"), total if isinstance(total, int) and total > 0 else None)


def _moving(layers: dict) -> bool:
    """Some layer had started to transfer (or was retrying after it had)."""
    return any(s.startswith(("Pushing", "Downloading", "Extracting", "Retrying", "Pushed", "Pull complete",
                             "Download complete")) for s in layers.values())


def _split(ref: str) -> tuple[str, str]:
    repo, _, tag_ = ref.rpartition(":")
    return repo, tag_


def _follow(start, verb: str, remote: str, registry: str, plan: Plan, auth, layers: dict,
            on_progress: ProgressCallback | None, lost_hint: str):
    """Yield the daemon's JSON chunks of a push or pull, turning every error it reports (inside the
    stream, where docker-py does not raise, or before it) into a RegistryError, and recording and
    reporting per-layer progress."""
    try:
        for chunk in start():
            message = _chunk_error(chunk)
            if message is not None:
                raise _explain(message, verb=verb, remote=remote, registry=registry, plan=plan, auth=auth,
                               midway=_moving(layers))
            event = _event(chunk)
            if event:
                layers[event.layer] = event.status
                if on_progress:
                    on_progress(event)
            yield chunk
    except docker.errors.APIError as exc:
        raise _explain(str(exc.explanation or exc), verb=verb, remote=remote, registry=registry, plan=plan,
                       auth=auth, status_code=exc.status_code) from None
    except requests.exceptions.RequestException:
        raise EngineError(f"lost the connection to the Docker engine during the {verb}", hint=lost_hint) from None


# ---------------------------------------------------------------------------------------- push

def push(client, plan: Plan, registry: str, on_progress: ProgressCallback | None = None) -> TransferResult:
    """Push the promoted image of `plan` as REGISTRY/dlenv/<stack>:<hash16>; return its digest."""
    started = time.monotonic()
    attrs = promoted_image(client, plan)
    if attrs is None:
        raise RegistryError(f"{plan.hash_tag} does not exist here (or its {HASH_LABEL} label does not match)",
                            kind="not_found", hint=f"build it first: `dlenv build {plan.resolved.name}`")
    remote = remote_ref(plan, registry)
    auth = credentials(registry)
    image_id = attrs["Id"]
    remote_before = engine.image_attrs(client, remote)
    engine.tag(client, image_id, remote)
    layers: dict = {}
    digest = None
    try:
        start = lambda: client.api.push(*_split(remote), stream=True, decode=True, auth_config=auth)  # noqa: E731
        for chunk in _follow(start, "push", remote, registry, plan, auth, layers, on_progress,
                             lost_hint="check that dockerd is still running"):
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
    finally:
        _restore_tag(client, remote, remote_before, image_id)
    if not digest:
        raise RegistryError(f"the push of {remote} ended without a digest from the registry", kind="broken",
                            hint="run it again; if it keeps failing, check the registry's log")
    return TransferResult(remote, image_id, digest, time.monotonic() - started, layers)


def _restore_tag(client, ref: str, before: dict | None, current_id: str) -> None:
    """Put `ref` back where it was before we (or a pull) moved it; never mask the original error."""
    try:
        if before is None:
            engine.untag(client, ref)
        elif before["Id"] != current_id:
            engine.tag(client, before["Id"], ref)
    except (EngineError, docker.errors.DockerException, requests.exceptions.RequestException):
        pass


# ---------------------------------------------------------------------------------------- pull

def pull(client, plan: Plan, registry: str, on_progress: ProgressCallback | None = None) -> TransferResult:
    """Pull the image of `plan` from `registry` and promote it (hash tag and latest).

    Takes the stack's build lock, since it moves the same tags a build moves."""
    with stack_lock(plan.resolved.name):
        return _pull(client, plan, registry, on_progress)


def try_pull(client, plan: Plan, registry: str, *, warn: Callable[[str], None] | None = None,
             on_progress: ProgressCallback | None = None) -> bool:
    """Pull-before-build: True when the promoted tags now name the registry's image for this hash.

    The caller (build) already holds the stack lock. The registry is an optimisation: the build from
    the lock is the authority and yields an image with the same content hash. So a registry that lacks
    the hash returns False quietly, and one that cannot be used (unreachable, credentials refused,
    a wrong image under the name, a broken transfer) returns False after `warn` says why; the local
    build then goes ahead. Losing the Docker engine itself still raises EngineError."""
    try:
        _pull(client, plan, registry, on_progress)
        return True
    except RegistryError as exc:
        if exc.kind != "not_found" and warn:
            warn(f"not using the registry: {exc.one_line()}; building locally")
        return False


def _pull(client, plan: Plan, registry: str, on_progress: ProgressCallback | None) -> TransferResult:
    started = time.monotonic()
    remote = remote_ref(plan, registry)
    auth = credentials(registry)
    before = engine.image_attrs(client, plan.hash_tag)
    remote_before = engine.image_attrs(client, remote)
    layers: dict = {}
    digest = confirmation = None
    start = lambda: client.api.pull(*_split(remote), stream=True, decode=True, auth_config=auth)  # noqa: E731
    for chunk in _follow(start, "pull", remote, registry, plan, auth, layers, on_progress,
                         lost_hint="check that dockerd is still running; no tag was moved"):
        status = chunk.get("status") or ""
        if status.startswith("Digest: "):
            digest = status.split(" ", 1)[1].strip()
        elif status.startswith("Status: "):
            confirmation = status
    if not digest or not confirmation:
        raise RegistryError(f"the pull of {remote} ended before the engine confirmed it", kind="broken",
                            hint="no tag was moved; run it again")
    attrs = engine.image_attrs(client, remote)
    # The engine records the manifest digest it just pulled; a stale local image under the same name
    # (an earlier pull, a tag someone moved) does not carry it.
    if attrs is None or not any(d.split("@", 1)[-1] == digest for d in attrs.get("RepoDigests") or []):
        raise RegistryError(f"the engine reported {remote} pulled, but the local image is not the one the "
                            f"registry served ({digest})", kind="broken", hint="no tag was moved; run it again")
    label = engine.image_labels(attrs).get(HASH_LABEL)
    if label != plan.content_hash:
        _restore_tag(client, remote, remote_before, attrs["Id"])
        raise RegistryError(f"the registry holds a different image under {remote}: its {HASH_LABEL} label is "
                            f"{label[:TAG_CHARS] + '...' if label else 'missing'}, this stack's content hash is "
                            f"{plan.content_hash[:TAG_CHARS]}...", kind="mismatch",
                            hint=f"no tag was moved; push the right image again (`dlenv push {plan.resolved.name}`) "
                                 f"or build it here")
    problem = refusal(plan.lock.images if plan.lock else {}, attrs["Id"], f"the image under {remote}")
    if problem:
        _restore_tag(client, remote, remote_before, attrs["Id"])
        raise RegistryError(problem, kind="mismatch",
                            hint="no tag was moved; build it here (`dlenv build --engine buildah` reproduces the lock's image)")
    engine.tag(client, attrs["Id"], plan.hash_tag)
    engine.tag(client, attrs["Id"], plan.latest_tag)
    if remote_before is None:
        # Leave only dlenv's own tags behind, as push does.
        _restore_tag(client, remote, None, attrs["Id"])
    fresh = before is None or before["Id"] != attrs["Id"]
    return TransferResult(remote, attrs["Id"], digest, time.monotonic() - started, layers, fresh)
