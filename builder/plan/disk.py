"""How much disk a build needs, where, and what to say when there is not enough (issue #24). Pure.

A lock knows the bytes of what a build installs: every .deb and source tarball with its size (the
`debs` and `sources` sections), every Python file by sha256 (its size is known once it is in the package
store). Installed files are larger than those downloads, and a build holds two stages, so the need is
a measured factor of the downloads:

  stack      downloads (lock)   on disk after a build (unique bytes)           ratio  peak: largest step held twice
  python     129 MB             711 MB build stage + 71 MB runtime layers       6.1    1.31 GB = 10.1 x (apt step 525 MB)
  chainer    154 MB             765 MB build stage + 177 MB runtime layers      6.1    1.40 GB =  9.1 x (apt step 455 MB)
  chainermn  2.28 GB            4.13 GB build stage + 3.52 GB runtime layers    3.4    9.3 GB  =  4.1 x (a 1.64 GB COPY)

(measured on this project's build machine, Docker 20.10.24 with overlay2 and buildah 1.28.2, December
2026: layer sizes from `docker history` of the promoted images and their build stages, and from
buildah's layers.json for chainer's build stage; the 164 MB base counted once.) An engine holds a
step's layer twice for a moment (the container's changes and the committed layer): the last column.
BUILD_FACTOR x downloads + BUILD_HEADROOM covers every peak, the small stacks' through the headroom:
python 1.37 GB for its 1.31 GB, chainer 1.52 GB for 1.40 GB, chainermn 14 GB for 9.3 GB. Cached steps
need nothing, so a rebuild needs less than this: `--skip-disk-check`.

Where: the storage that builds (Docker's data root for sdk/BuildKit, dlenv's buildah storage for
buildah) needs the build; for buildah, Docker's storage then gets the runtime image (at most 2.2 x the
downloads above, held twice while Docker loads it: IMAGE_FACTOR); the package store needs the files
it lacks; the state folder holds the base's rootfs tarball (and buildah's image archive of it) while
a missing base is bootstrapped (164-170 MB for 39 MB of .debs: ROOTFS_FACTOR, twice). Storages on one
filesystem add up.

An image handed to an HPC runtime (`dlenv export charliecloud`, `dlenv verify --slurm --runtime`) needs
multiples of the image's own size (Docker's `Size`), measured here with Charliecloud 0.31 and podman 4.3:
ch-convert unpacks the image beside its gzip or SquashFS (peak 1.33 x for python's SquashFS, 1.62 x and
1.63 x for chainermn's directory and SquashFS: CHARLIECLOUD_FACTOR); `docker save` writes 1.0 x; podman's
load holds every layer in a temporary file under /tmp while it writes the same bytes into its storage (peak
2.0 x for python, 2.03 x for chainermn: PODMAN_LOAD_FACTOR; `dlenv verify chainermn --slurm --runtime
podman`, archive included, peaked at 3.03 x: PODMAN_HEADROOM). Figures: bench/hpc_runtimes.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.plan.debs import needed_files, python_files

BUILD_FACTOR = 6                    # bytes on disk per byte downloaded, both stages (3.4-6.1 measured, above)
BUILD_HEADROOM = 600 * 1000 ** 2    # a small stack's apt step held twice while committed (525 MB), logs
IMAGE_FACTOR = 5                    # the runtime image handed to another storage: 2.2 x at most, twice while loaded
ROOTFS_FACTOR = 9                   # the base's rootfs tarball (4.3 x its .debs), and buildah's archive of it
CHARLIECLOUD_FACTOR = 2             # ch-convert's peak per byte of image: 1.33-1.63 x measured (above)
ARCHIVE_FACTOR = 1                  # `docker save`: 3.70 GB for chainermn's 3.68 GB
PODMAN_LOAD_FACTOR = 1              # each of podman's two copies while it loads: the temporary one, its storage
PODMAN_HEADROOM = 300 * 1000 ** 2   # chainermn's load peaked at 2.03 x, its verify at 3.03 x, not 2.0 and 3.0 x
# Where podman 4.3 keeps a loading image's layers (measured: /tmp/storageNNN; the job has no TMPDIR).
PODMAN_LOAD_TMP = "/tmp"

# What engines, dpkg, apt, pip and Python say when a write fails with ENOSPC.
_ENOSPC = re.compile(r"no space left on device|\[errno 28\]|write error - write \(28", re.I)

STORAGE_DOCKER = "Docker's storage"
STORAGE_BUILDAH = "dlenv's buildah storage"
STORAGE_HOST = "the host's containers-storage"
STORAGE_STORE = "the package store"
STORAGE_STATE = "the state folder"
STORAGE_CHARLIECLOUD = "the Charliecloud image"
STORAGE_ARCHIVE = "the image archive"
STORAGE_PODMAN = "the job user's podman storage"
STORAGE_PODMAN_TMP = "podman's copy while it loads"


@dataclass(frozen=True)
class Downloads:
    """The bytes a lock names: `total` of every file of known size, `base` of the base's .debs,
    `missing` of those the store lacks, and `unknown` files the store lacks whose size no one knows yet
    (Python files: the lock names them by sha256 only)."""
    total: int
    base: int
    missing: int
    unknown: int = 0


@dataclass(frozen=True)
class Need:
    what: str        # STORAGE_*
    path: str        # where it lives on this machine
    bytes: int


@dataclass(frozen=True)
class Filesystem:
    """The storages of a build that share one filesystem (device `dev`), with its free bytes."""
    needs: tuple
    free: int
    dev: int = 0

    @property
    def need(self) -> int:
        return sum(n.bytes for n in self.needs)

    @property
    def short(self) -> int:
        return max(0, self.need - self.free)

    @property
    def path(self) -> str:
        return max(self.needs, key=lambda n: n.bytes).path


@dataclass(frozen=True)
class Estimate:
    """What a build needs, by filesystem; `unknown` Python files were not counted (see Downloads)."""
    filesystems: tuple = ()
    unknown: int = 0

    @property
    def shortages(self) -> list:
        return sorted((fs for fs in self.filesystems if fs.short), key=lambda fs: -fs.short)


def downloads(lock, stored_size) -> Downloads:
    """The Downloads of `lock`; `stored_size(file)` is the size of the store's copy of a DebFile, or None."""
    files, _unknown_pins = needed_files(lock)
    base_keys = {f"{n}={v}" for n, v in lock.base_packages.items()} if "image" not in lock.base else set()
    total = base = missing = unknown = 0
    for f in files + python_files(lock):
        have = stored_size(f)
        size = f.size or have or 0
        total += size
        if f.kind == "deb" and f.key in base_keys:
            base += size
        if have is None:
            if size:
                missing += size
            else:
                unknown += 1
    return Downloads(total, base, missing, unknown)


