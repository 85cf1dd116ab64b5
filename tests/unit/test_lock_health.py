"""Whether a lock's Debian pins can still be had, without downloading them: engine/availability.py
against a local HTTP server standing in for the Debian mirror, then `dlenv list`, `dlenv lock --check`,
`dlenv gc --store` and `dlenv doctor` through click's runner on a one-stack catalog in tmp_path."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from builder import doctor, paths
from builder.statelock import stack_lock
from builder.engine.availability import LockPins, check_locks, check_pins
from builder.engine.gc import apply_store_gc, plan_store_gc
from builder.engine.store import MANIFEST, PackageSources, PackageStore
from builder.plan import lockfile as L
from builder.plan import pins as P
from builder.plan.debs import DebFile, pin_key
from builder.plan.plan import plan

from dlenv_unit import ROOT

PINS = {"base": {"bash": "5.2.15-2+b13", "dpkg": "1.21.23"},
        "build": {"gcc": "4:12.2.0-3", "python3": "3.11.2-1+b1"}, "runtime": {"python3": "3.11.2-1+b1"}}
VANISHED = "dpkg=1.21.23"


# --- a mirror on 127.0.0.1 ----------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64     # the default 5 drops the connections of 8 workers: 1 s retries
    daemon_threads = True


class Mirror:
    """A folder served over HTTP; `requests` records (method, path) of every request it answered."""

    def __init__(self, root: Path, head: bool = True):
        self.root = root
        self.requests: list = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_HEAD(self):
                mirror.requests.append(("HEAD", self.path))
                if not head:
                    self.send_error(405)
                    return
                super().do_HEAD()

            def do_GET(self):
                mirror.requests.append(("GET", self.path))
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def put(self, file: DebFile, data: bytes, prefix: str = "debian") -> None:
        path = self.root / prefix / file.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def asked(self, method: str = "HEAD") -> list:
        return [p for m, p in self.requests if m == method]


@pytest.fixture
def mirror(tmp_path):
    m = Mirror(tmp_path / "mirror")
    yield m
    m.server.shutdown()
    m.server.server_close()


@pytest.fixture
def refused_url():
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/debian"


def deb(name: str, version: str, data: bytes, kind: str = "deb") -> DebFile:
    filename = f"pool/main/{name[0]}/{name}/{name}_{hashlib.sha256(data).hexdigest()[:8]}_amd64.deb"
    return DebFile(name, version, "amd64", len(data), hashlib.sha256(data).hexdigest(), filename, kind)


def content(key: str) -> bytes:
    return f"the bytes of {key}\n".encode()


# --- engine/availability.py -------------------------------------------------------------------------

def test_store_bundle_and_mirror_are_asked_without_a_download(tmp_path, mirror):
    store = PackageStore(tmp_path / "store")
    in_store, in_bundle, on_mirror, vanished = (deb(n, "1.0", content(n)) for n in ("alpha", "beta", "gamma", "delta"))
    other_bytes = deb("eps", "2.0", content("eps"))
    src = tmp_path / "in-store.deb"
    src.write_bytes(content("alpha"))
    assert store.add(src, in_store)
    bundle = tmp_path / "bundle"
    (bundle / "files").mkdir(parents=True)
    (bundle / "files" / "beta.deb").write_bytes(content("beta"))
    (bundle / MANIFEST).write_text(json.dumps({"files": [{"sha256": in_bundle.sha256, "path": "files/beta.deb"}]}))
    mirror.put(on_mirror, content("gamma"))
    mirror.put(other_bytes, content("eps") + b"and more")      # another file under the locked name
    sources = PackageSources(bundles=(str(bundle),), mirrors=(f"{mirror.url}/debian",))
    python = DebFile("six", "1.17.0", "", 0, "f" * 64, "six-1.17.0-py2.py3-none-any.whl", "python")

    got = check_pins([in_store, in_bundle, on_mirror, vanished, other_bytes, python], sources,
                     unknown=["old=1.0"], store=store)

    assert got.gone_keys == ["delta=1.0", "eps=2.0"]
    assert got.no_bytes == ["old=1.0"] and not got.unchecked and not got.ok
    assert (got.files, got.debs, got.local) == (5, 5, 2)
    assert sorted(mirror.asked()) == sorted(f"/debian/{f.filename}" for f in (on_mirror, vanished, other_bytes))
    assert mirror.asked("GET") == []
    assert not (tmp_path / "store" / "incoming").exists()       # nothing fetched, nothing half-written


def test_a_file_several_locks_pin_is_asked_for_once(tmp_path, mirror):
    files = [deb(f"pkg{i}", "1", content(f"pkg{i}")) for i in range(30)]
    for f in files[:20]:
        mirror.put(f, content(f.name))
    sources = PackageSources(mirrors=(f"{mirror.url}/debian",))
    jobs = {"a": LockPins(tuple(files[:25]), (), sources), "b": LockPins(tuple(files[10:]), (), sources)}
    got = check_locks(jobs, store=PackageStore(tmp_path / "store"))
    assert len(mirror.asked()) == 30 and len(set(mirror.asked())) == 30
    assert got["a"].gone_keys == [f"pkg{i}=1" for i in range(20, 25)]
    assert got["b"].gone_keys == [f"pkg{i}=1" for i in range(20, 30)]


def test_a_mirror_that_does_not_answer_means_not_checked_not_gone(tmp_path, refused_url):
    files = [deb(f"pkg{i}", "1", content(f"pkg{i}")) for i in range(40)]
    started = time.monotonic()
    got = check_pins(files, PackageSources(mirrors=(refused_url,)), store=PackageStore(tmp_path / "store"))
    assert time.monotonic() - started < 5
    assert got.gone == [] and len(got.unchecked) == 40
    assert got.reasons == [f"{refused_url.split('/')[2]}: connection refused"]


def test_a_hanging_mirror_costs_one_timeout_and_the_pass_has_a_deadline(tmp_path):
    with socket.socket() as hang:                # accepts connections (the kernel does), never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(64)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/debian"
        files = [deb(f"pkg{i}", "1", content(f"pkg{i}")) for i in range(20)]
        started = time.monotonic()
        got = check_pins(files, PackageSources(mirrors=(url,)), store=PackageStore(tmp_path / "s"), timeout=0.3)
        assert time.monotonic() - started < 2
        assert len(got.unchecked) == 20 and got.reasons == [f"{url.split('/')[2]}: no answer within 0.3s"]
        started = time.monotonic()
        got = check_pins(files, PackageSources(mirrors=(url,)), store=PackageStore(tmp_path / "s"), timeout=10,
                         deadline=0.5)
        assert time.monotonic() - started < 2
        assert len(got.unchecked) == 20 and got.reasons == ["no answer within 0.5s"]


def test_offline_asks_no_one(tmp_path, mirror):
    files = [deb("pkg", "1", content("pkg"))]
    mirror.put(files[0], content("pkg"))
    got = check_pins(files, PackageSources(mirrors=(f"{mirror.url}/debian",)), store=PackageStore(tmp_path / "s"),
                     offline=True)
    assert mirror.requests == [] and len(got.unchecked) == 1 and got.offline and got.gone == []


def test_no_source_to_ask_is_said(tmp_path):
    got = check_pins([deb("pkg", "1", content("pkg"))], PackageSources(), store=PackageStore(tmp_path / "s"))
    assert got.gone == [] and "no Debian mirror or snapshot" in got.reasons[0]


def test_the_snapshot_at_the_lock_time_is_asked_before_the_mirror(tmp_path, mirror):
    source = deb("openmpi", "4.1.4-3", content("openmpi"), kind="source")
    mirror.put(source, content("openmpi"), prefix="snap/20250101T000000Z")
    sources = PackageSources(snapshots=(f"{mirror.url}/snap/{{timestamp}}",), mirrors=(f"{mirror.url}/debian",))
    got = check_pins([source], sources, resolved_at="20250101T000000Z", store=PackageStore(tmp_path / "s"))
    assert got.ok and mirror.asked() == [f"/snap/20250101T000000Z/{source.filename}"]
    got = check_pins([source], sources, resolved_at="20240101T000000Z", store=PackageStore(tmp_path / "s"))
    assert got.gone_keys == [f"{source.basename} (source of openmpi=4.1.4-3)"]


def test_a_server_without_head_is_asked_with_a_one_byte_get(tmp_path):
    m = Mirror(tmp_path / "mirror", head=False)
    try:
        there, gone = deb("there", "1", content("there")), deb("gone", "1", content("gone"))
        m.put(there, content("there"))
        got = check_pins([there, gone], PackageSources(mirrors=(f"{m.url}/debian",)),
                         store=PackageStore(tmp_path / "s"))
        assert got.gone_keys == ["gone=1"] and not got.unchecked
        assert len(m.asked("GET")) == 2
    finally:
        m.server.shutdown()
        m.server.server_close()


# --- a one-stack catalog whose lock names bytes --------------------------------------------------------

class Catalog:
    """stacks/python.yaml (the real one) with a lock that pins PINS and names each file's bytes; every
    file is on the mirror but VANISHED's (unless `put_all`)."""

    def __init__(self, tmp_path: Path, mirror: Mirror):
        self.stacks = tmp_path / "stacks"
        self.stacks.mkdir()
        shutil.copy(ROOT / "stacks" / "python.yaml", self.stacks / "python.yaml")
        self.lock_file = self.stacks / "python.lock"
        self.state = tmp_path / "state"
        self.mirror = mirror
        self.files = {}
        for pins in PINS.values():
            for name, version in pins.items():
                key = pin_key(name, version)
                self.files[key] = deb(name, version, content(key))

    @property
    def env(self) -> dict:
        return {"DLENV_STACKS_DIR": str(self.stacks), "DLENV_DEBIAN_MIRROR": f"{self.mirror.url}/debian",
                "DLENV_DEBIAN_SNAPSHOT": None, "DOCKER_HOST": "unix:///nonexistent.sock", "COLUMNS": "250"}

    def lock(self, *, debs: bool = True, stale: bool = False) -> L.Lock:
        resolved = plan(str(self.stacks / "python.yaml"), self.stacks).resolved
        inputs = P.lock_inputs(resolved)
        if stale:
            inputs = {**inputs, "components": {**inputs["components"], "python": "3.12"}}
        lock = L.Lock(stack="python", inputs=inputs, platform={"arch": "amd64", "python": "3.11.2"},
                      base={"suite": "bookworm", "variant": "minbase", "epoch": 1735689600,
                            "rootfs_sha256": "c" * 64, "packages": PINS["base"]},
                      apt_build=PINS["build"], apt_runtime=PINS["runtime"], sources={}, python={},
                      dlenv_version="test",
                      debs={k: f.lock_entry() for k, f in self.files.items()} if debs else {})
        self.lock_file.write_text(L.dump(lock))
        return lock

    def serve(self, everything: bool = False) -> None:
        for key, f in self.files.items():
            if everything or key != VANISHED:
                self.mirror.put(f, content(key))

    def store_all(self) -> PackageStore:
        store = PackageStore(self.state / "store")
        for key, f in self.files.items():
            src = self.state.parent / "incoming.deb"
            src.write_bytes(content(key))
            assert store.add(src, f)
        return store


