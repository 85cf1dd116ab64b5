"""A full disk, engine-free (issue #24): the estimate a lock gives, the filesystems it lands on, the
one-line refusal with the `dlenv gc` that frees enough, what `dlenv gc` would free (Docker's image
tree, buildah's layer records), an ENOSPC failure turned into one line with the candidate tag removed
and the log kept, and any other failure left alone. The real fault test is
tests/integration/test_disk_full.py."""

from __future__ import annotations

import os

import pytest

from builder.engine import disk as engine_disk
from builder.engine.gc import GcPlan, buildah_freed_bytes, docker_freed_bytes, plan_gc
from builder.errors import BuildError, DiskError, DiskFullError, EngineError
from builder.pipeline import diskcheck
from builder.plan import disk as D
from builder.plan.lockfile import load as load_lock
from builder.plan.plan import plan
from dlenv_unit import ROOT

GB = 1000 ** 3
MB = 1000 ** 2


def python_lock():
    return load_lock(ROOT / "stacks" / "python.lock")


# --- the estimate ---------------------------------------------------------------------------------

def test_downloads_are_the_locks_sizes():
    lock = python_lock()
    d = D.downloads(lock, lambda f: f.size)            # everything stored
    assert d.total == sum(e["size"] for e in lock.debs.values()) == 128_976_304
    assert d.base == 39_309_860 and d.missing == 0 and d.unknown == 0
    cold = D.downloads(lock, lambda f: None)            # an empty store: all of it must come in
    assert cold.missing == cold.total == d.total


def test_python_files_count_once_stored_and_are_unknown_before():
    lock = load_lock(ROOT / "stacks" / "chainer.lock")
    cold = D.downloads(lock, lambda f: None)
    assert cold.unknown == 9                            # chainer's nine Python files: no size in the lock
    warm = D.downloads(lock, lambda f: 1 * MB if f.kind == "python" else f.size)
    assert warm.unknown == 0 and warm.total == cold.total + 9 * MB and warm.missing == 0


def test_needs_by_engine():
    d = D.Downloads(total=1 * GB, base=40 * MB, missing=100 * MB)
    sdk = D.needs(d, build=(D.STORAGE_DOCKER, "/var/lib/docker"), image=None, store_root="/s", state_root="/st")
    assert [(n.what, n.path, n.bytes) for n in sdk] == [
        (D.STORAGE_DOCKER, "/var/lib/docker", D.BUILD_FACTOR * GB + D.BUILD_HEADROOM),
        (D.STORAGE_STORE, "/s", 100 * MB), (D.STORAGE_STATE, "/st", D.ROOTFS_FACTOR * 40 * MB)]
    bh = D.needs(d, build=(D.STORAGE_BUILDAH, "/b"), image=(D.STORAGE_DOCKER, "/var/lib/docker"),
                 store_root="/s", state_root="/st")
    assert [n.what for n in bh] == [D.STORAGE_BUILDAH, D.STORAGE_DOCKER, D.STORAGE_STORE, D.STORAGE_STATE]
    assert bh[1].bytes == D.IMAGE_FACTOR * GB
    remote = D.needs(d, build=(D.STORAGE_BUILDAH, "/b"), image=None, store_root="/s", state_root="/st",
                     image_archive=True)           # Docker elsewhere: its storage is not checked, the archive is
    assert remote[-1].bytes == D.ROOTFS_FACTOR * 40 * MB + D.IMAGE_FACTOR * GB
    nothing_local = D.needs(D.Downloads(1 * GB, 0, 0), build=None, image=None, store_root="/s", state_root="/st")
    assert nothing_local == []                      # a remote engine, a full store, the base built: nothing to check


def test_the_factor_covers_the_measured_builds():
    """The table of builder/plan/disk.py: each stack's peak on disk is below the estimate."""
    for downloads, peak in ((129 * MB, 1307 * MB), (154 * MB, 1397 * MB), (2283 * MB, 9300 * MB)):
        assert D.BUILD_FACTOR * downloads + D.BUILD_HEADROOM >= peak


def test_storages_on_one_filesystem_add_up():
    needs = [D.Need(D.STORAGE_BUILDAH, "/state/buildah/storage", 900 * MB), D.Need(D.STORAGE_DOCKER, "/var/lib/docker", 500 * MB),
             D.Need(D.STORAGE_STATE, "/state", 300 * MB)]
    where = {"/state/buildah/storage": (1, 300 * MB), "/var/lib/docker": (2, 50 * GB), "/state": (1, 300 * MB)}
    est = D.estimate(needs, where.__getitem__)
    assert len(est.filesystems) == 2
    (short,) = est.shortages
    assert short.dev == 1 and short.need == 1200 * MB and short.short == 900 * MB
    assert short.path == "/state/buildah/storage"
    assert D.estimate(needs, lambda path: (1, 2 * GB)).shortages == []


