"""The CLI run as a non-root user who may not use the Docker socket: a hint about the docker
group, not the 'engine unreachable' one. The user gets dlenv from the built wheel in a venv
made from Debian's python3 (the checkout's interpreter lives under /root)."""

from __future__ import annotations

import os
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nobody_dlenv():
    if os.getuid() != 0:
        pytest.skip("needs root to switch to another user")
    system_python = shutil.which("python3", path="/usr/bin")
    assert system_python and shutil.which("runuser"), "Debian's python3 and runuser are needed"
    # pytest's own tmp dirs are private to root: this one must be readable by `nobody`.
    base = Path(tempfile.mkdtemp(prefix="dlenv-nobody-", dir="/tmp"))
    os.chmod(base, 0o755)
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    venv = base / "venv"
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    str(next(dist.glob("*.whl")))], check=True, capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield venv / "bin" / "dlenv"
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree("/tmp/dlenv-nobody-state", ignore_errors=True)


def run_as_nobody(dlenv: Path, *args, env=None):
    full_env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "NO_COLOR": "1", "DLENV_STATE_DIR": "/tmp/dlenv-nobody-state"}
    full_env.update(env or {})
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", *[f"{k}={v}" for k, v in full_env.items()],
                           str(dlenv), *args], capture_output=True, text=True, timeout=120)


def test_socket_permission_denied_and_unreachable_give_different_hints(docker_client, nobody_dlenv):
    assert oct(os.stat("/var/run/docker.sock").st_mode & 0o777) != "0o777"
    listed = run_as_nobody(nobody_dlenv, "list", "--json")
    assert listed.returncode == 0, listed.stderr  # the catalog needs no engine
    denied = run_as_nobody(nobody_dlenv, "build", "python")
    assert denied.returncode == 1
    assert denied.stderr.count("\n") == 1 and "Traceback" not in denied.stderr
    assert "permission denied on the Docker socket" in denied.stderr and "docker' group" in denied.stderr
    gone = run_as_nobody(nobody_dlenv, "build", "python", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert gone.returncode == 1
    assert "cannot reach the Docker engine" in gone.stderr and "permission" not in gone.stderr
