"""The image where HPC users run it: a real Slurm on this host (Debian's 22.05 slurmctld and two slurmd on one
machine, munge, PMIx), jobs submitted with the real sbatch as a temporary unprivileged user, and the image
started through real unprivileged runtimes, Charliecloud 0.31 (ch-convert, ch-run) and rootless podman 4.3.

- chainermn exported with `dlenv export charliecloud`, and the script of `dlenv export slurm --runtime
  charliecloud` submitted with sbatch, runs the ChainerMN smoke on 2 ranks on 2 Slurm nodes;
- `dlenv verify chainermn --slurm --runtime charliecloud|podman` passes (podman: the image from a `docker
  save` archive into the job user's rootless storage, by the script's own provisioning step, once for the
  two nodes that share it; it runs first, while the disk holds no Charliecloud copy of chainermn);
- an export that does not fit its filesystem (a small tmpfs) is refused in one line before converting;
- a rank that exits 3 fails the job with exit status 3, through both runtimes (on the small python image);
- SIGTERM to a `dlenv verify --slurm --runtime charliecloud` exits 143 and leaves nothing;
- afterwards no daemon, job user, folder or /dev/shm segment is left.

chainermn is the stack here (not a smaller one with the same MPI parts) because it is built for the e2e tier
anyway; converting it takes about 4 minutes, loading it into podman about 1. Needs root (slurmd starts the tasks
as the job user) and the tools scripts/setup-host.sh installs.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from builder.engine.archive import save_tagged
from builder.run import hostslurm
from builder.verify.hostslurm import ONE_HOST_ENV, PODMAN_STORAGE_CONF
from processes import DLENV, dlenv_in_state

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "stacks" / "checks"
TMP_PREFIX = f"{tempfile.gettempdir()}/dlenv-slurm-"
TOOLS = ("ch-run", "ch-convert", "podman", "newuidmap", *hostslurm.TOOLS)


# chainermn's builds and its Charliecloud conversion take longer than dlenv_in_state's default allows
dlenv = functools.partial(dlenv_in_state, timeout=1800)


def job_users() -> list:
    return sorted(p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("dlenv-job-"))


def daemon_folders() -> list:
    """The folders of the host Slurms whose daemons (munged, slurmctld, slurmscriptd, slurmd, slurmstepd) run."""
    folders = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() not in ("munged", "slurmctld", "slurmscriptd", "slurmd", "slurmstepd"):
                continue
            text = (proc / "environ").read_bytes() + b"\0" + (proc / "cmdline").read_bytes()
        except OSError:
            continue
        for word in text.replace(b"=", b"\0").split(b"\0"):
            if word.startswith(TMP_PREFIX.encode()):
                folders.add(str(Path(word.decode()).parents[len(Path(word.decode()).parts) - 4]))
    return sorted(folders)


def leftovers() -> dict:
    """What a host Slurm could leave: its daemons, job users, folders and shared-memory folders."""
    return {"daemons": daemon_folders(), "users": job_users(),
            "folders": sorted(str(p) for p in Path(tempfile.gettempdir()).glob("dlenv-slurm-*")),
            "shm": sorted(str(p) for p in Path("/dev/shm").glob("dlenv-*"))}


EMPTY = {"daemons": [], "users": [], "folders": [], "shm": []}


@pytest.fixture(scope="module")
def host(docker_client, tmp_path_factory):
    missing = [t for t in TOOLS if subprocess.run(["which", t], capture_output=True).returncode != 0]
    if os.geteuid() != 0 or missing:
        why = "not root" if os.geteuid() != 0 else f"missing {', '.join(missing)}"
        message = f"a host Slurm with Charliecloud and podman cannot run here: {why} (scripts/setup-host.sh)"
        if os.environ.get("DLENV_REQUIRE_ENGINE") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert leftovers() == EMPTY, "a host Slurm of an earlier run is still here"
    state = tmp_path_factory.mktemp("hpc-state")
    for stack in ("chainermn", "python"):
        built = dlenv("build", stack, "--locked", state=state, timeout=3600)
        assert built.returncode == 0, built.stderr[-3000:]
    shows = {s: json.loads(dlenv("show", s, "--json", state=state).stdout) for s in ("chainermn", "python")}
    start = time.monotonic()
    cluster = hostslurm.up(2, state)
    print(f"host Slurm up in {time.monotonic() - start:.1f}s: {cluster.layout.folder}, user {cluster.layout.job_user}")
    try:
        yield {"cluster": cluster, "state": state, "images": cluster.folder / "images", "show": shows,
               "client": docker_client}
    finally:
        start = time.monotonic()
        hostslurm.down(cluster)
        print(f"host Slurm down in {time.monotonic() - start:.1f}s")
    assert leftovers() == EMPTY


@pytest.fixture(scope="module")
def chainermn_ch(host):
    """chainermn as a Charliecloud directory, made by the CLI into the cluster's folder (the job user reads it)."""
    target = host["images"] / "chainermn"
    proc = dlenv("export", "charliecloud", "chainermn", "-o", str(target), state=host["state"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout.strip())
    return target


def submit(host, name: str, script_text: str, files=(), timeout: int = 600) -> hostslurm.JobResult:
    cluster = host["cluster"]
    folder = hostslurm.job_folder(cluster, name)
    for path in files:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
        hostslurm.give_to_job_user(cluster, folder / Path(path).name)
    script = folder / "job.sbatch"
    script.write_text(script_text)
    hostslurm.give_to_job_user(cluster, script)
    job = hostslurm.submit_and_wait(cluster, script, timeout, extra_env=ONE_HOST_ENV)
    print(f"job {job.job_id} ({name}): {job.state}, exit {job.exit_code}, {job.seconds:.1f}s\n{job.output[-3000:]}")
    return job


def export_slurm(host, stack: str, runtime: str, image_file: str, *command: str, ntasks: int = 1) -> str:
    proc = dlenv("export", "slurm", stack, "--runtime", runtime, "--nodes", "2", "--gpus-per-node", "0",
                 "--ntasks-per-node", str(ntasks), "--time", "00:05:00", "--image-file", image_file, "--",
                 *command, state=host["state"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def smoke_passed(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines, output[-2000:]
    result = json.loads(lines[-1])
    assert result["size"] == 2 and result["params_equal"] is True
    assert result["last_loss"] < result["first_loss"]
    return result


# First in this module: it runs before the Charliecloud copy of chainermn (chainermn_ch, 3.7 GB) is made, so
# the disk holds one copy of the image fewer while podman's copies (the archive, podman's temporary copy
# and its storage: 3 x 3.7 GB) are written.
def test_verify_through_podman_under_a_host_slurm(host):
    verify_through(host, "podman")


def test_an_export_that_does_not_fit_is_refused_in_one_line_before_converting(host, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(small)], check=True)
    try:
        proc = dlenv("export", "charliecloud", "python", "-o", str(small / "py"), state=host["state"])
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("dlenv: error: ")]
        assert len(errors) == 1 and re.search(rf"not enough disk for python: {small} has 3\d\d MB free, the dir "
                                              r"export needs about \d+ MB there for the Charliecloud image \(.*"
                                              r"or export with --skip-disk-check\)$", errors[0]), proc.stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_charliecloud_export_carries_the_environment_and_names_its_lock(host, chainermn_ch):
    env = dict(line.split("=", 1) for line in (chainermn_ch / "ch" / "environment").read_text().splitlines()
               if "=" in line)
    assert env["PATH"].split(":")[:3] == ["/opt/openmpi/bin", "/opt/ucx/bin", "/opt/venv/bin"]
    assert env["CHAINERMN_FORCE_ABORT_ON_EXCEPTION"] == "1"
    record = json.loads((chainermn_ch / "ch" / "dlenv.json").read_text())
    assert record["content_hash"] == host["show"]["chainermn"]["content_hash"] and record["stack"] == "chainermn"
    said = dlenv("verify", str(chainermn_ch), state=host["state"])
    assert said.returncode == 0, said.stderr
    assert "Charliecloud image of chainermn" in said.stdout and "current lock of chainermn" in said.stderr
    assert not list(chainermn_ch.parent.glob(".chainermn.dlenv-*")), "the export's temporary folder is left"


def test_charliecloud_sbatch_runs_the_chainermn_smoke_on_two_nodes(host, chainermn_ch):
    text = export_slurm(host, "chainermn", "charliecloud", str(chainermn_ch), "python", "chainermn_smoke.py")
    job = submit(host, "ch-smoke", text, files=[CHECKS / "chainermn_smoke.py"])
    assert job.exit_code == 0 and job.state == "COMPLETED", job.output[-3000:]
    smoke_passed(job.output)


def test_charliecloud_two_ranks_per_node_share_a_container_and_use_ucx(host, chainermn_ch):
    text = export_slurm(host, "chainermn", "charliecloud", str(chainermn_ch), "python", "mpi_pml.py", ntasks=2)
    job = submit(host, "ch-pml", text, files=[CHECKS / "mpi_pml.py"])
    assert job.exit_code == 0, job.output[-3000:]
    assert '"size": 4, "pml": ["ucx", "ucx", "ucx", "ucx"]' in job.output


FAIL_RANK_1 = ["python", "-c", "import os, sys, time; sys.exit(3) if os.environ['SLURM_PROCID'] == '1' else time.sleep(600)"]


def test_a_failing_rank_fails_the_job_with_its_exit_status(host):
    """Through both runtimes, on the small python image: rank 1 exits 3 while rank 0 would sleep past the job's
    time limit (5 minutes)."""
    python_ch = host["images"] / "python"
    made = dlenv("export", "charliecloud", "python", "-o", str(python_ch), state=host["state"])
    assert made.returncode == 0, made.stderr
    job = submit(host, "ch-fail", export_slurm(host, "python", "charliecloud", str(python_ch), *FAIL_RANK_1))
    # FAILED with 3, not TIMEOUT: the sleeping rank was ended when rank 1 failed
    assert job.exit_code == 3 and job.state == "FAILED", job.output[-2000:]
    assert "dlenv: rank 1 failed first, with exit status 3" in job.output
    archive = host["images"] / "python.tar"
    save_tagged(host["client"], host["show"]["python"]["image"], archive)
    archive.chmod(0o644)
    config = Path(host["cluster"].home) / ".config" / "containers"
    config.mkdir(parents=True, exist_ok=True)
    (config / "storage.conf").write_text(PODMAN_STORAGE_CONF)
    subprocess.run(["chown", "-R", f"{host['cluster'].uid}:{host['cluster'].gid}", str(config.parent)], check=True)
    job = submit(host, "podman-fail", export_slurm(host, "python", "podman", str(archive), *FAIL_RANK_1))
    # the script's own step put the image into the storage the two nodes share, once
    assert job.output.count(f"is now in the podman storage of {host['cluster'].layout.job_user}") == 1, job.output
    assert job.exit_code == 3 and job.state == "FAILED", job.output[-2000:]
    assert not list(Path("/dev/shm").glob("dlenv-*"))


def verify_through(host, runtime: str, *args: str) -> None:
    proc = dlenv("verify", "chainermn", "--slurm", "--runtime", runtime, *args, state=host["state"])
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"through {runtime} under a host Slurm (2 nodes): 3 passed, 0 failed" in proc.stdout
    assert job_users() == [host["cluster"].layout.job_user]     # its own user is gone; the fixture's stays


def test_verify_through_charliecloud_under_a_host_slurm(host, chainermn_ch):
    verify_through(host, "charliecloud", "--image-file", str(chainermn_ch))


def test_sigterm_during_verify_leaves_nothing(host, chainermn_ch):
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(host["state"]))
    proc = subprocess.Popen([DLENV, "verify", "chainermn", "--slurm", "--runtime", "charliecloud", "--image-file",
                             str(chainermn_ch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    before = set(job_users())
    while time.monotonic() < deadline and not (set(job_users()) - before):
        time.sleep(0.2)
    time.sleep(2)       # its daemons are up, its first job is on the way
    assert set(job_users()) - before, "verify did not start its host Slurm"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    print(out[-2000:], err[-2000:])
    assert proc.returncode == 143 and "Traceback" not in err
    assert job_users() == [host["cluster"].layout.job_user]
    mine = [str(host["cluster"].folder)]
    assert leftovers() == {"daemons": mine, "users": [host["cluster"].layout.job_user], "folders": mine, "shm": []}
    assert [p.name for p in Path(host["state"]).glob("hostslurm-*.json")] == \
        [Path(host["cluster"].record).name], "the stopped run's record is left"


def test_sigterm_during_export_charliecloud_leaves_no_partial_image(docker_client, tmp_path):
    """ch-convert runs in its own process group: SIGTERM stops all of it (docker export, pigz, tar), the
    container it exports from is removed, and neither the image nor its temporary folder is left."""
    state = tmp_path / "state"
    built = dlenv("build", "python", "--locked", state=state, timeout=3600)
    assert built.returncode == 0, built.stderr[-2000:]
    image_id = docker_client.images.get(json.loads(dlenv("show", "python", "--json", state=state).stdout)["image"]).id
    before = {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": image_id})}
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(state))
    proc = subprocess.Popen([DLENV, "export", "charliecloud", "python", "-o", str(tmp_path / "py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".py.dlenv-*/*")):
        time.sleep(0.1)
    time.sleep(1.5)      # ch-convert is exporting or compressing
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    print(err[-2000:])
    assert proc.returncode == 143 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    time.sleep(1)
    after = {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": image_id})}
    assert after <= before, "ch-convert's export container is left"
    left = subprocess.run(["pgrep", "-f", f"ch-convert.*{tmp_path}"], capture_output=True, text=True).stdout
    assert not left.strip(), left
