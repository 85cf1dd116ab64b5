"""The build pipeline: stack -> resolve -> render -> candidate image -> verify -> promoted tags.

Orchestrates spec, resolve, render (pure) with engine, base and verify (effects). Tags are
moved only after the candidate passed verification: a failed or interrupted build never
moves a working tag. Builds of one stack are serialised with a file lock.
"""

from __future__ import annotations

import contextlib
import functools
import fcntl
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.engine import base as base_mod
from builder import paths
from builder.engine import dockerapi as engine
from builder.plan.catalog import Catalog
from builder.settings.host import find_ca_bundle, pip_build_args
from builder.errors import EngineError, LockError, VerifyError
from builder.plan.lockfile import Lock, digest, explain_stale, lock_inputs, lock_path
from builder.plan.lockfile import load as load_lock
from builder.plan.render import CA_BUNDLE_PATH, BuildContext, content_hash, render_context
from builder.plan.resolve import ResolvedStack, resolve
from builder.settings.settings import load_settings
from builder.spec.stack import load_stack
from builder.verify.runner import Report, plan_checks, verify_image

HASH_LABEL = "org.dlenv.content-hash"
TAG_CHARS = 16


@dataclass(frozen=True)
class Plan:
    resolved: ResolvedStack
    context: BuildContext
    content_hash: str
    lock: Lock | None = None
    lock_state: str = "missing"     # "locked", "missing" or "stale"
    stale_reason: str = ""

    @property
    def lock_file(self) -> Path:
        return lock_path(self.resolved.merged.path)

    @property
    def repo(self) -> str:
        return f"dlenv/{self.resolved.name}"

    @property
    def hash_tag(self) -> str:
        return f"{self.repo}:{self.content_hash[:TAG_CHARS]}"

    @property
    def candidate_tag(self) -> str:
        return f"{self.repo}:{self.content_hash[:TAG_CHARS]}-candidate"

    @property
    def latest_tag(self) -> str:
        return f"{self.repo}:latest"


@functools.lru_cache(maxsize=4)
def _shared_catalog(components_dir: str) -> Catalog:
    """One catalog per process: `dlenv list` plans every stack, and each would read every component again."""
    return Catalog(Path(components_dir))


def lock_status(resolved: ResolvedStack) -> tuple[Lock | None, str, str]:
    """(lock, state, why stale) of a resolved stack: its lock file is read when it exists."""
    path = lock_path(resolved.merged.path)
    if not path.is_file():
        return None, "missing", ""
    lock = load_lock(path)
    inputs = lock_inputs(resolved)
    if lock.stack != resolved.name:
        return lock, "stale", f"it locks stack {lock.stack!r}, not {resolved.name!r}"
    if digest(inputs) != lock.inputs_digest:
        return lock, "stale", explain_stale(lock.inputs, inputs) or "its inputs changed"
    return lock, "locked", ""


def plan(ref: str, stacks_dir: Path | None = None, catalog: Catalog | None = None) -> Plan:
    """Resolve and render a stack; with a lock that matches it, every install is pinned."""
    merged = load_stack(ref, Path(stacks_dir or paths.stacks_dir()))
    resolved = resolve(merged, catalog or _shared_catalog(str(paths.components_dir())))
    lock, state, why = lock_status(resolved)
    ctx = render_context(resolved, lock if state == "locked" else None)
    return Plan(resolved, ctx, content_hash(ctx), lock, state, why)


def stale_error(p: Plan) -> LockError:
    return LockError(f"{p.lock_file} no longer matches {p.resolved.merged.path}: {p.stale_reason}",
                     hint=f"`dlenv lock {p.resolved.name}` updates it (pins that still apply are kept), "
                          "or build with --relock")


def ensure_lock(p: Plan, client, *, relock: bool = False, frozen: bool = False, ca_bundle: str | None = None,
                log=lambda msg: None, on_written=None) -> Plan:
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
    new_plan, _report = write_lock(p, client, ca_bundle=ca_bundle, log=log)
    if on_written:
        on_written(new_plan, _report)
    return new_plan


def write_lock(p: Plan, client, *, upgrade=(), upgrade_all: bool = False, ca_bundle: str | None = None,
               log=lambda msg: None):
    """Resolve the pins of `p` (keeping the previous lock's where they still apply), write the lock
    file atomically and return the plan rendered from it, with the lock run's report."""
    from builder.pipeline import locker as locker
    from builder.fileio import write_text_atomic
    from builder.plan.lockfile import dump
    previous = p.lock
    with stack_lock(p.resolved.name, log):
        lock, report = locker.make_lock(client, p.resolved, previous=previous, upgrade=upgrade,
                                        upgrade_all=upgrade_all, ca_bundle=ca_bundle, log=log)
        try:
            write_text_atomic(p.lock_file, dump(lock))
        except Exception as exc:  # noqa: BLE001 - a read-only catalog: say where the lock should go
            raise LockError(f"cannot write {p.lock_file}: {getattr(exc, 'message', exc)}",
                            hint="copy the stack into your own folder (a dlenv.yaml extending it) and lock that") from None
    lock = load_lock(p.lock_file)
    ctx = render_context(p.resolved, lock)
    return Plan(p.resolved, ctx, content_hash(ctx), lock, "locked", ""), report


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


