"""Garbage collection of what dlenv leaves in the engine: candidate tags, hash tags that are no
longer `latest`, and the build cache (dangling build-stage layers) that descends from a dlenv base;
in dlenv's own buildah storage, the images whose Docker tags are gone or removed; and in the package
store (engine/store.py), the files no lock it knows of names.

`plan_gc`, `plan_buildah_gc` and `plan_store_gc` decide (pure over the listings they are given, or a
walk of the store); `apply_gc` removes (buildah_store.remove_images for buildah, `apply_store_gc` for
the store). Nothing outside the `dlenv/` repositories and the layers built on dlenv's bases is ever
touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
from builder.engine.store import PackageStore
from builder.errors import LockError
from builder.names import BASE_REPO, BUILDAH_LOCAL, CHECK_REPO_PREFIX, REPO_PREFIX
from builder.plan.debs import needed_files, python_files
from builder.plan.lockfile import load as load_lock



@dataclass
class GcPlan:
    untag: list = field(default_factory=list)        # image refs (repo:tag)
    cache: list = field(default_factory=list)        # dangling image ids built on a dlenv base
    keep: list = field(default_factory=list)         # refs kept, for the report
    reclaim_bytes: int = 0


def plan_gc(images: list, keep: int = 1, build_cache: bool = False) -> GcPlan:
    """`images`: docker-py image attrs (Id, RepoTags, Parent, Size). Per dlenv/ repository (the base
    excluded) keep `latest` and the `keep` newest hash tags; drop every -candidate tag."""
    plan = GcPlan()
    by_repo: dict = {}
    for attrs in images:
        for ref in _tags(attrs):
            repo, _, tag = ref.rpartition(":")
            if repo.startswith(REPO_PREFIX) and repo != BASE_REPO:
                by_repo.setdefault(repo, []).append((tag, attrs))
    for repo, tags in sorted(by_repo.items()):
        latest_id = next((a["Id"] for t, a in tags if t == "latest"), None)
        hash_tags = sorted(((t, a) for t, a in tags if t != "latest" and not t.endswith("-candidate")),
                           key=lambda ta: _made_here(ta[1]), reverse=True)
        kept = {a["Id"] for _, a in hash_tags[:keep]} | ({latest_id} if latest_id else set())
        for tag, attrs in sorted(tags, key=lambda ta: ta[0]):
            ref = f"{repo}:{tag}"
            if tag == "latest" or (not tag.endswith("-candidate") and attrs["Id"] in kept):
                plan.keep.append(ref)
            else:
                plan.untag.append(ref)
    if build_cache:
        by_id = {a["Id"]: a for a in images}
        bases = {a["Id"] for a in images if any(r.startswith(BASE_REPO + ":") for r in _tags(a))}
        parents = {a.get("Parent") for a in images}
        for attrs in images:
            # Only untagged leaves: removing one prunes its untagged ancestors; an image that is
            # the parent of another (a layer of a tagged image) is not cache to drop.
            if _tags(attrs) or attrs["Id"] in parents:
                continue
            parent, seen = attrs.get("Parent"), set()
            while parent and parent not in seen and parent not in bases:
                seen.add(parent)
                parent = (by_id.get(parent) or {}).get("Parent")
            if parent in bases:
                plan.cache.append(attrs["Id"])
                plan.reclaim_bytes += int(attrs.get("Size") or 0)
    return plan


def plan_buildah_gc(names: list, kept_refs: list) -> list:
    """The names to remove from dlenv's buildah storage: every dlenv image but the bases and those
    whose tag Docker keeps (`kept_refs`, GcPlan.keep), and what an interrupted `build --check` left.
    buildah names local images `localhost/<name>`."""
    kept = set(kept_refs)
    out = []
    for name in sorted(set(names)):
        ref = name.removeprefix(BUILDAH_LOCAL)
        repo = ref.rpartition(":")[0]
        if ref.startswith(CHECK_REPO_PREFIX) or (repo.startswith(REPO_PREFIX) and repo != BASE_REPO
                                                 and ref not in kept):
            out.append(name)
    return out


def _made_here(attrs: dict) -> str:
    """When the image got its tag in this engine: a reproducible image's Created is its lock's epoch
    (buildah), the same for every build, so the tag time orders them; Created where there is none."""
    tagged = (attrs.get("Metadata") or {}).get("LastTagTime") or ""
    return tagged if tagged and not tagged.startswith("0001-") else attrs.get("Created", "")


def _tags(attrs: dict) -> list:
    return [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"]


def list_images(client) -> list:
    # all=True: intermediate layers of the classic builder are the build cache.
    return [img.attrs for img in client.images.list(all=True)]


def apply_gc(client, plan: GcPlan) -> list:
    """Remove what the plan says; returns what could not be removed (with the engine's reason)."""
    failed = []
    for ref in plan.untag:
        try:
            client.images.remove(ref, noprune=False)
        except docker.errors.APIError as exc:
            failed.append(f"{ref}: {exc.explanation}")
    for image_id in plan.cache:
        try:
            client.images.remove(image_id, noprune=False)
        except docker.errors.ImageNotFound:
            pass  # removed with its child already
        except docker.errors.APIError as exc:
            failed.append(f"{image_id[:19]}: {exc.explanation}")
    return failed


# --- the package store ------------------------------------------------------------------------------

PARTIAL_AGE_S = 3600    # a partial download (.incoming-*) younger than this may be a running build's


@dataclass
class StoreGcPlan:
    remove: list = field(default_factory=list)      # store paths no lock names
    remove_bytes: int = 0
    kept_files: int = 0


def store_keep(required: list, optional: list) -> tuple[set, list, list]:
    """(sha256 of every file the locks name: .debs, source tarballs, Python files; the locks read;
    "path: why" of the optional files that are no lock). A lock in `required` (the catalog's, this
    folder's project) that cannot be read stops everything: its files would otherwise go. `optional`
    are the state folder's lock files, where the build mutexes (empty files) share the folder."""
    keep, read, skipped = set(), [], []
    for path, needed in [(p, True) for p in required] + [(p, False) for p in optional]:
        path = Path(path)
        if not needed and (not path.is_file() or path.stat().st_size == 0):
            continue
        try:
            lock = load_lock(path)
        except LockError as exc:
            if needed:
                raise LockError(f"cannot tell which stored files {path} pins: {exc.message}",
                                hint="fix or relock it before trimming the package store") from None
            skipped.append(f"{path}: {exc.message}")
            continue
        files, _unknown = needed_files(lock)
        keep.update(f.sha256 for f in files + python_files(lock))
        read.append(path)
    return keep, read, skipped


def plan_store_gc(store: PackageStore, keep: set, now: float | None = None) -> StoreGcPlan:
    """The store's files no lock names (`keep`: sha256), and partial downloads an hour old: a younger
    one may be a running build's file on its way in. Nothing is removed here."""
    now = time.time() if now is None else now
    plan = StoreGcPlan()
    for path in sorted((store.root / "sha256").glob("*/*")):
        try:
            info = path.stat()
        except OSError:
            continue
        if not path.is_file():
            continue
        if path.name in keep:
            plan.kept_files += 1
        elif not path.name.startswith(".") or now - info.st_mtime > PARTIAL_AGE_S:
            plan.remove.append(path)
            plan.remove_bytes += info.st_size
    return plan


def apply_store_gc(plan: StoreGcPlan) -> tuple[int, int]:
    """Remove what the plan says: (files, bytes) removed."""
    count = total = 0
    for path in plan.remove:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        count += 1
        total += size
    return count, total