@pytest.fixture
def catalog(tmp_path, mirror, monkeypatch):
    monkeypatch.chdir(tmp_path)    # no project here; no .dlenv.yaml of the checkout
    return Catalog(tmp_path, mirror)


def lock_cell(result) -> str:
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.stdout.splitlines() if ln.startswith("│ python"))
    return row.split("│")[4].strip()


# --- dlenv list ------------------------------------------------------------------------------------------

def test_list_says_how_many_pins_are_gone(cli, catalog):
    catalog.lock()
    catalog.serve()
    assert lock_cell(cli("list", env=catalog.env)) == "locked, 1 pin gone"
    rows = json.loads(cli("list", "--json", env=catalog.env).stdout)
    assert rows[0]["lock"] == "locked" and rows[0]["pins"]["gone"] == [VANISHED]
    assert rows[0]["pins"]["files"] == len(catalog.files)
    catalog.serve(everything=True)
    assert lock_cell(cli("list", env=catalog.env)) == "locked"


def test_list_checks_every_file_once_and_none_the_store_has(cli, catalog):
    catalog.lock()
    catalog.serve()
    cli("list", env=catalog.env)
    assert sorted(catalog.mirror.asked()) == sorted(f"/debian/{f.filename}" for f in catalog.files.values())
    catalog.mirror.requests.clear()
    catalog.store_all()
    assert lock_cell(cli("list", env=catalog.env)) == "locked"
    assert catalog.mirror.requests == []


