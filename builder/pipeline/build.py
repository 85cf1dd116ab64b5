"""The build pipeline: plan -> lock -> base -> candidate image -> verify -> promoted tags.

Orchestrates the pure plan with the engine, base and verify (effects). Tags are moved only
after the candidate passed verification: a failed or interrupted build never moves a working
tag. Builds of one stack are serialised with the per-stack mutex (builder.statelock).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder import paths
from builder.engine import base as base_mod
from builder.engine import buildkit, sdk
from builder.engine import dockerapi as engine
from builder.engine import registry as registry_mod
from builder.engine.context import write_context
from builder.engine.images import promoted_image
from builder.errors import BuildError, EngineError, LockError, VerifyError, shown
from builder.fileio import write_text_atomic
from builder.names import HASH_LABEL, TAG_CHARS
from builder.engine.buildlog import StepClock
from builder.engine.debrepo import build_args
from builder.engine.store import PackageSources
from builder.pipeline import buildah_build, diskcheck, locker
from builder.pipeline.packages import Provision, package_sources, provision, served, uses_store
from builder.plan import buildkit_variant
from builder.plan.lockfile import dump
from builder.plan.lockfile import load as load_lock
from builder.pipeline.layered_lock import make_layered_lock
from builder.plan.plan import Plan, replan, stale_error
from builder.settings.host import CABundle, find_ca_bundle, pip_build_args
from builder.statelock import stack_lock
from builder.verify.checks import Report, plan_checks
from builder.verify.runner import verify_image


def ensure_lock(p: Plan, client, *, relock: bool = False, frozen: bool = False, ca_bundle: CABundle | None = None,
                mirror: str | None = None, log=lambda msg: None, on_written=None) -> Plan:
    """The plan of a locked build: the lock as it is, or a new one (missing, or stale with relock)."""
    if p.lock_state == "locked" and not relock:
        return p
    if frozen:
        if p.lock_state == "missing":
            raise LockError(f"{p.resolved.name} has no lock ({p.lock_file} is missing) and --locked forbids writing one",
                            hint=f"run `dlenv lock {p.resolved.name}` and commit the file")
        if p.lock_state == "stale":
            raise stale_error(p)
    if p.lock_state == "stale" and not relock:
        raise stale_error(p)
    new_plan, _report = write_lock(p, client, ca_bundle=ca_bundle, mirror=mirror, log=log)
    if on_written:
        on_written(new_plan, _report)
    return new_plan


def write_lock(p: Plan, client, *, upgrade=(), upgrade_all: bool = False, ca_bundle: CABundle | None = None,
               mirror: str | None = None, log=lambda msg: None):
    """Resolve the pins of `p` (keeping the previous lock's where they still apply), write the lock
    file atomically and return the plan rendered from it, with the lock run's report."""
    previous = p.lock
    with stack_lock(p.resolved.name, log):
        if p.parent is not None:   # resolved in a container of the parent's image, which must exist
            lock, report = make_layered_lock(client, p, previous=previous, upgrade=upgrade, upgrade_all=upgrade_all,
                                             ca_bundle=ca_bundle, mirror=mirror, log=log)
        else:
            lock, report = locker.make_lock(client, p.resolved, previous=previous, upgrade=upgrade,
                                            upgrade_all=upgrade_all, ca_bundle=ca_bundle, mirror=mirror, log=log)
        try:
            write_text_atomic(p.lock_file, dump(lock))
        except Exception as exc:  # noqa: BLE001 - a read-only catalog: say where the lock should go
            raise LockError(f"cannot write {p.lock_file}: {getattr(exc, 'message', exc)}",
                            hint="copy the stack into your own folder (a dlenv.yaml extending it) and lock that") from None
    return replan(p, load_lock(p.lock_file)), report


def ensure_parent(p: Plan, client, *, registry: str | None = None, ca_bundle: CABundle | None = None,
                  mirror: str | None = None, log=lambda msg: None, on_check=None, on_progress=None,
                  engine_name: str = "sdk", packages: PackageSources | None = None, locked: bool = False,
                  on_refresh=None, disk_check: bool = True) -> str:
    """Make sure the verified image `p` builds on exists: "found" (promoted here), "pulled" (from the
    registry, by the parent's content hash) or "built" (its own verified build, parents first)."""
    parent = p.parent
    if parent is None:
        return ""
    if promoted_image(client, parent) is not None:
        return "found"
    if registry and registry_mod.try_pull(client, parent, registry, warn=log):
        return "pulled"
    log(f"building the parent {parent.hash_tag} first")
    if parent.parent is not None:
        ensure_parent(parent, client, registry=registry, ca_bundle=ca_bundle, mirror=mirror, log=log,
                      on_check=on_check, on_progress=on_progress, engine_name=engine_name, packages=packages,
                      locked=locked, on_refresh=on_refresh, disk_check=disk_check)
    build(parent, client, ca_bundle=ca_bundle, mirror=mirror, log=log, on_check=on_check,
          on_progress=on_progress, engine_name=engine_name, packages=packages, locked=locked, on_refresh=on_refresh,
          disk_check=disk_check)
    return "built"


@dataclass
class BuildResult:
    plan: Plan
    image_id: str
    noop: bool
    tags: list = field(default_factory=list)
    seconds: float = 0.0
    log_path: str | None = None
    report: Report | None = None
    pulled: bool = False
    packages: Provision | None = None     # where the Debian files came from, and the pins a refresh moved
    steps: list = field(default_factory=list)   # StepTime of each step the engine built (none for a no-op or pull)


def _prepare_base(client, p: Plan, mirror: str | None, log, repo: str | None = None) -> None:
    """The base both stages start from, bootstrapped when missing (one process at a time); with
    `repo`, from dlenv's package repository (exactly the lock's files)."""
    with stack_lock("_base", log):  # builds of different stacks must not bootstrap the same base twice
        base_mod.ensure_base(client, p.resolved.base, log, pins=p.context.base_pins or None, mirror=mirror,
                             repo=repo)
        if p.lock is not None and p.lock_state == "locked" and "image" not in p.resolved.base:
            want = p.lock.base.get("rootfs_sha256", "")
            got = base_mod.rootfs_sha256(client, p.context.base_ref)
            if want and got and want != got:
                log(f"note: the base rootfs (sha256 {got[:16]}) differs from the lock's ({want[:16]}) although "
                    "its packages are the locked ones")


def _build_candidate(client, p: Plan, bundle: CABundle, engine_name: str, cli, log_path: Path, *,
                     nocache: bool, on_progress, mirror: str | None = None, log=lambda msg: None,
                     repo: str | None = None, clock: StepClock | None = None) -> str:
    """Build the candidate image with the chosen engine from a temporary context; returns its id.
    `repo`: the proxy URL of dlenv's package repository, which every apt step of the build uses;
    `clock`: how long each step took."""
    if engine_name == "buildah":   # its own storage, base and context (pipeline/buildah_build.py)
        return buildah_build.build_candidate(cli, client, p, bundle, log_path, nocache=nocache, mirror=mirror,
                                             log=log, on_progress=on_progress, repo=repo, clock=clock)
    workdir = Path(tempfile.mkdtemp(prefix="context-", dir=paths.state_dir()))
    try:
        buildargs = {**pip_build_args(), **build_args(repo), "DLENV_CONTENT_HASH": p.content_hash}
        if engine_name == "buildkit":
            # The bundle is no file of the context: the CLI hands it over as a secret.
            dockerfile = buildkit_variant.variant(p.context.dockerfile, base=p.resolved.base, ca_secret=bundle.path is not None)
            write_context(p.context, workdir, None, dockerfile=dockerfile)
            return buildkit.build(cli, workdir, p.candidate_tag, buildargs, log_path,
                                  secret_file=bundle.path, on_progress=on_progress, nocache=nocache, clock=clock)
        write_context(p.context, workdir, bundle.read())
        return sdk.build(client, workdir, p.candidate_tag, buildargs, log_path,
                         on_progress=on_progress, nocache=nocache, clock=clock)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _find_cli(engine_name: str):
    if engine_name == "buildkit":
        return buildkit.find_cli()
    return buildah_build.find() if engine_name == "buildah" else None


def _verify_candidate(client, p: Plan, on_check) -> Report:
    """Run the stack's checks on the candidate; a failure leaves every promoted tag where it was."""
    report = verify_image(client, p.candidate_tag, plan_checks(p.resolved, p.lock if p.lock_state == "locked" else None, p.parent_locks),
                          on_result=on_check, testinfra_files=p.resolved.merged.testinfra)
    if not report.passed:
        failed = [r.name for r in report.results if r.status == "failed"]
        raise VerifyError(f"{len(failed)} check(s) failed on {p.candidate_tag}: {', '.join(failed)}; "
                          f"{p.hash_tag} and {p.latest_tag} were not moved", report=report)
    return report


def _check_candidate_label(client, p: Plan, image_id: str) -> None:
    """Promotion trusts the hash dlenv computed, not a label the build could have set: a candidate
    whose content-hash label is not `p.content_hash` (an ENV or a RUN of the stack overrode it) is
    never tagged."""
    attrs = engine.image_attrs(client, image_id) or {}
    got = engine.image_labels(attrs).get(HASH_LABEL)
    if got != p.content_hash:
        raise BuildError(f"{p.candidate_tag} carries {HASH_LABEL}={shown(got, 80)}, not the computed "
                         f"{p.content_hash[:TAG_CHARS]}; it was not promoted",
                         hint=f"the stack must not set the label or DLENV_* variables; check {p.resolved.merged.path}")


def _promote(client, p: Plan, image_id: str) -> None:
    _check_candidate_label(client, p, image_id)
    engine.tag(client, image_id, p.hash_tag)
    engine.tag(client, image_id, p.latest_tag)
    engine.untag(client, p.candidate_tag)


def build(p: Plan, client, *, ca_bundle: CABundle | None = None, mirror: str | None = None, verify: bool = True,
          nocache: bool = False, log=lambda msg: None, on_progress=None, on_check=None, registry: str | None = None,
          on_pull=None, engine_name: str = "sdk", packages: PackageSources | None = None, locked: bool = False,
          on_refresh=None, disk_check: bool = True) -> BuildResult:
    """Build `p` (unless its hash is already promoted, whichever engine built it), verify, promote.

    engine_name "sdk" builds through docker-py (classic builder); "buildkit" through a Docker CLI with
    BuildKit, from the variant of the same Dockerfile (see plan/buildkit_variant.py): same content hash,
    same label, same candidate/promote steps; "buildah" through buildah (plan/buildah_variant.py), whose
    first build of a lock records the image id in the lock's images section. `disk_check`: refuse
    before building when a disk it writes to is too full (pipeline/diskcheck.py)."""
    started = time.monotonic()
    with stack_lock(p.resolved.name, log):
        attrs = promoted_image(client, p)
        if attrs and not nocache:
            engine.tag(client, attrs["Id"], p.latest_tag)
            return BuildResult(p, attrs["Id"], True, [p.hash_tag, p.latest_tag], time.monotonic() - started)
        # A registry holding this content hash saves the build; it was verified before its push.
        if registry and not nocache and registry_mod.try_pull(client, p, registry, warn=log, on_progress=on_pull):
            attrs = promoted_image(client, p)
            return BuildResult(p, attrs["Id"], False, [p.hash_tag, p.latest_tag],
                               time.monotonic() - started, pulled=True)
        bundle = ca_bundle or find_ca_bundle()
        cli = _find_cli(engine_name)   # before the base: fails in a second
        room = diskcheck.check(p, client, engine_name) if disk_check else None
        prov = None
        if uses_store(p):
            prov = provision(p, client, packages or package_sources(p, mirror=mirror), locked=locked, ca_bundle=bundle,
                             mirror=mirror, log=log)
            log(f"lock files: {prov.report.summary()}")
            if prov.refreshed_to and on_refresh:
                on_refresh(prov)
            p = prov.plan
            attrs = promoted_image(client, p) if prov.refreshed_to else None
            if attrs and not nocache:
                engine.tag(client, attrs["Id"], p.latest_tag)
                return BuildResult(p, attrs["Id"], True, [p.hash_tag, p.latest_tag], time.monotonic() - started,
                                   packages=prov)
            if room is not None and (room.unknown or prov.refreshed_to):   # every file's size is known now
                diskcheck.check(p, client, engine_name)
        clock = StepClock()
        with served(p, prov.files if prov else []) as repo:
            image_id, log_path, report = _build_verified(client, p, bundle, engine_name, cli, mirror=mirror,
                                                         nocache=nocache, log=log, on_progress=on_progress,
                                                         on_check=on_check, verify=verify, repo=repo, clock=clock)
        _promote(client, p, image_id)
        if engine_name == "buildah":
            buildah_build.record_image(cli, client, p, image_id, log)
        return BuildResult(p, image_id, False, [p.hash_tag, p.latest_tag], time.monotonic() - started,
                           str(log_path), report, packages=prov, steps=clock.steps)


def _build_verified(client, p: Plan, bundle: CABundle, engine_name: str, cli, *, mirror, nocache, log, on_progress,
                    on_check, verify, repo, clock: StepClock | None = None):
    """The base, the candidate and its checks: (image id, log path, report)."""
    if p.parent is None:
        if engine_name != "buildah":   # buildah bootstraps its own base in its own storage
            _prepare_base(client, p, mirror, log, repo)
    elif promoted_image(client, p.parent) is None:
        raise EngineError(f"{p.parent.hash_tag}, the image {p.resolved.name} builds on, does not exist",
                          hint=f"build or pull {p.parent.resolved.name} first (`dlenv build` does it)")
    elif engine_name != "buildah" and "apt-get " in p.context.dockerfile \
            and not engine.has_apt_sources(client, p.parent.hash_tag):
        raise EngineError(f"{p.parent.hash_tag} has no apt sources (built with buildah, whose builds mount them), "
                          f"and {p.resolved.name} installs Debian packages",
                          hint=f"build {p.resolved.name} with --engine buildah too")
    log_path = paths.state_dir() / "logs" / f"{p.resolved.name}-{p.content_hash[:TAG_CHARS]}.log"
    with diskcheck.out_of_space(p, client, engine_name, log_path):   # ENOSPC: one line, no candidate tag
        image_id = _build_candidate(client, p, bundle, engine_name, cli, log_path, nocache=nocache,
                                    on_progress=on_progress, mirror=mirror, log=log, repo=repo, clock=clock)
    report = _verify_candidate(client, p, on_check) if verify else None
    return image_id, log_path, report
