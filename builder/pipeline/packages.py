"""A build's Debian bytes: obtained for its lock, refreshed where no source has them, then served.

Before a build, every file the lock pins (base, build and runtime .debs, source tarballs) is put into
the package store (engine/store.py) from the first source that has it: the store, vendored bundles, a
snapshot service at the lock's time, the mirrors. A pin no source has any more is refreshed: only the
vanished pins are resolved again (and what apt must move with them), the refreshed lock is recorded
(a catalog stack's in the state folder, since its lock ships in the package; a project's beside its
dlenv.yaml) and the build goes on with it; `--locked` refuses instead. During the build, dlenv's
package repository serves exactly those files (engine/debrepo.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from builder.engine import debrepo
from builder.engine.availability import debian_sources
from builder.engine.store import ObtainReport, PackageSources, PackageStore, obtain
from builder.errors import DlenvError, LockError
from builder.fileio import write_text_atomic
from builder.pipeline import locker
from builder.pipeline.layered_lock import make_layered_lock
from builder.plan.debs import moved_pins, needed_files, python_files
from builder.plan.lockfile import dump
from builder.plan.lockfile import load as load_lock
from builder.plan.pins import base_recipe
from builder.plan.plan import Plan, refreshed_lock_path, replan
from builder.settings.host import pip_index_urls


@dataclass
class Provision:
    """What `provision` did, for the CLI to print."""
    plan: Plan
    files: list
    report: ObtainReport
    moved: list = field(default_factory=list)       # refreshed pins: {package, stage, locked, used, pocket}
    refreshed_to: str = ""                            # where the refreshed lock was written


def uses_store(p: Plan) -> bool:
    """Whether the build takes its Debian packages from dlenv's repository (a bootstrapped base; a
    registry base keeps its own apt sources)."""
    return p.lock is not None and "image" not in p.resolved.base


def package_sources(p: Plan, *, mirror: str | None = None, snapshots: tuple = (), bundles: tuple = (),
                    cafile: str | None = None) -> PackageSources:
    if "image" in p.resolved.base:     # a registry base keeps its own apt sources: no store (uses_store)
        return PackageSources(bundles=tuple(bundles), indexes=pip_index_urls(), cafile=cafile)
    debian = debian_sources(p.resolved.base, mirror=mirror, snapshots=snapshots, bundles=bundles)
    return replace(debian, indexes=pip_index_urls(), cafile=cafile)


def lock_files(lock) -> tuple[list, list]:
    """(every file of the lock: .debs, source tarballs, Python files; PACKAGE=VERSION pins without bytes)."""
    files, unknown = needed_files(lock)
    return files + python_files(lock), unknown


def _refuse_unrefreshable(report: ObtainReport) -> None:
    """Source tarballs and Python files are not refreshed (another version is another build): say so."""
    missing = [f.basename for f in report.gone if f.kind != "deb"]
    if missing:
        raise LockError(f"no source has {', '.join(missing[:6])}{' and more' if len(missing) > 6 else ''}, "
                        "which the lock pins", hint="build with --vendor DIR (a bundle that holds them), check the "
                        "package index and the debian_snapshot setting, or lock again")


def vanished_line(keys: list, unknown=()) -> str:
    """`N pinned Debian file(s) are in no source (...): a=1, b=2`, saying which pins have no bytes recorded."""
    shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    text = f"{len(keys)} pinned Debian file(s) are in no source (store, bundle, snapshot, mirror): {shown}"
    if unknown:
        text += f" ({len(unknown)} of them named without bytes: a lock older than its debs section)"
    return text


def provision(p: Plan, client, sources: PackageSources, *, locked: bool = False, ca_bundle=None,
              mirror: str | None = None, store: PackageStore | None = None, log=lambda msg: None) -> Provision:
    """The plan to build (refreshed when pins vanished) with every file of its lock in the store."""
    store = store or PackageStore()
    files, unknown = lock_files(p.lock)
    report = obtain(files, sources, store=store, resolved_at=p.lock.resolved_at, log=log)
    gone = sorted({f.key for f in report.gone if f.kind == "deb"} | set(unknown))
    _refuse_unrefreshable(report)
    if not gone:
        return Provision(p, files, report)
    what = vanished_line(gone, unknown)
    if locked:
        raise LockError(f"{p.lock.path}: {what}; --locked refuses to refresh them",
                        hint="build without --locked (the pins are refreshed and shown), or with --vendor DIR")
    if client is None:
        raise LockError(f"{p.lock.path}: {what}; refreshing them needs the Docker engine (the lock container)",
                        hint="build with the Docker engine running, or with --vendor DIR")
    log(f"{what}: refreshing just these pins")
    kept = [f for f in files if f not in report.gone]
    vanished = {f.name for f in report.gone if f.kind == "deb"}
    with debrepo.repository(kept, base_recipe(p.resolved.base)["suite"], store) as repo:
        if p.parent is not None:    # a stack on its parent's image: resolved in a container of that image
            new_lock, lock_report = make_layered_lock(client, p, previous=p.lock, vanished=vanished,
                                                      ca_bundle=ca_bundle, mirror=mirror, log=log)
        else:
            new_lock, lock_report = locker.make_lock(client, p.resolved, previous=p.lock, vanished=vanished,
                                                     ca_bundle=ca_bundle, mirror=mirror, repo=repo, log=log)
    moved = [{**row, "pocket": lock_report.pockets.get(f"{row['package']}={row['used']}", "")}
             for row in moved_pins(p.lock, new_lock)]
    shipped = p.lock.refreshed.get("from") or p.lock.digest
    new_lock = replace(new_lock, refreshed={"from": shipped, "moved": moved},
                       images={})   # the image ids recorded were those of the old pins
    target = refreshed_lock_path(p)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, dump(new_lock))
    except (OSError, DlenvError) as exc:
        raise LockError(f"cannot record the refreshed lock in {target}: {getattr(exc, 'message', None) or exc}",
                        hint="check that the state folder is writable (DLENV_STATE_DIR)") from None
    new_plan = replan(p, load_lock(target))
    files, unknown = lock_files(new_plan.lock)
    again = obtain(files, sources, store=store, resolved_at=new_plan.lock.resolved_at, log=log)
    still = sorted({f.key for f in again.gone} | set(unknown))
    if still:
        raise LockError(f"the refreshed lock {target} still names files no source has: {', '.join(still[:6])}",
                        hint="check the Debian mirror (`dlenv doctor`)")
    again.in_store = report.in_store
    for kind, n in report.fetched.items():
        again.fetched[kind] = again.fetched.get(kind, 0) + n
    again.fetched_bytes += report.fetched_bytes
    again.seconds += report.seconds
    return Provision(new_plan, files, again, moved, str(target))


@contextmanager
def served(p: Plan, files: list, store: PackageStore | None = None):
    """dlenv's package repository of `files` for the block: yields its proxy URL (None without a store)."""
    if not uses_store(p):
        yield None
        return
    with debrepo.repository(files, base_recipe(p.resolved.base)["suite"], store) as url:
        yield url
