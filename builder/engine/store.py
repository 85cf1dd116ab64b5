"""dlenv's package store: every file a lock pins, kept by sha256, and the sources that fill it.

A lock names bytes (plan/debs.py); this module makes sure the bytes are here. Each file is looked for
in order: the store (`<state>/store/sha256/ab/<sha256>`), the vendored bundles a build was given
(`dlenv vendor`), a Debian snapshot service at the lock's resolution time, then the configured
mirrors; a Python file in the bundles, then the package indexes pip is configured with. Whatever the source, a file enters the store only after its size and sha256 matched the lock;
a file no source has is reported as gone (the build then refreshes that pin, or refuses with --locked).
Downloads run in parallel; nothing here ever writes into an image.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from dataclasses import dataclass, field
from pathlib import Path

from builder import paths
from builder.errors import ConfigError
from builder.plan.debs import DebFile

MANIFEST = "manifest.json"           # a vendored bundle's list of files: sha256 -> path in the bundle
_CHUNK = 1 << 20
_WORKERS = 6
_TIMEOUT = 60
_ATTEMPTS = 3


def store_dir() -> Path:
    return paths.store_dir()


@dataclass(frozen=True)
class PackageSources:
    """Where files may come from after the store, in order: bundles, snapshot services, mirrors."""
    bundles: tuple = ()          # folders written by `dlenv vendor`
    snapshots: tuple = ()        # URL templates with {timestamp} (YYYYMMDDTHHMMSSZ), e.g. .../archive/debian/{timestamp}
    mirrors: tuple = ()          # archive roots (the host's apt sources, or the debian_mirror setting)
    indexes: tuple = ()          # Python package indexes (PEP 503 simple API), for kind "python"
    cafile: str | None = None    # an extra CA bundle for https sources (a corporate proxy's), with the system's

    def open(self, url: str):
        """urlopen with the CA bundle (https), honouring the host's proxy variables."""
        context = None
        if self.cafile and url.startswith("https://"):
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=self.cafile)
        return urllib.request.urlopen(url, timeout=_TIMEOUT, context=context)  # noqa: S310 - http(s) only


@dataclass
class ObtainReport:
    in_store: int = 0
    fetched: dict = field(default_factory=dict)      # source kind -> count
    fetched_bytes: int = 0
    gone: list = field(default_factory=list)         # DebFile no source has
    seconds: float = 0.0                             # spent fetching

    def summary(self) -> str:
        got = ", ".join(f"{n} from the {kind}" for kind, n in sorted(self.fetched.items())) or "nothing fetched"
        text = f"{self.in_store} in the store, {got}"
        if self.fetched_bytes:
            text += f" ({self.fetched_bytes / 1e6:.1f} MB in {self.seconds:.0f}s)"
        if self.gone:
            text += f", {len(self.gone)} in no source"
        return text


class PackageStore:
    """Files by sha256. Entries are written whole (a temporary file renamed) and never changed."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root or store_dir())

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, file: DebFile) -> bool:
        path = self.path(file.sha256)
        try:
            return path.stat().st_size == file.size or file.size == 0
        except OSError:
            return False

    def add(self, source: Path, file: DebFile, move: bool = False) -> bool:
        """Check `source` against the lock and keep it; False when its bytes are not the locked ones."""
        target = self.path(file.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if digest.hexdigest() != file.sha256 or (file.size and size != file.size):
                return False
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            tmp = None
            if move:
                Path(source).unlink(missing_ok=True)
            return True
        finally:
            if tmp:
                Path(tmp).unlink(missing_ok=True)

    def usage(self) -> tuple[int, int]:
        """(files, bytes) kept."""
        count = total = 0
        for path in (self.root / "sha256").glob("*/*"):
            if path.is_file() and not path.name.startswith("."):
                count += 1
                total += path.stat().st_size
        return count, total

    def trim(self, keep: set) -> tuple[int, int]:
        """Remove every file whose sha256 is not in `keep` (and stale partial downloads): (files, bytes)."""
        count = total = 0
        for path in [*(self.root / "sha256").glob("*/*"), *(self.root / "incoming").glob("*")]:
            if path.is_file() and path.name not in keep:
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                count += 1
                total += size
        return count, total


def bundle_index(bundle: Path) -> dict:
    """sha256 -> path of a vendored bundle's files (its manifest)."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
        return {entry["sha256"]: bundle / entry["path"] for entry in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{bundle}: not a dlenv bundle ({MANIFEST}: {exc.__class__.__name__})",
                          hint="pass a folder written by `dlenv vendor STACK -o DIR`") from None


