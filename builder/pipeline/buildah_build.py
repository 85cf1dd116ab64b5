"""The buildah engine's part of the build pipeline (issue #17): base (or the parent image, copied from
Docker) -> candidate -> Docker, the lock's recorded image id, and `build --check` (a second no-cache
build that must give the same id). A stack built on its parent's image records its id only when the
parent is the image the parent's lock records: its id contains the parent's.

One buildah build at a time (builder.statelock, "_buildah"): the cleanup after a build removes every
working container in dlenv's buildah storage, so two builds must not overlap.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from builder import paths
from builder.engine import buildah, buildah_store
from builder.engine import dockerapi as engine
from builder.engine.buildlog import StepClock
from builder.engine.context import write_context
from builder.errors import BuildError, EngineError, ImageIdError, LockError
from builder.fileio import write_text_atomic
from builder.names import APT_SOURCES_CONTEXT, CHECK_REPO_PREFIX, TAG_CHARS
from builder.plan import buildah_variant
from builder.plan.lockfile import dump
from builder.plan.lockfile import load as load_lock
from builder.plan.lockimages import check_recorded, image_key
from builder.plan.plan import Plan
from builder.engine.debrepo import build_args
from builder.pipeline import diskcheck
from builder.pipeline.packages import package_sources, provision, served, uses_store
from builder.plan.debs import repository_sources
from builder.settings.host import CABundle, pip_build_args
from builder.statelock import stack_lock

BUILDAH_MUTEX = "_buildah"


@dataclasses.dataclass(frozen=True)
class Buildah:
    cli: str
    version: str

    def key(self, p: Plan) -> str:
        return image_key("buildah", self.version, arch(p))


def arch(p: Plan) -> str:
    """The Debian architecture the lock was resolved for (amd64 when unlocked)."""
    return str((p.lock.platform if p.lock else {}).get("arch", "amd64"))


def find() -> Buildah:
    return Buildah(*buildah.find_buildah())


def build_arguments(repo: str | None, content_hash: str) -> dict:
    """A buildah build's arguments: dlenv's repository's (the same text on every machine) and the content
    hash, never the host's proxies or pip settings. buildah 1.28 writes the name of every proxy argument it
    is given into the history of each ARG step, so a host's `no_proxy` gave another image id (issue #24);
    every file comes from the repository anyway. Without one (no lock, so no id to record) pip needs the
    host's settings."""
    return {**(build_args(repo) if repo else pip_build_args()), "DLENV_CONTENT_HASH": content_hash}


def _ensure_parent(bh: Buildah, client, p: Plan, log) -> None:
    """The parent image in dlenv's buildah storage with Docker's id, under its one name: buildah's own
    build of it, or else a copy from Docker. The two give one id to what is built on them (measured for
    issue #24: chainer, a project on it, both orders); the name is part of the history."""
    ref = p.parent.hash_tag
    attrs = engine.image_attrs(client, ref)
    if attrs is None:
        raise EngineError(f"{ref}, the image {p.resolved.name} builds on, is not in the Docker engine",
                          hint=f"build or pull {p.parent.resolved.name} first (`dlenv build` does it)")
    if buildah_store.image_id(bh.cli, ref) == attrs["Id"]:
        buildah_store.only_local_name(bh.cli, ref, attrs["Id"])
        return
    log(f"copying {ref} from the Docker engine into dlenv's buildah storage")
    buildah_store.from_docker(bh.cli, client, ref, attrs["Id"])


def _build(bh: Buildah, client, p: Plan, bundle: CABundle, name: str, log_path: Path, *, nocache: bool,
           mirror: str | None, log, on_progress, repo: str | None = None, clock: StepClock | None = None) -> str:
    """The base (or the parent image), then `buildah build` of the variant as `name` in dlenv's
    buildah storage; the id. Without `repo` (a check, a build without Docker) the lock's Debian files
    are obtained and served here; none is refreshed (that needs the lock container, and a refreshed
    lock is another image)."""
    if repo is None and uses_store(p):
        prov = provision(p, None, package_sources(p, mirror=mirror), locked=True, mirror=mirror, log=log)
        with served(p, prov.files) as url:
            return _build(bh, client, p, bundle, name, log_path, nocache=nocache, mirror=mirror, log=log,
                          on_progress=on_progress, repo=url, clock=clock)
    if "image" in p.resolved.base:
        raise EngineError(f"the buildah engine builds only on dlenv's bootstrapped Debian base for now ({p.resolved.name} "
                          "has a registry base)", hint="build this stack with --engine sdk or buildkit")
    if p.parent is not None:
        _ensure_parent(bh, client, p, log)
    else:
        buildah_store.ensure_base(bh.cli, p.resolved.base, p.context.base_ref, arch(p), log,
                                  pins=p.context.base_pins or None, mirror=mirror, repo=repo)
    workdir = Path(tempfile.mkdtemp(prefix="context-", dir=paths.state_dir()))
    try:
        epoch = buildah_variant.stack_epoch(p.resolved.base)
        dockerfile = buildah_variant.variant(p.context.dockerfile, ca_secret=bundle.path is not None)
        write_context(p.context, workdir, None, dockerfile=dockerfile)
        sources = workdir / APT_SOURCES_CONTEXT      # RUN steps mount it; no layer keeps it
        sources.parent.mkdir(parents=True, exist_ok=True)
        sources.write_text(repository_sources())     # dlenv's package repository, through the proxy below
        return buildah.build(bh.cli, workdir, name, build_arguments(repo, p.content_hash), log_path, epoch=epoch,
                             secret_file=bundle.path, on_progress=on_progress, nocache=nocache, clock=clock)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_candidate(bh: Buildah, client, p: Plan, bundle: CABundle, log_path: Path, *, nocache: bool,
                    mirror: str | None, log, on_progress, repo: str | None = None, clock: StepClock | None = None) -> str:
    """Build with buildah (named by the hash tag in dlenv's storage) and hand the image to Docker as
    the candidate tag; returns the id, the same in both."""
    with stack_lock(BUILDAH_MUTEX, log):
        image_id = _build(bh, client, p, bundle, p.hash_tag, log_path, nocache=nocache, mirror=mirror, log=log,
                          on_progress=on_progress, repo=repo, clock=clock)
        buildah_store.to_docker(bh.cli, client, p.hash_tag, p.candidate_tag, image_id)
    return image_id


