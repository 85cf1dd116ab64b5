"""The package store and dlenv's package repository, without Docker and without the network: real
.deb files built here with `dpkg-deb`, real HTTP servers on 127.0.0.1 laid out as a Debian mirror, a
snapshot service and a PEP 503 index, and the lock fields that name the bytes (debs, resolved_at,
refreshed).

What is proven: `obtain` takes each file from the first source that has the locked bytes (the store,
then bundles, then a snapshot at the lock's time, then mirrors; Python files from index pages), asks
no later source once one had it, refuses bytes that are not the locked ones everywhere and reports
what no source has; `trim` keeps exactly what it is told; the repository written from the store is
an apt repository (index, Release, the exact bytes) and a PEP 503 index, served only as the proxy
host dlenv.packages; a lock keeps its new fields through dump and load, names file and field when
they are damaged, still loads without them, and its digest covers the bytes but not the time."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from builder.engine import debrepo
from builder.engine.store import PackageSources, PackageStore, obtain
from builder.errors import ConfigError, LockError
from builder.names import PACKAGE_REPO_HOST, PACKAGE_REPO_URL
from builder.plan import debs as D
from builder.plan import lockfile as L
from dlenv_unit import ROOT

PYTHON_LOCK = ROOT / "stacks" / "python.lock"
STAMP = "20240315T120000Z"            # the lock's resolution time, as a snapshot service names it
OTHER_STAMP = "20230101T000000Z"
SNAPSHOT_TEMPLATE = "/archive/debian/{timestamp}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Requests to 127.0.0.1 go straight to the test servers, whatever proxy the host has set."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# --- real .deb files ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Built:
    """A .deb built here: its bytes and the DebFile a lock would name for it."""
    data: bytes
    file: D.DebFile
    path: Path


def _build_deb(workdir: Path, name: str, version: str, source: str, text: str) -> Built:
    tree = workdir / f"{name}-tree"
    doc = tree / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "README").write_text(text)
    control = tree / "DEBIAN"
    control.mkdir()
    (control / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: dlenv tests <tests@example.org>\nDescription: a package of dlenv's unit tests\n"
        " It holds one small file.\n")
    for folder in (tree, control):
        folder.chmod(0o755)
    upstream = version.split(":", 1)[-1]                 # Debian file names leave the epoch out
    out = workdir / f"{name}_{upstream}_all.deb"
    proc = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    file = D.DebFile(name, version, "all", len(data), hashlib.sha256(data).hexdigest(),
                     D.pool_path(source, out.name))
    return Built(data, file, out)


@pytest.fixture(scope="session")
def debs(tmp_path_factory) -> dict:
    """Two real packages: hello 1.0 (source hello) and libworld1 1:2.0-1 (source libworld, an epoch)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (apt-get install dpkg)")
    work = tmp_path_factory.mktemp("debs")
    return {"hello": _build_deb(work, "hello", "1.0", "hello", "hello\n"),
            "libworld1": _build_deb(work, "libworld1", "1:2.0-1", "libworld", "world\n" * 50)}


WHEEL = b"PK\x03\x04 not really a wheel, but bytes with a sha256\n"
WHEEL_NAME = "my_pkg-1.0-py3-none-any.whl"


def _python_lock(data: bytes = WHEEL) -> L.Lock:
    """The python stack's lock with one Python pin (project My_Pkg: its index page is my-pkg)."""
    pin = L.PythonPin("My_Pkg", "1.0", WHEEL_NAME, hashlib.sha256(data).hexdigest())
    return dataclasses.replace(L.load(PYTHON_LOCK), python={"venv": (pin,), "extra": (pin,)})


@pytest.fixture
def wheel() -> D.DebFile:
    (file,) = D.python_files(_python_lock())
    return file


# --- real HTTP servers ----------------------------------------------------------------------------

