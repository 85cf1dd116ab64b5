"""A full disk with real buildah, the real Docker engine and a real small filesystem (issue #24).

dlenv's buildah storage (<state>/buildah) is a 450 MB tmpfs, mounted for this test and unmounted in a
finally. The catalog's `python` stack (its lock: 129 MB of .debs) needs far more there:
- the check before the build refuses in one line with the figure, the `dlenv gc` hint and the
  override, and writes nothing into that storage;
- with --skip-disk-check the build runs, fills the filesystem (the base fits, the build stage's apt
  step does not) and fails with one line naming the storage and its free space; no candidate tag is
  left in Docker, the promoted tags stay where they were, and the build log is kept and named.

`--no-cache`: a machine that already promoted `python` would otherwise answer with a no-op build,
which needs no disk. Needs root (mount); skips without it, without buildah or without the engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.engine import buildah as buildah_mod
from builder.errors import EngineError
from builder.plan.plan import plan

SIZE = "450m"


@pytest.fixture
def buildah_cli():
    try:
        return buildah_mod.find_buildah()[0]
    except EngineError as exc:
        if os.environ.get("DLENV_REQUIRE_ENGINE") == "1":
            pytest.fail(f"DLENV_REQUIRE_ENGINE=1 but {exc.one_line()}", pytrace=False)
        pytest.skip(exc.one_line())


@pytest.fixture
def small_buildah_storage(buildah_cli, tmp_path):
    """A state folder whose buildah storage is a small tmpfs: (state folder, storage root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    state = tmp_path / "state"
    mountpoint = state / "buildah"
    mountpoint.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mountpoint)], check=True)
    storage = ["--root", str(mountpoint / "storage"), "--runroot", str(mountpoint / "run")]
    try:
        yield state, mountpoint / "storage"
    finally:
        subprocess.run([buildah_cli, *storage, "rm", "--all"], capture_output=True)
        subprocess.run([buildah_cli, *storage, "rmi", "--all", "--force"], capture_output=True)
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True)   # a mount buildah left inside
        shutil.rmtree(state, ignore_errors=True)


def dlenv(dlenv_path, state: Path, *args: str, timeout=1800):
    env = dict(os.environ, NO_COLOR="1", COLUMNS="400", DLENV_STATE_DIR=str(state))
    env.pop("DLENV_REGISTRY", None)
    return subprocess.run([dlenv_path, *args], capture_output=True, text=True, env=env, timeout=timeout)


def error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("dlenv: error: ")]


def ids_of(client, repo: str) -> dict:
    return {tag: image.id for image in client.images.list(name=repo) for tag in image.tags}


def test_a_small_buildah_storage_is_refused_then_runs_out(docker_client, dlenv_path, small_buildah_storage):
    state, storage = small_buildah_storage
    p = plan("python")
    before = ids_of(docker_client, "dlenv/python")

    refused = dlenv(dlenv_path, state, "build", "python", "--engine", "buildah", "--no-cache", "--no-pull")
    print(refused.stderr)
    assert refused.returncode == 1, refused.stderr
    (line,) = error_lines(refused.stderr)
    assert re.fullmatch(rf"dlenv: error: not enough disk for python: {re.escape(str(storage))} has \d+ MB free, the "
                        r"build needs about \d\.\d GB there for dlenv's buildah storage( \d\.\d GB)?.*\(.*`dlenv gc.*"
                        r"or build with --skip-disk-check\)", line), line
    assert "Traceback" not in refused.stderr
    assert not storage.exists() or not any(storage.iterdir()), "the refused build wrote into the storage"

    full = dlenv(dlenv_path, state, "build", "python", "--engine", "buildah", "--no-cache", "--no-pull",
                 "--skip-disk-check", "--no-verify")
    print(full.stderr[-3000:])
    assert full.returncode == 1, full.stderr
    (line,) = error_lines(full.stderr)
    assert re.fullmatch(rf"dlenv: error: the build of python ran out of disk space: {re.escape(str(storage))} "
                        r"\(dlenv's buildah storage\) has \d+ MB free now \(nothing was tagged; .*\)", line), line
    assert "Traceback" not in full.stderr
    logs = re.findall(r"^full build log: (.+)$", full.stderr, re.M)
    assert logs and Path(logs[0]).is_file(), full.stderr
    assert re.search(r"no space left on device", Path(logs[0]).read_text(errors="replace"), re.I)
    assert p.candidate_tag not in ids_of(docker_client, "dlenv/python"), "a candidate tag was left"
    assert ids_of(docker_client, "dlenv/python") == before, "a promoted tag moved"
