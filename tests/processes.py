"""Processes of this machine, for tests that wait until a build step really runs before they signal it,
and what the real-signal tests share: the signals that must stop a command like Ctrl-C (SIGTERM, SIGHUP,
with their exit statuses), waiting for a state of the engine, what a stopped command must not leave, and
the venv's dlenv run with a state folder of its own (timed, for the test's output)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker.errors
import pytest

from builder.names import ROLE_LABEL, SLURM_CLUSTER_LABEL

# What `timeout`, CI runners, systemd and `scancel` send: dlenv cleans up as on Ctrl-C and exits 128 + N.
TERMINATIONS = [pytest.param(signal.SIGTERM, 143, id="SIGTERM"), pytest.param(signal.SIGHUP, 129, id="SIGHUP")]
# What a state folder holds after a command that was stopped: nothing temporary (build contexts, package
# repositories, Slurm secrets and state, half-written files), only these.
STATE_KEPT = {"locks", "logs", "store"}
DLENV = str(Path(sys.executable).parent / "dlenv")


def dlenv_in_state(*args, state: Path, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`dlenv ARGS` with DLENV_STATE_DIR=`state`, its exit status and time printed."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", DLENV_STATE_DIR=str(state))
    start = time.monotonic()
    proc = subprocess.run([DLENV, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    print(f"dlenv {' '.join(args)}: rc {proc.returncode} in {time.monotonic() - start:.1f}s")
    return proc


def processes_with(text: str) -> list[int]:
    """The pids whose command line contains `text` (a container's processes are the host's too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition, proc, seconds: float, what: str, every: float = 0.3):
    """Poll `condition` until it returns something true; fail (with dlenv's stderr) when `proc` ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"dlenv exited {proc.returncode} before {what}:\n{err}")
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {seconds:.0f}s")


def signal_when(proc, condition, sig, seconds: float, what: str, *, every: float = 0.3, settle: float = 0.0,
                timeout: float = 60) -> tuple[str, str]:
    """Wait until `condition` holds (see wait_for), `settle` seconds more, send `sig` to dlenv and return its
    (stdout, stderr); a dlenv still running after that, or after a failed wait, is killed."""
    try:
        wait_for(condition, proc, seconds, what, every=every)
        time.sleep(settle)
        proc.send_signal(sig)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def running_with(client, label: str, created: bool = False) -> list[dict]:
    """The running (or, with `created`, also the just created) containers with `label` ("key=value"), as the
    engine lists them: Id, Names, Mounts. (docker-py's containers.list inspects each one it lists, and fails
    when one goes meanwhile.)"""
    return client.api.containers(all=created, filters={"label": label})


def name_of(row: dict) -> str:
    return (row.get("Names") or ["/" + row["Id"][:12]])[0].lstrip("/")


def new_containers(client, label: str, before: set, created: bool = False) -> list[dict]:
    """running_with(), less the containers in `before` (a dlenv_objects() taken before the test's command)."""
    return [row for row in running_with(client, label, created) if ("container", name_of(row)) not in before]


def container_commands(client, row: dict) -> list[str]:
    """The command lines of the processes in a running container (as `docker top` shows them); [] once gone."""
    try:
        top = client.api.top(row["Id"])
    except docker.errors.APIError:
        return []
    column = top["Titles"].index("CMD")
    return [process[column] for process in top.get("Processes") or []]


def dlenv_objects(client, image: str | None = None) -> set:
    """Every container and network that carries one of dlenv's labels (a role, a Slurm cluster); with `image`,
    only the containers of that image (on a shared engine, another user's containers come and go)."""
    found = set()
    for label in (ROLE_LABEL, SLURM_CLUSTER_LABEL):
        filters = {"label": label, **({"ancestor": image} if image else {})}
        found |= {("container", name_of(row)) for row in client.api.containers(all=True, filters=filters)}
        found |= {("network", net["Name"]) for net in client.api.networks(filters={"label": label})}
    return found


def objects_left(client, before: set, seconds: float = 30, image: str | None = None) -> set:
    """dlenv's containers (of `image`) and networks beyond `before`, once the engine had `seconds` to remove them."""
    deadline = time.monotonic() + seconds
    while True:
        left = dlenv_objects(client, image) - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def temporaries(state: Path) -> list[str]:
    """What a command left in its state folder beyond what it keeps there (STATE_KEPT)."""
    return sorted(p.name for p in state.iterdir() if p.name not in STATE_KEPT) if state.exists() else []


def image_tags(client, repo: str) -> dict:
    """tag -> image id of every tag of `repo`: equal before and after means no tag moved."""
    return {tag: image.id for image in client.images.list(name=repo) for tag in image.tags}


def assert_stopped(proc, err: str, sig: int, code: int) -> str:
    """dlenv exited 128 + N, said once that it was stopped by the signal, and printed no traceback."""
    name = signal.Signals(sig).name
    assert proc.returncode == code, err
    said = [line for line in err.splitlines() if f"stopped by {name}" in line]
    assert len(said) == 1 and "Traceback" not in err, err
    return said[0]