class _Recording(SimpleHTTPRequestHandler):
    """Serves a folder and records every path asked for (GET and HEAD)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def do_HEAD(self):
        self.server.requests.append(self.path)
        super().do_HEAD()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@dataclasses.dataclass
class Served:
    root: Path
    url: str
    requests: list

    def put(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@contextmanager
def _http_server(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Recording, directory=str(root)))
    server.daemon_threads = True
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Served(root, f"http://127.0.0.1:{server.server_address[1]}", server.requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path):
    """A Debian mirror: the archive root is <url>/debian/ (files under debian/pool/main/...)."""
    with _http_server(tmp_path / "mirror") as served:
        yield served


@pytest.fixture
def snapshot(tmp_path):
    """A snapshot service: the archive as it was at T is <url>/archive/debian/T/."""
    with _http_server(tmp_path / "snapshot") as served:
        yield served


@pytest.fixture
def index(tmp_path):
    """A PEP 503 index at <url>/simple/."""
    with _http_server(tmp_path / "index") as served:
        yield served


def _on_mirror(mirror: Served, built: Built, data: bytes | None = None) -> None:
    mirror.put(f"debian/{built.file.filename}", built.data if data is None else data)


def _on_snapshot(snapshot: Served, built: Built, stamp: str = STAMP, data: bytes | None = None) -> None:
    snapshot.put(f"archive/debian/{stamp}/{built.file.filename}", built.data if data is None else data)


def _sources(mirror=None, snapshot=None, index=None, bundles=()) -> PackageSources:
    return PackageSources(bundles=tuple(str(b) for b in bundles),
                          snapshots=(snapshot.url + SNAPSHOT_TEMPLATE,) if snapshot else (),
                          mirrors=(mirror.url + "/debian/",) if mirror else (),
                          indexes=(index.url + "/simple/",) if index else ())


def _bundle(folder: Path, entries: list) -> Path:
    """A vendored bundle: [(sha256, relpath, bytes)] as files and manifest.json."""
    folder.mkdir(parents=True)
    files = []
    for sha, rel, data in entries:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        files.append({"path": rel, "sha256": sha, "size": len(data)})
    (folder / "manifest.json").write_text(json.dumps({"files": files}))
    return folder


def _files_under(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the store itself -----------------------------------------------------------------------------

def test_store_add_checks_bytes_and_size(tmp_path, debs):
    hello, world = debs["hello"], debs["libworld1"]
    store = PackageStore(tmp_path / "store")
    assert not store.has(hello.file)
    assert store.add(hello.path, hello.file)
    assert store.has(hello.file)
    assert store.path(hello.file.sha256).read_bytes() == hello.data
    assert store.path(hello.file.sha256).parent.name == hello.file.sha256[:2]
    assert hello.path.exists()                                  # add copies unless told to move
    # other bytes under hello's sha256, or hello's bytes with another size in the lock: refused
    assert not store.add(world.path, dataclasses.replace(hello.file, size=world.file.size))
    assert not store.add(hello.path, dataclasses.replace(hello.file, size=hello.file.size + 1))
    assert not store.has(dataclasses.replace(hello.file, size=hello.file.size + 1))
    assert store.usage() == (1, len(hello.data))
    assert _files_under(store.root) == [f"sha256/{hello.file.sha256[:2]}/{hello.file.sha256}"]


def test_trim_keeps_only_the_given_sha256s(tmp_path, debs, wheel):
    hello, world = debs["hello"], debs["libworld1"]
    store = PackageStore(tmp_path / "store")
    wheel_path = tmp_path / WHEEL_NAME
    wheel_path.write_bytes(WHEEL)
    assert store.add(hello.path, hello.file) and store.add(world.path, world.file) and store.add(wheel_path, wheel)
    stale = store.path(world.file.sha256).parent / ".incoming-stale"   # a partial copy of an interrupted add
    stale.write_bytes(b"partial")
    assert store.usage() == (3, len(hello.data) + len(world.data) + len(WHEEL))   # partial copies do not count

    removed = store.trim({hello.file.sha256, wheel.sha256})

    assert removed == (2, len(world.data) + len(b"partial"))
    assert store.has(hello.file) and store.has(wheel) and not store.has(world.file)
    assert not stale.exists()
    assert store.usage() == (2, len(hello.data) + len(WHEEL))
    assert store.trim({hello.file.sha256, wheel.sha256}) == (0, 0)
    assert store.trim(set()) == (2, len(hello.data) + len(WHEEL))
    assert store.usage() == (0, 0)


# --- obtain: where each file comes from -----------------------------------------------------------

def test_a_file_in_the_store_is_not_fetched_again(tmp_path, debs, mirror):
    hello = debs["hello"]
    _on_mirror(mirror, hello)
    store = PackageStore(tmp_path / "store")
    sources = _sources(mirror=mirror)

    first = obtain([hello.file], sources, store=store)
    assert first.fetched == {"mirror": 1} and first.in_store == 0 and first.gone == []
    assert first.fetched_bytes == len(hello.data)
    assert mirror.requests == [f"/debian/{hello.file.filename}"]

    again = obtain([hello.file], sources, store=store)
    assert again.in_store == 1 and again.fetched == {} and again.gone == []
    assert mirror.requests == [f"/debian/{hello.file.filename}"]    # the server saw no second request
    assert store.path(hello.file.sha256).read_bytes() == hello.data


def test_a_file_added_to_the_store_beforehand_is_not_asked_for(tmp_path, debs, mirror, snapshot):
    hello = debs["hello"]
    _on_mirror(mirror, hello)
    _on_snapshot(snapshot, hello)
    store = PackageStore(tmp_path / "store")
    assert store.add(hello.path, hello.file)
    report = obtain([hello.file], _sources(mirror=mirror, snapshot=snapshot), store=store, resolved_at=STAMP)
    assert (report.in_store, report.fetched, report.gone) == (1, {}, [])
    assert mirror.requests == [] and snapshot.requests == []


def test_the_snapshot_at_the_locks_time_has_what_the_mirror_lost(tmp_path, debs, mirror, snapshot):
    hello = debs["hello"]
    _on_snapshot(snapshot, hello, STAMP)               # the mirror dropped this version; the snapshot keeps it
    store = PackageStore(tmp_path / "store")

    report = obtain([hello.file], _sources(mirror=mirror, snapshot=snapshot), store=store, resolved_at=STAMP)

    assert report.fetched == {"snapshot": 1} and report.gone == []
    assert snapshot.requests == [f"/archive/debian/{STAMP}/{hello.file.filename}"]
    assert mirror.requests == []                        # the snapshot had it: the mirror is not asked
    assert store.path(hello.file.sha256).read_bytes() == hello.data


def test_the_mirror_is_asked_after_a_snapshot_that_lacks_the_file(tmp_path, debs, mirror, snapshot):
    hello = debs["hello"]
    _on_mirror(mirror, hello)
    store = PackageStore(tmp_path / "store")
    report = obtain([hello.file], _sources(mirror=mirror, snapshot=snapshot), store=store, resolved_at=STAMP)
    assert report.fetched == {"mirror": 1}
    assert snapshot.requests == [f"/archive/debian/{STAMP}/{hello.file.filename}"]
    assert mirror.requests == [f"/debian/{hello.file.filename}"]


def test_no_snapshot_is_asked_without_the_locks_time(tmp_path, debs, mirror, snapshot):
    hello = debs["hello"]
    _on_snapshot(snapshot, hello, STAMP)
    store = PackageStore(tmp_path / "store")

    report = obtain([hello.file], _sources(mirror=mirror, snapshot=snapshot), store=store, resolved_at="")

    assert report.gone == [hello.file] and report.fetched == {}
    assert snapshot.requests == []                      # an old lock has no time: no snapshot to ask
    assert mirror.requests == [f"/debian/{hello.file.filename}"]
    assert not store.has(hello.file)


def test_the_snapshot_is_asked_at_the_locks_time_only(tmp_path, debs, snapshot):
    hello = debs["hello"]
    _on_snapshot(snapshot, hello, OTHER_STAMP)          # the archive had it at another time only
    store = PackageStore(tmp_path / "store")
    report = obtain([hello.file], _sources(snapshot=snapshot), store=store, resolved_at=STAMP)
    assert report.gone == [hello.file]
    assert snapshot.requests == [f"/archive/debian/{STAMP}/{hello.file.filename}"]


def test_a_bundle_beats_the_snapshot_and_the_mirror(tmp_path, debs, mirror, snapshot):
    hello, world = debs["hello"], debs["libworld1"]
    for built in (hello, world):
        _on_mirror(mirror, built)
        _on_snapshot(snapshot, built)
    bundle = _bundle(tmp_path / "bundle", [(hello.file.sha256, "debs/hello.deb", hello.data),
                                           (world.file.sha256, "debs/libworld1.deb", world.data)])
    store = PackageStore(tmp_path / "store")

    report = obtain([hello.file, world.file], _sources(mirror=mirror, snapshot=snapshot, bundles=[bundle]),
                    store=store, resolved_at=STAMP)

    assert report.fetched == {"bundle": 2} and report.gone == []
    assert report.fetched_bytes == len(hello.data) + len(world.data)
    assert mirror.requests == [] and snapshot.requests == []
    assert store.path(world.file.sha256).read_bytes() == world.data
    assert (bundle / "debs" / "hello.deb").read_bytes() == hello.data      # a bundle is read, never emptied


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path, debs):
    (tmp_path / "notabundle").mkdir()
    with pytest.raises(ConfigError, match="not a dlenv bundle"):
        obtain([debs["hello"].file], _sources(bundles=[tmp_path / "notabundle"]), store=PackageStore(tmp_path / "s"))


def test_bytes_that_are_not_the_locked_ones_are_refused_by_every_source(tmp_path, debs, mirror, snapshot, index):
    hello, world = debs["hello"], debs["libworld1"]
    # every source has a file at the right place, but with other bytes
    _on_mirror(mirror, hello, data=world.data)
    _on_snapshot(snapshot, hello, data=hello.data + b"tampered")
    bundle = _bundle(tmp_path / "bundle", [(hello.file.sha256, "hello.deb", hello.data[:-1] + b"X"),
                                           (_python_lock().python["venv"][0].sha256, WHEEL_NAME, b"other wheel")])
    index.put("simple/my-pkg/index.html", f'<a href="../../files/{WHEEL_NAME}">{WHEEL_NAME}</a>\n'.encode())
    index.put(f"files/{WHEEL_NAME}", b"other wheel bytes")
    (wheel,) = D.python_files(_python_lock())
    store = PackageStore(tmp_path / "store")

    report = obtain([hello.file, wheel], _sources(mirror=mirror, snapshot=snapshot, index=index, bundles=[bundle]),
                    store=store, resolved_at=STAMP)

    assert sorted(report.gone, key=lambda f: f.kind) == [hello.file, wheel]
    assert report.fetched == {} and report.fetched_bytes == 0
    assert snapshot.requests == [f"/archive/debian/{STAMP}/{hello.file.filename}"]     # each source was tried
    assert mirror.requests == [f"/debian/{hello.file.filename}"]
    assert index.requests == ["/simple/my-pkg/", f"/files/{WHEEL_NAME}"]
    assert not store.has(hello.file) and not store.has(wheel)
    assert store.usage() == (0, 0)
    assert _files_under(store.root) == []               # no entry, no temporary file left behind
    assert (bundle / "hello.deb").exists()


def test_a_file_no_source_has_is_gone(tmp_path, debs, mirror, snapshot, index, wheel):
    hello, world = debs["hello"], debs["libworld1"]
    _on_mirror(mirror, world)                            # only libworld1 can be had
    store = PackageStore(tmp_path / "store")

    report = obtain([hello.file, world.file, wheel], _sources(mirror=mirror, snapshot=snapshot, index=index),
                    store=store, resolved_at=STAMP)

    assert sorted(f.name for f in report.gone) == ["My_Pkg", "hello"]
    assert report.fetched == {"mirror": 1}
    assert "in no source" in report.summary() and "1 from the mirror" in report.summary()
    assert f"/debian/{hello.file.filename}" in mirror.requests
    assert f"/archive/debian/{STAMP}/{hello.file.filename}" in snapshot.requests
    assert index.requests == ["/simple/my-pkg/"]          # a 404 project page: nothing to download
    assert _files_under(store.root) == [f"sha256/{world.file.sha256[:2]}/{world.file.sha256}"]


def test_a_python_file_is_found_through_the_index_page(tmp_path, index, mirror, snapshot, wheel):
    sha = wheel.sha256
    index.put("simple/my-pkg/index.html",
              f'<!DOCTYPE html><html><body>\n<a href="../../files/other-0.1.tar.gz#sha256={"0" * 64}">other</a>\n'
              f'<a href="../../files/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>\n</body></html>\n'.encode())
    index.put(f"files/{WHEEL_NAME}", WHEEL)
    with _http_server(tmp_path / "empty-index") as empty:     # an index without the project comes first
        sources = PackageSources(snapshots=(snapshot.url + SNAPSHOT_TEMPLATE,), mirrors=(mirror.url + "/debian/",),
                                 indexes=(empty.url + "/simple/", index.url + "/simple/"))
        store = PackageStore(tmp_path / "store")
        report = obtain([wheel], sources, store=store, resolved_at=STAMP)
        assert empty.requests == ["/simple/my-pkg/"]

    assert report.fetched == {"index": 1} and report.gone == []
    assert report.fetched_bytes == len(WHEEL)
    assert index.requests == ["/simple/my-pkg/", f"/files/{WHEEL_NAME}"]
    assert mirror.requests == [] and snapshot.requests == []    # Python files are not on Debian's archive
    assert store.has(wheel) and store.path(sha).read_bytes() == WHEEL


def test_a_python_file_in_a_bundle_is_not_asked_of_the_index(tmp_path, index, wheel):
    index.put("simple/my-pkg/index.html", f'<a href="../../files/{WHEEL_NAME}">w</a>'.encode())
    index.put(f"files/{WHEEL_NAME}", WHEEL)
    bundle = _bundle(tmp_path / "bundle", [(wheel.sha256, f"python/{WHEEL_NAME}", WHEEL)])
    store = PackageStore(tmp_path / "store")
    report = obtain([wheel], _sources(index=index, bundles=[bundle]), store=store)
    assert report.fetched == {"bundle": 1} and index.requests == []
    assert store.path(wheel.sha256).read_bytes() == WHEEL


# --- dlenv's package repository -------------------------------------------------------------------

def _proxied(url: str):
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": url}))


def test_the_repository_serves_the_store_as_dlenv_packages_only(tmp_path, debs, wheel):
    hello, world = debs["hello"], debs["libworld1"]
    store = PackageStore(tmp_path / "store")
    (tmp_path / WHEEL_NAME).write_bytes(WHEEL)
    for path, file in ((hello.path, hello.file), (world.path, world.file), (tmp_path / WHEEL_NAME, wheel)):
        assert store.add(path, file)
    repo = tmp_path / "repo"
    debrepo.write_repository(repo, [hello.file, world.file, wheel], "bookworm", store)

    with debrepo.serve(repo) as url:
        opener = _proxied(url)
        with opener.open(f"{PACKAGE_REPO_URL}Packages", timeout=10) as resp:
            packages = resp.read()
        index_files = D.deb_files(packages.decode())
        assert set(index_files) == {"hello=1.0", "libworld1=1:2.0-1"}
        assert index_files["hello=1.0"].sha256 == hello.file.sha256
        assert index_files["libworld1=1:2.0-1"].sha256 == world.file.sha256
        assert f"SHA256: {hello.file.sha256}".encode() in packages
        assert index_files["hello=1.0"].size == hello.file.size

        with opener.open(f"{PACKAGE_REPO_URL}Release", timeout=10) as resp:
            release = resp.read().decode()
        assert "Suite: bookworm" in release
        assert f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages" in release

        # apt fetches URI + the index's Filename (pool/hello_1.0_all.deb: .debs live in their own folder,
        # so no file name of a lock can replace the index)
        stanza = next(f for f in D.stanzas(packages.decode()) if f["Package"] == "hello")
        assert stanza["Filename"] == "pool/hello_1.0_all.deb"
        with opener.open(PACKAGE_REPO_URL + stanza["Filename"], timeout=10) as resp:
            assert resp.read() == hello.data

        # pip's index: the project page links the file with its sha256, and the link gives the bytes
        page_url = f"{PACKAGE_REPO_URL}simple/my-pkg/"
        with opener.open(page_url, timeout=10) as resp:
            page = resp.read().decode()
        href = f"../../python/{WHEEL_NAME}#sha256={wheel.sha256}"
        assert f'href="{href}"' in page
        with opener.open(urllib.parse.urljoin(page_url, href), timeout=10) as resp:
            assert resp.read() == WHEEL

        # any other host: refused, never fetched
        for other in ("http://example.org/Packages", f"http://{PACKAGE_REPO_HOST}.example.org/Packages",
                      f"http://{PACKAGE_REPO_HOST}@example.org/Packages"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open(other, timeout=10)
            assert refused.value.code == 403, other
            refused.value.close()

        # no folder listings: only the files the lock names can be had
        with pytest.raises(urllib.error.HTTPError) as unlisted:
            opener.open(f"{PACKAGE_REPO_URL}python/", timeout=10)
        assert unlisted.value.code == 404
        unlisted.value.close()

        # a plain request (no proxy) is served too
        with urllib.request.urlopen(f"{url}/Packages", timeout=10) as resp:
            assert resp.read() == packages

    assert (repo / WHEEL_NAME).exists() is False and (repo / "python" / WHEEL_NAME).read_bytes() == WHEEL
    assert (repo / "pool" / hello.file.basename).read_bytes() == hello.data
    assert (repo / "sources").is_dir()


def test_the_repository_puts_source_tarballs_under_sources(tmp_path, debs):
    hello = debs["hello"]
    tarball = tmp_path / "hello_1.0.orig.tar.gz"
    tarball.write_bytes(b"upstream tarball")
    src = D.source_file({"package": "hello", "version": "1.0", "file": tarball.name,
                         "sha256": hashlib.sha256(b"upstream tarball").hexdigest(), "size": 16})
    assert src.filename == "pool/main/h/hello/hello_1.0.orig.tar.gz" and src.kind == "source"
    store = PackageStore(tmp_path / "store")
    assert store.add(tarball, src) and store.add(hello.path, hello.file)
    repo = tmp_path / "repo"
    debrepo.write_repository(repo, [hello.file, src], "bookworm", store)
    assert (repo / "sources" / tarball.name).read_bytes() == b"upstream tarball"
    assert list(D.deb_files((repo / "Packages").read_text())) == ["hello=1.0"]


# --- plan/debs: Packages stanzas, pool paths, what a lock needs ------------------------------------

PACKAGES = """\
Package: zlib1g
Version: 1:1.2.13.dfsg-1
Architecture: amd64
Description: compression library
 a continuation line: with a colon