def test_list_offline_says_what_the_store_lacks(cli, catalog):
    catalog.lock()
    catalog.serve(everything=True)
    assert lock_cell(cli("list", "--offline", env=catalog.env)) == f"locked, {len(catalog.files)} pins not in the store"
    assert catalog.mirror.requests == []
    catalog.store_all()
    assert lock_cell(cli("list", "--offline", env=catalog.env)) == "locked"


def test_list_of_a_lock_without_bytes(cli, catalog):
    catalog.lock(debs=False)
    assert lock_cell(cli("list", env=catalog.env)) == "locked, no bytes recorded"
    assert catalog.mirror.requests == []


def test_list_with_the_mirror_down_still_lists(cli, catalog, refused_url):
    catalog.lock()
    cell = lock_cell(cli("list", env={**catalog.env, "DLENV_DEBIAN_MIRROR": refused_url}))
    assert cell == f"locked, pins not checked: {refused_url.split('/')[2]}: connection refused"


def test_list_markdown_asks_no_mirror(cli, catalog):
    catalog.lock()
    result = cli("list", "--markdown", env=catalog.env)
    assert result.exit_code == 0 and catalog.mirror.requests == []


# --- dlenv lock --check ---------------------------------------------------------------------------------

def test_lock_check_names_the_vanished_pins_and_writes_nothing(cli, catalog):
    catalog.lock()
    catalog.serve()
    before = catalog.lock_file.read_bytes()
    result = cli("lock", "python", "--check", env=catalog.env)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and VANISHED in errors[0] and "1 pinned Debian file(s) in no source" in errors[0]
    assert "`dlenv build python` refreshes them" in errors[0] and "`make relock`" in errors[0]
    assert "Traceback" not in result.output
    assert catalog.lock_file.read_bytes() == before
    assert not (catalog.state / "refreshed-locks" / "python.lock").exists()


