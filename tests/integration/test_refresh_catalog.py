"""A catalog stack whose shipped lock names a pin no source has (#22), on the real engine and archive.

A private catalog (DLENV_STACKS_DIR) holds a copy of the `python` stack under a unique name, with a
copy of its lock into which the runtime stage's `python3` is written at a version the archive lacks
(its `debs` entry names a pool file that does not exist): exactly a pin the archive dropped. Then:

- `build --locked` refuses in one line naming the pin; nothing is built or recorded;
- `build` refreshes that pin alone, shows it, records the refreshed lock in
  <state>/refreshed-locks/STACK.lock (the shipped lock is not touched), promotes the content hash of
  the refreshed lock; a second build is a no-op; `verify` says the image came from a refreshed lock;
- `vendor` carries the refreshed lock in the bundle, and a build from that bundle alone (an empty
  state folder, a dead Debian mirror and pip index) adopts it, needs no refresh, fetches every file
  from the bundle and promotes the same content hash.

The module uses its own state folder and store; the real catalog, the real `dlenv/python` tags and
the shared base image are left alone. Every image of the private stack is removed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import docker.errors
import pytest

from builder.plan import lockfile as L

ROOT = Path(__file__).resolve().parents[2]
NAME = f"itest-refresh-{secrets.token_hex(4)}"
FAKE = "0.0.0-gone"
DEAD = {"DLENV_DEBIAN_MIRROR": "http://127.0.0.1:9/debian", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "", "DLENV_DEBIAN_SNAPSHOT": "", "http_proxy": "", "https_proxy": ""}


@dataclasses.dataclass
class Catalog:
    """The private catalog and the state folder this module's commands run with."""
    dlenv: str
    root: Path
    stacks: Path
    state: Path
    original: L.Lock            # the catalog's python lock as copied (renamed, every pin real)
    shipped_bytes: bytes = b""  # the shipped lock with the vanished pin, as written

    @property
    def shipped(self) -> Path:
        return self.stacks / f"{NAME}.lock"

    @property
    def refreshed(self) -> Path:
        return self.state / "refreshed-locks" / f"{NAME}.lock"

    def run(self, *args, state: Path | None = None, env: dict | None = None, timeout: int = 1800):
        state = state or self.state
        full = dict(os.environ, NO_COLOR="1", COLUMNS="200", DLENV_STACKS_DIR=str(self.stacks),
                    DLENV_STATE_DIR=str(state), DLENV_STORE_DIR=str(state / "store"), **(env or {}))
        return subprocess.run([self.dlenv, *args], capture_output=True, text=True, env=full, timeout=timeout,
                              cwd=self.root / "cwd")

    def show(self, state: Path | None = None) -> dict:
        res = self.run("show", NAME, "--json", state=state)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


def _with_pin_the_archive_lacks(lock: L.Lock, name: str, version: str) -> L.Lock:
    """The lock with the runtime stage's `name` at a version no source has, its file named like a real
    pool file (as in test_lock_engine)."""
    fake = f"{name}={version}"
    entry = {"arch": "amd64", "size": 4242, "sha256": "0" * 64,
             "file": f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb"}
    return dataclasses.replace(lock, apt_runtime={**lock.apt_runtime, name: version}, debs={**lock.debs, fake: entry})


def _tags(client) -> list:
    return sorted(t for i in client.images.list(name=f"dlenv/{NAME}") for t in i.tags)


def _untag(client, *, prune: bool) -> None:
    for tag in _tags(client):
        try:
            client.images.remove(tag, noprune=not prune)
        except (docker.errors.APIError, docker.errors.ImageNotFound):
            pass


def _remove_everything(client) -> None:
    """Every tag of the private stack, then any image still labelled with its name (the build's
    intermediate images of the runtime stage), children first."""
    _untag(client, prune=True)
    left = client.images.list(all=True, filters={"label": f"org.dlenv.stack={NAME}"})
    for image in sorted(left, key=lambda i: i.attrs.get("Created", ""), reverse=True):
        try:
            client.images.remove(image.id, noprune=False)
        except (docker.errors.APIError, docker.errors.ImageNotFound):
            pass


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, docker_client, dlenv_path):
    assert not _tags(docker_client), f"dlenv/{NAME} exists before the test"
    root = tmp_path_factory.mktemp("refresh-catalog")
    stacks = root / "stacks"
    stacks.mkdir()
    (root / "cwd").mkdir()
    # Copied now, not at import: `make relock` may rewrite the catalog's locks meanwhile.
    yaml_text, count = re.subn(r"(?m)^name: python$", f"name: {NAME}", (ROOT / "stacks" / "python.yaml").read_text())
    assert count == 1
    (stacks / f"{NAME}.yaml").write_text(yaml_text)
    lock_text, count = re.subn(r"(?m)^stack: python$", f"stack: {NAME}", (ROOT / "stacks" / "python.lock").read_text())
    assert count == 1
    (stacks / f"{NAME}.lock").write_text(lock_text)
    cat = Catalog(dlenv_path, root, stacks, root / "state", L.load(stacks / f"{NAME}.lock"))
    try:
        yield cat
    finally:
        _remove_everything(docker_client)


@pytest.fixture(scope="module")
def faked(catalog):
    """The shipped lock with python3 at a version no source has; `show` before and after."""
    before = catalog.show()
    assert before["lock"]["state"] == "locked", before["lock"]     # the lock's inputs do not name the stack
    catalog.shipped.write_text(L.dump(_with_pin_the_archive_lacks(catalog.original, "python3", FAKE)))
    catalog.shipped_bytes = catalog.shipped.read_bytes()
    after = catalog.show()
    assert after["lock"]["state"] == "locked", after["lock"]
    return {"before": before, "after": after, "lock": L.load(catalog.shipped)}


