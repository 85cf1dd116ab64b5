"""`dlenv verify STACK --slurm`: the stack's MPI checks started by `srun --mpi=pmix` across the nodes
of a temporary local Slurm cluster of its node image, after the proof that Slurm's PMIx plugin loads
(`srun -n1 --mpi=pmix true`; `srun --mpi=list` lists pmix even when it cannot load).

Each check runs under its deadline (srun under `timeout`, and a watchdog that kills the cluster's
containers); the cluster is removed afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import docker.errors

from builder.names import CHECKS_DIR, VENV_PYTHON
from builder.run import slurm as cluster_mod
from builder.run.cluster import put_file
from builder.run.slurm_jobs import srun
from builder.spec.stack import Check
from builder.verify.checks import CheckResult, JobsReport, PlannedCheck, Report
from builder.verify.runner import CommandOutput, Outcome, judge_output

PMIX_CHECK = "Slurm's PMIx plugin starts a task (srun -n1 --mpi=pmix true)"
PMIX_TIMEOUT = 60
_EXIT_STATUS = "exit status "


def mpi_checks(planned: list) -> list:
    """The checks that start ranks (script checks with `ranks`), without the GPU-only ones."""
    return [p for p in planned if p.check.kind == "script" and p.check.ranks and not p.check.device]


def ranks_layout(ranks: int, nodes: int) -> tuple[int, int]:
    """(nodes used, ranks per node) for `ranks` ranks spread evenly over at most `nodes` nodes."""
    used = max(1, min(int(nodes), int(ranks)))
    return used, -(-int(ranks) // used)


def timeout_minutes(seconds: int) -> int:
    """A check's timeout as whole minutes, rounded up (Slurm's time limits have minutes at least)."""
    return max(1, -(-int(seconds) // 60))


def srun_args(ranks: int, nodes: int, timeout: int) -> list:
    """srun's options for `ranks` ranks spread evenly over at most `nodes` nodes."""
    used, per_node = ranks_layout(ranks, nodes)
    return ["--mpi=pmix", f"--nodes={used}", f"--ntasks={int(ranks)}", f"--ntasks-per-node={per_node}",
            f"--time={timeout_minutes(timeout)}"]


def _pmix_planned() -> PlannedCheck:
    return PlannedCheck(Check(name=PMIX_CHECK, kind="command", target="srun -n1 --mpi=pmix true",
                              timeout=PMIX_TIMEOUT), {})


def _run(client, state, planned: PlannedCheck, argv: list, timeout: int) -> tuple[CheckResult, int]:
    result = Outcome(planned)
    kill = threading.Timer(timeout + 30, lambda: _kill(client, state))
    kill.start()  # a hung srun must not hang verify: the containers die, the check fails
    try:
        rc, text = srun(client, state, argv, timeout)
    finally:
        kill.cancel()
    command = "srun " + " ".join(argv)
    return judge_output(planned, command, CommandOutput(rc, text), result), rc


def _kill(client, state) -> None:
    for name in state.containers:
        try:
            client.containers.get(name).kill()
        except docker.errors.APIError:
            pass


def verify_slurm(client, image: str, planned: list, state_dir: Path, nodes: int = 2,
                 on_result=None) -> tuple[Report, int]:
    """(report, exit code of the first failed job or 0) for the MPI checks of `planned` under Slurm."""
    jobs = JobsReport(image, nodes, on_result)
    record = jobs.record
    start = time.monotonic()
    state = cluster_mod.up(client, image, nodes, None, state_dir, keep_state=False)
    try:
        record(*_run(client, state, _pmix_planned(), ["-n1", "--mpi=pmix", "true"], PMIX_TIMEOUT))
        for item in mpi_checks(planned):
            local = Path(item.check.base_dir) / item.check.target
            for name in state.containers:
                put_file(client.containers.get(name), local.read_bytes(), f"{CHECKS_DIR}/{local.name}")
            argv = srun_args(item.check.ranks, nodes, item.check.timeout) + [VENV_PYTHON, f"{CHECKS_DIR}/{local.name}"]
            res, rc = _run(client, state, item, argv, item.check.timeout)
            res.name = f"{res.name} (srun, {min(nodes, item.check.ranks)} Slurm nodes)"
            record(res, rc)
    finally:
        cluster_mod.down(client, state)
        jobs.report.seconds = time.monotonic() - start
    return jobs.report, jobs.first_failure
