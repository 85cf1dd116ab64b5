"""The Slurm export: an sbatch script that runs a command, one rank per task, in the stack's
image through Apptainer or pyxis, started by srun (PMIx/PMI-2) or by the host's mpirun (hybrid), or
directly on nodes that run the stack's Slurm node image as their OS (native).
Pure: checks every option and returns text.
"""

from __future__ import annotations

import re
import shlex

from builder.errors import ExportError
from builder.names import WORKDIR, slurm_node_tag
from builder.outputs.exports.common import (
    artifact_name,
    command_words,
    enroot_ref,
    local_ref,
    openmpi_version,
    positive,
    registry_ref,
    render,
)
from builder.plan.plan import Plan

SLURM_MPI = ("pmix", "pmi2")
SLURM_RUNTIMES = ("apptainer", "pyxis", "native")
MPI_MODES = ("direct", "hybrid")

_TIME = re.compile(r"^(?:[0-9]{1,3}-)?[0-9]{1,3}:[0-5][0-9]:[0-5][0-9]$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]{1,64}(,[A-Za-z0-9_.-]{1,64})*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def slurm_script(plan: Plan, command, *, nodes: int, gpus_per_node: int, ntasks_per_node: int | None = None,
                 time_limit: str | None = None, partition: str | None = None, runtime: str = "apptainer",
                 mpi: str = "pmix", mpi_mode: str = "direct", registry: str | None = None,
                 image_file: str | None = None, job_name: str | None = None) -> str:
    """An sbatch script that runs COMMAND, one rank per task, in the stack's image."""
    words = command_words(command)
    nodes = positive("--nodes", nodes)
    gpus = positive("--gpus-per-node", gpus_per_node, minimum=0)
    tasks = positive("--ntasks-per-node", ntasks_per_node if ntasks_per_node is not None else max(gpus, 1))
    _check_choices(runtime, mpi, mpi_mode, time_limit, partition)
    job_name = _job_name(plan, job_name)
    openmpi = openmpi_version(plan)
    _check_mpi(plan, runtime, mpi, mpi_mode, openmpi)
    sbatch = _sbatch_options(job_name, nodes, tasks, gpus, time_limit, partition)
    image_var, image_value, fetch, file_check = _slurm_image(plan, runtime, registry, image_file)
    launch = _launch(runtime, mpi, mpi_mode, gpus, image_var)
    return render(
        "slurm.sbatch.j2",
        stack=plan.resolved.name, content_hash=plan.content_hash, image=local_ref(plan),
        runtime=runtime, mpi=mpi, mpi_mode=mpi_mode, openmpi=openmpi or "", gpus=gpus,
        pmix=(plan.resolved.get("pmix").version.text if plan.resolved.get("pmix") else ""),
        sbatch=sbatch, image_var=image_var, image_assignment=f"{image_var}={image_value}",
        fetch=fetch, file_check=file_check, launch=launch, command=shlex.join(words), workdir=WORKDIR,
        node_image=slurm_node_tag(plan.resolved.name, plan.content_hash),
    )


def _check_choices(runtime: str, mpi: str, mpi_mode: str, time_limit: str | None, partition: str | None) -> None:
    if runtime not in SLURM_RUNTIMES:
        raise ExportError(f"--runtime must be one of {', '.join(SLURM_RUNTIMES)}, not {runtime!r}")
    if mpi not in SLURM_MPI:
        raise ExportError(f"--mpi must be one of {', '.join(SLURM_MPI)}, not {mpi!r}")
    if mpi_mode not in MPI_MODES:
        raise ExportError(f"--mpi-mode must be one of {', '.join(MPI_MODES)}, not {mpi_mode!r}")
    if time_limit is not None and not _TIME.match(time_limit):
        raise ExportError(f"--time {time_limit!r} is not a time limit", hint="use HH:MM:SS or D-HH:MM:SS, e.g. 02:00:00")
    if partition is not None and not _PARTITION.match(partition):
        raise ExportError(f"--partition {partition!r} is not a partition name",
                          hint="letters, digits, '_', '.', '-'; several partitions separated by commas")


def _job_name(plan: Plan, job_name: str | None) -> str:
    job_name = job_name or f"dlenv-{plan.resolved.name}"
    if not _JOB_NAME.match(job_name):
        raise ExportError(f"--job-name {job_name!r} is not a job name", hint="letters, digits, '_', '.', '-' (64 at most)")
    return job_name