@pytest.fixture(scope="module")
def refused(catalog, faked, docker_client):
    """`build --locked` first, while only the shipped lock exists."""
    res = catalog.run("build", NAME, "--locked", "--no-verify", "--no-pull")
    return res, _tags(docker_client)


@pytest.fixture(scope="module")
def built(catalog, refused):
    """Then the connected build that refreshes the pin."""
    return catalog.run("build", NAME, "--no-pull")


def _built_tag(stdout: str) -> str:
    match = re.search(rf"built (dlenv/{re.escape(NAME)}:\S+) and dlenv/{re.escape(NAME)}:latest", stdout)
    assert match, stdout
    return match.group(1)


def test_locked_refuses_in_one_line_and_builds_nothing(catalog, faked, refused):
    res, tags = refused
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("dlenv: error:")]
    assert len(errors) == 1 and f"python3={FAKE}" in errors[0] and "--locked" in errors[0], res.stderr
    assert tags == []
    assert not catalog.refreshed.exists()
    assert catalog.shipped.read_bytes() == catalog.shipped_bytes


def test_build_refreshes_the_pin_alone_records_it_in_the_state_folder_and_verifies(catalog, faked, built,
                                                                                   docker_client):
    real = catalog.original.apt_runtime["python3"]
    assert real != FAKE
    assert built.returncode == 0, built.stdout + built.stderr[-4000:]
    row = next((ln for ln in built.stderr.splitlines() if ln.startswith("python3 ")), "")
    assert "runtime" in row and f"{FAKE} -> {real}" in row, built.stderr
    assert "refreshed the lock: 1 Debian pin(s) moved" in built.stderr
    assert f"recorded in {catalog.refreshed}" in built.stderr, built.stderr
    # The shipped lock is data: not a byte of it changed. The refreshed one moved python3 alone.
    assert catalog.shipped.read_bytes() == catalog.shipped_bytes
    shipped, refreshed = faked["lock"], L.load(catalog.refreshed)
    assert refreshed.refreshed["from"] == shipped.digest
    assert [m["package"] for m in refreshed.refreshed["moved"]] == ["python3"]
    assert refreshed.apt_runtime == {**shipped.apt_runtime, "python3": real}
    assert refreshed.apt_build == shipped.apt_build and refreshed.base_packages == shipped.base_packages
    assert refreshed.base == shipped.base and refreshed.python == shipped.python
    assert refreshed.debs == catalog.original.debs          # the fake file gone, the real one back
    # `show` names what the build promoted: the refreshed lock's content hash.
    tag = _built_tag(built.stdout)
    show = catalog.show()
    assert show["image"] == tag and show["content_hash"] != faked["after"]["content_hash"]
    assert show["lock"]["state"] == "locked" and show["lock"]["digest"] == refreshed.digest
    image = docker_client.images.get(tag)
    assert image.id == docker_client.images.get(f"dlenv/{NAME}:latest").id
    assert image.labels["org.dlenv.content-hash"] == show["content_hash"]
    assert image.labels["org.dlenv.lock"] == refreshed.digest
    assert image.labels["org.dlenv.lock-refreshed"] == f"{shipped.digest} python3={FAKE}->{real}"
    # The refreshed lock is the stack's lock now: a no-op build, and verify says where it came from.
    again = catalog.run("build", NAME, "--no-pull")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
    assert "refreshed the lock" not in again.stderr
    verified = catalog.run("verify", NAME)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"built from a refreshed lock ({catalog.refreshed}): python3 {FAKE} -> {real}" in verified.stderr
    assert catalog.shipped.read_bytes() == catalog.shipped_bytes


def test_a_bundle_carries_the_refreshed_lock_and_builds_the_same_hash_with_every_source_dead(
        catalog, built, docker_client):
    assert built.returncode == 0, built.stderr[-4000:]
    connected = catalog.show()
    refreshed = L.load(catalog.refreshed)
    bundle = catalog.root / "B"
    vendored = catalog.run("vendor", NAME, "-o", str(bundle), "--json")
    assert vendored.returncode == 0, vendored.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["refreshed_locks"] == [NAME] and manifest["content_hash"] == connected["content_hash"]
    assert manifest["lock"] == refreshed.digest
    assert L.load(bundle / "locks" / f"{NAME}.lock").digest == refreshed.digest
    assert f"{NAME}_{FAKE}" not in json.dumps(manifest)

    # A machine that never saw the refresh: an empty state folder, no image of the stack, dead sources.
    # (Untagged only: the layers stay, so the build is quick; the bytes still all come from the bundle.)
    _untag(docker_client, prune=False)
    assert _tags(docker_client) == []
    empty = catalog.root / "empty-state"
    offline = catalog.run("build", NAME, "--vendor", str(bundle), "--no-verify", "--no-pull", state=empty, env=DEAD)
    assert offline.returncode == 0, offline.stdout + offline.stderr[-4000:]
    assert f"using the refreshed lock of {NAME} from the bundle" in offline.stderr
    assert f"0 in the store, {len(manifest['files'])} from the bundle" in offline.stderr, offline.stderr
    assert "refreshed the lock" not in offline.stderr and "in no source" not in offline.stderr
    assert _built_tag(offline.stdout) == connected["image"]
    adopted = empty / "refreshed-locks" / f"{NAME}.lock"
    assert L.load(adopted).digest == refreshed.digest
    assert catalog.show(state=empty)["content_hash"] == connected["content_hash"]
    image = docker_client.images.get(connected["image"])
    assert image.labels["org.dlenv.content-hash"] == connected["content_hash"]
    assert image.labels["org.dlenv.lock"] == refreshed.digest
    assert catalog.shipped.read_bytes() == catalog.shipped_bytes
