"""Faults with the real engine: SIGINT during a build, two builds of one stack at once, and a
registry base image that cannot be pulled. Each leaves earlier tags, containers and files alone."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from processes import processes_with


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
    containers_before = {c.id for c in docker_client.containers.list(all=True)}
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
            if {c.id for c in docker_client.containers.list(all=True)} <= containers_before:
                break
            time.sleep(1)
        assert {c.id for c in docker_client.containers.list(all=True)} <= containers_before
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
    try:
        assert run_dlenv("build", str(stack), "--no-verify").returncode == 0
        env = dict(os.environ, DLENV_STATE_DIR=str(tmp_path / "state"), NO_COLOR="1")
        proc = subprocess.Popen([dlenv_path, "verify", str(stack)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        label = {"label": "org.dlenv.role=verify"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not docker_client.containers.list(filters=label):
            time.sleep(0.2)
        assert docker_client.containers.list(filters=label), "verify never started its container"
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert not docker_client.containers.list(all=True, filters=label)
    finally:
        remove_repo(docker_client, repo)