def _download(url: str, store: PackageStore, file: DebFile, sources: PackageSources) -> int:
    """Fetch `url` into the store if its bytes are the locked ones: the byte count, or 0. A file the
    source does not have (HTTP 4xx) is not asked for again; a broken transfer is tried again."""
    for attempt in range(_ATTEMPTS):
        try:
            return _download_once(url, store, file, sources)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return 0
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5 * (attempt + 1))
    return 0


def _download_once(url: str, store: PackageStore, file: DebFile, sources: PackageSources) -> int:
    tmp_dir = store.root / "incoming"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out, sources.open(url) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
        size = os.path.getsize(tmp)
        return size if store.add(Path(tmp), file, move=True) else 0
    finally:
        Path(tmp).unlink(missing_ok=True)


class _IndexPages:
    """Project pages of the Python indexes, read once per `obtain`: file name -> download URL."""

    def __init__(self, sources: PackageSources):
        self.sources = sources
        self.pages: dict = {}
        self.lock = threading.Lock()

    def url(self, index: str, file: DebFile) -> str | None:
        project = re.sub(r"[-_.]+", "-", file.name).lower()
        page = f"{index.rstrip('/')}/{project}/"
        with self.lock:
            links = self.pages.get(page)
        if links is None:
            links = {}
            try:
                with self.sources.open(page) as resp:
                    parser = _Links(resp.geturl())
                    parser.feed(resp.read().decode("utf-8", errors="replace"))
                links = parser.links
            except (urllib.error.URLError, OSError, ValueError):
                pass
            with self.lock:
                self.pages[page] = links
        return links.get(file.filename)


class _Links(HTMLParser):
    """The anchors of a PEP 503 project page: file name -> absolute URL (fragment dropped)."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base
        self.links: dict = {}

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            url = urllib.parse.urljoin(self.base, href).split("#", 1)[0]
            self.links[urllib.parse.unquote(url.rsplit("/", 1)[-1])] = url


def _candidates(file: DebFile, sources: PackageSources, bundles: list, resolved_at: str, pages: _IndexPages):
    """(kind, location) in the order the file is looked for after the store."""
    for index in bundles:
        if file.sha256 in index:
            yield "bundle", index[file.sha256]
    if file.kind == "python":
        for index in sources.indexes:
            url = pages.url(index, file)
            if url:
                yield "index", url
        return
    if resolved_at:
        for template in sources.snapshots:
            yield "snapshot", template.replace("{timestamp}", resolved_at).rstrip("/") + "/" + file.filename
    for mirror in sources.mirrors:
        yield "mirror", mirror.rstrip("/") + "/" + file.filename


def obtain(files: list, sources: PackageSources, *, store: PackageStore | None = None, resolved_at: str = "",
           log=lambda msg: None) -> ObtainReport:
    """Put every file of `files` into the store; the report says where each came from and which are gone."""
    store = store or PackageStore()
    report = ObtainReport()
    bundles = [bundle_index(Path(b)) for b in sources.bundles]
    missing = []
    for file in files:
        if store.has(file):
            report.in_store += 1
        else:
            missing.append(file)
    if not missing:
        return report
    log(f"fetching {len(missing)} file(s) the store lacks")
    pages = _IndexPages(sources)

    def fetch(file: DebFile):
        for kind, where in _candidates(file, sources, bundles, resolved_at, pages):
            if kind == "bundle":
                if store.add(Path(where), file):
                    return kind, store.path(file.sha256).stat().st_size
                continue
            got = _download(where, store, file, sources)
            if got:
                return kind, got
        return None, 0

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for file, (kind, size) in zip(missing, pool.map(fetch, missing)):
            if kind is None:
                report.gone.append(file)
            else:
                report.fetched[kind] = report.fetched.get(kind, 0) + 1
                report.fetched_bytes += size
    report.seconds = time.monotonic() - started
    return report