def _check_mpi(plan: Plan, runtime: str, mpi: str, mpi_mode: str, openmpi: str | None) -> None:
    if mpi_mode == "hybrid" and runtime != "apptainer":
        raise ExportError("--mpi-mode hybrid needs --runtime apptainer",
                          hint="with pyxis, srun itself starts the ranks in the container: use --mpi-mode direct")
    if mpi_mode == "hybrid" and not openmpi:
        raise ExportError(f"--mpi-mode hybrid: stack {plan.resolved.name} has no Open MPI for the host's mpirun "
                          "to talk to", hint="use --mpi-mode direct")
    if mpi == "pmi2" and openmpi and mpi_mode == "direct":
        raise ExportError(f"--mpi pmi2: the image's Open MPI {openmpi} has no PMI-2 client (it is built without "
                          "--with-pmi), so every rank would start alone as rank 0",
                          hint="use --mpi pmix (the default) or --mpi-mode hybrid")


def _sbatch_options(job_name: str, nodes: int, tasks: int, gpus: int, time_limit: str | None,
                    partition: str | None) -> list:
    sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks}"]
    if gpus:
        sbatch.append(f"--gpus-per-node={gpus}")
    if time_limit:
        sbatch.append(f"--time={time_limit}")
    if partition:
        sbatch.append(f"--partition={partition}")
    return sbatch


def _launch(runtime: str, mpi: str, mpi_mode: str, gpus: int, image_var: str) -> str:
    """The line that starts the ranks in the container."""
    mount = f'"$PWD:{WORKDIR}"'
    if runtime == "native":
        return f"srun --mpi={mpi}"
    if runtime == "apptainer":
        container = ["apptainer", "exec"] + (["--nv"] if gpus else []) + ["--bind", mount, "--pwd", WORKDIR,
                                                                           f'"${image_var}"']
        if mpi_mode == "hybrid":
            return " ".join(["mpirun", "-np", '"$SLURM_NTASKS"'] + container)
        return " ".join(["srun", f"--mpi={mpi}"] + container)
    return " ".join(["srun", f"--mpi={mpi}", f'--container-image="${image_var}"',
                     f"--container-mounts={mount}", f"--container-workdir={WORKDIR}"])


def _slurm_image(plan: Plan, runtime: str, registry: str | None, image_file: str | None):
    """(variable, shell value, comment lines on how to get the image, whether it is a file to check)."""
    stack, local = plan.resolved.name, local_ref(plan)
    if image_file is not None and (not image_file or "\n" in image_file or "\x00" in image_file):
        raise ExportError(f"--image-file {image_file!r} is not a path")
    if runtime == "native":
        if image_file is not None:
            raise ExportError("--image-file has no use with --runtime native",
                              hint="the nodes run the node image itself; there is no image file")
        return "", "", [], False
    if runtime == "apptainer":
        sif = image_file or artifact_name(plan, ".sif")
        where = "  where the image is (docker engine): "
        fetch = ["Make the SIF once, on a filesystem every node sees (not inside this job), with Apptainer >= 1.1:",
                 f"{where}dlenv export apptainer {stack} -o dlenv-{stack}.def",
                 f"{' ' * len(where)}apptainer build {sif} dlenv-{stack}.def"]
        if registry:
            fetch.append(f"{'  or from the registry: '.ljust(len(where))}apptainer pull {sif} "
                         f"docker://{registry_ref(plan, registry)}")
        return "SIF", shlex.quote(sif), fetch, True
    if image_file is None and registry:
        return "IMAGE", shlex.quote(enroot_ref(plan, registry)), [
            f"pyxis pulls {registry_ref(plan, registry)} on each node (enroot's HOST#PATH:TAG form);",
            f"push it there first: dlenv push {stack} --registry {registry}"], False
    sqsh = image_file or f"./{artifact_name(plan, '.sqsh')}"
    if not sqsh.startswith(("/", "./", "../")):
        sqsh = "./" + sqsh  # pyxis reads a path only when it starts with / or .
    return "IMAGE", shlex.quote(sqsh), [
        "Make the squashfs image once, on a filesystem every node sees (not inside this job):",
        f"  where the image is (docker engine): enroot import -o {sqsh} dockerd://{local}",
        "  or pass --registry to `dlenv export slurm` and let pyxis pull it"], True
