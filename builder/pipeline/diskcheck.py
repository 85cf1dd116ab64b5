"""A full disk, caught before the build and named when a build still runs out (issue #24).

`check` compares the free space of every storage a build writes to (the engine's, dlenv's buildah
storage, the package store, the state folder; those on one filesystem add up) with what the lock says
the build needs (builder.plan.disk), and refuses in one line with the figure and the `dlenv gc` that
would free enough. `out_of_space` turns an ENOSPC failure of the build into one line naming the storage
and its free space now, removes the candidate tag and keeps the log.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from builder import paths
from builder.engine import buildah, buildah_store, disk
from builder.engine import dockerapi as engine
from builder.engine.store import PackageStore
from builder.errors import BuildError, DiskFullError, EngineError
from builder.plan import disk as plan_disk
from builder.plan.plan import Plan

LOG_READ = 1 << 20      # the end of a failed build's log read for its ENOSPC line


def _stored_size(store: PackageStore):
    def size(file) -> int | None:
        try:
            got = store.path(file.sha256).stat().st_size
        except OSError:
            return None
        return got if not file.size or got == file.size else None
    return size


def _needs(p: Plan, client, engine_name: str, d: plan_disk.Downloads, buildah_cli: str | None,
           environ=os.environ) -> list:
    docker_dir = disk.docker_root(client, environ)
    if engine_name == "buildah":
        build = (plan_disk.STORAGE_BUILDAH, buildah.storage_root())
        if client is None:     # without Docker the image goes to the host's containers-storage
            image = (plan_disk.STORAGE_HOST, buildah_store.host_graph_root(buildah_cli)) if buildah_cli else None
        else:
            image = (plan_disk.STORAGE_DOCKER, docker_dir) if docker_dir else None
        archive = client is not None and docker_dir is None
    else:
        build, image, archive = ((plan_disk.STORAGE_DOCKER, docker_dir) if docker_dir else None), None, False
    return plan_disk.needs(d, build=build, image=image, store_root=str(PackageStore().root),
                           state_root=str(paths.state_dir()), image_archive=archive)


def check(p: Plan, client, engine_name: str, *, buildah_cli: str | None = None, cwd: Path | None = None,
          environ=os.environ) -> plan_disk.Estimate:
    """Refuse (DiskError, one line) when a filesystem the build writes to has less free space than
    the build needs; the estimate otherwise. Its `unknown` Python files (not in the store yet, so of
    unknown size) were not counted: check again once they are stored."""
    if p.lock is None:
        return plan_disk.Estimate()
    d = plan_disk.downloads(p.lock, _stored_size(PackageStore()))
    return disk.check_needs(p.resolved.name, client, _needs(p, client, engine_name, d, buildah_cli, environ),
                            unknown=d.unknown, cwd=cwd, environ=environ)


def _failure_text(exc: BaseException, log_path: Path, since: float) -> str:
    """The error, its log tail and the end of the build's log (when this build wrote it)."""
    parts = [getattr(exc, "message", None) or str(exc)]
    parts += list(getattr(exc, "log_tail", None) or [])
    try:
        if os.stat(log_path).st_mtime < since:
            return "\n".join(parts)
        with open(log_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_READ))
            parts.append(handle.read().decode("utf-8", "replace"))
    except OSError:
        pass
    return "\n".join(parts)


@contextmanager
def out_of_space(p: Plan, client, engine_name: str, log_path: Path, *, buildah_cli: str | None = None,
                 environ=os.environ):
    """Around the build of the candidate: a failure that says ENOSPC (in its error, or its log) becomes
    DiskFullError, one line naming the storage that ran out and its free space now, with the log's path;
    the candidate tag, if the engine got that far, is removed. Any other failure passes unchanged."""
    started = time.time() - 1
    try:
        yield
    except (BuildError, EngineError, OSError) as exc:
        text = _failure_text(exc, log_path, started)
        if not plan_disk.is_enospc(text):
            raise
        if client is not None:
            engine.untag(client, p.candidate_tag)
        d = plan_disk.downloads(p.lock, lambda f: None) if p.lock else plan_disk.Downloads(0, 0, 0)
        need = plan_disk.full_storage(text, _needs(p, client, engine_name, d, buildah_cli, environ))
        free = disk.filesystem(need.path)[1] if need else 0
        raise DiskFullError(plan_disk.enospc_message(p.resolved.name, need, free),
                            log_path=str(log_path),
                            hint="nothing was tagged; free space there and build again: `dlenv gc --dry-run` "
                                 "shows what dlenv can remove") from None
