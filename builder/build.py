"""The build pipeline: stack -> resolve -> render -> candidate image -> verify -> promoted tags.

Orchestrates spec, resolve, render (pure) with engine, base and verify (effects). Tags are
moved only after the candidate passed verification: a failed or interrupted build never
moves a working tag. Builds of one stack are serialised with a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import base as base_mod
from . import engine, paths
from .catalog import Catalog
from .config import find_ca_bundle, pip_build_args
from .errors import EngineError, VerifyError
from .render import CA_BUNDLE_PATH, BuildContext, content_hash, render_context
from .resolve import ResolvedStack, resolve
from .settings import load_settings
from .spec import load_stack
from .verify import Report, plan_checks, verify_image

HASH_LABEL = "org.dlenv.content-hash"
TAG_CHARS = 16


@dataclass(frozen=True)
class Plan:
    resolved: ResolvedStack
    context: BuildContext
    content_hash: str

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


def plan(ref: str, stacks_dir: Path | None = None, catalog: Catalog | None = None) -> Plan:
    merged = load_stack(ref, Path(stacks_dir or paths.stacks_dir()))
    resolved = resolve(merged, catalog or Catalog())
    ctx = render_context(resolved)
    return Plan(resolved, ctx, content_hash(ctx))


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
def stack_lock(name: str):
    lock_dir = paths.state_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
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


def write_context(ctx: BuildContext, directory: Path, ca_bundle: bytes) -> None:
    (directory / "Dockerfile").write_text(ctx.dockerfile)
    for rel, data in ctx.files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(ctx.modes.get(rel, 0o644))
    ca = directory / CA_BUNDLE_PATH
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_bytes(ca_bundle)


def build(p: Plan, client, *, ca_bundle: str | None = None, verify: bool = True, nocache: bool = False,
          log=lambda msg: None, on_progress=None, on_check=None, registry: str | None = None,
          on_pull=None) -> BuildResult:
    started = time.monotonic()
    with stack_lock(p.resolved.name):
        attrs = promoted_image(client, p)
        if attrs and not nocache:
            engine.tag(client, attrs["Id"], p.latest_tag)
            return BuildResult(p, attrs["Id"], True, [p.hash_tag, p.latest_tag], time.monotonic() - started)
        if registry and not nocache:
            # A registry holding this content hash saves the build; it was verified before its push.
            from . import registry as registry_mod
            if registry_mod.try_pull(client, p, registry, warn=log, on_progress=on_pull):
                attrs = promoted_image(client, p)
                return BuildResult(p, attrs["Id"], False, [p.hash_tag, p.latest_tag],
                                   time.monotonic() - started, pulled=True)
        settings = load_settings({"ca_bundle": ca_bundle})
        bundle = find_ca_bundle(settings.get("ca_bundle"), source=settings.source("ca_bundle"))
        with stack_lock("_base"):  # builds of different stacks must not bootstrap the same base twice
            base_mod.ensure_base(client, p.resolved.base, log)
        log_path = paths.state_dir() / "logs" / f"{p.resolved.name}-{p.content_hash[:TAG_CHARS]}.log"
        workdir = Path(tempfile.mkdtemp(prefix="context-", dir=paths.state_dir()))
        try:
            write_context(p.context, workdir, bundle.read())
            buildargs = {**pip_build_args(), "DLENV_CONTENT_HASH": p.content_hash}
            image_id = engine.build(client, workdir, p.candidate_tag, buildargs, log_path,
                                    on_progress=on_progress, nocache=nocache)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report = None
        if verify:
            report = verify_image(client, p.candidate_tag, plan_checks(p.resolved), on_result=on_check,
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