def test_lock_check_says_all_files_obtainable(cli, catalog):
    catalog.lock()
    catalog.serve(everything=True)
    result = cli("lock", "python", "--check", env=catalog.env)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"all {len(catalog.files)} pinned files obtainable"
    assert "matches" in result.stdout


def test_lock_check_counts_a_vendored_bundle(cli, catalog, tmp_path):
    catalog.lock()
    catalog.serve()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "dpkg.deb").write_bytes(content(VANISHED))
    (bundle / MANIFEST).write_text(json.dumps({"files": [{"sha256": catalog.files[VANISHED].sha256,
                                                          "path": "dpkg.deb"}]}))
    result = cli("lock", "python", "--check", "--vendor", bundle, env=catalog.env)
    assert result.exit_code == 0, result.output


def test_lock_check_still_reports_a_stale_lock_first(cli, catalog):
    catalog.lock(stale=True)
    result = cli("lock", "python", "--check", env=catalog.env)
    assert result.exit_code == 1 and "no longer matches" in result.stderr
    assert catalog.mirror.requests == []


def test_lock_check_with_the_mirror_down_fails_saying_why(cli, catalog, refused_url):
    catalog.lock()
    result = cli("lock", "python", "--check", env={**catalog.env, "DLENV_DEBIAN_MIRROR": refused_url})
    assert result.exit_code == 1 and "could not be checked" in result.stderr and "connection refused" in result.stderr


def test_lock_check_of_a_lock_without_bytes_says_so(cli, catalog):
    catalog.lock(debs=False)
    result = cli("lock", "python", "--check", env=catalog.env)
    assert result.exit_code == 0, result.output
    assert f"{len(catalog.files)} pin(s) have no bytes recorded" in result.stdout


# --- dlenv gc --store -----------------------------------------------------------------------------------

def test_gc_store_keeps_what_the_locks_name(cli, catalog):
    catalog.lock()
    store = catalog.store_all()
    orphan, refreshed = deb("orphan", "1", content("orphan")), deb("newer", "2", content("newer"))
    for f in (orphan, refreshed):
        src = catalog.state / "x.deb"
        src.write_bytes(content(f.name))
        assert store.add(src, f)
    # a refreshed lock in the state folder keeps its files
    locks = catalog.state / "refreshed-locks"
    locks.mkdir(parents=True)
    shipped = L.load(catalog.lock_file)
    newer = L.Lock(**{**shipped.__dict__, "apt_runtime": {**shipped.apt_runtime, "newer": "2"},
                      "debs": {**shipped.debs, "newer=2": refreshed.lock_entry()},
                      "path": None, "refreshed": {"from": shipped.digest, "moved": []}})
    (locks / "python.lock").write_text(L.dump(newer))
    (locks / "_base.lock").write_text("")
    total = len(catalog.files) + 2

    result = cli("gc", "--store", "--dry-run", env=catalog.env)
    assert result.exit_code == 0, result.output
    assert f"would remove 1 file(s), 0.0 MB; kept {total - 1} file(s) named by 2 lock(s)" in result.stdout
    assert store.usage()[0] == total
    assert "images left as they are" in result.stderr

    result = cli("gc", "--store", env=catalog.env)
    assert result.exit_code == 0, result.output
    assert "removed 1 file(s), 0.0 MB freed" in result.stdout
    assert store.usage() == (total - 1, sum(len(content(k)) for k in catalog.files) + len(content("newer")))
    assert not store.path(orphan.sha256).exists() and store.path(refreshed.sha256).exists()


