"""The Slurm export: an sbatch script that runs a command, one rank per task, in the stack's
image through Apptainer or pyxis, started by srun (PMIx/PMI-2) or by the host's mpirun (hybrid), or
directly on nodes that run the stack's Slurm node image as their OS (native).
Pure: checks every option and returns text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

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
SLURM_RUNTIMES = ("apptainer", "pyxis", "charliecloud", "podman", "native")
DEFAULT_TIME_LIMIT = "01:00:00"
SRUN = ("srun", "--kill-on-bad-exit=1")

# One rank of a Charliecloud or podman job, run by `bash -c` on each task (the command follows as "$@").
# - Open MPI's shared-memory segments go to a folder per job step and node: two Slurm nodes on one host
#   (several slurmd) would otherwise both create /dev/shm/vader_segment.<host>.<job>.<local rank> and hang.
#   On a real cluster each node has its own /dev/shm and this changes nothing. The last rank of a node
#   removes the folder. A rank the runtime saw killed by a signal ends the same way (kill -s SIG $$); a rank
#   that fails writes its status to $DLENV_RANK_STATUS: srun exits 143 whenever --kill-on-bad-exit ended a
#   step (Slurm 22.05, measured), so the batch script takes the job's exit status from the first of those.
# - ch-run --join-tag: the ranks of a node share one container (one user namespace), so Open MPI's
#   single-copy transfers (CMA) work between them; the tag names the node for the same reason as above.
#   --set-env reads the image's environment (PATH, the venv, Open MPI's prefix, the stack's env:), which
#   ch-convert wrote to /ch/environment; --home binds your home as Apptainer does.
# - podman: every rank is its own container (user namespace), so CMA cannot cross them: Open MPI's vader
#   copies through shared memory instead (UCX finds this itself). --userns keep-id and --user run the rank
#   as you; --network host and --pid host let ranks reach the PMIx server and each other as on the host.
_SHM_DIR = 'shm="/dev/shm/dlenv-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURMD_NODENAME"'
# The folder goes also when Slurm signals the rank (its step ended because another rank failed, scancel,
# the time limit): bash runs the trap once the runtime has exited, then ends by that signal again.
_RANK_START = """
{shm}
mkdir -p "$shm"
end() {{ rmdir "$shm" 2>/dev/null; trap - "$1"; kill -s "$1" "$$"; }}
trap "end TERM" TERM; trap "end INT" INT; trap "end HUP" HUP
"""
_RANK_END = """
status=$?
rmdir "$shm" 2>/dev/null
[ "$status" -gt 128 ] && kill -s "$((status - 128))" "$$"
[ "$status" -ne 0 ] && echo "$status" > "$DLENV_RANK_STATUS/$SLURM_PROCID"
exit "$status"
"""
_CHARLIECLOUD_RANK = """OMPI_MCA_btl_vader_backing_directory="$shm" ch-run --join-tag="$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURMD_NODENAME" \\
    --set-env --home --bind="$PWD:{workdir}" --cd={workdir} "$IMAGE" -- "$@"
"""
_PODMAN_RANK = """podman run --rm --network host --pid host --userns keep-id --user "$(id -u):$(id -g)"{gpus} \\
    --volume /dev/shm:/dev/shm --volume "$HOME:$HOME" --env HOME="$HOME" \\
    --volume "$PWD:{workdir}" --workdir {workdir} \\
    --env OMPI_MCA_btl_vader_backing_directory="$shm" --env OMPI_MCA_btl_vader_single_copy_mechanism=none \\
    --env "SLURM_*" --env "PMIX_*" --env "OMPI_*" --env "UCX_*" "$IMAGE" "$@"
