"""Faults with the real engine: SIGINT, SIGTERM and SIGHUP during a build, a verify (also across two
containers) and a lock; two builds of one stack at once, and a registry base image that cannot be pulled.
Each leaves earlier tags, containers and files alone."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from processes import (TERMINATIONS, assert_stopped, container_commands, dlenv_objects, image_tags, new_containers,
                       objects_left, processes_with, signal_when, temporaries, wait_for)


def write_stack(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def tags_of(client, repo: str) -> set:
    return {t for image in client.images.list(name=repo) for t in image.tags}


def remove_repo(client, repo: str) -> None:
    for tag in tags_of(client, repo):
        client.images.remove(tag)


@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "interrupted"),
                                            (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                            (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_a_signal_during_build_exits_and_moves_nothing(docker_client, dlenv_path, tmp_path, sig, code, said):
    """Ctrl-C, and what `timeout`, CI runners, systemd and `scancel` send (SIGTERM, SIGHUP), stop a build
    the same way: the step's container goes, no tag moves, no temporary context stays."""
    repo = "dlenv/dlenv-itest-sigint"
    state = tmp_path / "state"
    token = secrets.token_hex(8)
    stack = write_stack(tmp_path, f"""
        schema: 1
        name: dlenv-itest-sigint
        extends: python
        python_packages: ["six==1.17.0"]
        run: ["echo {token} && sleep 300"]
    """)
    containers_before = {c["Id"] for c in docker_client.api.containers(all=True)}
    env = dict(os.environ, DLENV_STATE_DIR=str(state), NO_COLOR="1")
    proc = subprocess.Popen([dlenv_path, "build", str(stack)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 600
        # The build locks first, then reaches the stack's own (unique, so never cached) run step: its
        # `sleep` is a process of this machine (the CLI shortens the step line, so it is found in /proc).
        while not processes_with(token) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_with(token), proc.communicate()[1] if proc.poll() is not None else "no run step"
        time.sleep(1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == code, err
        assert said in err and "no tag was moved" in err and "Traceback" not in err
        assert "ok   " not in err, "the build finished and verify ran: the signal came too late"
        assert not tags_of(docker_client, repo)
        assert not [p for p in state.iterdir() if p.name.startswith(("context-", "packages-"))], \
            "temporary build context or package repository left"
        for _ in range(30):  # the daemon cancels the step when the client goes away
            if {c["Id"] for c in docker_client.api.containers(all=True)} <= containers_before:
                break
            time.sleep(1)
        assert {c["Id"] for c in docker_client.api.containers(all=True)} <= containers_before
    finally:
        remove_repo(docker_client, repo)


def test_two_builds_of_one_stack_at_once(docker_client, dlenv_path, tmp_path):
    repo = "dlenv/dlenv-itest-concurrent"
    stack = write_stack(tmp_path, f"""
        schema: 1
        name: dlenv-itest-concurrent
        extends: python
        env: {{RUN_TOKEN: "{secrets.token_hex(8)}"}}
    """)
    env = dict(os.environ, DLENV_STATE_DIR=str(tmp_path / "state"), NO_COLOR="1")
    procs = [subprocess.Popen([dlenv_path, "build", str(stack)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=900) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        stdout = [o[0] for o in outs]
        # One built; the other waited on the stack's lock and found the promoted image.
        assert sum("built " in s for s in stdout) == 1 and sum("up to date" in s for s in stdout) == 1, stdout
        tags = tags_of(docker_client, repo)
        assert len(tags) == 2 and f"{repo}:latest" in tags
        ids = {docker_client.images.get(t).id for t in tags}
        assert len(ids) == 1
    finally:
        remove_repo(docker_client, repo)


def test_unreachable_registry_base_fails_clearly(docker_client, run_dlenv, tmp_path):
    stack = write_stack(tmp_path, """
        schema: 1
        name: dlenv-itest-registry-base
        extends: python
        base:
          image: 127.0.0.1:9/nvidia/cuda:12.6.3-runtime-ubuntu22.04
    """)
    result = run_dlenv("build", str(stack))
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("dlenv: error:")]
    assert len(errors) == 1, result.stderr
    assert "base image 127.0.0.1:9/nvidia/cuda:12.6.3-runtime-ubuntu22.04 is not available locally" in errors[0]
    assert "could not be pulled" in errors[0] and "Traceback" not in result.stderr
    assert not tags_of(docker_client, "dlenv/dlenv-itest-registry-base")


def test_sigint_during_verify_removes_its_containers(docker_client, dlenv_path, run_dlenv, tmp_path):
    repo = "dlenv/dlenv-itest-verify-sigint"
    stack = write_stack(tmp_path, """
        schema: 1
        name: dlenv-itest-verify-sigint
        extends: python
        env: {PURPOSE: "verify interrupted"}
        checks:
          - name: slow check
            command: sleep 120
            timeout: 300
    """)
    proc = None
    try:
        assert run_dlenv("build", str(stack), "--no-verify").returncode == 0
        env = dict(os.environ, DLENV_STATE_DIR=str(tmp_path / "state"), NO_COLOR="1")
        proc = subprocess.Popen([dlenv_path, "verify", str(stack)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        mine = {"label": "org.dlenv.role=verify", "ancestor": repo}    # not another verify on this engine
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not docker_client.api.containers(filters=mine):
            time.sleep(0.2)
        assert docker_client.api.containers(filters=mine), "verify never started its container"
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert not docker_client.api.containers(all=True, filters=mine)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        remove_repo(docker_client, repo)


@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_during_verify_across_two_containers_removes_them(docker_client, chainermn_image, dlenv_path,
                                                                   tmp_path, sig, code):
    """`verify --nodes 2` (chainermn: the one catalog stack with sshd and MPI): SIGTERM or SIGHUP once both
    containers run sshd removes both and their network, exits 143 or 129 and moves no tag."""
    before, tags = dlenv_objects(docker_client), image_tags(docker_client, chainermn_image.split(":")[0])
    state = tmp_path / "state"
    env = dict(os.environ, DLENV_STATE_DIR=str(state), NO_COLOR="1")
    proc = subprocess.Popen([dlenv_path, "verify", "chainermn", "--nodes", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)

    def both_serve_ssh() -> bool:
        mine = new_containers(docker_client, "org.dlenv.role=verify", before)
        return len(mine) == 2 and all(any("sshd" in cmd for cmd in container_commands(docker_client, c)) for c in mine)

    _out, err = signal_when(proc, both_serve_ssh, sig, 180, "both verify containers ran sshd", settle=1)
    assert_stopped(proc, err, sig, code)
    assert not objects_left(docker_client, before, image=chainermn_image)
    assert image_tags(docker_client, chainermn_image.split(":")[0]) == tags
    assert not temporaries(state)


class HangingIndex:
    """A package index on the engine's bridge that takes connections and never answers: pip in a lock
    container waits on it, so a test can signal `dlenv lock` while the container surely works."""

    def __init__(self, client):
        self.host = client.networks.get("bridge").attrs["IPAM"]["Config"][0].get("Gateway") or "172.17.0.1"
        self.server = socket.create_server(("0.0.0.0", 0))
        self.asked = threading.Event()
        self.held: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.getsockname()[1]}/simple"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)
            self.asked.set()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("moment", ["starting", "resolving"])
@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_during_lock_keeps_the_lock_and_removes_its_container(docker_client, dlenv_path, run_dlenv,
                                                                         tmp_path, sig, code, moment):
    """`dlenv lock` signalled as soon as its container is created (dlenv still waits for the start), or while
    pip in it resolves: the lock container goes, the lock file stays what it was byte for byte (no
    half-written file beside it), no tag moves, nothing temporary stays."""
    repo = "dlenv/dlenv-itest-lock-signal"
    project = tmp_path / "proj"
    project.mkdir()
    (project / "dlenv.yaml").write_text('schema: 1\nname: dlenv-itest-lock-signal\nextends: python\n'
                                        'python_packages: ["six==1.17.0"]\n')
    assert run_dlenv("lock", cwd=project).returncode == 0   # a lock to keep (also builds the python parent if needed)
    lock_file = project / "dlenv.lock"
    locked = lock_file.read_bytes()
    before, tags = dlenv_objects(docker_client), image_tags(docker_client, repo)
    state = tmp_path / "state"
    index = HangingIndex(docker_client)
    env = dict(os.environ, DLENV_STATE_DIR=str(state), NO_COLOR="1", PIP_INDEX_URL=index.url,
               PIP_TRUSTED_HOST=index.host)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    proc = subprocess.Popen([dlenv_path, "lock"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)

    try:
        if moment == "starting":
            wait_for(lambda: new_containers(docker_client, "org.dlenv.role=lock", before, created=True), proc, 120,
                     "the lock container was created", every=0.02)
        else:
            wait_for(lambda: index.asked.is_set() and new_containers(docker_client, "org.dlenv.role=lock", before),
                     proc, 120, "pip in the lock container asked the index")
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        index.close()
    assert_stopped(proc, err, sig, code)
    assert lock_file.read_bytes() == locked
    assert sorted(p.name for p in project.iterdir()) == ["dlenv.lock", "dlenv.yaml"], "a half-written lock is left"
    assert not objects_left(docker_client, before)
    assert image_tags(docker_client, repo) == tags == {}
    assert not temporaries(state)
