"""`dlenv gc` decides from image listings: candidate tags and old hash tags go, latest and the
newest hash tags stay, other repositories are never touched, build cache only below a dlenv base."""

import docker.errors

from builder.engine.gc import GcPlan, apply_gc, plan_buildah_gc, plan_gc


def img(id_, tags=(), parent="", created="2026-01-01T00:00:00Z", size=100):
    return {"Id": id_, "RepoTags": list(tags), "Parent": parent, "Created": created, "Size": size}


IMAGES = [
    img("base", ["dlenv/base:bookworm-minbase-abc"]),
    img("old", ["dlenv/chainermn:1111111111111111"], "base", "2026-01-01T00:00:00Z"),
    img("mid", ["dlenv/chainermn:2222222222222222"], "base", "2026-02-01T00:00:00Z"),
    img("new", ["dlenv/chainermn:3333333333333333", "dlenv/chainermn:latest"], "base", "2026-03-01T00:00:00Z"),
    img("cand", ["dlenv/chainermn:4444444444444444-candidate"], "base", "2026-04-01T00:00:00Z"),
    img("other", ["someone/else:latest", "dlenv-like/name:1"]),
    # build cache: a leaf chain on the base, a leaf on another image, a layer that is a parent
    img("layer1", [], "base"), img("leaf1", ["<none>:<none>"], "layer1", size=5000),
    img("foreign-leaf", [], "other"),
    img("inner", [], "base"), img("tagged-child", ["dlenv/python:latest"], "inner"),
]


def test_tags_kept_and_removed():
    plan = plan_gc(IMAGES, keep=1)
    assert sorted(plan.untag) == ["dlenv/chainermn:1111111111111111", "dlenv/chainermn:2222222222222222",
                                  "dlenv/chainermn:4444444444444444-candidate"]
    assert "dlenv/chainermn:3333333333333333" in plan.keep and "dlenv/chainermn:latest" in plan.keep
    assert not any(ref.startswith(("someone/", "dlenv-like/", "dlenv/base")) for ref in plan.untag)
    assert plan.cache == []


def test_keep_more_hash_tags():
    plan = plan_gc(IMAGES, keep=2)
    assert sorted(plan.untag) == ["dlenv/chainermn:1111111111111111", "dlenv/chainermn:4444444444444444-candidate"]


def test_build_cache_only_untagged_leaves_below_a_dlenv_base():
    plan = plan_gc(IMAGES, keep=1, build_cache=True)
    assert plan.cache == ["leaf1"]
    assert plan.reclaim_bytes == 5000


def test_buildah_storage_keeps_bases_and_what_docker_keeps():
    names = ["localhost/dlenv/base:bookworm-minbase-1", "localhost/dlenv/chainer:new", "localhost/dlenv/chainer:old",
             "localhost/dlenv-check/chainer:new", "localhost/other/thing:1", "localhost/dlenv/gone:abc"]
    kept = ["dlenv/chainer:latest", "dlenv/chainer:new"]
    assert plan_buildah_gc(names, kept) == ["localhost/dlenv-check/chainer:new", "localhost/dlenv/chainer:old",
                                            "localhost/dlenv/gone:abc"]
    assert plan_buildah_gc([], kept) == []


def test_hash_tags_ordered_by_when_they_were_tagged_here():
    """buildah images are all Created at the lock's epoch: the tag time says which is newer."""
    epoch = "2025-01-01T00:00:00Z"
    older = img("a", ["dlenv/chainer:aaaaaaaaaaaaaaaa"], created=epoch)
    older["Metadata"] = {"LastTagTime": "2026-11-01T10:00:00.5Z"}
    newer = img("b", ["dlenv/chainer:bbbbbbbbbbbbbbbb"], created=epoch)
    newer["Metadata"] = {"LastTagTime": "2026-11-27T10:00:00.5Z"}
    sdk = img("c", ["dlenv/chainer:cccccccccccccccc"], created="2026-11-10T00:00:00Z")
    sdk["Metadata"] = {"LastTagTime": "0001-01-01T00:00:00Z"}
    plan = plan_gc([older, sdk, newer], keep=1)
    assert sorted(plan.untag) == ["dlenv/chainer:aaaaaaaaaaaaaaaa", "dlenv/chainer:cccccccccccccccc"]


class _Images:
    """docker-py's client.images, where a stopped container holds one cache image and one tag's image."""
    def __init__(self, held):
        self.held, self.removed = held, []

    def remove(self, ref, noprune=False):
        if ref in self.held:
            raise docker.errors.APIError("conflict", explanation=f"image is being used by stopped container of {ref}")
        self.removed.append(ref)


class _Client:
    def __init__(self, held):
        self.images = _Images(held)


def test_what_could_not_be_removed_is_counted_apart_for_tags_and_cache():
    client = _Client({"dlenv/python:old", "sha256:held-cache"})
    plan = GcPlan(untag=["dlenv/python:old", "dlenv/python:older"], cache=["sha256:held-cache", "sha256:free-cache"])
    failed_tags, failed_cache = apply_gc(client, plan)
    assert [line.split(": ", 1)[0] for line in failed_tags] == ["dlenv/python:old"]
    assert [line.split(": ", 1)[0] for line in failed_cache] == ["sha256:held-cache"]
    assert client.images.removed == ["dlenv/python:older", "sha256:free-cache"]