Size: 86684
SHA256: {a}
Filename: ./zlib1g_1.2.13.dfsg-1_amd64.deb

Package: zlib1g
Version: 1:1.2.13.dfsg-1
Architecture: amd64
Size: 86684
SHA256: {a}
Filename: pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb

Package: broken
Version: 1
Size: not a number
SHA256: {b}
Filename: pool/main/b/broken/broken_1_all.deb

Package: nofile
Version: 2

Package: apt
Version: 2.6.2
Size: 10
SHA256: {b}
Filename: pool/updates/main/a/apt/apt_2.6.2_amd64.deb

Package: apt
Version: 2.6.2
Size: 10
SHA256: {b}
Filename: ./apt_2.6.2_amd64.deb
"""


def test_deb_files_reads_stanzas_and_prefers_the_pool_path():
    out = D.deb_files(PACKAGES.format(a="a" * 64, b="b" * 64))
    assert sorted(out) == ["apt=2.6.2", "zlib1g=1:1.2.13.dfsg-1"]
    z = out["zlib1g=1:1.2.13.dfsg-1"]
    assert z.filename == "pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb"
    assert (z.name, z.version, z.arch, z.size, z.sha256, z.kind) == ("zlib1g", "1:1.2.13.dfsg-1", "amd64", 86684,
                                                                     "a" * 64, "deb")
    assert z.basename == "zlib1g_1.2.13.dfsg-1_amd64.deb"
    assert out["apt=2.6.2"].arch == ""
    assert out["apt=2.6.2"].filename == "pool/updates/main/a/apt/apt_2.6.2_amd64.deb"    # a later flat copy loses
    entry = z.lock_entry()
    assert D.entry_problem(z.key, entry) is None
    assert D.from_lock_entry(z.key, entry) == z


def test_pool_path_follows_debians_layout():
    assert D.pool_path("openmpi", "openmpi_4.1.4.orig.tar.bz2") == "pool/main/o/openmpi/openmpi_4.1.4.orig.tar.bz2"
    assert D.pool_path("libfoo", "libfoo_1.tar.xz") == "pool/main/libf/libfoo/libfoo_1.tar.xz"
    assert D.pool_path("hello", "h.dsc", "contrib") == "pool/contrib/h/hello/h.dsc"


def test_release_text_is_the_same_everywhere_and_names_each_index():
    text = D.release_text("bookworm", {"Packages": b"abc", "Sources": b""})
    assert text == D.release_text("bookworm", {"Sources": b"", "Packages": b"abc"})
    assert "Suite: bookworm\nCodename: bookworm\n" in text and "Date: Thu, 01 Jan 1970 00:00:00 UTC" in text
    assert f" {hashlib.sha256(b'abc').hexdigest()} 3 Packages\n" in text
    assert text.index(" Packages\n") < text.index(" Sources\n")


GOOD_ENTRY = {"arch": "all", "size": 3, "sha256": "c" * 64, "file": "pool/main/h/hello/hello_1.0_all.deb"}


@pytest.mark.parametrize("key, entry, problem", [
    ("hello=1.0", GOOD_ENTRY, None),
    ("hello", GOOD_ENTRY, "PACKAGE=VERSION"),
    ("=1.0", GOOD_ENTRY, "PACKAGE=VERSION"),
    ("hello=", GOOD_ENTRY, "PACKAGE=VERSION"),
    ("hello=1.0", "pool/x.deb", "mapping"),
    ("hello=1.0", {"arch": "all", "size": 3, "sha256": "c" * 64}, "needs arch"),
    ("hello=1.0", {**GOOD_ENTRY, "sha256": "C" * 64}, "not a sha256"),
    ("hello=1.0", {**GOOD_ENTRY, "sha256": "c" * 63}, "not a sha256"),
    ("hello=1.0", {**GOOD_ENTRY, "size": -1}, "byte count"),
    ("hello=1.0", {**GOOD_ENTRY, "size": "3"}, "byte count"),
    ("hello=1.0", {**GOOD_ENTRY, "file": "../../etc/passwd"}, "archive path"),
    ("hello=1.0", {**GOOD_ENTRY, "file": "pool/../../x.deb"}, "archive path"),
    ("hello=1.0", {**GOOD_ENTRY, "file": "/abs/x.deb"}, "archive path"),
])
def test_entry_problem(key, entry, problem):
    found = D.entry_problem(key, entry)
    assert (found is None) if problem is None else (problem in found)


def test_needed_files_and_python_files_of_a_lock():
    base = L.load(PYTHON_LOCK)
    name, version = sorted(base.base_packages.items())[0]
    entry = dict(GOOD_ENTRY, file=D.pool_path(name, f"{name}_{version}_all.deb"))
    src = {"package": "hello", "version": "1.0", "file": "hello_1.0.orig.tar.gz", "sha256": "d" * 64, "size": 9}
    lock = dataclasses.replace(_python_lock(), debs={D.pin_key(name, version): entry}, sources={"hello": src})
    known, unknown = D.needed_files(lock)
    pins = D.lock_pins(lock)
    assert [f.key for f in known if f.kind == "deb"] == [D.pin_key(name, version)]
    assert sorted(unknown) == sorted(set(pins) - {D.pin_key(name, version)})
    assert known[-1] == D.source_file(src) and known[-1].filename == "pool/main/h/hello/hello_1.0.orig.tar.gz"
    (py,) = D.python_files(lock)                           # the same file in two steps is one file
    assert (py.kind, py.filename, py.size, py.arch) == ("python", WHEEL_NAME, 0, "")


def test_moved_pins_names_each_stage():
    old = L.load(PYTHON_LOCK)
    name = sorted(old.apt_build)[0]
    base_name = sorted(old.base_packages)[0]
    new_base = dict(old.base, packages={**old.base_packages, base_name: "9.9"})
    new = dataclasses.replace(old, apt_build={**old.apt_build, name: "0.0-new"}, base=new_base,
                              apt_runtime={**old.apt_runtime, "newpkg": "1"})
    rows = D.moved_pins(old, new)
    assert {"package": base_name, "stage": "base", "locked": old.base_packages[base_name], "used": "9.9"} in rows
    assert {"package": name, "stage": "build", "locked": old.apt_build[name], "used": "0.0-new"} in rows
    assert {"package": "newpkg", "stage": "runtime", "locked": "(none)", "used": "1"} in rows
    assert len(rows) == 3 and D.moved_pins(old, old) == []


# --- the lock's debs, resolved_at and refreshed ---------------------------------------------------

def _lock_with_debs(**changes) -> L.Lock:
    base = L.load(PYTHON_LOCK)
    debs = {"hello=1.0": dict(GOOD_ENTRY),
            "bsdutils=1:2.38.1-5+deb12u3": {"arch": "amd64", "size": 94412, "sha256": "e" * 64,
                                            "file": "pool/main/u/util-linux/bsdutils_2.38.1-5+deb12u3_amd64.deb"}}
    fields = {"debs": debs, "resolved_at": STAMP,
              "refreshed": {"from": "f" * 64, "moved": [{"package": "hello", "stage": "build", "locked": "0.9",
                                                         "used": "1.0"}]}}
    fields.update(changes)
    return dataclasses.replace(base, **fields)


def _written(tmp_path, lock: L.Lock, name: str = "t.lock") -> Path:
    path = tmp_path / name
    path.write_text(L.dump(lock))
    return path


def test_dump_then_load_keeps_debs_resolved_at_and_refreshed(tmp_path):
    lock = _lock_with_debs()
    text = L.dump(lock)
    assert "  hello=1.0: {arch: all, size: 3, sha256: " in text           # one line per file
    loaded = L.load(_written(tmp_path, lock))
    assert loaded.debs == lock.debs
    assert loaded.resolved_at == STAMP
    assert loaded.refreshed == lock.refreshed
    assert loaded == lock and loaded.digest == lock.digest
    assert L.dump(loaded) == text


def _old_lock_file(tmp_path) -> Path:
    """The python stack's lock as written before locks named bytes: no debs, resolved_at or refreshed."""
    data = yaml.safe_load(PYTHON_LOCK.read_text())
    for key in ("debs", "resolved_at", "refreshed"):
        data.pop(key, None)
    path = tmp_path / "old.lock"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_lock_without_the_new_fields_still_loads(tmp_path):
    path = _old_lock_file(tmp_path)
    assert "debs" not in path.read_text() and "resolved_at" not in path.read_text()
    lock = L.load(path)
    assert (lock.debs, lock.resolved_at, lock.refreshed) == ({}, "", {})
    known, unknown = D.needed_files(lock)
    assert [f for f in known if f.kind == "deb"] == [] and unknown         # every pin still to be resolved
    assert sorted(unknown) == sorted(D.lock_pins(lock))
    text = L.dump(lock)
    assert "debs:" not in text and "resolved_at" not in text and "refreshed" not in text
    assert L.load(_written(tmp_path, lock)) == lock


