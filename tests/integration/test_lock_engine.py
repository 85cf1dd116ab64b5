"""Locks against the real engine, archive and index: a project stack is locked on its first build,
built from the lock (pip --require-hashes, apt pkg=version), verified against it; a changed stack
is refused until --relock (which keeps the pins that still apply); a pin that no longer exists is
refreshed alone and recorded (or refused in one line with --locked); a hash that does not match fails
the build in one line that names it; a second build fetches nothing (the package store)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from builder.plan import lockfile as L

# A whole build (it declares python's component): these cases are about locks resolved in a container
# of the base; a project that only adds packages builds on the python image (tests/unit/test_layered.py).
STACK = """schema: 1
name: dlenv-itest-lock
extends: python
components: {python: "3.11"}
python_packages:
  - "six==1.17.0"
"""


def _remove_images(client):
    for image in client.images.list(name="dlenv/dlenv-itest-lock"):
        for tag in image.tags:
            client.images.remove(tag, noprune=True)


@pytest.fixture
def project(tmp_path, docker_client):
    _remove_images(docker_client)  # a leftover promoted image would make the first build a no-op
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "dlenv.yaml").write_text(STACK)
    yield folder
    _remove_images(docker_client)


def tags(client):
    return sorted(t for i in client.images.list(name="dlenv/dlenv-itest-lock") for t in i.tags)


def test_first_build_locks_then_builds_and_verifies_from_the_lock(project, run_dlenv, docker_client):
    res = run_dlenv("build", cwd=project, check=True)
    lock_file = project / "dlenv.lock"
    assert "wrote" in res.stderr and str(lock_file) in res.stderr
    lock = L.load(lock_file)
    assert [p.name for p in lock.python["python_packages"]] == ["six"]
    assert lock.base["rootfs_sha256"] and lock.base["packages"]["bash"]
    assert "installed packages are the locked versions" in res.stderr
    image = docker_client.images.get("dlenv/dlenv-itest-lock:latest")
    assert image.labels["org.dlenv.lock"] == lock.digest
    # Inside: the pinned Debian versions and the locked wheel, byte for byte what the lock names.
    out = docker_client.containers.run(image.id, ["bash", "-c", "dpkg-query -W -f='${Package}=${Version}\\n' python3;"
                                                  " python -c 'import six; print(six.__version__)'"], remove=True)
    assert out.decode().split() == [f"python3={lock.apt_runtime['python3']}", "1.17.0"]
    # `dlenv lock --check` agrees; a second build is a no-op.
    assert run_dlenv("lock", "--check", cwd=project).returncode == 0
    assert "up to date" in run_dlenv("build", cwd=project, check=True).stdout


def test_a_changed_stack_is_refused_until_relock_which_keeps_pins(project, run_dlenv, docker_client):
    run_dlenv("build", "--no-verify", cwd=project, check=True)
    before = L.load(project / "dlenv.lock")
    tags_before = tags(docker_client)
    (project / "dlenv.yaml").write_text(STACK + '  - "packaging>=23"\n')
    res = run_dlenv("build", cwd=project)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no longer matches" in lines[0] and "+packaging>=23" in lines[0] and "--relock" in lines[0]
    assert tags(docker_client) == tags_before
    assert run_dlenv("build", "--locked", cwd=project).returncode == 1
    res = run_dlenv("build", "--relock", "--no-verify", cwd=project, check=True)
    after = L.load(project / "dlenv.lock")
    assert "kept" in res.stderr
    assert {p.name for p in after.python["python_packages"]} == {"six", "packaging"}
    assert after.apt_runtime == before.apt_runtime and after.base == before.base


def _edit_lock(folder: Path, old: str, new: str) -> None:
    path = folder / "dlenv.lock"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _with_pin_the_archive_lacks(lock: L.Lock, name: str, version: str) -> L.Lock:
    """The lock with the runtime stage's `name` at a version no source has, its file named like a real
    pool file: exactly what a pin looks like once the archive dropped it."""
    fake = f"{name}={version}"
    entry = {"arch": "amd64", "size": 4242, "sha256": "0" * 64,
             "file": f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb"}
    return dataclasses.replace(lock, apt_runtime={**lock.apt_runtime, name: version}, debs={**lock.debs, fake: entry})


def test_a_vanished_pin_is_refreshed_alone_shown_and_recorded_and_locked_refuses(project, run_dlenv, docker_client):
    run_dlenv("build", "--no-verify", cwd=project, check=True)
    lock = L.load(project / "dlenv.lock")
    (project / "dlenv.lock").write_text(L.dump(_with_pin_the_archive_lacks(lock, "python3", "0.0.0-gone")))
    good = tags(docker_client)
    # --locked: one line naming the pin, nothing built, no tag moved, the lock untouched.
    res = run_dlenv("build", "--locked", "--no-verify", cwd=project)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dlenv: error:")]
    assert len(lines) == 1 and "python3=0.0.0-gone" in lines[0] and "--locked" in lines[0], res.stderr
    assert tags(docker_client) == good
    assert "0.0.0-gone" in (project / "dlenv.lock").read_text()
    # Without it: the pin is refreshed (only it), shown in a table, recorded beside the stack, and the build goes on.
    res = run_dlenv("build", "--no-verify", cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    row = next(ln for ln in res.stderr.splitlines() if ln.startswith("python3 "))
    assert "runtime" in row and f"0.0.0-gone -> {lock.apt_runtime['python3']}" in row, res.stderr
    assert "refreshed the lock: 1 Debian pin(s) moved" in res.stderr and str(project / "dlenv.lock") in res.stderr
    after = L.load(project / "dlenv.lock")
    assert after.apt_runtime == lock.apt_runtime and after.apt_build == lock.apt_build
    assert after.base_packages == lock.base_packages and after.python == lock.python
    assert [m["package"] for m in after.refreshed["moved"]] == ["python3"]
    image = docker_client.images.get("dlenv/dlenv-itest-lock:latest")
    assert image.labels["org.dlenv.lock"] == after.digest
    assert "python3=0.0.0-gone->" in image.labels["org.dlenv.lock-refreshed"]
    # The refreshed lock is the stack's lock now: the next build is a no-op, and verify says what moved.
    assert "up to date" in run_dlenv("build", cwd=project, check=True).stdout
    verified = run_dlenv("verify", cwd=project, check=True)
    assert f"built from a refreshed lock ({project / 'dlenv.lock'}): python3 0.0.0-gone -> " in verified.stderr


def test_a_second_build_fetches_nothing_and_a_wrong_hash_fails_in_one_line(project, run_dlenv, docker_client):
    run_dlenv("build", "--no-verify", cwd=project, check=True)
    again = run_dlenv("build", "--no-verify", "--no-cache", cwd=project, check=True)
    assert "in the store, nothing fetched" in again.stderr, again.stderr[-2000:]
    lock = L.load(project / "dlenv.lock")
    good = tags(docker_client)
    # The wheel's sha256 is not the one the index serves: no source has those bytes.
    pin = lock.python["python_packages"][0]
    _edit_lock(project, pin.sha256, "e" * 64)
    res = run_dlenv("build", "--no-verify", cwd=project)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dlenv: error:")]
    assert len(lines) == 1 and f"no source has {pin.file}" in lines[0], res.stderr
    assert tags(docker_client) == good


def test_a_repository_with_requirements_txt_to_a_verified_image_in_two_commands(tmp_path, run_dlenv,
                                                                                   docker_client):
    """#9's promise: `dlenv init` then `dlenv build`, and the lock is written beside the stack."""
    repo = tmp_path / "my-analysis"
    repo.mkdir()
    (repo / "requirements.txt").write_text("six==1.17.0\npackaging>=23  # used by the analysis\n")
    for image in docker_client.images.list(name="dlenv/my-analysis"):
        for tag in image.tags:
            docker_client.images.remove(tag, noprune=True)
    try:
        init = run_dlenv("init", "--from", "python", "--yes", cwd=repo, check=True)
        assert (repo / "dlenv.yaml").is_file(), init.stderr
        built = run_dlenv("build", cwd=repo)
        assert built.returncode == 0, built.stderr[-3000:]
        assert "checks passed" in built.stdout and (repo / "dlenv.lock").is_file()
        lock = L.load(repo / "dlenv.lock")
        assert {p.name for p in lock.python["python_packages"]} == {"six", "packaging"}
        out = docker_client.containers.run("dlenv/my-analysis:latest", ["python", "-c",
                                           "import six, packaging; print(six.__version__, packaging.__version__)"],
                                           remove=True).decode().split()
        pins = {p.name: p.version for p in lock.python["python_packages"]}
        assert out == [pins["six"], pins["packaging"]]
    finally:
        for image in docker_client.images.list(name="dlenv/my-analysis"):
            for tag in image.tags:
                docker_client.images.remove(tag, noprune=True)