def build_without_docker(bh: Buildah, p: Plan, bundle: CABundle, *, nocache: bool, mirror: str | None, log,
                         on_progress) -> dict:
    """With no Docker engine: build in dlenv's buildah storage, copy the image into the host's
    containers-storage (podman's) under its hash tag, and record its id in the lock. Nothing is
    verified (the checks run in Docker containers) and no Docker tag exists to promote. Returns
    {"id", "store", "recorded", "seconds", "steps"} (steps: how long each took)."""
    if p.parent is not None:
        raise EngineError(f"{p.resolved.name} builds on {p.parent.hash_tag}, which lives in the Docker engine, and no "
                          "Docker engine answers", hint="start the Docker engine (`dlenv doctor` says how)")
    if p.lock is None or p.lock_state != "locked":
        raise LockError(f"{p.lock_file} is {p.lock_state}; locking runs containers in the Docker engine, and none "
                        "answers", hint=f"lock {p.resolved.name} on a machine with Docker and commit the lock")
    started = time.monotonic()
    clock = StepClock()
    log_path = paths.state_dir() / "logs" / f"{p.resolved.name}-{p.content_hash[:TAG_CHARS]}.log"
    with stack_lock(p.resolved.name, log), stack_lock(BUILDAH_MUTEX, log), \
            diskcheck.out_of_space(p, None, "buildah", log_path, buildah_cli=bh.cli):
        image_id = _build(bh, None, p, bundle, p.hash_tag, log_path, nocache=nocache, mirror=mirror, log=log,
                          on_progress=on_progress, clock=clock)
        store = buildah_store.to_containers_storage(bh.cli, p.hash_tag, image_id)
        recorded = record_image(bh, None, p, image_id, log)
    return {"id": image_id, "store": store, "recorded": recorded, "seconds": time.monotonic() - started,
            "steps": clock.steps}


def record_image(bh: Buildah, client, p: Plan, image_id: str, log) -> str:
    """Write the id into the lock's images section when it records none for this engine and arch
    (atomically); returns 'recorded', 'reproduced', 'differs' (said in the log, not an error), or
    'unlocked'/'parent' when there is nothing to record: a stack built on a parent image is
    reproducible only on the parent's own reproducible image."""
    key = bh.key(p)
    if p.lock is None:
        return "unlocked"
    if p.parent is not None and not _parent_is_reproducible(bh, client, p, log):
        return "parent"
    try:
        status = check_recorded(p.lock.images, key, image_id, "this build's image")
    except ImageIdError as exc:
        log(f"note: {exc.message}")
        return "differs"
    if status == "reproduced":
        return status
    new = dataclasses.replace(p.lock, images={**p.lock.images, key: image_id})
    try:
        write_text_atomic(p.lock.path or p.lock_file, dump(new))
    except OSError as exc:
        raise LockError(f"cannot record the image id in {p.lock.path or p.lock_file}: {exc}",
                        hint="copy the stack into your own folder (a dlenv.yaml extending it) and build that") from None
    log(f"recorded {image_id[:19]} as the reproducible image of {(p.lock.path or p.lock_file).name} ({key})")
    return "recorded"


def _parent_is_reproducible(bh: Buildah, client, p: Plan, log) -> bool:
    parent_id = (engine.image_attrs(client, p.parent.hash_tag) or {}).get("Id")
    # Read again: a parent built by this very command has just recorded its id in its lock file.
    lock = load_lock(p.parent.lock_file) if p.parent.lock_file.is_file() else None
    want = (lock.images if lock else {}).get(bh.key(p))
    if want and parent_id == want:
        return True
    log(f"note: no image id recorded: {p.parent.hash_tag} is not the reproducible image its lock records "
        f"({bh.key(p)}); build {p.parent.resolved.name} with --engine buildah first")
    return False