def needs(d: Downloads, *, build: tuple | None, image: tuple | None, store_root: str, state_root: str,
          image_archive: bool = False) -> list:
    """Where a build writes and how much; `build`: (STORAGE_*, path) of the storage its layers go to
    (Docker's data root for sdk/BuildKit, dlenv's buildah storage for buildah), None when it is not on
    this machine; `image`: the storage that then gets a copy of the image (buildah's: Docker's, or
    without Docker the host's containers-storage), if any; `image_archive`: the copy travels as an
    archive written in the state folder (a Docker engine elsewhere)."""
    out = []
    if build:
        out.append(Need(build[0], str(build[1]), BUILD_FACTOR * d.total + BUILD_HEADROOM))
    if image:
        out.append(Need(image[0], str(image[1]), IMAGE_FACTOR * d.total))
    if d.missing:
        out.append(Need(STORAGE_STORE, store_root, d.missing))
    state = ROOTFS_FACTOR * d.base + (IMAGE_FACTOR * d.total if image_archive else 0)
    out.append(Need(STORAGE_STATE, state_root, state))
    return [n for n in out if n.bytes > 0]


def runtime_needs(runtime: str, image_bytes: int, *, image_path: str | None, podman_storage: str = "",
                  podman_tmp: str = PODMAN_LOAD_TMP) -> list:
    """Where handing an image of `image_bytes` to an HPC runtime writes, and how much: `image_path` is
    where dlenv writes the Charliecloud image or the `docker save` archive (None: the user gave one);
    podman then loads the archive into `podman_storage` through `podman_tmp`."""
    out = []
    if runtime == "charliecloud" and image_path:
        out.append(Need(STORAGE_CHARLIECLOUD, image_path, CHARLIECLOUD_FACTOR * image_bytes))
    if runtime == "podman":
        if image_path:
            out.append(Need(STORAGE_ARCHIVE, image_path, ARCHIVE_FACTOR * image_bytes))
        out.append(Need(STORAGE_PODMAN, podman_storage, PODMAN_LOAD_FACTOR * image_bytes + PODMAN_HEADROOM))
        out.append(Need(STORAGE_PODMAN_TMP, podman_tmp, PODMAN_LOAD_FACTOR * image_bytes))
    return [n for n in out if n.bytes > 0]


