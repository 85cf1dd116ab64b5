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
from builder import paths
from builder.engine.store import PackageStore
from builder.errors import LockError
from builder.names import BASE_REPO, BUILDAH_LOCAL, CHECK_REPO_PREFIX, REPO_PREFIX
from builder.plan.debs import needed_files, python_files
from builder.plan.lockfile import load as load_lock
from builder.plan.lockfile import lock_path
from builder.spec.stack import PROJECT_FILE



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


def docker_freed_bytes(images: list, plan: GcPlan, unique: dict | None = None) -> int:
    """About the bytes Docker frees when `plan` is applied (pure; the dry-run figure of a disk refusal).

    `images`: docker-py attrs (Id, RepoTags, Parent, Size: the whole image). An image goes when its last
    tag goes or it is a cache leaf, and no image is built on it; with it goes each untagged parent left
    with no child (Docker prunes them). A layer of the classic builder is an image's Size less its
    parent's; an image without a parent (imported, loaded) counts only the bytes no other image shares,
    `unique` (id -> Size less SharedSize, from `client.df()`), or nothing when unknown."""
    by_id = {a["Id"]: a for a in images}
    children: dict = {}
    for attrs in images:
        if attrs.get("Parent") in by_id:
            children.setdefault(attrs["Parent"], set()).add(attrs["Id"])
    untag = set(plan.untag)
    left = {a["Id"]: [t for t in _tags(a) if t not in untag] for a in images}
    start = [a["Id"] for a in images if _tags(a) and not left[a["Id"]]] + list(plan.cache)
    gone: set = set()
    for image_id in start:
        while image_id in by_id and image_id not in gone and not left[image_id] \
                and not (children.get(image_id, set()) - gone):
            gone.add(image_id)
            image_id = by_id[image_id].get("Parent")
    freed = 0
    for image_id in gone:
        attrs, parent = by_id[image_id], by_id.get(by_id[image_id].get("Parent"))
        if parent is not None:
            freed += max(0, int(attrs.get("Size") or 0) - int(parent.get("Size") or 0))
        else:
            freed += max(0, int((unique or {}).get(image_id, 0)))
    return freed


def buildah_freed_bytes(layers: list, images: list, remove: list, prune: bool) -> int:
    """About the bytes dlenv's buildah storage frees when the images named `remove` go (and, `prune`,
    every image without a name: the layer cache), from containers-storage's own records (pure):
    `layers` (id, parent, diff-size) and `images` (names, layer: its top layer). A layer goes when no
    image that stays is built on it."""
    by_id = {layer["id"]: layer for layer in layers}

    def chain(top):
        seen = set()
        while top in by_id and top not in seen:
            seen.add(top)
            top = by_id[top].get("parent")
        return seen

    removing = set(remove)
    gone, kept = set(), set()
    for image in images:
        names = image.get("names") or []
        goes = (names and all(n in removing for n in names)) or (prune and not names)
        (gone if goes else kept).update(chain(image.get("layer")))
    return sum(int(by_id[layer].get("diff-size") or 0) for layer in gone - kept)


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


def apply_gc(client, plan: GcPlan) -> tuple[list, list]:
    """Remove what the plan says; returns what could not be removed (with the engine's reason): the
    tags, then the cache chains (an image a stopped container still uses, say)."""
    failed_tags, failed_cache = [], []
    for ref in plan.untag:
        try:
            client.images.remove(ref, noprune=False)
        except docker.errors.APIError as exc:
            failed_tags.append(f"{ref}: {exc.explanation}")
    for image_id in plan.cache:
        try:
            client.images.remove(image_id, noprune=False)
        except docker.errors.ImageNotFound:
            pass  # removed with its child already
        except docker.errors.APIError as exc:
            failed_cache.append(f"{image_id[:19]}: {exc.explanation}")
    return failed_tags, failed_cache


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


def store_locks(cwd: Path) -> tuple[list, list]:
    """(required, optional) locks whose files `dlenv gc --store` keeps: the catalog's and the project's
    in `cwd` (required), the refreshed locks in the state folder (optional)."""
    required = sorted(paths.stacks_dir().glob("*.lock"))
    project = lock_path(Path(cwd) / PROJECT_FILE)
    if project.is_file():
        required.append(project)
    return required, sorted(paths.refreshed_locks_dir().glob("*.lock"))


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