"""
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
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    _check_choices(runtime, mpi, mpi_mode, time_limit, partition)
    job_name = _job_name(plan, job_name)
    openmpi = openmpi_version(plan)
    _check_mpi(plan, runtime, mpi, mpi_mode, openmpi)
    sbatch = _sbatch_options(job_name, nodes, tasks, gpus, time_limit, partition)
    image = _slurm_image(plan, runtime, registry, image_file)
    launch = _launch(runtime, mpi, mpi_mode, gpus, image.var)
    return render(
        "slurm.sbatch.j2",
        stack=plan.resolved.name, content_hash=plan.content_hash, image=local_ref(plan),
        runtime=runtime, mpi=mpi, mpi_mode=mpi_mode, openmpi=openmpi or "", gpus=gpus,
        pmix=(plan.resolved.get("pmix").version.text if plan.resolved.get("pmix") else ""),
        sbatch=sbatch, image_var=image.var, assignments=image.assignments, fetch=image.fetch,
        file_check=image.file_check, provision=image.provision, launch=launch, command=shlex.join(words),
        workdir=WORKDIR, node_image=slurm_node_tag(plan.resolved.name, plan.content_hash),
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


def _rank_script(runtime: str, gpus: int) -> str:
    """What each task of a Charliecloud or podman step runs (`bash -c SCRIPT dlenv-rank COMMAND...`)."""
    if runtime == "charliecloud":
        run = _CHARLIECLOUD_RANK.format(workdir=WORKDIR)
    else:
        run = _PODMAN_RANK.format(workdir=WORKDIR,
                                  gpus=" --device nvidia.com/gpu=all --security-opt label=disable" if gpus else "")
    return _RANK_START.format(shm=_SHM_DIR) + run + _RANK_END.lstrip("\n")


def _launch(runtime: str, mpi: str, mpi_mode: str, gpus: int, image_var: str) -> str:
    """The line that starts the ranks in the container (the command follows it)."""
    mount = f'"$PWD:{WORKDIR}"'
    srun = [*SRUN, f"--mpi={mpi}"]
    if runtime == "native":
        return " ".join(srun)
    if runtime in ("charliecloud", "podman"):
        return " ".join([*srun, "bash", "-c", shlex.quote(_rank_script(runtime, gpus)), "dlenv-rank"])
    if runtime == "apptainer":
        container = ["apptainer", "exec"] + (["--nv"] if gpus else []) + ["--bind", mount, "--pwd", WORKDIR,
                                                                           f'"${image_var}"']
        if mpi_mode == "hybrid":
            return " ".join(["mpirun", "-np", '"$SLURM_NTASKS"'] + container)
        return " ".join(srun + container)
    return " ".join([*srun, f'--container-image="${image_var}"',
                     f"--container-mounts={mount}", f"--container-workdir={WORKDIR}"])


@dataclass(frozen=True)
class _Image:
    """How the script names and gets the image: its variable, the assignments (NAME=quoted value),
    comment lines on how to make it, whether the script checks that the file is there, and the lines
    of a step that puts it on every node first (podman)."""
    var: str = ""
    assignments: tuple = ()
    fetch: tuple = ()
    file_check: bool = False
    provision: tuple = ()


def _slurm_image(plan: Plan, runtime: str, registry: str | None, image_file: str | None) -> _Image:
    stack, local = plan.resolved.name, local_ref(plan)
    if image_file is not None and (not image_file or "\n" in image_file or "\x00" in image_file):
        raise ExportError(f"--image-file {image_file!r} is not a path")
    if runtime == "native":
        if image_file is not None:
            raise ExportError("--image-file has no use with --runtime native",
                              hint="the nodes run the node image itself; there is no image file")
        return _Image()
    where = "  where the image is (docker engine): "
    if runtime == "apptainer":
        sif = image_file or artifact_name(plan, ".sif")
        fetch = ["Make the SIF once, on a filesystem every node sees (not inside this job), with Apptainer >= 1.1:",
                 f"{where}dlenv export apptainer {stack} -o dlenv-{stack}.def",
                 f"{' ' * len(where)}apptainer build {sif} dlenv-{stack}.def"]
        if registry:
            fetch.append(f"{'  or from the registry: '.ljust(len(where))}apptainer pull {sif} "
                         f"docker://{registry_ref(plan, registry)}")
        return _Image("SIF", (f"SIF={shlex.quote(sif)}",), tuple(fetch), True)
    if runtime == "charliecloud":
        if registry:
            raise ExportError("--registry has no use with --runtime charliecloud",
                              hint="ch-run runs an image directory or SquashFS file: make it with "
                                   f"`dlenv export charliecloud {stack}` and pass --image-file")
        path = image_file or f"./{artifact_name(plan, '')}"
        return _Image("IMAGE", (f"export IMAGE={shlex.quote(path)}",), (
            "Make the Charliecloud image once, on a filesystem every node sees (not inside this job):",
            f"{where}dlenv export charliecloud {stack} -o {path}",
            f"{' ' * len(where)}(or --format squashfs -o FILE.sqfs: one file; ch-run mounts it with squashfuse,",
            f"{' ' * len(where)} which needs /dev/fuse usable by you on every node)"), True)
    if runtime == "podman":
        if registry and image_file is None:
            ref = registry_ref(plan, registry)
            return _Image("IMAGE", (f"export IMAGE={shlex.quote(ref)}",), (
                f"podman pulls {ref} once per node (below); push it there first: dlenv push {stack} "
                f"--registry {registry}",), False,
                _provision('podman pull --quiet "$IMAGE"'))
        archive = image_file or f"./{artifact_name(plan, '.tar')}"
        if ":" in archive:
            raise ExportError(f"--image-file {image_file!r}: podman reads the archive as docker-archive:PATH, "
                              "where a ':' would end the path", hint="rename or link the archive to a path without ':'")
        return _Image("ARCHIVE", (f"export IMAGE={shlex.quote(local)}", f"export ARCHIVE={shlex.quote(archive)}"), (
            "Make the image archive once, on a filesystem every node sees (not inside this job):",
            f"{where}docker save {local} -o {archive}",
            "  or push it to a registry and export with --registry (podman then pulls it on each node)"), True,
            _provision('podman pull --quiet "docker-archive:$ARCHIVE"'))
    if image_file is None and registry:
        return _Image("IMAGE", (f"IMAGE={shlex.quote(enroot_ref(plan, registry))}",), (
            f"pyxis pulls {registry_ref(plan, registry)} on each node (enroot's HOST#PATH:TAG form);",
            f"push it there first: dlenv push {stack} --registry {registry}"), False)
    sqsh = image_file or f"./{artifact_name(plan, '.sqsh')}"
    if not sqsh.startswith(("/", "./", "../")):
        sqsh = "./" + sqsh  # pyxis reads a path only when it starts with / or .
    return _Image("IMAGE", (f"IMAGE={shlex.quote(sqsh)}",), (
        "Make the squashfs image once, on a filesystem every node sees (not inside this job):",
        f"  where the image is (docker engine): enroot import -o {sqsh} dockerd://{local}",
        "  or pass --registry to `dlenv export slurm` and let pyxis pull it"), True)


def _provision(fetch: str) -> tuple:
    """A step of one task per node that puts the image into that node's podman storage with `fetch`, where
    it is not yet. Nodes that share a storage (a shared home, several slurmd on one host) take turns on a
    lock in it, so the image is fetched once there and no node sees another's half-written layers."""
    script = "\n".join([
        "",
        "set -eu",
        'podman image exists "$IMAGE" && exit 0',
        'exec 9>>"$(podman info --format "{{.Store.GraphRoot}}")/dlenv-provision.lock"',
        "flock 9",
        'podman image exists "$IMAGE" && exit 0',
        f"{fetch} >/dev/null",
        'echo "dlenv: $IMAGE is now in the podman storage of $(id -un) on $SLURMD_NODENAME"',
        ""])
    return (" ".join([*SRUN, '--nodes="$SLURM_JOB_NUM_NODES"', '--ntasks="$SLURM_JOB_NUM_NODES"',
                      "--ntasks-per-node=1", "bash", "-c", shlex.quote(script)]),)