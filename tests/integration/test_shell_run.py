"""`dlenv shell` and `dlenv run` against the real engine: the interactive shell driven through
tmux, one-shot commands and their exit status, the host user's identity, refused mounts, and
Ctrl-C, SIGTERM and SIGHUP removing every container (also of an MPI run, in the chainermn image
tests/e2e builds). MPI results across containers are in tests/e2e."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from builder.engine import dockerapi as engine
from builder.engine.containers import ContainerOptions, container_kwargs
from builder.run.session import host_identity, show_rank_line, shell
from processes import (TERMINATIONS, assert_stopped, container_commands, dlenv_objects, image_tags, new_containers,
                       objects_left, running_with, signal_when, temporaries)


@pytest.fixture(scope="module")
def python_image(docker_client, dlenv_path):
    """The catalog `python` stack, built (or found) once for this module."""
    proc = subprocess.run([dlenv_path, "build", "python"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    show = subprocess.run([dlenv_path, "show", "python", "--json"], capture_output=True, text=True, check=True)
    import json
    return json.loads(show.stdout)["image"]


@pytest.fixture
def workspace(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    os.chmod(folder, 0o777)  # tests run as root; the image's user (uid 1000) writes here
    return folder


def shell_containers(client):
    # The engine's own list: docker-py's containers.list inspects each one, and fails when one goes meanwhile.
    return client.api.containers(all=True, filters={"label": "org.dlenv.role=shell"})


def test_shell_command_runs_in_workspace_and_returns_its_status(docker_client, python_image, run_dlenv, workspace):
    (workspace / "input.txt").write_text("from the host\n")
    proc = run_dlenv("shell", "python", "--", "bash", "-c",
                     "cat input.txt; id -u; pwd; echo made > output.txt; exit 7", cwd=workspace)
    assert proc.returncode == 7, proc.stderr
    assert "from the host" in proc.stdout and "/workspace" in proc.stdout
    assert proc.stdout.splitlines()[1] == "1000"  # host user root -> the image's own user
    assert (workspace / "output.txt").read_text() == "made\n"
    assert not shell_containers(docker_client)


def test_shell_runs_as_the_host_uid_with_a_home(docker_client, python_image, workspace):
    client = engine.connect()
    code = shell(client, python_image, ContainerOptions(workspace=workspace), host_identity(4242, 4343),
                 ["bash", "-lc", "test \"$(id -u):$(id -g)\" = 4242:4343 && test -w \"$HOME\" "
                                 "&& test \"$(whoami)\" = dlenv-host && touch mine"], interactive=False)
    assert code == 0
    stat = (workspace / "mine").stat()
    assert (stat.st_uid, stat.st_gid) == (4242, 4343)
    assert not shell_containers(docker_client)


def test_docker_socket_mount_is_refused(docker_client, python_image, run_dlenv, workspace):
    proc = run_dlenv("shell", "python", "-v", "/var/run/docker.sock:/var/run/docker.sock", "--", "true",
                     cwd=workspace)
    assert proc.returncode == 1
    assert "refusing to mount the Docker socket" in proc.stderr and "Traceback" not in proc.stderr
    assert not shell_containers(docker_client)


def test_container_options_are_never_privileged_and_carry_limits(tmp_path):
    kwargs = container_kwargs(ContainerOptions(workspace=tmp_path, env={"A": "1"}), "shell")
    assert kwargs["privileged"] is False and kwargs["init"] is True
    assert kwargs["shm_size"] == "8g"
    assert {u["Name"] for u in kwargs["ulimits"]} == {"memlock", "stack"}
    assert all("docker.sock" not in host for host in kwargs["volumes"])
    assert "ipc_mode" not in kwargs
    host_ipc = container_kwargs(ContainerOptions(ipc_host=True), "run")
    assert host_ipc["ipc_mode"] == "host" and "shm_size" not in host_ipc


def test_rank_output_filter():
    assert show_rank_line("[1,0]<stdout>:loss 0.5", False) == ("stdout", "loss 0.5")
    assert show_rank_line("[1,1]<stdout>:loss 0.5", False) is None
    assert show_rank_line("[1,1]<stderr>:oops", True) == ("stderr", "[rank 1] oops")
    assert show_rank_line("mpiexec noticed that process rank 1 exited", False)[1].startswith("mpiexec")


@pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("DLENV_REQUIRE_ENGINE") != "1",
                    reason="tmux not installed")
def test_interactive_shell_through_tmux(docker_client, python_image, dlenv_path, workspace):
    assert shutil.which("tmux"), "tmux is required for the interactive shell test (scripts/setup-host.sh installs it)"
    session = f"dlenv-test-{os.getpid()}"
    env = dict(os.environ, NO_COLOR="1")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", "-c", str(workspace),
                    f"{dlenv_path} shell python"], check=True, env=env)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        def wait_for(text: str, seconds: float = 60) -> str:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                shown = screen()
                if text in shown:
                    return shown
                time.sleep(0.3)
            raise AssertionError(f"{text!r} never appeared on the screen:\n{screen()}")

        wait_for("dlenv@")  # the login prompt of the image's user
        subprocess.run(["tmux", "send-keys", "-t", session, "echo answer=$((6*7)); whoami; pwd", "Enter"], check=True)
        shown = wait_for("answer=42")
        assert "/workspace" in shown and "dlenv" in shown
        subprocess.run(["tmux", "send-keys", "-t", session, "echo typed > typed.txt; exit", "Enter"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and subprocess.run(["tmux", "has-session", "-t", session],
                                                             capture_output=True).returncode == 0:
            time.sleep(0.3)
        assert (workspace / "typed.txt").read_text() == "typed\n"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert not shell_containers(docker_client)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_during_shell_removes_every_container(docker_client, python_image, dlenv_path, workspace, sig, code):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it), and SIGTERM or SIGHUP to dlenv alone
    (what `timeout`, CI runners, systemd and `scancel` send): dlenv removes the container and exits
    130, 143, 129. (`dlenv run` on the python stack has no MPI, so `dlenv shell -- sleep` stands in.)"""
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.Popen([dlenv_path, "shell", "python", "--", "sleep", "300"], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not shell_containers(docker_client):
            time.sleep(0.2)
        assert shell_containers(docker_client)
        time.sleep(1)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    said = "interrupted" if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}"
    assert said.encode() in err and b"Traceback" not in err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and shell_containers(docker_client):
        time.sleep(0.3)
    assert not shell_containers(docker_client)


