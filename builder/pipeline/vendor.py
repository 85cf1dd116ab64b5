"""`dlenv vendor`: a self-contained bundle of every file a stack's lock pins, from which
`dlenv build STACK --vendor DIR` builds with no other source (no Debian mirror, no Python index).

The bundle is a folder:

    DIR/manifest.json   {"format": 1, "stack", "lock" (its digest), "content_hash",
                         "files": [{"path", "sha256", "size", "kind", "name", "version"}, ...]}
    DIR/debian/         a flat apt repository of the lock's files, laid out by engine/debrepo.write_repository
                        (the .debs of the base, build and runtime stages, the source tarballs, the Python
                        files and their PEP 503 index under simple/, Packages, Release)

Paths in the manifest are relative to DIR and found by each file's bytes, whatever folders the repository
uses; the store reads the manifest (engine/store.bundle_index).
A stack built on its parent's image carries the files of the whole parent chain, since a machine
without the parent image builds the parent first. A catalog lock refreshed here (pins the archive
dropped) travels as DIR/locks/<stack>.lock: `build --vendor` adopts it where the shipped lock is the
one it refreshed, so the offline build needs no refresh (which would need the mirror).

Every file is obtained into the package store first (the usual sources, each file checked by
sha256), then the bundle is written into a temporary folder beside DIR, each file checked again,
and renamed into place: DIR is never half-written. An existing non-empty DIR that is no bundle is
refused; an existing bundle is replaced in one step (and serves as a source for its own refresh).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import paths
from builder.engine.debrepo import write_repository
from builder.engine.store import MANIFEST, ObtainReport, PackageSources, PackageStore, obtain
from builder.errors import ConfigError, DlenvError, ExportError, LockError, printable
from builder.fileio import write_text_atomic
from builder.pipeline.packages import lock_files
from builder.plan.pins import base_recipe
from builder.plan.lockfile import dump
from builder.plan.lockfile import load as load_lock
from builder.plan.plan import Plan, is_catalog_stack, stale_error

BUNDLE_FORMAT = 1
REPOSITORY = "debian"        # the bundle's folder holding the flat repository
BUNDLED_LOCKS = "locks"      # catalog locks refreshed where the bundle was made: <stack>.lock
KINDS = ("deb", "source", "python")
_CHUNK = 1 << 20


@dataclass
class VendorResult:
    """What `vendor` wrote, for the CLI to print."""
    path: Path
    stack: str
    lock: str
    content_hash: str
    counts: dict                                   # kind -> files
    sizes: dict                                    # kind -> bytes
    replaced: bool = False                         # an earlier bundle was replaced
    reports: list = field(default_factory=list)    # one ObtainReport per lock (parents first)
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(self.counts.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def to_json(self) -> dict:
        return {"path": str(self.path), "stack": self.stack, "lock": self.lock, "content_hash": self.content_hash,
                "files": self.files, "bytes": self.total_bytes, "counts": dict(self.counts), "sizes": dict(self.sizes),
                "replaced": self.replaced, "seconds": round(self.seconds, 2)}


def chain(p: Plan) -> list:
    """The plans whose locks a build of `p` needs, root first: its parents' and its own."""
    plans = []
    while p is not None:
        plans.append(p)
        p = p.parent
    return plans[::-1]


def bundle_state(out: Path) -> str:
    """What `out` is now: "new" (absent), "empty" (an empty folder), "bundle" (a dlenv bundle); anything
    else is refused, so that vendoring never overwrites a folder it did not write."""
    if out.is_symlink():
        raise ExportError(f"{printable(out)} is a symbolic link", hint="pass the folder it points to")
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ExportError(f"{printable(out)} exists and is not a folder", hint="pass a new or empty folder")
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as exc:
        raise ExportError(f"cannot read {printable(out)}: {exc.strerror}") from None
    if empty:
        return "empty"
    if is_bundle(out):
        return "bundle"
    raise ExportError(f"{printable(out)} is not empty and is not a dlenv bundle (no {MANIFEST} of format "
                      f"{BUNDLE_FORMAT})", hint="pass a new or empty folder, or a bundle `dlenv vendor` wrote")