# --- what is said -----------------------------------------------------------------------------------

def test_refusal_is_one_line_with_the_figures():
    fs = D.Filesystem((D.Need(D.STORAGE_DOCKER, "/var/lib/docker", 14 * GB),), 3_200_000_000)
    assert D.refusal("chainermn", fs) == ("not enough disk for chainermn: /var/lib/docker has 3.2 GB free, the build "
                                          "needs about 14 GB there for Docker's storage")
    two = D.Filesystem((D.Need(D.STORAGE_BUILDAH, "/b", 1290 * MB), D.Need(D.STORAGE_STATE, "/st", 354 * MB)), 280 * MB)
    assert D.refusal("python", two).endswith("needs about 1.6 GB there for dlenv's buildah storage 1.3 GB and the "
                                             "state folder 354 MB")


def test_gc_advice_names_the_smallest_command_that_frees_enough():
    freed = {"dlenv gc": 1 * GB, "dlenv gc --build-cache": 12 * GB, "dlenv gc --store": 1 * GB,
             "dlenv gc --build-cache --store": 13 * GB}
    assert D.gc_advice(500 * MB, freed).startswith("`dlenv gc` would free about 1.0 GB there")
    assert D.gc_advice(9 * GB, freed) == ("`dlenv gc --build-cache` would free about 12 GB there, "
                                          "or build with --skip-disk-check")
    assert D.gc_advice(20 * GB, freed) == ("`dlenv gc --build-cache --store` would free only about 13 GB there: "
                                           "free 20 GB more, or build with --skip-disk-check")
    assert D.gc_advice(1 * GB, {"dlenv gc --store": 0}) == ("`dlenv gc` would free nothing there: free 1.0 GB "
                                                             "there, or build with --skip-disk-check")
    assert D.gc_advice(1 * GB, {}).startswith("free 1.0 GB there (`dlenv gc --dry-run` shows")


@pytest.mark.parametrize("line", [
    "Error: committing container for step {...}: copying layers: write /x/overlay/l: no space left on device",
    "dpkg: error processing archive /var/cache/apt/archives/gcc-12_amd64.deb (--unpack): cannot copy extracted "
    "data for './usr/bin/gcc' to '/usr/bin/gcc.dpkg-new': failed to write (No space left on device)",
    "E: Write error - write (28: No space left on device)",
    "OSError: [Errno 28] No space left on device: '/opt/venv/lib'",
])
def test_enospc_is_recognised(line):
    assert D.is_enospc(line)


def test_other_failures_are_not_enospc():
    assert not D.is_enospc("E: Version '1.0' for 'foo' was not found")
    assert not D.is_enospc("")


def test_the_storage_that_ran_out():
    needs = [D.Need(D.STORAGE_BUILDAH, "/st/buildah/storage", 1), D.Need(D.STORAGE_STORE, "/store", 1),
             D.Need(D.STORAGE_STATE, "/st", 1)]
    assert D.full_storage("write /st/buildah/storage/overlay/x: no space left on device", needs) == needs[0]
    assert D.full_storage("write /st/logs/x.log: no space left on device", needs) == needs[2]
    assert D.full_storage("failed to write (No space left on device)", needs) == needs[0]   # a RUN step's
    assert D.full_storage("no space left on device", needs[1:]) is None    # the engine's storage is elsewhere
    assert D.enospc_message("python", needs[0], 12 * MB) == ("the build of python ran out of disk space: "
                                                             "/st/buildah/storage (dlenv's buildah storage) has "
                                                             "12 MB free now")
    assert "not on this machine" in D.enospc_message("python", None)


# --- what `dlenv gc` would free ----------------------------------------------------------------------

def img(id_, tags=(), parent="", size=100, created="2026-01-01T00:00:00Z"):
    return {"Id": id_, "RepoTags": list(tags), "Parent": parent, "Size": size, "Created": created}