@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_while_the_container_starts_removes_it(docker_client, python_image, dlenv_path, workspace, tmp_path,
                                                        sig, code):
    """The signal as soon as the engine lists the shell's container, while dlenv still waits for its start (the
    container is created, dlenv does not hold it yet): it is removed all the same."""
    before = dlenv_objects(docker_client)
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([dlenv_path, "shell", "python", "--", "sleep", "300"], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _out, err = signal_when(proc, lambda: new_containers(docker_client, "org.dlenv.role=shell", before, created=True),
                            sig, 60, "the container was created", every=0.02)
    assert_stopped(proc, err, sig, code)
    assert not objects_left(docker_client, before, image=python_image)


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_during_an_mpi_run_removes_every_container(docker_client, chainermn_image, dlenv_path, workspace,
                                                            tmp_path, sig, code, nodes):
    """`dlenv run -n 2` (chainermn: the one catalog stack with MPI) in one container or across two on a
    private network: SIGTERM or SIGHUP once both ranks run removes the containers and the network, exits
    143 or 129, moves no tag and leaves nothing in the state folder."""
    before, tags = dlenv_objects(docker_client), image_tags(docker_client, chainermn_image.split(":")[0])
    state = tmp_path / "state"
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(state))
    proc = subprocess.Popen([dlenv_path, "run", "chainermn", "-n", "2", "--nodes", str(nodes), "--", "sleep", "300"],
                            cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    def ranks() -> int:
        mine = [c for c in running_with(docker_client, "org.dlenv.role=run")
                if any(m.get("Source") == str(workspace.resolve()) for m in c.get("Mounts") or [])]
        return sum(cmd == "sleep 300" for c in mine for cmd in container_commands(docker_client, c))

    _out, err = signal_when(proc, lambda: ranks() == 2, sig, 120, "both ranks ran")
    assert_stopped(proc, err, sig, code)
    assert not objects_left(docker_client, before, image=chainermn_image)
    assert image_tags(docker_client, chainermn_image.split(":")[0]) == tags
    assert not temporaries(state)


def test_shell_without_an_image_refuses_or_builds(docker_client, run_dlenv, tmp_path, workspace):
    import secrets
    stack = tmp_path / "stack.yaml"
    stack.write_text(f"schema: 1\nname: dlenv-itest-shellbuild\nextends: python\n"
                     f"env: {{TOKEN: \"{secrets.token_hex(6)}\"}}\n")
    try:
        refused = run_dlenv("shell", str(stack), "--", "true", cwd=workspace)
        assert refused.returncode == 1
        assert "does not exist yet" in refused.stderr and "--build" in refused.stderr
        built = run_dlenv("shell", str(stack), "--build", "--", "printenv", "TOKEN", cwd=workspace)
        assert built.returncode == 0, built.stderr
        assert built.stdout.strip() == stack.read_text().split('"')[1]
    finally:
        for image in docker_client.images.list(name="dlenv/dlenv-itest-shellbuild"):
            for tag in image.tags:
                docker_client.images.remove(tag)


def test_list_says_which_stacks_are_built(python_image, run_dlenv):
    import json
    rows = {r["stack"]: r for r in json.loads(run_dlenv("list", "--json", check=True).stdout)}
    assert rows["python"]["built"] is True
    unknown = json.loads(run_dlenv("list", "--json", env={"DOCKER_HOST": "unix:///nonexistent.sock"},
                                   check=True).stdout)
    assert {r["built"] for r in unknown} == {None}  # the catalog still lists without an engine
