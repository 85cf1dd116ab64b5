"""The disks a build writes to (issue #24): their free space, where Docker keeps its data when that is on
this machine, and what `dlenv gc` would free on each (its dry-run figures, measured without removing
anything). The estimate and the messages are builder.plan.disk's; builder.pipeline.diskcheck uses both
for builds, and `check_needs` refuses for both builds and an image handed to an HPC runtime.
"""

from __future__ import annotations

import os
from pathlib import Path

import docker.errors
import requests.exceptions

from builder.engine import buildah, buildah_store
from builder.engine.gc import (buildah_freed_bytes, docker_freed_bytes, list_images, plan_buildah_gc, plan_gc,
                               plan_store_gc, store_keep, store_locks)
from builder.engine.store import PackageStore
from builder.errors import DiskError, DlenvError
from builder.plan import disk as plan_disk

_LOCAL_DOCKER = ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError, ValueError,
                  KeyError, TypeError)


def existing(path) -> Path:
    """`path`, or its nearest folder that exists (a storage not made yet goes where its parent is)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def filesystem(path) -> tuple[int, int]:
    """(device id, bytes free for an unprivileged writer) of the filesystem that holds `path`."""
    where = existing(path)
    info = os.statvfs(where)
    return os.stat(where).st_dev, info.f_bavail * info.f_frsize


def docker_root(client, environ=os.environ) -> str | None:
    """Docker's data root (`DockerRootDir`) when the engine runs on this machine (a local socket, a
    folder that exists here); None otherwise, and then nothing of it is checked."""
    host = environ.get("DOCKER_HOST", "")
    if client is None or not (host in _LOCAL_DOCKER or host.startswith("unix://")):
        return None
    try:
        root = client.info().get("DockerRootDir")
    except _ENGINE_ERRORS:
        return None
    return root if root and os.path.isdir(root) else None


def docker_reclaim(client) -> tuple[int, int, list]:
    """(bytes `dlenv gc` frees in Docker's storage, the same with --build-cache, the refs it keeps)."""
    images = list_images(client)
    try:
        unique = {i["Id"]: int(i.get("Size") or 0) - max(0, int(i.get("SharedSize") or 0))
                  for i in client.df().get("Images") or []}
    except _ENGINE_ERRORS:
        unique = {}
    tags = plan_gc(images, keep=1)
    cache = plan_gc(images, keep=1, build_cache=True)
    return docker_freed_bytes(images, tags, unique), docker_freed_bytes(images, cache, unique), tags.keep


def buildah_reclaim(kept_refs: list) -> tuple[int, int]:
    """(bytes `dlenv gc` frees in dlenv's buildah storage, the same with --build-cache), given the
    Docker tags it keeps."""
    layers, images = buildah_store.storage_records()
    names = [n for image in images for n in image.get("names") or []]
    remove = plan_buildah_gc(names, kept_refs)
    return buildah_freed_bytes(layers, images, remove, False), buildah_freed_bytes(layers, images, remove, True)


def store_reclaim(cwd: Path) -> int:
    """Bytes `dlenv gc --store` frees in the package store, run in `cwd`."""
    keep, _read, _skipped = store_keep(*store_locks(cwd))
    return plan_store_gc(PackageStore(), keep).remove_bytes


def gc_freed(dev: int, client, *, docker_root_dir: str | None, buildah_root: Path, store_root: Path,
             cwd: Path) -> dict:
    """{`dlenv gc` command: bytes it would free on the filesystem `dev`} for the commands of
    builder.plan.disk.GC_COMMANDS, as far as they can be measured (best effort: a figure that cannot be
    had is left out, never guessed). Removing images needs the Docker engine (`client`)."""
    tags = cache = store = 0
    on_docker = bool(docker_root_dir) and filesystem(docker_root_dir)[0] == dev
    on_buildah = buildah_root.is_dir() and filesystem(buildah_root)[0] == dev
    if client is not None and (on_docker or on_buildah):
        try:
            d_tags, d_cache, kept = docker_reclaim(client)
            if on_docker:
                tags, cache = tags + d_tags, cache + d_cache
            if on_buildah:
                b_tags, b_cache = buildah_reclaim(kept)
                tags, cache = tags + b_tags, cache + b_cache
        except _ENGINE_ERRORS:
            pass
    if filesystem(store_root)[0] == dev:
        try:
            store = store_reclaim(cwd)
        except (DlenvError, OSError):
            pass
    out = {}
    if client is not None:
        out.update({"dlenv gc": tags, "dlenv gc --build-cache": cache})
    out.update({"dlenv gc --store": tags + store, "dlenv gc --build-cache --store": cache + store})
    return out


def check_needs(stack: str, client, need_list: list, *, unknown: int = 0, doing: str = "the build",
                override: str = "or build with --skip-disk-check", cwd: Path | None = None,
                environ=os.environ) -> plan_disk.Estimate:
    """Refuse (DiskError, one line) when a filesystem in `need_list` (builder.plan.disk's needs or
    runtime_needs) has less free space than `doing` needs there, with the `dlenv gc` that frees enough,
    then `override`, as the hint; the estimate otherwise (`unknown`: files of unknown size not counted)."""
    estimate = plan_disk.estimate(need_list, filesystem, unknown=unknown)
    short = estimate.shortages
    if short:
        fs = short[0]
        freed = gc_freed(fs.dev, client, docker_root_dir=docker_root(client, environ),
                         buildah_root=buildah.storage_root(), store_root=PackageStore().root, cwd=cwd or Path.cwd())
        raise DiskError(plan_disk.refusal(stack, fs, doing), hint=plan_disk.gc_advice(fs.short, freed, override))
    return estimate
