"""Jobs on a local Slurm cluster (builder.run.slurm): submitted with the real `sbatch` in the controller as
the image user (uid 1000) from /workspace, waited for through `scontrol show job`, cancelled with
`scancel`, their output read from the node that ran the batch script. Every command is an argument
list (no shell line); values come checked from builder.outputs.slurm.
"""

from __future__ import annotations

import time
from pathlib import Path

from builder.errors import SlurmError
from builder.names import RUNTIME_UID, RUNTIME_USER, WORKDIR
from builder.outputs.slurm import check_job_id, job_finished, parse_job
from builder.run.slurm import ClusterState, exec_in

POLL_SECONDS = 0.3
USER = f"{RUNTIME_UID}:{RUNTIME_UID}"
# `docker exec -u` sets HOME but not USER/LOGNAME; sbatch exports this environment to the job.
_ENV = {"USER": RUNTIME_USER, "LOGNAME": RUNTIME_USER}


def as_user(client, state: ClusterState, argv: list, env: dict | None = None, container: str | None = None):
    """Run `argv` as the image user in /workspace of the controller (or `container`): (exit code, output)."""
    try:
        c = client.containers.get(container or state.controller)
    except Exception as exc:  # noqa: BLE001 - NotFound or the engine gone: the cluster is unusable either way
        raise SlurmError(f"the cluster's {container or 'controller'} is gone ({exc.__class__.__name__})",
                         hint="run `dlenv slurm down`, then `dlenv slurm up` again") from None
    code, out = c.exec_run(argv, user=USER, workdir=WORKDIR, environment={**_ENV, **(env or {})})
    return code, (out or b"").decode("utf-8", "replace")


def script_in_workspace(state: ClusterState, script: Path) -> str:
    """SCRIPT as a path relative to /workspace: it must lie in the folder the cluster shares."""
    if state.workspace is None:
        raise SlurmError("this cluster shares no host folder", hint="run `dlenv slurm up` from the job's folder")
    real = Path(script).resolve()
    try:
        rel = real.relative_to(Path(state.workspace))
    except ValueError:
        raise SlurmError(f"{script} is not in {state.workspace}, the folder the cluster shares at {WORKDIR}",
                         hint="move the script there, or `dlenv slurm down` and `up` from its folder") from None
    if not real.is_file():
        raise SlurmError(f"{script} is not a file")
    return rel.as_posix()


def submit(client, state: ClusterState, script: str, sbatch_args: tuple = (), env: dict | None = None) -> str:
    """`sbatch --parsable SCRIPT` as the image user; the job id."""
    code, out = as_user(client, state, ["sbatch", "--parsable", *sbatch_args, "--", script], env)
    if code != 0:
        raise SlurmError(f"sbatch refused {script}: {' '.join(out.split())[:300]}",
                         hint="fix the #SBATCH lines (this cluster has one partition, `main`)")
    return check_job_id(out.strip().splitlines()[-1] if out.strip() else "")


def job_fields(client, state: ClusterState, job_id: str) -> dict:
    code, out = exec_in(client, state.controller, ["scontrol", "show", "job", "-o", check_job_id(job_id)])
    if code != 0:
        raise SlurmError(f"scontrol knows no job {job_id}: {' '.join(out.split())[:200]}")
    return parse_job(out)


def wait(client, state: ClusterState, job_id: str, deadline: float | None = None) -> dict:
    """Poll until the job ends; returns its fields. With a deadline (time.monotonic) a job still
    running then is cancelled and a SlurmError says so."""
    while True:
        fields = job_fields(client, state, job_id)
        if job_finished(fields):
            return fields
        if deadline is not None and time.monotonic() > deadline:
            cancel(client, state, job_id)
            raise SlurmError(f"job {job_id} did not finish in time and was cancelled",
                             hint="raise the deadline, or look for a rank that hangs")
        time.sleep(POLL_SECONDS)


def cancel(client, state: ClusterState, job_id: str) -> None:
    exec_in(client, state.controller, ["scancel", check_job_id(job_id)])


def output(client, state: ClusterState, fields: dict) -> tuple[str, str]:
    """(stdout, stderr) of a finished job, read on the node that ran its batch script."""
    host = fields.get("BatchHost") or ""
    if host not in [f"node{i}" for i in range(1, state.nodes + 1)]:
        return "", ""
    texts = []
    for key in ("StdOut", "StdErr"):
        path = fields.get(key, "")
        if not path.startswith("/") or (key == "StdErr" and path == fields.get("StdOut")):
            texts.append("")
            continue
        code, out = exec_in(client, state.node(host), ["cat", "--", path], user=USER)
        texts.append(out if code == 0 else "")
    return texts[0], texts[1]


def srun(client, state: ClusterState, argv: list, timeout: int, env: dict | None = None) -> tuple[int, str]:
    """`srun ARGV` from the controller as the image user, under `timeout` (TERM makes srun cancel its
    step; KILL 10 s later); exit code 124 or 137 means it ran out of time."""
    code, out = as_user(client, state, ["timeout", "-k", "10", str(int(timeout)), "srun", *argv], env)
    return code, out