def test_docker_freed_bytes_follows_the_image_tree():
    images = [
        img("base", ["dlenv/base:x"], size=100),
        img("a1", [], "base", 300), img("a2", [], "a1", 1000),                         # a cache chain: 900 above base
        img("b1", [], "base", 400), img("b2", ["dlenv/python:latest"], "b1", 450),    # under a kept tag
        img("old", ["dlenv/python:1111111111111111"], "b1", 700, "2025-01-01T00:00:00Z"),  # goes: 300 of its own
        img("cand", ["dlenv/python:2222222222222222-candidate"], "", 800),            # loaded: only its own bytes
    ]
    tags = plan_gc(images, keep=0)
    assert sorted(tags.untag) == ["dlenv/python:1111111111111111", "dlenv/python:2222222222222222-candidate"]
    assert docker_freed_bytes(images, tags, {"cand": 250}) == 300 + 250
    assert docker_freed_bytes(images, tags) == 300                   # unknown sharing counts nothing
    cache = plan_gc(images, keep=0, build_cache=True)
    assert cache.cache == ["a2"]
    assert docker_freed_bytes(images, cache, {"cand": 250}) == 300 + 250 + 900   # a2 and its parent a1 go
    assert docker_freed_bytes(images, GcPlan()) == 0


def test_buildah_freed_bytes_counts_layers_no_kept_image_uses():
    layers = [{"id": "L0", "diff-size": 170}, {"id": "L1", "parent": "L0", "diff-size": 500},
              {"id": "L2", "parent": "L1", "diff-size": 70}, {"id": "L3", "parent": "L1", "diff-size": 90},
              {"id": "L4", "parent": "L0", "diff-size": 30}]
    images = [{"names": ["localhost/dlenv/base:x"], "layer": "L0"},
              {"names": ["localhost/dlenv/python:new"], "layer": "L2"},
              {"names": ["localhost/dlenv/python:old"], "layer": "L3"},
              {"layer": "L4"}]                                        # unnamed: the layer cache
    assert buildah_freed_bytes(layers, images, ["localhost/dlenv/python:old"], prune=False) == 90
    assert buildah_freed_bytes(layers, images, ["localhost/dlenv/python:old"], prune=True) == 90 + 30
    assert buildah_freed_bytes(layers, images, [], prune=False) == 0


# --- the pipeline's check and the ENOSPC line --------------------------------------------------------