@pytest.mark.parametrize("key, entry, problem", [
    ("hello=1.0", {**GOOD_ENTRY, "sha256": "not-a-sha"}, "not a sha256"),
    ("hello", GOOD_ENTRY, "PACKAGE=VERSION"),
    ("hello=1.0", {**GOOD_ENTRY, "file": "../x.deb"}, "not an archive path"),
])
def test_a_damaged_debs_entry_names_the_file_and_the_field(tmp_path, key, entry, problem):
    path = _written(tmp_path, _lock_with_debs(debs={key: entry}), "damaged.lock")
    with pytest.raises(LockError) as caught:
        L.load(path)
    assert str(path) in caught.value.message
    assert f"debs.{key}" in caught.value.message
    assert problem in caught.value.message


@pytest.mark.parametrize("changes, fieldname", [
    ({"resolved_at": "2024-03-15"}, "resolved_at"),
    ({"refreshed": {"moved": []}}, "refreshed"),
])
def test_a_damaged_time_or_refresh_record_names_the_field(tmp_path, changes, fieldname):
    path = _written(tmp_path, _lock_with_debs(**changes))
    with pytest.raises(LockError, match=f"{fieldname}: "):
        L.load(path)


def test_the_digest_covers_the_bytes_but_not_the_time(tmp_path):
    lock = _lock_with_debs()
    plain = L.load(_old_lock_file(tmp_path))
    other_bytes = {**lock.debs, "hello=1.0": {**GOOD_ENTRY, "sha256": "9" * 64}}
    assert dataclasses.replace(lock, debs=other_bytes).digest != lock.digest
    assert dataclasses.replace(lock, resolved_at=OTHER_STAMP).digest == lock.digest
    assert dataclasses.replace(lock, resolved_at="").digest == lock.digest
    assert dataclasses.replace(lock, refreshed={}).digest == lock.digest
    assert lock.digest != plain.digest                           # naming the bytes is a change of pins
    assert dataclasses.replace(lock, debs={}).digest == plain.digest    # an old lock keeps its digest