def check(bh: Buildah, client, p: Plan, bundle: CABundle, *, mirror: str | None, log, on_progress) -> dict:
    """A second, no-cache build under a temporary name that must give the id it is compared with (like
    with like: `compared_with`); BuildError naming what differs (the paths, else the config's fields) when
    it does not. Returns {"id", "key", "compared_with"}."""
    key = bh.key(p)
    want = compared_with(bh, client, p, log)
    name = f"{CHECK_REPO_PREFIX}{p.resolved.name}:{p.content_hash[:TAG_CHARS]}"
    log_path = paths.state_dir() / "logs" / f"{p.resolved.name}-{p.content_hash[:TAG_CHARS]}-check.log"
    with stack_lock(BUILDAH_MUTEX, log):
        try:
            got = _build(bh, client, p, bundle, name, log_path, nocache=True, mirror=mirror, log=log, on_progress=on_progress)
            if got != want:
                raise BuildError(f"not reproduced: the no-cache build gave {got[:19]}, not {want[:19]} ({key}); "
                                 f"differing: {_differences(bh, p, want, name)}", log_path=str(log_path),
                                 hint="see the build log; the report of issue #17 lists the known causes")
        finally:
            buildah.run_buildah(bh.cli, "rmi", name, check=False)
    return {"id": got, "key": key, "compared_with": want}


def compared_with(bh: Buildah, client, p: Plan, log) -> str:
    """The id a `--check` build must give, built where the check builds: the lock's recorded id when the
    stack has no parent image or its parent is the image the parent's lock records (where the id was
    recorded); else the promoted image (buildah's own copy without Docker), when it was built on the
    parent image the Docker engine holds now. BuildError when there is nothing built so to compare with."""
    key = bh.key(p)
    recorded = p.lock.images.get(key) if p.lock else None
    if recorded and (p.parent is None or client is None or _parent_is_reproducible(bh, client, p, lambda msg: None)):
        return recorded
    attrs = engine.image_attrs(client, p.hash_tag) if client is not None else None
    want = attrs["Id"] if attrs else (buildah_store.image_id(bh.cli, p.hash_tag) if client is None else None)
    if want is None:
        raise BuildError(f"nothing to compare with: {p.hash_tag} is not built and the lock records no {key} image"
                         + (" built on this parent" if recorded else ""),
                         hint=f"run `dlenv build --engine buildah {p.resolved.name}` first")
    if p.parent is not None and client is not None and not built_on(client, p.hash_tag, p.parent.hash_tag):
        raise BuildError(f"nothing to compare with: {p.hash_tag} was built on another {p.parent.hash_tag} than the "
                         "one the Docker engine holds now" + (f", and the lock's {key} id on the parent its lock "
                                                              "records" if recorded else ""),
                         hint=f"build it on this parent first: `dlenv build --engine buildah --no-cache {p.resolved.name}`")
    if recorded:
        log(f"note: comparing with {p.hash_tag} ({want[:19]}): the lock's {key} id was built on the "
            f"{p.parent.hash_tag} its lock records, and the Docker engine holds another")
    return want


def built_on(client, ref: str, parent_ref: str) -> bool:
    """Whether the Docker image `ref` was built on the Docker image `parent_ref` as it is now: its first
    layers are the parent's, and its history begins with the parent's."""
    image, parent = engine.image_attrs(client, ref), engine.image_attrs(client, parent_ref)
    if image is None or parent is None:
        return False
    layers, parent_layers = (a.get("RootFS", {}).get("Layers") or [] for a in (image, parent))
    if not parent_layers or layers[:len(parent_layers)] != parent_layers:
        return False
    history, parent_history = (engine.history_steps(client, r) for r in (ref, parent_ref))
    return len(history) >= len(parent_history) and history[:len(parent_history)] == parent_history


def _differences(bh: Buildah, p: Plan, want: str, other: str) -> str:
    """The paths whose entries differ between the image compared with (else this machine's build of the
    hash tag) and the check's; when none, the fields of their configs that do."""
    ref, which = want.removeprefix("sha256:"), ""
    if buildah_store.image_id(bh.cli, ref) is None:
        local = buildah_store.image_id(bh.cli, p.hash_tag)
        if local is None:
            return f"unknown ({want[:19]} is not in dlenv's buildah storage to compare with)"
        ref, which = p.hash_tag, f"(from this machine's {p.hash_tag}, {local[:19]}) "
    paths_ = buildah_store.differing_paths(buildah_store.layer_listing(bh.cli, ref),
                                           buildah_store.layer_listing(bh.cli, other))
    if paths_:
        return which + "the paths " + ", ".join(paths_)
    fields = buildah_store.config_differences(buildah_store.image_config(bh.cli, ref),
                                              buildah_store.image_config(bh.cli, other))
    return which + "no path in the layers; in the image config: " + ("; ".join(fields) or "nothing buildah shows")
