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
from builder.plan.conflicts import check_parent_pins, venv_pins
from builder.plan.lockfile import Lock, digest, explain_stale, lock_path
from builder.plan.lockfile import load as load_lock
from builder.plan.layered import Parent, layered_inputs, layered_parent, parent_changed, render_layered
from builder.plan.pins import DEFAULT_EPOCH, base_recipe, lock_inputs
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
    parent: Plan | None = None      # built on this plan's promoted image (plan/layered.py)

    @property
    def lock_file(self) -> Path:
        return lock_path(self.resolved.merged.path)

    @property
    def parent_locks(self) -> list:
        """The locks of the images this plan builds on, root first (empty for a whole build)."""
        if self.parent is None or self.parent.lock is None:
            return []
        return [*self.parent.parent_locks, self.parent.lock]

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


def is_catalog_stack(resolved: ResolvedStack) -> bool:
    """A stack of the catalog, whose lock ships with dlenv (a refresh is recorded in the state folder)."""
    try:
        return Path(resolved.merged.path).resolve().parent == Path(paths.stacks_dir()).resolve()
    except OSError:
        return False


def refreshed_lock_path(p: Plan) -> Path:
    """Where a build records the lock it refreshed: beside a project's stack file; for a catalog stack,
    whose lock ships in the package, in the state folder."""
    if is_catalog_stack(p.resolved):
        return paths.refreshed_locks_dir() / f"{p.resolved.name}.lock"
    return p.lock_file


def _refreshed(resolved: ResolvedStack, shipped: Lock) -> Lock:
    """The lock a build refreshed from the catalog's shipped lock, when there is one for exactly it."""
    if not is_catalog_stack(resolved):
        return shipped
    path = paths.refreshed_locks_dir() / f"{resolved.name}.lock"
    if not path.is_file():
        return shipped
    try:
        refreshed = load_lock(path)
    except LockError:
        return shipped          # a damaged copy in the state folder: the shipped lock still holds
    return refreshed if refreshed.refreshed.get("from") == shipped.digest else shipped


def lock_status(resolved: ResolvedStack, parent: Parent | None = None) -> tuple[Lock | None, str, str]:
    """(lock, state, why stale) of a resolved stack: its lock file is read when it exists (for a catalog
    stack, the refresh of it a build recorded). A stack built on its parent's image is stale as soon as
    the parent's content hash moved."""
    path = lock_path(resolved.merged.path)
    if not os.path.lexists(path):
        return None, "missing", ""
    lock = _refreshed(resolved, load_lock(path))
    inputs = lock_inputs(resolved) if parent is None else layered_inputs(resolved, parent)
    if lock.stack != resolved.name:
        return lock, "stale", f"it locks stack {shown(lock.stack, 80)}, not {resolved.name!r}"
    if parent is not None and parent_changed(lock, parent):
        return lock, "stale", parent_changed(lock, parent)
    if digest(inputs) != lock.inputs_digest:
        return lock, "stale", explain_stale(lock.inputs, inputs) or "its inputs changed"
    return lock, "locked", ""


def plan(ref: str, stacks_dir: Path | None = None, catalog: Catalog | None = None) -> Plan:
    """Resolve and render a stack; with a lock that matches it, every install is pinned. A stack that
    only adds its own packages, files and commands to a parent is planned on the parent's image."""
    stacks_dir = Path(stacks_dir or paths.stacks_dir())
    catalog = catalog or shared_catalog()
    merged = load_stack(ref, stacks_dir)
    resolved = resolve(merged, catalog)
    parent_plan = _parent_plan(merged, stacks_dir, catalog)
    if parent_plan is None:
        lock, state, why = lock_status(resolved)
        ctx = render_context(resolved, lock if state == "locked" else None)
        return Plan(resolved, ctx, content_hash(ctx), lock, state, why)
    parent = parent_of(parent_plan)
    # A pin of the parent image the stack's own packages reject can never be locked: said before any
    # container starts (the parent is found, pulled or built first, which can take long).
    check_parent_pins(resolved, parent.stack, image_pins(parent_plan), catalog)
    lock, state, why = lock_status(resolved, parent)
    ctx = render_layered(resolved, parent, lock if state == "locked" else None)
    return Plan(resolved, ctx, content_hash(ctx), lock, state, why, parent=parent_plan)


def shared_catalog() -> Catalog:
    """The catalog of components dlenv ships (read once per process)."""
    return _shared_catalog(str(paths.components_dir()))


def image_pins(parent_plan: Plan) -> dict:
    """canonical name -> ImagePin of the Python packages in the venv of `parent_plan`'s image: the venv
    steps of the whole build it stands on (a layered parent adds no Python packages of its own)."""
    whole = parent_plan
    while whole.parent is not None:
        whole = whole.parent
    return venv_pins(whole.resolved, whole.lock)


def replan(p: Plan, lock: Lock) -> Plan:
    """`p` rendered from another lock of the same inputs (a refreshed one)."""
    if p.parent is not None:
        ctx = render_layered(p.resolved, parent_of(p.parent), lock)
    else:
        ctx = render_context(p.resolved, lock)
    return Plan(p.resolved, ctx, content_hash(ctx), lock, "locked", "", parent=p.parent)


def _parent_plan(merged, stacks_dir: Path, catalog: Catalog) -> Plan | None:
    """The plan of the parent whose image this stack builds on, or None for a whole build (no parent,
    own components, or a parent with Python packages of its own, which the stack's prefix would shadow)."""
    spec = layered_parent(merged)
    if spec is None:
        return None
    parent_plan = plan(str(spec.path), stacks_dir, catalog)
    if parent_plan.resolved.merged.python_packages:
        return None
    if parent_plan.lock_state != "locked":
        raise LockError(f"{merged.name} builds on the image of {parent_plan.resolved.name}, whose lock "
                        f"{parent_plan.lock_file} is {parent_plan.lock_state}",
                        hint=f"run `dlenv lock {spec.path}` first")
    return parent_plan


def parent_of(parent_plan: Plan) -> Parent:
    """The values a layered rendering needs of its parent's plan."""
    base = parent_plan.resolved.base
    return Parent(stack=parent_plan.resolved.name, content_hash=parent_plan.content_hash, image=parent_plan.hash_tag,
                  lock=parent_plan.lock, apt_runtime=tuple(parent_plan.resolved.apt_runtime),
                  python_packages=tuple(parent_plan.resolved.merged.python_packages),
                  source_date_epoch=base_recipe(base)["epoch"] if "image" not in base else DEFAULT_EPOCH)


def stale_error(p: Plan) -> LockError:
    return LockError(f"{p.lock_file} no longer matches {p.resolved.merged.path}: {p.stale_reason}",
                     hint=f"`dlenv lock {p.resolved.name}` updates it (pins that still apply are kept), "
                          "or build with --relock")
