"""A real Slurm (Debian's 22.05 slurmctld/slurmd, munge, PMIx) in containers of the chainermn node image:
`dlenv slurm up` with 2 nodes; the sbatch script of `dlenv export slurm --runtime native` submitted with the
real sbatch runs the ChainerMN smoke on 2 ranks on 2 nodes over the ucx PML; a failing job gives its exit
code; Ctrl-C, SIGTERM and SIGHUP cancel a job (the cluster stays up) and interrupt an `up` or a `verify --slurm`
without leaving anything; an unwritable folder is refused; `dlenv verify chainermn --slurm` passes. Afterwards
no container or network of a cluster is left.

Needs the promoted chainermn image: in CI the e2e tier (tests/e2e, collected first) builds it, and the
`dlenv build chainermn --locked` below is a no-op; alone on a cold machine it builds it (about 10 minutes).
The node image (about 10 s) is removed at the end when this module made it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from builder.names import SLURM_CLUSTER_LABEL, SLURM_VERSION_LABEL
from processes import DLENV
from processes import dlenv_in_state as dlenv
from processes import (TERMINATIONS, assert_stopped, container_commands, dlenv_objects, image_tags, name_of,
                       new_containers, objects_left, running_with, signal_when, temporaries)

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "stacks" / "checks"



def leftovers(client) -> list:
    # The engine's own list: docker-py's containers.list inspects each one, and fails when one goes meanwhile.
    containers = sorted(name_of(c) for c in client.api.containers(all=True, filters={"label": SLURM_CLUSTER_LABEL}))
    networks = sorted(n["Name"] for n in client.api.networks(filters={"label": SLURM_CLUSTER_LABEL}))
    return containers + networks


def job_folder(parent: Path) -> Path:
    """A folder the image user (uid 1000) can write: jobs write slurm-<id>.out there."""
    folder = Path(tempfile.mkdtemp(prefix="slurm-ws-", dir=parent))
    for name in ("chainermn_smoke.py", "mpi_pml.py"):
        shutil.copy(CHECKS / name, folder / name)
    if os.geteuid() == 0:
        for path in [folder, *folder.iterdir()]:
            os.chown(path, 1000, 1000)
    else:
        folder.chmod(0o777)
    return folder


@pytest.fixture(scope="module")
def cluster(docker_client, tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    built = dlenv("build", "chainermn", "--locked", state=state, timeout=3000)
    assert built.returncode == 0, built.stderr[-3000:]
    show = json.loads(dlenv("show", "chainermn", "--json", state=state).stdout)
    node_tag = f"dlenv/chainermn-slurm:{show['content_hash'][:16]}"
    had_node_image = bool(docker_client.images.list(name=node_tag))
    folder = job_folder(tmp_path_factory.mktemp("slurm"))
    try:
        up = dlenv("slurm", "up", "chainermn", "--nodes", "2", state=state, cwd=folder)
        print(up.stderr)
        assert up.returncode == 0, up.stderr[-3000:]
        yield {"state": state, "folder": folder, "node_tag": node_tag, "client": docker_client}
        down = dlenv("slurm", "down", state=state)
        assert down.returncode == 0, down.stderr
        print(down.stderr)
        assert not leftovers(docker_client)
        assert not list(state.glob("slurm-*")), "the munge key folder is left"
    finally:
        dlenv("slurm", "down", state=state)
        if not had_node_image:
            docker_client.images.remove(node_tag)


def export_native(cluster, name: str, *command: str) -> Path:
    text = dlenv("export", "slurm", "chainermn", "--runtime", "native", "--nodes", "2", "--gpus-per-node", "0",
                 "--time", "00:03:00", "--", *command, state=cluster["state"])
    assert text.returncode == 0, text.stderr
    path = cluster["folder"] / name
    path.write_text(text.stdout)
    if os.geteuid() == 0:
        os.chown(path, 1000, 1000)
    return path


def submit(cluster, script: Path, *args: str) -> subprocess.CompletedProcess:
    proc = dlenv("slurm", "submit", str(script), *args, state=cluster["state"], cwd=cluster["folder"])
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def test_node_image(cluster):
    client = cluster["client"]
    attrs = client.api.inspect_image(cluster["node_tag"])
    assert attrs["Config"]["Labels"][SLURM_VERSION_LABEL].startswith("22.05.")
    assert attrs["Config"]["User"] == "1000:1000"
    base = client.api.inspect_image(cluster["node_tag"].replace("-slurm:", ":"))
    print(f"node image: +{(attrs['Size'] - base['Size']) / 1e6:.1f} MB over the stack image")
    # No munge key in any layer of the image: munge's postinst made one, the same RUN removed it.
    probe = client.containers.run(cluster["node_tag"], ["sh", "-c", "ls -A /etc/munge; ls /etc/slurm"], remove=True)
    assert b"munge.key" not in probe and b"slurm.conf" not in probe


def test_native_export_runs_the_chainermn_smoke_on_two_nodes(cluster):
    script = export_native(cluster, "smoke.sbatch", "python", "chainermn_smoke.py")
    assert "#SBATCH --ntasks-per-node=1" in script.read_text()
    # OMPI_MCA_pml=ucx: the ucx PML or an error, never a quiet fall back to ob1 (sbatch passes it on).
    proc = submit(cluster, script, "-e", "OMPI_MCA_pml=ucx")
    assert proc.returncode == 0, proc.stderr
    smoke = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith('{"size"')))
    assert smoke["size"] == 2 and smoke["params_equal"] and smoke["last_loss"] < smoke["first_loss"]
    assert "COMPLETED" in proc.stderr and "on node[1-2]" in proc.stderr    # 2 nodes, one rank each
    pml = submit(cluster, export_native(cluster, "pml.sbatch", "python", "mpi_pml.py"))
    assert pml.returncode == 0 and '{"size": 2, "pml": ["ucx", "ucx"]}' in pml.stdout, pml.stderr


def test_a_failing_job_gives_its_exit_code(cluster):
    script = cluster["folder"] / "fail.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --time=00:01:00\nsrun hostname\necho done >&2\nexit 3\n")
    proc = submit(cluster, script)
    assert proc.returncode == 3, proc.stderr
    assert sorted(proc.stdout.split()) == ["done", "node1", "node2"]    # one slurm-<id>.out, as sbatch does
    assert "FAILED, exit code 3:0" in proc.stderr


def test_a_rank_that_raises_ends_the_job(cluster):
    """KillOnBadExit=1: the other rank, blocked in a barrier, is killed instead of waiting for the time limit."""
    script = cluster["folder"] / "raise.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks=2\n#SBATCH --time=00:02:00\n"
                      "srun python -c 'from mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                      "if c.rank == 1: raise SystemExit(7)\nc.barrier()'\n")
    start = time.monotonic()
    proc = submit(cluster, script)
    assert proc.returncode not in (0, 130) and time.monotonic() - start < 60, proc.stderr


def test_ctrl_c_cancels_the_job(cluster):
    script = cluster["folder"] / "sleep.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --time=00:02:00\necho started\nsrun sleep 100\n")
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(cluster["state"]))
    proc = subprocess.Popen([DLENV, "slurm", "submit", str(script)], cwd=cluster["folder"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "cancelling job" in err and "CANCELLED" in err
    ctl = cluster["client"].containers.list(filters={"label": "org.dlenv.role=slurm-controller"})
    queue = [c.exec_run(["squeue", "-h"]).output for c in ctl]
    assert queue and all(q.strip() == b"" for q in queue)


@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_cancels_the_job_and_leaves_the_cluster_up(cluster, sig, code):
    """SIGTERM or SIGHUP to `dlenv slurm submit` while the job runs: the job is cancelled (its output and
    state printed), the command exits 143 or 129, and the cluster is as `slurm up` left it."""
    client, folder = cluster["client"], cluster["folder"]
    script = folder / f"sleep-{sig.name}.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --time=00:02:00\necho started\nsrun sleep 100\n")
    before, outputs = dlenv_objects(client, cluster["node_tag"]), set(folder.glob("slurm-*.out"))
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(cluster["state"]))
    proc = subprocess.Popen([DLENV, "slurm", "submit", str(script)], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    nodes = [c for c in running_with(client, "org.dlenv.role=slurm-node") if ("container", name_of(c)) in before]

    def task_on_every_node() -> bool:     # each node runs the step's task, `sleep 100` (besides srun on one)
        return all(any(cmd.rsplit("/", 1)[-1] == "sleep 100" for cmd in container_commands(client, c)) for c in nodes)

    out, err = signal_when(proc, lambda: any("started" in out.read_text()
                                             for out in set(folder.glob("slurm-*.out")) - outputs)
                           and task_on_every_node(), sig, 90, "the job ran `srun sleep 100` on both nodes", timeout=120)
    said = assert_stopped(proc, err, sig, code)
    assert "cancelling job" in said and "CANCELLED" in err and "started" in out
    ctl = [client.containers.get(name_of(c)) for c in running_with(client, "org.dlenv.role=slurm-controller")
           if ("container", name_of(c)) in before]
    assert ctl and all(c.exec_run(["squeue", "-h"]).output.strip() == b"" for c in ctl)
    assert dlenv_objects(client, cluster["node_tag"]) == before, "the cluster is not as `slurm up` left it"
    assert {name_of(c) for c in running_with(client, "org.dlenv.role=slurm-node")} >= {name_of(c) for c in nodes}


@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_during_up_leaves_nothing(cluster, tmp_path, sig, code):
    """SIGTERM or SIGHUP while `dlenv slurm up` starts its containers: they, the network, the munge key and the
    state file go; exit 143 or 129."""
    client = cluster["client"]
    before, tags = dlenv_objects(client), image_tags(client, cluster["node_tag"].split(":")[0])
    state = tmp_path / "state"
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(state))
    proc = subprocess.Popen([DLENV, "slurm", "up", "chainermn", "--nodes", "2"], cwd=job_folder(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _out, err = signal_when(proc, lambda: {kind for kind, _ in dlenv_objects(client) - before} == {"container", "network"},
                            sig, 120, "the cluster's network and a container existed")
    said = assert_stopped(proc, err, sig, code)
    assert "the cluster's containers, network and key were removed" in said
    assert not objects_left(client, before, image=cluster["node_tag"])
    assert image_tags(client, cluster["node_tag"].split(":")[0]) == tags
    assert not temporaries(state)


def test_up_refuses_a_folder_the_image_user_cannot_write(cluster, tmp_path):
    if os.geteuid() == 1000:
        pytest.skip("the test user is the image user")
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o755)
    before = leftovers(cluster["client"])
    state = tmp_path / "state"
    proc = dlenv("slurm", "up", "chainermn", "--nodes", "1", state=state, cwd=folder)
    assert proc.returncode == 1 and "uid 1000 (the image user, who runs the jobs) cannot write" in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) < 400
    assert leftovers(cluster["client"]) == before and not list(state.glob("slurm*"))


def test_ctrl_c_during_up_leaves_nothing(cluster, tmp_path):
    before = leftovers(cluster["client"])
    folder = job_folder(tmp_path)
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([DLENV, "slurm", "up", "chainermn", "--nodes", "2"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    time.sleep(1)
    assert leftovers(cluster["client"]) == before
    assert not list((tmp_path / "state").glob("slurm*"))


def test_verify_slurm(cluster, tmp_path):
    before = leftovers(cluster["client"])
    proc = dlenv("verify", "chainermn", "--slurm", "--json", state=tmp_path / "state", timeout=900)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["passed"], json.dumps(report, indent=1)[-4000:]
    names = [c["name"] for c in report["checks"]]
    assert names[0].startswith("Slurm's PMIx plugin starts a task (srun -n1 --mpi=pmix true)")
    smoke = next(c for c in report["checks"] if c["name"].startswith("ChainerMN trains with 2 ranks (srun"))
    data = json.loads(next(ln for ln in smoke["output"].splitlines() if ln.startswith('{"size"')))
    assert data["size"] == 2 and data["params_equal"]
    pml = next(c for c in report["checks"] if c["name"].startswith("Open MPI selects the ucx PML"))
    assert '"pml": ["ucx", "ucx"]' in pml["output"] and "--nodes=2" in pml["command"]
    print(f"verify --slurm: {report['counts']} in {report['seconds']}s")
    assert leftovers(cluster["client"]) == before


@pytest.mark.parametrize("sig,code", TERMINATIONS)
def test_a_signal_during_verify_slurm_leaves_nothing(cluster, tmp_path, sig, code):
    """SIGTERM or SIGHUP while `dlenv verify chainermn --slurm` runs a check under srun: its temporary cluster
    (containers, network, munge key) goes; exit 143 or 129; no tag moves."""
    client = cluster["client"]
    repos = ("dlenv/chainermn", cluster["node_tag"].split(":")[0])
    before, tags = dlenv_objects(client), [image_tags(client, repo) for repo in repos]
    state = tmp_path / "state"
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(state))
    proc = subprocess.Popen([DLENV, "verify", "chainermn", "--slurm"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    def srun_runs() -> bool:
        return any(" srun " in f" {cmd} " for c in new_containers(client, "org.dlenv.role=slurm-controller", before)
                   for cmd in container_commands(client, c))

    _out, err = signal_when(proc, srun_runs, sig, 180, "a check ran under srun in the temporary cluster", timeout=90)
    assert_stopped(proc, err, sig, code)
    assert not objects_left(client, before, image=cluster["node_tag"])
    assert [image_tags(client, repo) for repo in repos] == tags
    assert not temporaries(state)