def test_gc_store_keeps_this_folders_project_lock_and_refuses_a_damaged_catalog_lock(cli, catalog, tmp_path):
    catalog.lock()
    store = catalog.store_all()
    project_file = deb("proj", "1", content("proj"))
    src = tmp_path / "p.deb"
    src.write_bytes(content("proj"))
    store.add(src, project_file)
    shipped = L.load(catalog.lock_file)
    project = L.Lock(**{**shipped.__dict__, "apt_runtime": {"proj": "1"}, "debs": {"proj=1": project_file.lock_entry()},
                        "path": None})
    (tmp_path / "dlenv.yaml").write_text("schema: 1\nname: proj\nextends: python\n")
    (tmp_path / "dlenv.lock").write_text(L.dump(project))
    result = cli("gc", "--store", env=catalog.env)
    assert result.exit_code == 0 and "removed 0 file(s)" in result.stdout, result.output

    catalog.lock_file.write_text("lock: 1\nstack: [unclosed\n")
    result = cli("gc", "--store", env=catalog.env)
    assert result.exit_code == 1 and "python.lock" in result.stderr and "Traceback" not in result.output
    assert store.usage()[0] == len(catalog.files) + 1


def test_store_gc_leaves_a_running_builds_partial_download(tmp_path):
    store = PackageStore(tmp_path / "store")
    kept, dropped = deb("kept", "1", content("kept")), deb("dropped", "1", content("dropped"))
    for f in (kept, dropped):
        src = tmp_path / "x.deb"
        src.write_bytes(content(f.name))
        store.add(src, f)
    fresh = store.path(kept.sha256).parent / ".incoming-fresh"
    old = store.path(kept.sha256).parent / ".incoming-old"
    fresh.write_bytes(b"half")
    old.write_bytes(b"half a file")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    plan = plan_store_gc(store, {kept.sha256})
    assert sorted(plan.remove) == sorted([store.path(dropped.sha256), old]) and plan.kept_files == 1
    assert plan.remove_bytes == len(content("dropped")) + len(b"half a file")
    assert apply_store_gc(plan) == (2, plan.remove_bytes)
    assert fresh.exists() and store.path(kept.sha256).exists() and not old.exists()


def test_gc_without_store_still_needs_the_engine(cli, catalog):
    result = cli("gc", env=catalog.env)
    assert result.exit_code == 1 and "package store" not in result.stdout


# --- dlenv doctor -----------------------------------------------------------------------------------------

def test_doctor_shows_the_package_store(cli, catalog, monkeypatch):
    monkeypatch.setattr(doctor, "run_checks", lambda settings=None, **kw: [doctor.DoctorCheck("engine", "ok", "fake")])
    catalog.lock()
    catalog.store_all()
    result = cli("doctor", env=catalog.env)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("info"))
    assert f"package store  {catalog.state / 'store'}: {len(catalog.files)} file(s), 0.0 MB" in line
    assert result.stdout.splitlines()[-1] == "1 ok"
    data = json.loads(cli("doctor", "--json", env=catalog.env).stdout)
    assert data["package_store"]["files"] == len(catalog.files)
    assert data["package_store"]["path"] == str(catalog.state / "store")


def test_a_build_mutex_leaves_a_refreshed_lock_alone(tmp_path, monkeypatch):
    """The per-stack mutex files live in <state>/locks/ and are opened for writing: a refreshed catalog
    lock must live elsewhere, or the next build of the stack would empty it."""
    monkeypatch.setenv("DLENV_STATE_DIR", str(tmp_path))
    refreshed = paths.refreshed_locks_dir() / "python.lock"
    refreshed.parent.mkdir(parents=True)
    refreshed.write_text("lock: 1\n")
    with stack_lock("python"):
        pass
    assert refreshed.read_text() == "lock: 1\n"