# --- regressions found by these tests -------------------------------------------------------------

def test_a_deb_named_like_the_index_cannot_replace_it_or_truncate_the_store(tmp_path, debs):
    """A .deb lives under pool/ in the repository: a lock's file name can never be Packages or Release."""
    hello = debs["hello"]
    store = PackageStore(tmp_path / "store")
    named = dataclasses.replace(hello.file, filename="pool/main/h/hello/Packages")
    assert D.entry_problem("hello=1.0", named.lock_entry()) is not None     # the lock refuses such a file
    assert store.add(hello.path, named)
    debrepo.write_repository(tmp_path / "repo", [named], "bookworm", store)
    assert store.path(named.sha256).read_bytes() == hello.data
    assert (tmp_path / "repo" / "pool" / "Packages").read_bytes() == hello.data
    assert (tmp_path / "repo" / "Packages").read_bytes() != hello.data


def test_trim_removes_interrupted_downloads(tmp_path):
    store = PackageStore(tmp_path / "store")
    partial = store.root / "incoming" / "tmpabc"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"12345")
    assert store.trim(set()) == (1, 5) and not partial.exists()


def test_a_file_from_a_bundle_counts_its_bytes(tmp_path, wheel):
    bundle = _bundle(tmp_path / "b", [(wheel.sha256, f"python/{WHEEL_NAME}", WHEEL)])
    report = obtain([wheel], _sources(bundles=(bundle,)), store=PackageStore(tmp_path / "store"))
    assert report.fetched == {"bundle": 1} and report.fetched_bytes == len(WHEEL)