@pytest.fixture
def small_disk(monkeypatch, tmp_path):
    """Every storage on one 300 MB filesystem; Docker's data root on it; nothing for gc to free."""
    monkeypatch.setenv("DLENV_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DLENV_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setattr(engine_disk, "filesystem", lambda path: (7, 300 * MB))
    monkeypatch.setattr(engine_disk, "docker_root", lambda client, environ=None: "/var/lib/docker")
    monkeypatch.setattr(engine_disk, "gc_freed", lambda dev, client, **kw: {"dlenv gc --build-cache": 5 * GB})
    return tmp_path


def test_check_refuses_in_one_line(small_disk):
    with pytest.raises(DiskError) as info:
        diskcheck.check(plan("python"), object(), "buildah")
    line = info.value.one_line()
    assert "\n" not in line
    assert line.startswith(f"not enough disk for python: {small_disk / 'state' / 'buildah' / 'storage'} has 300 MB free, "
                           "the build needs about ")
    assert line.endswith(" (`dlenv gc --build-cache` would free about 5.0 GB there, or build with --skip-disk-check)")


def test_check_passes_with_room(small_disk, monkeypatch):
    monkeypatch.setattr(engine_disk, "filesystem", lambda path: (7, 50 * GB))
    est = diskcheck.check(plan("python"), object(), "sdk")
    assert est.shortages == [] and est.unknown == 0


class FakeClient:
    def __init__(self):
        self.removed = []
        self.api = self

    def remove_image(self, ref, noprune=False):
        self.removed.append(ref)


def test_enospc_becomes_one_line_without_candidate_tag(small_disk):
    p = plan("python")
    log = small_disk / "build.log"
    log.write_text("STEP 3/9: RUN apt-get install\nE: Write error - write (28: No space left on device)\n"
                   + "Errors were encountered while processing:\n" + " pkg\n" * 60)
    client = FakeClient()
    with pytest.raises(DiskFullError) as info:
        with diskcheck.out_of_space(p, client, "buildah", log):
            raise BuildError("build failed at step 3/9: exit status 100", log_tail=[" pkg"] * 30, log_path=str(log))
    assert client.removed == [p.candidate_tag]
    assert info.value.log_path == str(log) and info.value.log_tail == []
    line = info.value.one_line()
    assert line.startswith(f"the build of python ran out of disk space: {small_disk / 'state' / 'buildah' / 'storage'} "
                           "(dlenv's buildah storage) has 300 MB free now")


def test_enospc_of_a_push_names_its_storage(small_disk):
    with pytest.raises(DiskFullError) as info:
        with diskcheck.out_of_space(plan("python"), FakeClient(), "buildah", small_disk / "none.log"):
            raise EngineError("buildah push failed: writing blob: write /var/lib/docker/tmp/x: no space left on device")
    assert "/var/lib/docker (Docker's storage) has 300 MB free now" in info.value.message


def test_other_failures_pass_unchanged(small_disk):
    client = FakeClient()
    err = BuildError("build failed at step 2/9: E: Version '1' for 'x' was not found")
    with pytest.raises(BuildError) as info:
        with diskcheck.out_of_space(plan("python"), client, "sdk", small_disk / "none.log"):
            raise err
    assert info.value is err and client.removed == []


def test_an_old_log_is_not_read(small_disk):
    log = small_disk / "old.log"
    log.write_text("No space left on device\n")
    os.utime(log, (1, 1))                      # a log of an earlier build: not this failure's
    with pytest.raises(EngineError):
        with diskcheck.out_of_space(plan("python"), FakeClient(), "sdk", log):
            raise EngineError("buildah pull failed: manifest unknown")


def test_build_has_the_override_flag(cli):
    result = cli("build", "--help")
    assert result.exit_code == 0 and "--skip-disk-check" in result.output


# --- an image handed to an HPC runtime --------------------------------------------------------------

CHAINERMN_SIZE = 3_681_127_231      # Docker's Size of the chainermn image


def test_runtime_needs_count_what_dlenv_writes_and_podmans_two_copies():
    ch = D.runtime_needs("charliecloud", CHAINERMN_SIZE, image_path="/tmp/slurm/images")
    assert ch == [D.Need(D.STORAGE_CHARLIECLOUD, "/tmp/slurm/images", 2 * CHAINERMN_SIZE)]
    assert D.runtime_needs("charliecloud", CHAINERMN_SIZE, image_path=None) == []     # --image-file: made before
    podman = D.runtime_needs("podman", CHAINERMN_SIZE, image_path="/tmp/slurm/images", podman_storage="/home/u")
    assert [(n.what, n.path, n.bytes) for n in podman] == [
        (D.STORAGE_ARCHIVE, "/tmp/slurm/images", CHAINERMN_SIZE),
        (D.STORAGE_PODMAN, "/home/u", CHAINERMN_SIZE + D.PODMAN_HEADROOM),
        (D.STORAGE_PODMAN_TMP, D.PODMAN_LOAD_TMP, CHAINERMN_SIZE)]
    # one filesystem, as on this project's machines: they add up to more than the 11.17 GB measured at the peak
    fs, = D.estimate(podman, lambda path: (1, 8 * GB)).shortages
    assert 11.17 * GB < fs.need < 11.6 * GB
    assert D.refusal("chainermn", fs, "verify --slurm --runtime podman") == (
        "not enough disk for chainermn: /home/u has 8.0 GB free, verify --slurm --runtime podman needs "
        "about 11 GB there for the job user's podman storage 4.0 GB, the image archive 3.7 GB and podman's copy "
        "while it loads 3.7 GB")


def test_check_needs_refuses_in_one_line_with_the_gc_that_frees_enough(monkeypatch):
    monkeypatch.setattr(engine_disk, "filesystem", lambda path: (7, 5 * GB))
    monkeypatch.setattr(engine_disk, "gc_freed", lambda dev, client, **kw: {"dlenv gc": 1 * GB,
                                                                           "dlenv gc --build-cache": 9 * GB})
    needs = D.runtime_needs("charliecloud", CHAINERMN_SIZE, image_path="/srv/images")
    with pytest.raises(DiskError) as info:
        engine_disk.check_needs("chainermn", None, needs, doing="the dir export",
                                override="or export with --skip-disk-check")
    assert info.value.one_line() == (
        "not enough disk for chainermn: /srv/images has 5.0 GB free, the dir export needs about 7.4 GB there for "
        "the Charliecloud image (`dlenv gc --build-cache` would free about 9.0 GB there, or export with "
        "--skip-disk-check)")
    monkeypatch.setattr(engine_disk, "filesystem", lambda path: (7, 8 * GB))
    engine_disk.check_needs("chainermn", None, needs, doing="the dir export")      # room: nothing said