def estimate(need_list: list, filesystem_of, unknown: int = 0) -> Estimate:
    """Group `need_list` by filesystem: `filesystem_of(path)` -> (device id, free bytes)."""
    groups: dict = {}
    for need in need_list:
        dev, free = filesystem_of(need.path)
        groups.setdefault(dev, ([], free))[0].append(need)
    return Estimate(tuple(Filesystem(tuple(n), free, dev) for dev, (n, free) in groups.items()), unknown)


def size_text(count: int) -> str:
    """14 GB, 1.3 GB, 290 MB, 12 MB: two significant figures at most, decimal units as `df -H`."""
    if count >= 10e9:
        return f"{count / 1e9:.0f} GB"
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB"


def _parts(fs: Filesystem) -> str:
    if len(fs.needs) == 1:
        return fs.needs[0].what
    parts = [f"{n.what} {size_text(n.bytes)}" for n in sorted(fs.needs, key=lambda n: -n.bytes)]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def refusal(stack: str, fs: Filesystem, doing: str = "the build") -> str:
    """`not enough disk for chainermn: /var/lib/docker has 3.2 GB free, the build needs about 14 GB there
    for Docker's storage`; `doing` names what needs it, when that is not the build."""
    return (f"not enough disk for {stack}: {fs.path} has {size_text(fs.free)} free, {doing} needs about "
            f"{size_text(fs.need)} there for {_parts(fs)}")


GC_COMMANDS = ("dlenv gc", "dlenv gc --build-cache", "dlenv gc --store", "dlenv gc --build-cache --store")


def gc_advice(short: int, freed: dict, override: str = "or build with --skip-disk-check") -> str:
    """The hint of a refusal: the first `dlenv gc` command (GC_COMMANDS order) whose measured `freed`
    bytes on that filesystem cover `short`, else the one that frees most; and the override. `freed`
    holds the commands that could be measured (none: `dlenv gc --dry-run` says)."""
    if not freed:
        return f"free {size_text(short)} there (`dlenv gc --dry-run` shows what dlenv can remove), {override}"
    known = [(cmd, freed[cmd]) for cmd in GC_COMMANDS if freed.get(cmd)]
    if not known:
        return f"`dlenv gc` would free nothing there: free {size_text(short)} there, {override}"
    enough = next(((cmd, n) for cmd, n in known if n >= short), None)
    if enough:
        return f"`{enough[0]}` would free about {size_text(enough[1])} there, {override}"
    cmd, n = max(known, key=lambda cn: cn[1])
    return f"`{cmd}` would free only about {size_text(n)} there: free {size_text(short)} more, {override}"


def is_enospc(text: str) -> bool:
    return bool(_ENOSPC.search(text or ""))


def full_storage(text: str, need_list: list) -> Need | None:
    """The storage an ENOSPC failure ran out of: the one whose path the error names (the deepest),
    else the engine's storage that builds (a RUN step's files go there), None when that one is not on
    this machine (not in `need_list`)."""
    named = [n for n in need_list if n.path and n.path.rstrip("/") + "/" in (text or "")]
    if named:
        return max(named, key=lambda n: len(n.path))
    builds = [n for n in need_list if n.what in (STORAGE_DOCKER, STORAGE_BUILDAH)]
    return builds[0] if builds else None


def enospc_message(stack: str, need: Need | None, free: int = 0) -> str:
    """`the build of python ran out of disk space: /x/buildah/storage (dlenv's buildah storage) has 12 MB
    free now`; without `need`, the engine's storage elsewhere."""
    if need is None:
        return f"the build of {stack} ran out of disk space in the engine's storage (not on this machine)"
    return (f"the build of {stack} ran out of disk space: {need.path} ({need.what}) has {size_text(free)} "
            f"free now")