def test_the_repository_says_the_archives_priority_not_the_control_files(tmp_path, debs):
    """mmdebstrap's minbase installs Priority:required packages as asked-for and the rest as automatic:
    the repository must carry the archive's priority (recorded in the lock) to give the archive's rootfs."""
    hello = debs["hello"]
    store = PackageStore(tmp_path / "store")
    required = dataclasses.replace(hello.file, priority="required")
    assert D.entry_problem("hello=1.0", required.lock_entry()) is None
    assert D.from_lock_entry("hello=1.0", required.lock_entry()) == required
    assert D.entry_problem("hello=1.0", {**required.lock_entry(), "priority": "not one"}) is not None
    assert store.add(hello.path, required)
    debrepo.write_repository(tmp_path / "repo", [required], "bookworm", store)
    stanza = next(D.stanzas((tmp_path / "repo" / "Packages").read_text()))
    assert stanza["Priority"] == "required" and stanza["Package"] == "hello"
    assert D.deb_files((tmp_path / "repo" / "Packages").read_text())["hello=1.0"].priority == "required"


def test_a_lock_without_debian_files_gets_an_empty_index(tmp_path):
    """A project on its parent's image may add no Debian package: its repository is empty, not an error."""
    debrepo.write_repository(tmp_path / "repo", [], "bookworm", PackageStore(tmp_path / "store"))
    assert (tmp_path / "repo" / "Packages").read_text() == ""
    assert "Suite: bookworm" in (tmp_path / "repo" / "Release").read_text()
