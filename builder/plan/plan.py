"""The plan of one stack: its resolved components, the build context rendered from its lock (when the
lock matches), and the content hash that names the image. The domain object every later stage takes.

Pure apart from reading the stack, catalog and lock files.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from builder import names, paths
from builder.errors import LockError, shown
from builder.plan.catalog import Catalog
from builder.plan.lockfile import Lock, digest, explain_stale, lock_path
from builder.plan.lockfile import load as load_lock
from builder.plan.pins import lock_inputs
from builder.plan.render import BuildContext, content_hash, render_context
from builder.plan.resolve import ResolvedStack, resolve
from builder.spec.stack import load_stack


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
        return names.image_repo(self.resolved.name)

    @property
    def hash_tag(self) -> str:
        return names.hash_tag(self.resolved.name, self.content_hash)

    @property
    def candidate_tag(self) -> str:
        return names.candidate_tag(self.resolved.name, self.content_hash)

    @property
    def latest_tag(self) -> str:
        return names.latest_tag(self.resolved.name)


@functools.lru_cache(maxsize=4)
def _shared_catalog(components_dir: str) -> Catalog:
    """One catalog per process: `dlenv list` plans every stack, and each would read every component again."""
    return Catalog(Path(components_dir))


def lock_status(resolved: ResolvedStack) -> tuple[Lock | None, str, str]:
    """(lock, state, why stale) of a resolved stack: its lock file is read when it exists."""
    path = lock_path(resolved.merged.path)
    if not os.path.lexists(path):
        return None, "missing", ""
    lock = load_lock(path)
    inputs = lock_inputs(resolved)
    if lock.stack != resolved.name:
        return lock, "stale", f"it locks stack {shown(lock.stack, 80)}, not {resolved.name!r}"
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
