"""`dlenv verify STACK --slurm --runtime charliecloud|podman`: the stack's MPI checks as a user of a real
cluster runs them. A Slurm on this host (builder.run.hostslurm: slurmctld and one slurmd per node, as root)
runs, as a temporary unprivileged user, the very sbatch script `dlenv export slurm --runtime RUNTIME`
writes, on the image `dlenv export charliecloud` writes (or the `docker save` archive podman loads).

Each check is one batch job under its deadline (the script's --time, and a watchdog that cancels the job);
the Slurm, its user and its folder are removed afterwards, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from builder.engine.archive import save_tagged
from builder.engine.charliecloud import export_charliecloud, read_record
from builder.engine.disk import check_needs
from builder.engine.images import require_promoted
from builder.errors import VerifyError
from builder.names import VENV_PYTHON
from builder.outputs.exports.common import artifact_name
from builder.outputs.exports.slurm import slurm_script
from builder.outputs.hostslurm import IMAGES_DIR
from builder.plan import disk as plan_disk
from builder.plan.plan import Plan
from builder.run import hostslurm
from builder.spec.stack import Check
from builder.verify.checks import CheckResult, JobsReport, PlannedCheck, Report
from builder.verify.runner import CommandOutput, Outcome, judge_output
from builder.verify.slurm import mpi_checks, ranks_layout, timeout_minutes

HOST_RUNTIMES = ("charliecloud", "podman")
START_TIMEOUT = 120
LOAD_TIMEOUT = 900
# One host: the Slurm nodes share it, and Open MPI's TCP transport over its other interfaces (bridges,
# a test network) hung on large messages here. The exported script leaves the choice to the cluster's
# user (its comments say how); this is that choice for a cluster made of this one host.
ONE_HOST_ENV = {"OMPI_MCA_btl_tcp_if_include": "lo"}
# Rootless podman's storage for the job user: the kernel's own overlay (Linux >= 5.13); without it podman
# falls back to vfs, which copies every layer in full (a 3.7 GB image took more than 13 GB).
PODMAN_STORAGE_CONF = '[storage]\ndriver = "overlay"\n'


def _time_limit(seconds: int) -> str:
    minutes = timeout_minutes(seconds)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _run_check(cluster, p: Plan, runtime: str, image_file: str, planned: PlannedCheck, name: str,
               command: list, files: dict, nodes: int, ranks: int, timeout: int) -> tuple[CheckResult, int]:
    used, per_node = ranks_layout(ranks, nodes)
    folder = hostslurm.job_folder(cluster, name)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
        hostslurm.give_to_job_user(cluster, folder / file_name)
    script = folder / "job.sbatch"
    script.write_text(slurm_script(p, command, nodes=used, gpus_per_node=0, ntasks_per_node=per_node,
                                   time_limit=_time_limit(timeout), runtime=runtime, image_file=image_file,
                                   job_name=f"dlenv-{name}"))
    hostslurm.give_to_job_user(cluster, script)
    outcome = Outcome(planned)
    job = hostslurm.submit_and_wait(cluster, script, timeout + START_TIMEOUT, extra_env=ONE_HOST_ENV)
    out = CommandOutput(job.exit_code, job.output)
    res = judge_output(planned, f"sbatch {script.name} (job {job.job_id}, {job.state})", out, outcome)
    res.name = f"{res.name} ({runtime} under a host Slurm, {used} nodes)"
    return res, job.exit_code


def _charliecloud_image(client, p: Plan, cluster, image_file: str | None, log_dir: Path) -> str:
    if image_file:
        record = read_record(image_file)
        if record is None:
            raise VerifyError(f"{image_file} is not a Charliecloud image made by `dlenv export charliecloud`")
        if record.get("content_hash") != p.content_hash:
            raise VerifyError(f"{image_file} holds {record.get('stack')} {str(record.get('content_hash'))[:16]}, "
                              f"not {p.resolved.name} {p.content_hash[:16]}",
                              hint=f"export it again: dlenv export charliecloud {p.resolved.name} -o {image_file} --force")
        return str(Path(image_file).resolve())
    target = cluster.folder / IMAGES_DIR / artifact_name(p, "")
    # checked with the podman case before the cluster's first job (_check_disk)
    export_charliecloud(client, p, str(target), "dir", log_path=log_dir / f"{p.resolved.name}-charliecloud.log",
                        disk_check=False)
    return str(target)


def _check_disk(client, p: Plan, cluster, runtime: str, image_file: str | None) -> None:
    """Refuse in one line, before anything is written, when the image dlenv makes for the runtime (the
    Charliecloud directory, or podman's archive) and podman's two copies while it loads do not fit."""
    size = int(require_promoted(client, p).get("Size") or 0)
    needs = plan_disk.runtime_needs(runtime, size, image_path=None if image_file else str(cluster.folder / IMAGES_DIR),
                                    podman_storage=cluster.home)
    check_needs(p.resolved.name, client, needs, doing=f"verify --slurm --runtime {runtime}",
                override="or pass --image-file with an image made before" if runtime == "charliecloud" and not image_file
                else "then verify again")


def _podman_image(client, p: Plan, cluster, image_file: str | None) -> str:
    """The `docker save` archive of the image (IMAGE_FILE, or one saved for this run), and the job user's
    podman storage set up for it."""
    if image_file:
        archive = Path(image_file).resolve()
        if not archive.is_file():
            raise VerifyError(f"{image_file} is not a file", hint=f"make it with `docker save {p.hash_tag} -o FILE`")
    else:
        archive = cluster.folder / IMAGES_DIR / artifact_name(p, ".tar")
        save_tagged(client, p.hash_tag, archive)
        archive.chmod(0o644)
    config = Path(cluster.home) / ".config" / "containers"
    config.mkdir(parents=True, exist_ok=True)
    (config / "storage.conf").write_text(PODMAN_STORAGE_CONF)
    for path in (config.parent, config, config / "storage.conf"):
        hostslurm.give_to_job_user(cluster, path)
    return str(archive)


def runtime_missing(runtime: str) -> list:
    tools = {"charliecloud": ("ch-run", "ch-convert"), "podman": ("podman", "newuidmap")}[runtime]
    return [t for t in tools if shutil.which(t) is None]


def verify_host_slurm(client, p: Plan, planned: list, runtime: str, state_dir: Path, nodes: int = 2,
                      image_file: str | None = None, on_result=None) -> tuple[Report, int]:
    """(report, exit code of the first failed job or 0) for the MPI checks of `planned`, run through
    `runtime` under a Slurm on this host as an unprivileged user."""
    missing = runtime_missing(runtime)
    if missing:
        raise VerifyError(f"--runtime {runtime} needs {', '.join(missing)} on this host",
                          hint="install Debian's charliecloud-runtime and charliecloud-builders, or podman and uidmap "
                               "(scripts/setup-host.sh installs both)")
    jobs = JobsReport(p.hash_tag, nodes, on_result)
    record = jobs.record
    start = time.monotonic()
    cluster = hostslurm.up(nodes, state_dir)
    try:
        _check_disk(client, p, cluster, runtime, image_file)
        if runtime == "charliecloud":
            image = _charliecloud_image(client, p, cluster, image_file, Path(state_dir) / "logs")
        else:
            image = _podman_image(client, p, cluster, image_file)
        # The first job also puts the image into every node's podman storage: a 3.7 GB archive loads in
        # about a minute here, so its deadline is longer.
        first_timeout = START_TIMEOUT if runtime == "charliecloud" else LOAD_TIMEOUT
        starts = PlannedCheck(Check(name=f"{runtime} starts the image on every node (srun --mpi=pmix)",
                                    kind="command", target="true", timeout=first_timeout), {})
        record(*_run_check(cluster, p, runtime, image, starts, "start", ["true"], {}, nodes, nodes, first_timeout))
        for index, item in enumerate(mpi_checks(planned)):
            local = Path(item.check.base_dir) / item.check.target
            record(*_run_check(cluster, p, runtime, image, item, f"check{index + 1}", [VENV_PYTHON, local.name],
                               {local.name: local.read_bytes()}, nodes, item.check.ranks, item.check.timeout))
    finally:
        hostslurm.down(cluster)
        jobs.report.seconds = time.monotonic() - start
    return jobs.report, jobs.first_failure

