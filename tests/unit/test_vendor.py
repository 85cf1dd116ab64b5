"""`dlenv vendor` without the engine: the bundle's manifest and repository, the parent chain, the
round trip into an empty store, and every refusal (no lock, stale lock, pins without bytes, files no
source has, a folder that is no bundle), each leaving nothing half-written.

The files are small real .deb packages (dpkg-deb --build of a tiny tree) and made-up source and Python
files, put into a package store under the test's state folder; no source is ever reached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.engine import store as store_mod
from builder.engine.store import PackageSources, PackageStore, obtain
from builder.errors import DlenvError, ExportError, LockError
from builder.pipeline import vendor as vendor_mod
from builder.pipeline.packages import lock_files
from builder.pipeline.vendor import vendor
from builder.plan import lockfile as L
from builder.plan import pins as P
from builder.plan.debs import DebFile, stanzas
from builder.plan.layered import layered_inputs
from builder.plan.plan import parent_of, plan

pytestmark = pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("dpkg-scanpackages")),
                                reason="needs dpkg-deb and dpkg-scanpackages (dpkg-dev)")

DEAD = {"DLENV_DEBIAN_MIRROR": "http://127.0.0.1:9/debian", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": ""}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict:
    """name -> (path, DebFile) of three tiny real .deb packages."""
    root = tmp_path_factory.mktemp("debs")
    out = {}
    for name in ("tiny-base", "tiny-build", "tiny-child"):
        tree = root / name
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "usr" / "share" / name).mkdir(parents=True)
        (tree / "usr" / "share" / name / "README").write_text(f"{name}\n")
        (tree / "DEBIAN" / "control").write_text(
            f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: dlenv tests <t@example.org>\n"
            f"Description: a tiny package for dlenv's vendor tests\n")
        deb = root / f"{name}_1.0-1_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                       capture_output=True)
        data = deb.read_bytes()
        out[name] = (deb, DebFile(name, "1.0-1", "all", len(data), _sha(data), f"pool/main/t/{name}/{deb.name}"))
    return out


def _deb_entries(*files: DebFile) -> dict:
    return {f.key: f.lock_entry() for f in files}


class Chain:
    """A root stack (own components: a whole build), `mid` on its image, `child` on mid's: each locked
    with the tiny files, which are put into the store of the state folder `state`."""

    def __init__(self, folder: Path, debs: dict):
        self.folder = folder
        self.state = folder / "state"
        self.debs = debs
        self.root = self._write("root.yaml", 'schema: 1\nname: root\ncomponents: {python: "3.11"}\n')
        self.mid = self._write("mid.yaml", 'schema: 1\nname: mid\nextends: ./root.yaml\napt_packages: [tiny-child]\n')
        self.child = self._write("dlenv.yaml", 'schema: 1\nname: child\nextends: ./mid.yaml\n'
                                               'python_packages: ["six==1.17.0"]\n')
        self.tarball = b"a source tarball\n" * 10
        self.wheel = b"not really a wheel\n" * 20
        self.extra: dict = {}      # name -> bytes of made-up files also put into the store

    def _write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text)
        return path

    def deb(self, name: str) -> DebFile:
        return self.debs[name][1]

    def lock_root(self, *, debs: dict | None = None) -> None:
        p = plan(str(self.root))
        base, build = self.deb("tiny-base"), self.deb("tiny-build")
        lock = L.Lock(stack="root", inputs=P.lock_inputs(p.resolved), platform={"arch": "amd64", "python": "3.11.2"},
                      base={"suite": "bookworm", "variant": "minbase", "epoch": 1735689600,
                            "packages": {base.name: base.version}},
                      apt_build={build.name: build.version}, apt_runtime={build.name: build.version},
                      sources={}, python={}, debs=_deb_entries(base, build) if debs is None else debs,
                      resolved_at="20250101T000000Z")
        L.lock_path(self.root).write_text(L.dump(lock))

    def lock_layered(self, path: Path, *, runtime: dict, python: dict) -> None:
        p = plan(str(path))
        parent = parent_of(p.parent)
        lock = L.Lock(stack=p.resolved.name, inputs=layered_inputs(p.resolved, parent), platform={"python": "3.11.2"},
                      base={"packages": {}}, apt_build={}, apt_runtime=runtime, sources={}, python=python,
                      parent={"stack": parent.stack, "content_hash": parent.content_hash, "lock": parent.lock.digest},
                      debs=_deb_entries(*(self.deb(n) for n in runtime)))
        L.lock_path(path).write_text(L.dump(lock))

    def lock_all(self) -> None:
        self.lock_root()
        self.lock_layered(self.mid, runtime={"tiny-child": "1.0-1"}, python={})
        six = L.PythonPin("six", "1.17.0", "six-1.17.0-py2.py3-none-any.whl", _sha(self.wheel))
        self.lock_layered(self.child, runtime={}, python={P.LEAF_STEP: (six,)})

    def fill_store(self, skip: tuple = ()) -> PackageStore:
        store = PackageStore(self.state / "store")
        for name, (path, f) in self.debs.items():
            if name not in skip:
                assert store.add(path, f)
        for name, data in {"six-1.17.0-py2.py3-none-any.whl": self.wheel, **self.extra}.items():
            if name not in skip:
                src = self.folder / name
                src.write_bytes(data)
                assert store.add(src, DebFile(name, "", "", len(data), _sha(data), name, "python"))
        return store


@pytest.fixture
def chain(tmp_path, debs, monkeypatch) -> Chain:
    c = Chain(tmp_path, debs)
    monkeypatch.setenv("DLENV_STATE_DIR", str(c.state))
    return c


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".old")))


# --- the bundle -----------------------------------------------------------------------------------

def test_vendor_writes_manifest_repository_and_the_parent_chain(chain, cli):
    chain.lock_all()
    chain.fill_store()
    out = chain.folder / "bundle"
    result = cli("vendor", chain.child, "-o", out, "--json", env={**DEAD, "DLENV_STATE_DIR": str(chain.state)})
    assert result.exit_code == 0, result.output + (result.stderr or "")
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"deb": 3, "source": 0, "python": 1}
    assert summary["files"] == 4 and summary["path"] == str(out)

    manifest = json.loads((out / "manifest.json").read_text())
    p = plan(str(chain.child))
    assert manifest["format"] == 1 and manifest["stack"] == "child"
    assert manifest["lock"] == p.lock.digest and manifest["content_hash"] == p.content_hash
    assert [q["stack"] for q in manifest["parents"]] == ["root", "mid"]
    by_name = {e["name"]: e for e in manifest["files"]}
    assert set(by_name) == {"tiny-base", "tiny-build", "tiny-child", "six"}
    for name in ("tiny-base", "tiny-build", "tiny-child"):
        f = chain.deb(name)
        assert by_name[name] == {"path": by_name[name]["path"], "sha256": f.sha256, "size": f.size, "kind": "deb",
                                 "name": name, "version": "1.0-1"}
    assert by_name["six"]["path"].startswith("debian/python/")       # where pip's index (simple/) links
    assert by_name["six"]["kind"] == "python" and by_name["six"]["size"] == len(chain.wheel)
    assert summary["bytes"] == sum(e["size"] for e in manifest["files"])
    for entry in manifest["files"]:       # every path is relative to the bundle and holds the locked bytes
        assert entry["path"].startswith("debian/") and ".." not in entry["path"].split("/")
        assert _sha((out / entry["path"]).read_bytes()) == entry["sha256"]
    # DIR/debian is a flat apt repository: its index names every .deb where the manifest has it
    index = {f["Package"]: f for f in stanzas((out / "debian" / "Packages").read_text())}
    assert set(index) == {"tiny-base", "tiny-build", "tiny-child"}
    for name, fields in index.items():
        assert f"debian/{fields['Filename'].removeprefix('./')}" == by_name[name]["path"]
        assert fields["SHA256"] == by_name[name]["sha256"]
    assert _sha((out / "debian" / "Packages").read_bytes()) in (out / "debian" / "Release").read_text()
    assert "six-1.17.0-py2.py3-none-any.whl" in (out / "debian" / "simple" / "six" / "index.html").read_text()
    assert _leftovers(chain.folder) == []


def test_the_one_line_names_counts_size_and_path(chain, cli):
    chain.lock_all()
    chain.fill_store()
    out = chain.folder / "b"
    result = cli("vendor", chain.child, "-o", out, env={**DEAD, "DLENV_STATE_DIR": str(chain.state)})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("vendored child: 3 .deb, 0 source tarball(s), 1 Python file(s), ")
    assert lines[0].endswith(f" MB in {out}")


def test_a_bundle_fills_an_empty_store_alone(chain):
    """The build side: with the bundle as its only source, every file of every lock enters a new store."""
    chain.lock_all()
    out = chain.folder / "bundle"
    vendor(plan(str(chain.child)), out, PackageSources(), store=chain.fill_store())
    empty = PackageStore(chain.folder / "other-store")
    p = plan(str(chain.child))
    for lock in [*p.parent_locks, p.lock]:
        files, unknown = lock_files(lock)
        report = obtain(files, PackageSources(bundles=(str(out),)), store=empty)
        assert unknown == [] and report.gone == [] and report.fetched.get("bundle", 0) == len(files)
    assert store_mod.bundle_index(out)            # the store's own reader takes the manifest


def test_source_tarballs_go_under_sources(chain, monkeypatch):
    chain.lock_all()
    data = b"upstream tarball bytes\n" * 5
    chain.extra = {"foo_1.0.orig.tar.gz": data}
    store = chain.fill_store()
    tarball = DebFile("foo", "1.0-1", "source", len(data), _sha(data), "pool/main/f/foo/foo_1.0.orig.tar.gz", "source")
    real = vendor_mod.lock_files
    monkeypatch.setattr(vendor_mod, "lock_files",
                        lambda lock: (real(lock)[0] + ([tarball] if lock.stack == "root" else []), real(lock)[1]))
    result = vendor(plan(str(chain.child)), chain.folder / "b", PackageSources(), store=store)
    assert result.counts == {"deb": 3, "source": 1, "python": 1}
    entry = next(e for e in json.loads((chain.folder / "b" / "manifest.json").read_text())["files"]
                 if e["kind"] == "source")
    assert entry["path"].startswith("debian/sources/") and entry["path"].endswith("/foo_1.0.orig.tar.gz")
    assert entry["size"] == len(data)


def test_an_existing_bundle_is_replaced_whole(chain):
    chain.lock_all()
    store = chain.fill_store()
    out = chain.folder / "bundle"
    vendor(plan(str(chain.mid)), out, PackageSources(), store=store)
    (out / "debian" / "stray-file").write_text("from before")
    before = json.loads((out / "manifest.json").read_text())
    assert before["stack"] == "mid"
    result = vendor(plan(str(chain.child)), out, PackageSources(), store=store)
    assert result.replaced
    assert json.loads((out / "manifest.json").read_text())["stack"] == "child"
    assert not (out / "debian" / "stray-file").exists()
    assert _leftovers(chain.folder) == []


def test_an_existing_bundle_refills_a_store_that_lost_its_files(chain):
    chain.lock_all()
    out = chain.folder / "bundle"
    vendor(plan(str(chain.child)), out, PackageSources(), store=chain.fill_store())
    shutil.rmtree(chain.state / "store")
    result = vendor(plan(str(chain.child)), out, PackageSources(), store=PackageStore(chain.state / "store"))
    assert sum(r.fetched.get("bundle", 0) for r in result.reports) == 4


def test_an_empty_folder_is_used(chain):
    chain.lock_all()
    out = chain.folder / "empty"
    out.mkdir()
    vendor(plan(str(chain.child)), out, PackageSources(), store=chain.fill_store())
    assert (out / "manifest.json").is_file()


# --- refusals -------------------------------------------------------------------------------------

def test_a_folder_that_is_no_bundle_is_refused_and_untouched(chain, cli):
    chain.lock_all()
    chain.fill_store()
    out = chain.folder / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = cli("vendor", chain.child, "-o", out, env={**DEAD, "DLENV_STATE_DIR": str(chain.state)})
    assert result.exit_code == 1
    assert "is not empty and is not a dlenv bundle" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    (out / "manifest.json").write_text('{"format": 99, "files": []}')      # another format is no bundle either
    with pytest.raises(ExportError, match="not a dlenv bundle"):
        vendor(plan(str(chain.child)), out, PackageSources())
    assert _leftovers(chain.folder) == []


def test_a_file_or_a_link_is_refused(chain):
    chain.lock_all()
    chain.fill_store()
    target = chain.folder / "a-file"
    target.write_text("x")
    with pytest.raises(ExportError, match="is not a folder"):
        vendor(plan(str(chain.child)), target, PackageSources())
    link = chain.folder / "link"
    link.symlink_to(chain.folder / "elsewhere")
    with pytest.raises(ExportError, match="symbolic link"):
        vendor(plan(str(chain.child)), link, PackageSources())


def test_a_missing_lock_is_refused_with_the_lock_command(chain, cli):
    result = cli("vendor", chain.root, "-o", chain.folder / "b", env={**DEAD, "DLENV_STATE_DIR": str(chain.state)})
    assert result.exit_code == 1
    assert "root has no lock" in result.stderr and "dlenv lock" in result.stderr
    assert not (chain.folder / "b").exists()


def test_a_stale_lock_is_refused(chain):
    chain.lock_all()
    chain.mid.write_text('schema: 1\nname: mid\nextends: ./root.yaml\napt_packages: [tiny-child, curl]\n')
    p = plan(str(chain.mid))
    assert p.lock_state == "stale"
    with pytest.raises(LockError, match="no longer matches"):
        vendor(p, chain.folder / "b", PackageSources())
    assert not (chain.folder / "b").exists()


def test_pins_without_recorded_files_are_refused(chain):
    chain.lock_root(debs=_deb_entries(chain.deb("tiny-base")))      # tiny-build's bytes are not recorded
    with pytest.raises(LockError, match=r"names 1 Debian pin\(s\) without their files.*tiny-build=1\.0-1") as exc:
        vendor(plan(str(chain.root)), chain.folder / "b", PackageSources())
    assert "dlenv build" in exc.value.hint


def test_files_no_source_has_are_named_and_nothing_is_written(chain):
    chain.lock_all()
    store = chain.fill_store(skip=("tiny-child", "six-1.17.0-py2.py3-none-any.whl"))
    out = chain.folder / "bundle"
    with pytest.raises(LockError) as exc:
        vendor(plan(str(chain.child)), out, PackageSources(), store=store)
    message = exc.value.one_line()
    assert "2 file(s) the lock pins are in no source" in message
    assert chain.deb("tiny-child").basename in message and "six-1.17.0-py2.py3-none-any.whl" in message
    assert "`dlenv build" in message and "refreshes vanished Debian pins first" in message
    assert not out.exists() and _leftovers(chain.folder) == []


def test_a_changed_store_file_does_not_travel(chain):
    chain.lock_all()
    store = chain.fill_store()
    out = chain.folder / "bundle"
    vendor(plan(str(chain.mid)), out, PackageSources(), store=store)
    bad = store.path(chain.deb("tiny-child").sha256)
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")                         # same size, other bytes
    with pytest.raises(DlenvError, match="is not the file the lock pins"):
        vendor(plan(str(chain.child)), out, PackageSources(), store=store)
    assert json.loads((out / "manifest.json").read_text())["stack"] == "mid"   # the old bundle stays whole
    assert _leftovers(chain.folder) == []


def test_an_interrupted_write_leaves_the_old_bundle(chain, monkeypatch):
    chain.lock_all()
    store = chain.fill_store()
    out = chain.folder / "bundle"
    vendor(plan(str(chain.mid)), out, PackageSources(), store=store)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vendor_mod, "write_repository", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vendor(plan(str(chain.child)), out, PackageSources(), store=store)
    assert json.loads((out / "manifest.json").read_text())["stack"] == "mid"
    assert _leftovers(chain.folder) == []


def test_without_renameat2_the_swap_still_replaces(chain, monkeypatch):
    chain.lock_all()
    store = chain.fill_store()
    out = chain.folder / "bundle"
    vendor(plan(str(chain.mid)), out, PackageSources(), store=store)
    monkeypatch.setattr(vendor_mod, "_exchange", lambda a, b: False)
    assert vendor(plan(str(chain.child)), out, PackageSources(), store=store).replaced
    assert json.loads((out / "manifest.json").read_text())["stack"] == "child"
    assert _leftovers(chain.folder) == []


def test_a_registry_base_is_refused(chain, monkeypatch):
    chain.lock_all()
    p = plan(str(chain.root))
    image = dataclasses.replace(p, resolved=dataclasses.replace(p.resolved, base={"image": "debian:bookworm"}))
    with pytest.raises(DlenvError, match="registry image"):
        vendor(image, chain.folder / "b", PackageSources())


def test_a_bundle_carries_a_catalog_lock_refreshed_where_it_was_made(tmp_path, monkeypatch):
    """A catalog lock refreshed where the bundle was made is adopted where the shipped lock is the one it
    refreshed (and never over a refresh already there, nor for another shipped lock)."""
    monkeypatch.setenv("DLENV_STATE_DIR", str(tmp_path / "state"))
    shipped = L.load(Path(__file__).resolve().parents[2] / "stacks" / "python.lock")
    refreshed = dataclasses.replace(shipped, refreshed={"from": shipped.digest, "moved": []}, path=None)
    bundle = tmp_path / "bundle"
    (bundle / vendor_mod.BUNDLED_LOCKS).mkdir(parents=True)
    (bundle / vendor_mod.BUNDLED_LOCKS / "python.lock").write_text(L.dump(refreshed))
    target = tmp_path / "state" / "refreshed-locks" / "python.lock"

    assert vendor_mod.adopt_bundled_locks([bundle], lambda stack: "f" * 64) == []      # another shipped lock
    assert not target.exists()
    assert vendor_mod.adopt_bundled_locks([bundle], lambda stack: shipped.digest) == ["python"]
    assert L.load(target).refreshed["from"] == shipped.digest
    target.write_text(L.dump(dataclasses.replace(refreshed, refreshed={"from": shipped.digest, "moved": [{"x": 1}]})))
    assert vendor_mod.adopt_bundled_locks([bundle], lambda stack: shipped.digest) == []  # one is there already
