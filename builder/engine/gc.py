"""Garbage collection of what dlenv leaves in the engine: candidate tags, hash tags that are no
longer `latest`, and the build cache (dangling build-stage layers) that descends from a dlenv base;
and in dlenv's own buildah storage, the images whose Docker tags are gone or removed.

`plan_gc` and `plan_buildah_gc` decide (pure over the listings they are given); `apply_gc` removes
(buildah_store.remove_images for buildah). Nothing outside the `dlenv/` repositories and the layers
built on dlenv's bases is ever touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import docker.errors
from builder.names import BASE_REPO, BUILDAH_LOCAL, CHECK_REPO_PREFIX, REPO_PREFIX



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