def is_bundle(folder: Path) -> bool:
    """Whether `folder` holds a manifest `dlenv vendor` wrote (one the store can read)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(data, dict) and data.get("format") == BUNDLE_FORMAT and isinstance(data.get("files"), list)
            and all(isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("path"), str)
                    for e in data["files"]))


def _require_locked(p: Plan, ref: str) -> None:
    for q in chain(p):
        if q.lock_state == "missing" or q.lock is None:
            raise LockError(f"{q.resolved.name} has no lock ({printable(q.lock_file)} is missing): a bundle holds "
                            "the files a lock pins", hint=f"run `dlenv lock {q.resolved.name if q is not p else ref}` first")
        if q.lock_state != "locked":
            raise stale_error(q)
    root = chain(p)[0]
    if "image" in root.resolved.base:
        raise ConfigError(f"{p.resolved.name} starts from the registry image {printable(root.resolved.base['image'])}, "
                          "whose Debian packages come from its own apt sources: a bundle holds only what dlenv's "
                          "package repository serves", hint="vendor a stack on dlenv's bootstrapped Debian base")


def _files_of(p: Plan, ref: str) -> list:
    """[(lock, its files)] of the chain, each file once (the first lock that names it keeps it); a pin
    without recorded bytes is refused: a bundle cannot hold what the lock does not name."""
    seen: set = set()
    out = []
    for q in chain(p):
        files, unknown = lock_files(q.lock)
        if unknown:
            shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
            raise LockError(f"{printable(q.lock.path or q.lock_file)} names {len(unknown)} Debian pin(s) without "
                            f"their files (size, sha256): {shown}",
                            hint=f"`dlenv build {ref}` refreshes such pins first (or `dlenv lock {q.resolved.name}` "
                                 "writes the lock again); then vendor again")
        own = []
        for f in files:
            if f.sha256 not in seen:
                seen.add(f.sha256)
                own.append(f)
        out.append((q, own))
    return out


def _gone_error(gone: list, ref: str) -> LockError:
    names = [f.basename for f in gone]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    hints = []
    if any(f.kind == "deb" for f in gone):
        hints.append(f"`dlenv build {ref}` refreshes vanished Debian pins first (and records the refreshed lock); "
                     "then vendor again")
    if any(f.kind != "deb" for f in gone):
        hints.append("source tarballs and Python files are never refreshed: check the debian_snapshot setting and "
                     "the package index pip uses (PIP_INDEX_URL), or lock again")
    return LockError(f"{len(gone)} file(s) the lock pins are in no source (store, bundles, snapshot, mirror, "
                     f"package index): {shown}", hint="; ".join(hints))


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _written(folder: Path) -> dict:
    """sha256 -> (path relative to the bundle, size) of every file under the bundle's repository, as
    write_repository laid it out (its folders are its own business: the manifest names what is there)."""
    found: dict = {}
    for path in sorted((folder / REPOSITORY).rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                sha, size = _sha256(path)
            except OSError as exc:
                raise DlenvError(f"cannot read {path.relative_to(folder)} in the bundle being written: "
                                 f"{exc.strerror}") from None
            found.setdefault(sha, (path.relative_to(folder).as_posix(), size))
    return found


def _entries(folder: Path, files: list, store: PackageStore) -> list:
    """The manifest's entries of `files` as written in `folder`, found by their bytes: a store entry
    that changed since it was checked is not in the bundle under its sha256, and must not travel."""
    written = _written(folder)
    entries = []
    for f in files:
        if f.sha256 not in written:
            raise DlenvError(f"{f.basename}: the package store's copy is not the file the lock pins (no file of "
                             f"the bundle has sha256 {f.sha256[:16]}...)",
                             hint=f"delete {printable(store.path(f.sha256))} and vendor again: it is fetched anew")
        rel, size = written[f.sha256]
        entries.append({"path": rel, "sha256": f.sha256, "size": size, "kind": f.kind, "name": f.name,
                        "version": f.version})
    return sorted(entries, key=lambda e: e["path"])


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where it is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _install(tmp: Path, out: Path) -> bool:
    """Put the finished bundle `tmp` at `out`; True when it replaced an earlier bundle (moved to `tmp`)."""
    state = bundle_state(out)         # again: the folder may have changed while the files were fetched
    if state in ("new", "empty"):
        os.rename(tmp, out)           # onto an empty folder too: rename(2) replaces it
        return False
    if not _exchange(tmp, out):       # no renameat2: two renames, and `out` is missing only in between
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        try:
            os.rename(out, aside / "bundle")
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(aside / "bundle", out)
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    return True


def vendor(p: Plan, out: Path, sources: PackageSources, *, ref: str | None = None, store: PackageStore | None = None,
           log=lambda msg: None) -> VendorResult:
    """Write the bundle of `p`'s lock (and its parents') to `out`; see the module's text."""
    started = time.monotonic()
    ref = ref or p.resolved.name
    out = Path(os.path.abspath(out))
    store = store or PackageStore()
    _require_locked(p, ref)
    state = bundle_state(out)
    if state == "bundle":       # an earlier bundle can refill a store that lost its files
        sources = replace(sources, bundles=(*sources.bundles, str(out)))
    per_lock = _files_of(p, ref)
    reports: list = []
    gone: list = []
    for q, files in per_lock:
        report: ObtainReport = obtain(files, sources, store=store, resolved_at=q.lock.resolved_at, log=log)
        reports.append(report)
        gone += report.gone
    if gone:
        raise _gone_error(gone, ref)
    files = [f for _q, own in per_lock for f in own]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise ExportError(f"cannot write beside {printable(out)}: {exc.strerror}") from None
    try:
        os.chmod(tmp, 0o755)
        log(f"writing {len(files)} file(s) into the bundle")
        suite = base_recipe(chain(p)[0].resolved.base)["suite"]
        try:
            write_repository(tmp / REPOSITORY, files, suite, store)
        except OSError as exc:
            raise DlenvError(f"cannot write the bundle's repository: {exc.strerror}: {printable(exc.filename or '')}",
                             hint="check the free space beside the bundle; `dlenv vendor` again fetches what "
                                  "the store lacks") from None
        entries = _entries(tmp, files, store)
        manifest = {"format": BUNDLE_FORMAT, "stack": p.resolved.name, "lock": p.lock.digest,
                    "content_hash": p.content_hash, "files": entries}
        if p.parent is not None:
            manifest["parents"] = [{"stack": q.resolved.name, "lock": q.lock.digest, "content_hash": q.content_hash}
                                   for q in chain(p)[:-1]]
        refreshed = [q for q in chain(p) if q.lock.refreshed and is_catalog_stack(q.resolved)]
        if refreshed:   # a catalog lock refreshed here: a build from the bundle elsewhere needs it too
            (tmp / BUNDLED_LOCKS).mkdir()
            for q in refreshed:
                (tmp / BUNDLED_LOCKS / f"{q.resolved.name}.lock").write_text(dump(q.lock))
            manifest["refreshed_locks"] = [q.resolved.name for q in refreshed]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            replaced = _install(tmp, out)
        except OSError as exc:
            raise ExportError(f"cannot put the bundle at {printable(out)}: {exc.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)    # the partial bundle, or the one it replaced
    counts = {kind: 0 for kind in KINDS}
    sizes = {kind: 0 for kind in KINDS}
    for e in entries:
        counts[e["kind"]] += 1
        sizes[e["kind"]] += e["size"]
    return VendorResult(out, p.resolved.name, p.lock.digest, p.content_hash, counts, sizes, replaced, reports,
                        time.monotonic() - started)


def adopt_bundled_locks(bundles, shipped_digest) -> list:
    """The catalog locks refreshed where `bundles` were made, put where builds here read them (the state
    folder's refreshed locks) when they refresh exactly the lock this dlenv ships (`shipped_digest(stack)`
    gives its digest, or None) and none is there yet: a bundle made after a refresh builds offline.
    Returns the stacks adopted."""
    adopted = []
    for bundle in bundles:
        for path in sorted((Path(bundle) / BUNDLED_LOCKS).glob("*.lock")):
            target = paths.refreshed_locks_dir() / path.name
            try:
                lock = load_lock(path)
            except LockError:
                continue
            if target.exists() or lock.refreshed.get("from") != shipped_digest(lock.stack):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, path.read_text())
            adopted.append(lock.stack)
    return adopted