@contextlib.contextmanager
def stack_lock(name: str, log=lambda msg: None):
    """One dlenv process at a time builds or locks a stack; the others wait, and say so."""
    lock_dir = paths.state_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another dlenv process that builds or locks {name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promoted_image(client, p: Plan) -> dict | None:
    attrs = engine.image_attrs(client, p.hash_tag)
    if attrs and engine.image_labels(attrs).get(HASH_LABEL) == p.content_hash:
        return attrs
    return None


def require_promoted(client, p: Plan, ref: str | None = None) -> dict:
    """The promoted image of `p` (its attrs), or an EngineError telling how to build it."""
    attrs = promoted_image(client, p)
    if attrs is None:
        raise EngineError(f"{p.hash_tag} does not exist",
                          hint=f"build it with `dlenv build {ref or p.resolved.name}`")
    return attrs


def write_context(ctx: BuildContext, directory: Path, ca_bundle: bytes | None, dockerfile: str | None = None) -> None:
    """The build context on disk; `ca_bundle` None (BuildKit: a secret mount) writes no bundle at all."""
    (directory / "Dockerfile").write_text(ctx.dockerfile if dockerfile is None else dockerfile)
    for rel, data in ctx.files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(ctx.modes.get(rel, 0o644))
    if ca_bundle is None:
        return
    ca = directory / CA_BUNDLE_PATH
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_bytes(ca_bundle)


def build(p: Plan, client, *, ca_bundle: str | None = None, verify: bool = True, nocache: bool = False,
          log=lambda msg: None, on_progress=None, on_check=None, registry: str | None = None,
          on_pull=None, engine_name: str = "sdk") -> BuildResult:
    """Build `p` (unless its hash is already promoted, whichever engine built it), verify, promote.

    engine_name "sdk" builds through docker-py (classic builder); "buildkit" through a Docker CLI with
    BuildKit, from the variant of the same Dockerfile (see builder/buildkit.py): same content hash,
    same label, same candidate/promote steps."""
    started = time.monotonic()
    with stack_lock(p.resolved.name, log):
        attrs = promoted_image(client, p)
        if attrs and not nocache:
            engine.tag(client, attrs["Id"], p.latest_tag)
            return BuildResult(p, attrs["Id"], True, [p.hash_tag, p.latest_tag], time.monotonic() - started)
        if registry and not nocache:
            # A registry holding this content hash saves the build; it was verified before its push.
            from builder.engine import registry as registry_mod
            if registry_mod.try_pull(client, p, registry, warn=log, on_progress=on_pull):
                attrs = promoted_image(client, p)
                return BuildResult(p, attrs["Id"], False, [p.hash_tag, p.latest_tag],
                                   time.monotonic() - started, pulled=True)
        settings = load_settings({"ca_bundle": ca_bundle})
        bundle = find_ca_bundle(settings.get("ca_bundle"), source=settings.source("ca_bundle"))
        if engine_name == "buildkit":
            from builder.engine import buildkit as buildkit
            cli = buildkit.find_cli()   # before the base: a missing client fails in a second
            dockerfile = buildkit.variant(p.context.dockerfile, base=p.resolved.base, ca_secret=bundle.path is not None)
        with stack_lock("_base", log):  # builds of different stacks must not bootstrap the same base twice
            base_mod.ensure_base(client, p.resolved.base, log, pins=p.context.base_pins or None)
            if p.lock is not None and p.lock_state == "locked" and "image" not in p.resolved.base:
                want = p.lock.base.get("rootfs_sha256", "")
                got = base_mod.rootfs_sha256(client, p.context.base_ref)
                if want and got and want != got:
                    log(f"note: the base rootfs (sha256 {got[:16]}) differs from the lock's ({want[:16]}) although "
                        "its packages are the locked ones")
        log_path = paths.state_dir() / "logs" / f"{p.resolved.name}-{p.content_hash[:TAG_CHARS]}.log"
        workdir = Path(tempfile.mkdtemp(prefix="context-", dir=paths.state_dir()))
        try:
            buildargs = {**pip_build_args(), "DLENV_CONTENT_HASH": p.content_hash}
            if engine_name == "buildkit":
                # The bundle is no file of the context: the CLI hands it over as a secret.
                write_context(p.context, workdir, None, dockerfile=dockerfile)
                image_id = buildkit.build(cli, workdir, p.candidate_tag, buildargs, log_path,
                                          secret_file=bundle.path, on_progress=on_progress, nocache=nocache)
            else:
                write_context(p.context, workdir, bundle.read())
                image_id = engine.build(client, workdir, p.candidate_tag, buildargs, log_path,
                                        on_progress=on_progress, nocache=nocache)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report = None
        if verify:
            report = verify_image(client, p.candidate_tag, plan_checks(p.resolved, p.lock if p.lock_state == "locked" else None), on_result=on_check,
                                  testinfra_files=p.resolved.merged.testinfra)
            if not report.passed:
                failed = [r.name for r in report.results if r.status == "failed"]
                raise VerifyError(f"{len(failed)} check(s) failed on {p.candidate_tag}: {', '.join(failed)}; "
                                  f"{p.hash_tag} and {p.latest_tag} were not moved", report=report)
        engine.tag(client, image_id, p.hash_tag)
        engine.tag(client, image_id, p.latest_tag)
        engine.untag(client, p.candidate_tag)
        return BuildResult(p, image_id, False, [p.hash_tag, p.latest_tag], time.monotonic() - started,
                           str(log_path), report)
