"""Beyond one machine: the stack's image, named by its content hash, for other runtimes.

Pure generation (`apptainer_def`, `slurm_script`, `mpijob`, `devcontainer`) returns text: every
value is computed, validated and quoted here, and the Jinja templates under
`templates/exports/` only place it (StrictUndefined). YAML and JSON documents are dumped from
Python data. Nothing here prints; the CLI (cli_export.py) writes the results.

`save_image` / `load_image` move a promoted image with its lock data to a machine without a
registry: one tar whose first member is `dlenv-manifest.json` and whose other members are the
engine's own `docker save` archive of the image (saved by image id, so it carries no tag: loading
it moves no tag by itself). The archive is streamed both ways and never held in memory; `docker
load` (or `dlenv load`) accepts it as it is, gzip-compressed or not. `dlenv load` moves the
promoted tags only after the loaded image's id and content-hash label equal the manifest's.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import io
import json
import os
import re
import shlex
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jinja2
import yaml

from builder import __version__, paths
from builder.names import HASH_LABEL, TAG_CHARS
from builder.plan.plan import Plan
from builder.errors import ArchiveError, EngineError, ExportError
from builder.names import K8S_LABEL_PREFIX, RUNTIME_HOME, RUNTIME_UID, RUNTIME_USER, STACK_LABEL, WORKDIR

EXPORT_KINDS = ("apptainer", "slurm", "mpijob", "devcontainer")
MANIFEST_NAME = "dlenv-manifest.json"
MANIFEST_FORMAT = 1
SSH_PORT = 2222                      # sshd of the MPIJob workers runs as the image user: no port below 1024
SSH_AUTH_PATH = f"{RUNTIME_HOME}/.ssh"       # where mpi-operator mounts the job's ssh key pair
SLURM_MPI = ("pmix", "pmi2")
SLURM_RUNTIMES = ("apptainer", "pyxis")
MPI_MODES = ("direct", "hybrid")
DEVCONTAINER_EXTENSIONS = ("ms-python.python",)

_TIME = re.compile(r"^(?:[0-9]{1,3}-)?[0-9]{1,3}:[0-5][0-9]:[0-5][0-9]$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]{1,64}(,[A-Za-z0-9_.-]{1,64})*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_SHM = re.compile(r"^([0-9]+)([bkmg]?)$")


# ---------------------------------------------------------------------------------------- names

def local_ref(plan: Plan) -> str:
    """The promoted image in the local engine: dlenv/STACK:<hash16>."""
    return plan.hash_tag


def registry_ref(plan: Plan, registry: str) -> str:
    """REGISTRY[/PREFIX]/dlenv/STACK:<hash16>, as `dlenv push` names it."""
    from builder.engine.registry import remote_ref
    return remote_ref(plan, registry)


def enroot_ref(plan: Plan, registry: str) -> str:
    """enroot's (and so pyxis') spelling of a registry image: HOST[:PORT]#PATH:TAG."""
    host, _, rest = registry_ref(plan, registry).partition("/")
    return f"{host}#{rest}"


def artifact_name(plan: Plan, suffix: str) -> str:
    return f"dlenv-{plan.resolved.name}-{plan.content_hash[:TAG_CHARS]}{suffix}"


def _need_registry(registry: str | None, what: str, stack: str) -> str:
    if not registry:
        raise ExportError(f"{what} needs a registry the cluster can pull the image from",
                          hint=f"pass --registry HOST:PORT[/PREFIX] (or set DLENV_REGISTRY) and push the image "
                               f"there first with `dlenv push {stack} --registry HOST:PORT`")
    return registry


# -------------------------------------------------------------------------------------- helpers

def _environment() -> jinja2.Environment:
    # The export templates belong to dlenv, not to a catalog: a DLENV_TEMPLATES_DIR catalog
    # without them still finds the shipped ones.
    folders = [paths.templates_dir() / "exports", paths._data_dir("templates") / "exports"]
    # No HTML autoescaping (Jinja's default): these are shell scripts and YAML, and every value is
    # quoted for its target language in Python before it reaches a template.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(f) for f in folders]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, **values) -> str:
    try:
        return _environment().get_template(template).render(**values)
    except jinja2.TemplateError as exc:
        raise ExportError(f"export template {template}: {exc}") from None


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExportError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def _command(command) -> list:
    words = [str(w) for w in (command or ())]
    if not words:
        raise ExportError("no command given", hint="put the command after `--`, e.g. `-- python train.py`")
    if any("\x00" in w for w in words):
        raise ExportError("a command word contains a NUL character")
    return words


def _stack_env(plan: Plan) -> dict:
    env = plan.resolved.env
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ExportError(f"stack {plan.resolved.name}: environment variable name {key!r} cannot be exported")
        if "\x00" in value:
            raise ExportError(f"stack {plan.resolved.name}: the value of {key} contains a NUL character")
    return env


def _openmpi(plan: Plan) -> str | None:
    rc = plan.resolved.get("openmpi")
    return rc.version.text if rc else None


def _has_cuda(plan: Plan) -> bool:
    return plan.resolved.get("cuda") is not None


def shm_bytes(size: str) -> int:
    """Docker's --shm-size value (the `shm_size` setting: digits and b/k/m/g, binary units)."""
    m = _SHM.match(str(size).strip().lower())
    if not m:
        raise ExportError(f"shm size {size!r} is not a number with an optional b, k, m or g")
    return int(m[1]) * {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2]]


def k8s_quantity(size: str) -> str:
    m = _SHM.match(str(size).strip().lower())
    if not m:
        raise ExportError(f"shm size {size!r} is not a number with an optional b, k, m or g")
    return m[1] + {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[m[2]]


def test_modules(plan: Plan) -> list:
    """Top-level modules the stack's own cheap Python checks import (no GPU, no ranks, no root):
    importing them is the Apptainer `%test`."""
    modules: list = []
    for chk in plan.resolved.checks:
        if chk.kind != "python" or chk.device or chk.ranks or chk.as_root:
            continue
        try:
            tree = ast.parse(chk.target)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in modules:
                    modules.append(top)
    return modules


# ------------------------------------------------------------------------------------ apptainer

def apptainer_def(plan: Plan, registry: str | None = None) -> str:
    """An Apptainer definition file: from the local engine (`docker-daemon`) or the registry."""
    if registry:
        bootstrap, source = "docker", registry_ref(plan, registry)
    else:
        bootstrap, source = "docker-daemon", local_ref(plan)
    env_lines = [f"export PATH={shlex.quote(plan.resolved.path)}"]
    ld_paths = plan.resolved.ld_paths
    if ld_paths:
        # Apptainer appends /.singularity.d/libs (the host driver with --nv) after this in 99-base.sh;
        # keep whatever is already set.
        env_lines.append(f"export LD_LIBRARY_PATH={shlex.quote(':'.join(ld_paths))}"
                         '"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"')
    env_lines += [f"export {key}={shlex.quote(value)}" for key, value in _stack_env(plan).items()]
    modules = test_modules(plan)
    if modules:
        test = f"python -c {shlex.quote('import ' + ', '.join(modules))}"
    elif plan.resolved.get("python") is not None:
        test = "python --version"
    else:
        test = "true"
    return _render(
        "apptainer.def.j2",
        stack=plan.resolved.name, content_hash=plan.content_hash, hash16=plan.content_hash[:TAG_CHARS],
        bootstrap=bootstrap, source=source, registry=registry or "",
        sif=artifact_name(plan, ".sif"), def_name=f"dlenv-{plan.resolved.name}.def",
        env_lines=env_lines, labels=[(HASH_LABEL, plan.content_hash), (STACK_LABEL, plan.resolved.name)],
        test=test, workdir=WORKDIR, user=RUNTIME_USER,
    )


# ---------------------------------------------------------------------------------------- slurm

def slurm_script(plan: Plan, command, *, nodes: int, gpus_per_node: int, ntasks_per_node: int | None = None,
                 time_limit: str | None = None, partition: str | None = None, runtime: str = "apptainer",
                 mpi: str = "pmix", mpi_mode: str = "direct", registry: str | None = None,
                 image_file: str | None = None, job_name: str | None = None) -> str:
    """An sbatch script that runs COMMAND, one rank per task, in the stack's image."""
    words = _command(command)
    nodes = _positive("--nodes", nodes)
    gpus = _positive("--gpus-per-node", gpus_per_node, minimum=0)
    tasks = _positive("--ntasks-per-node", ntasks_per_node if ntasks_per_node is not None else max(gpus, 1))
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
    job_name = job_name or f"dlenv-{plan.resolved.name}"
    if not _JOB_NAME.match(job_name):
        raise ExportError(f"--job-name {job_name!r} is not a job name", hint="letters, digits, '_', '.', '-' (64 at most)")
    openmpi = _openmpi(plan)
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

    sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks}"]
    if gpus:
        sbatch.append(f"--gpus-per-node={gpus}")
    if time_limit:
        sbatch.append(f"--time={time_limit}")
    if partition:
        sbatch.append(f"--partition={partition}")

    image_var, image_value, fetch, file_check = _slurm_image(plan, runtime, registry, image_file)
    mount = f'"$PWD:{WORKDIR}"'
    if runtime == "apptainer":
        container = ["apptainer", "exec"] + (["--nv"] if gpus else []) + ["--bind", mount, "--pwd", WORKDIR,
                                                                           f'"${image_var}"']
        if mpi_mode == "hybrid":
            launch = " ".join(["mpirun", "-np", '"$SLURM_NTASKS"'] + container)
        else:
            launch = " ".join(["srun", f"--mpi={mpi}"] + container)
    else:
        launch = " ".join(["srun", f"--mpi={mpi}", f'--container-image="${image_var}"',
                           f"--container-mounts={mount}", f"--container-workdir={WORKDIR}"])
    return _render(
        "slurm.sbatch.j2",
        stack=plan.resolved.name, content_hash=plan.content_hash, image=local_ref(plan),
        runtime=runtime, mpi=mpi, mpi_mode=mpi_mode, openmpi=openmpi or "", gpus=gpus,
        pmix=(plan.resolved.get("pmix").version.text if plan.resolved.get("pmix") else ""),
        sbatch=sbatch, image_var=image_var, image_assignment=f"{image_var}={image_value}",
        fetch=fetch, file_check=file_check, launch=launch, command=shlex.join(words), workdir=WORKDIR,
    )


def _slurm_image(plan: Plan, runtime: str, registry: str | None, image_file: str | None):
    """(variable, shell value, comment lines on how to get the image, whether it is a file to check)."""
    stack, local = plan.resolved.name, local_ref(plan)
    if image_file is not None and (not image_file or "\n" in image_file or "\x00" in image_file):
        raise ExportError(f"--image-file {image_file!r} is not a path")
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


# --------------------------------------------------------------------------------------- mpijob

class _NoAliasDumper(yaml.SafeDumper):
    """Repeated mappings (labels, security contexts) written out in full, not as YAML anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def mpijob(plan: Plan, command, *, registry: str | None, workers: int, gpus_per_worker: int,
           slots_per_worker: int | None = None, name: str | None = None, shm_size: str = "8g") -> str:
    """A Kubeflow MPIJob (kubeflow.org/v2beta1): one launcher runs mpirun, WORKERS pods run sshd
    as the image's non-root user; every pod uses the image of this content hash."""
    words = _command(command)
    registry = _need_registry(registry, "an MPIJob", plan.resolved.name)
    workers = _positive("--workers", workers)
    gpus = _positive("--gpus-per-worker", gpus_per_worker, minimum=0)
    slots = _positive("--slots-per-worker", slots_per_worker if slots_per_worker is not None else max(gpus, 1))
    name = name or f"dlenv-{plan.resolved.name}"[:63].rstrip("-")
    if not _K8S_NAME.match(name):
        raise ExportError(f"--name {name!r} is not a Kubernetes object name",
                          hint="lowercase letters, digits and '-', starting and ending with a letter or digit, 63 at most")
    if not _openmpi(plan):
        raise ExportError(f"stack {plan.resolved.name} has no Open MPI: an MPIJob launches its command with mpirun",
                          hint="export a stack with openmpi (e.g. chainermn)")
    if plan.resolved.get("openssh") is None:
        raise ExportError(f"stack {plan.resolved.name} has no OpenSSH: MPIJob workers are reached over ssh",
                          hint="add the openssh component to the stack")
    image = registry_ref(plan, registry)
    hash16 = plan.content_hash[:TAG_CHARS]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "dlenv",
              f"{K8S_LABEL_PREFIX}stack": plan.resolved.name, f"{K8S_LABEL_PREFIX}content-hash": hash16}
    annotations = {f"{K8S_LABEL_PREFIX}content-hash": plan.content_hash, f"{K8S_LABEL_PREFIX}image": image}
    rsh_args = (f"-p {SSH_PORT} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                "-o LogLevel=ERROR -o ConnectionAttempts=10")
    exports = []
    for var in ["PATH", *_stack_env(plan)]:
        exports += ["-x", var]
    launcher_command = ["mpirun", "-np", str(workers * slots), "--mca", "plm_rsh_args", rsh_args, *exports, *words]
    sshd = ["/usr/sbin/sshd", "-De", "-f", "/dev/null", "-p", str(SSH_PORT),
            "-o", f"HostKey={SSH_AUTH_PATH}/id_rsa", "-o", f"AuthorizedKeysFile={SSH_AUTH_PATH}/authorized_keys",
            "-o", "PidFile=none", "-o", "StrictModes=no", "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no"]
    pod_security = {"runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID, "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"}}
    container_security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    def pod(role: str, container: dict, volumes: list | None = None) -> dict:
        spec: dict = {"securityContext": pod_security, "containers": [container]}
        if volumes:
            spec["volumes"] = volumes
        return {"metadata": {"labels": {**labels, f"{K8S_LABEL_PREFIX}role": role}, "annotations": annotations},
                "spec": spec}

    launcher = {"name": "launcher", "image": image, "imagePullPolicy": "IfNotPresent",
                "workingDir": WORKDIR, "command": launcher_command, "securityContext": container_security}
    worker = {"name": "worker", "image": image, "imagePullPolicy": "IfNotPresent", "workingDir": WORKDIR,
              "command": sshd, "ports": [{"name": "ssh", "containerPort": SSH_PORT}],
              "securityContext": container_security,
              "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    if gpus:
        worker["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s_quantity(shm_size)}}
    doc = {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "slotsPerWorker": slots,
            "runPolicy": {"cleanPodPolicy": "Running"},
            "sshAuthMountPath": SSH_AUTH_PATH,
            "mpiImplementation": "OpenMPI",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "template": pod("launcher", launcher)},
                "Worker": {"replicas": workers, "template": pod("worker", worker, [shm])},
            },
        },
    }
    body = yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True).rstrip("\n")
    return _render("mpijob.yaml.j2", stack=plan.resolved.name, content_hash=plan.content_hash, image=image,
                   registry=registry, workers=workers, slots=slots, gpus=gpus, ranks=workers * slots,
                   ssh_port=SSH_PORT, ssh_path=SSH_AUTH_PATH, user=RUNTIME_USER, uid=RUNTIME_UID,
                   openmpi=_openmpi(plan), body=body)


# --------------------------------------------------------------------------------- devcontainer

def devcontainer_run_args(shm_size: str = "8g") -> list:
    from builder.run.cluster import ULIMITS
    shm_bytes(shm_size)  # validated
    args = [f"--shm-size={shm_size}"]
    for limit, soft, hard in ULIMITS:
        args += ["--ulimit", f"{limit}={soft}" if soft == hard else f"{limit}={soft}:{hard}"]
    return args + ["--init"]


def devcontainer(plan: Plan, *, registry: str | None = None, shm_size: str = "8g") -> str:
    """.devcontainer/devcontainer.json pinned to the image of this content hash."""
    doc: dict = {
        "name": f"dlenv {plan.resolved.name} ({plan.content_hash[:TAG_CHARS]})",
        "image": registry_ref(plan, registry) if registry else local_ref(plan),
        "remoteUser": RUNTIME_USER,
        "workspaceMount": f"source=${{localWorkspaceFolder}},target={WORKDIR},type=bind",
        "workspaceFolder": WORKDIR,
        "runArgs": devcontainer_run_args(shm_size),
    }
    if _has_cuda(plan):
        doc["hostRequirements"] = {"gpu": "optional"}
    doc["customizations"] = {"vscode": {"extensions": list(DEVCONTAINER_EXTENSIONS)}}
    return json.dumps(doc, indent=2) + "\n"


# ------------------------------------------------------------------------------------ save/load

@dataclass
class SaveResult:
    path: str
    image: str
    image_id: str
    bytes_written: int
    seconds: float


@dataclass
class LoadResult:
    stack: str
    content_hash: str
    image_id: str
    tags: list = field(default_factory=list)
    seconds: float = 0.0
    fresh: bool = True   # the image was not in the engine before


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's `docker save` stream)."""

    def __init__(self, chunks, on_bytes: Callable[[int], None] | None = None):
        self._it = iter(chunks)
        self._buf = memoryview(b"")
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not len(self._buf):
            try:
                chunk = next(self._it)
            except StopIteration:
                return 0
            self._buf = memoryview(chunk)
            if self._on_bytes:
                self._on_bytes(len(chunk))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def manifest_for(plan: Plan, image_id: str) -> dict:
    return {"format": MANIFEST_FORMAT, "stack": plan.resolved.name, "content_hash": plan.content_hash,
            "image_id": image_id, "image": local_ref(plan), "dlenv_version": __version__,
            "versions": plan.resolved.versions(),
            "python_packages": [text for text, _ in plan.resolved.merged.python_packages]}


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def save_image(client, plan: Plan, output, *, force: bool = False,
               on_progress: Callable[[int], None] | None = None) -> SaveResult:
    """Write the promoted image of `plan` and its manifest to OUTPUT (gzip when it ends in .gz)."""
    import docker.errors
    import requests.exceptions

    from builder.engine.images import require_promoted
    started = time.monotonic()
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"{output} is a directory", hint="give a file name, e.g. -o chainermn.tar")
    if output.exists() and not force:
        raise ExportError(f"{output} already exists", hint="pass --force to replace it")
    if not output.parent.is_dir():
        raise ExportError(f"folder {output.parent} does not exist")
    image_id = require_promoted(client, plan)["Id"]
    manifest = json.dumps(manifest_for(plan, image_id), indent=2, sort_keys=True).encode() + b"\n"
    partial = _partial(output)
    written = {"n": 0}

    def counted(n: int) -> None:
        written["n"] += n
        if on_progress:
            on_progress(written["n"])

    config_names = {f"{image_id.split(':', 1)[1]}.json", f"blobs/sha256/{image_id.split(':', 1)[1]}"}
    seen_config = False
    try:
        with open(partial, "wb") as raw:
            with contextlib.ExitStack() as stack:
                sink = raw
                if output.name.endswith(".gz"):
                    sink = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0))
                out = stack.enter_context(tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT))
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size, info.mode, info.mtime = len(manifest), 0o644, 0
                out.addfile(info, io.BytesIO(manifest))
                chunks = None
                try:
                    chunks = client.api.get_image(image_id, chunk_size=1 << 20)
                    source = io.BufferedReader(_ChunkReader(chunks, counted), buffer_size=1 << 20)
                    with tarfile.open(fileobj=source, mode="r|") as src:
                        for member in src:
                            if member.name == MANIFEST_NAME:
                                raise ArchiveError(f"the engine's archive of {plan.hash_tag} already has a "
                                                   f"{MANIFEST_NAME}")
                            seen_config = seen_config or member.name in config_names
                            out.addfile(member, src.extractfile(member) if member.isreg() else None)
                except docker.errors.APIError as exc:
                    raise EngineError(f"docker save of {plan.hash_tag} failed: {exc.explanation or exc}") from None
                except requests.exceptions.RequestException as exc:
                    raise EngineError(f"lost the connection to the engine while saving {plan.hash_tag}: "
                                      f"{' '.join(str(exc).split())[:200]}") from None
                except tarfile.TarError as exc:
                    raise EngineError(f"the engine's archive of {plan.hash_tag} is not a tar archive: {exc}") from None
                finally:
                    if hasattr(chunks, "close"):
                        chunks.close()   # ends the engine's stream early on an error or Ctrl-C
                if not seen_config:
                    raise EngineError(f"the engine's archive of {plan.hash_tag} does not hold the image {image_id[:19]}")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return SaveResult(str(output), plan.hash_tag, image_id, output.stat().st_size, time.monotonic() - started)


def read_manifest(path) -> dict:
    """The manifest of a `dlenv save` archive (its first member), validated."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist or is not a file")
    try:
        with tarfile.open(path, mode="r|*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isreg() or first.size > 1 << 20:
                raise ArchiveError(f"{path} is not a dlenv save archive (its first member is not {MANIFEST_NAME})",
                                   hint="make it with `dlenv save STACK -o FILE`")
            data = tar.extractfile(first).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path} is not a readable tar archive: {' '.join(str(exc).split())[:160]}") from None
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{path}: {MANIFEST_NAME} is not JSON: {exc}") from None
    return validate_manifest(manifest, path)


def validate_manifest(manifest, where) -> dict:
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{where}: {MANIFEST_NAME} is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ArchiveError(f"{where}: {MANIFEST_NAME} has format {manifest.get('format')!r}; this dlenv reads "
                           f"format {MANIFEST_FORMAT}", hint="load it with the dlenv version that saved it")
    checks = {"stack": _STACK_NAME, "content_hash": _HASH, "image_id": _IMAGE_ID}
    for key, pattern in checks.items():
        value = manifest.get(key)
        if not isinstance(value, str) or not pattern.match(value):
            raise ArchiveError(f"{where}: {MANIFEST_NAME}: {key} is missing or invalid ({str(value)[:80]!r})")
    return manifest


def load_image(client, path, on_progress: Callable[[int], None] | None = None) -> LoadResult:
    """Stream a `dlenv save` archive into the engine; move dlenv/STACK:<hash16> and :latest only
    when the loaded image's id and content-hash label equal the manifest's."""
    import docker.errors
    import requests.exceptions

    from builder.engine import dockerapi as engine
    from builder.statelock import stack_lock
    started = time.monotonic()
    path = Path(path)
    manifest = read_manifest(path)
    stack, content_hash, expected_id = manifest["stack"], manifest["content_hash"], manifest["image_id"]
    hash_tag, latest_tag = f"dlenv/{stack}:{content_hash[:TAG_CHARS]}", f"dlenv/{stack}:latest"
    try:
        before = set(client.api.images(all=True, quiet=True))
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot list the engine's images: {exc.explanation or exc}") from None
    loaded_ids, loaded_refs = [], []
    with open(path, "rb") as raw:
        body = _ProgressFile(raw, on_progress)
        try:
            for chunk in client.api.load_image(body):
                if chunk.get("error") or chunk.get("errorDetail"):
                    message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                    raise ArchiveError(f"the engine refused {path}: {' '.join(str(message).split())[:240]}")
                text = str(chunk.get("stream", ""))
                for line in text.splitlines():
                    if line.startswith("Loaded image ID: "):
                        loaded_ids.append(line.split(": ", 1)[1].strip())
                    elif line.startswith("Loaded image: "):
                        loaded_refs.append(line.split(": ", 1)[1].strip())
        except docker.errors.APIError as exc:
            raise ArchiveError(f"the engine refused {path}: {' '.join(str(exc.explanation or exc).split())[:240]}") \
                from None
        except requests.exceptions.RequestException as exc:
            raise EngineError(f"lost the connection to the engine while loading {path}: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    for ref in loaded_refs:
        attrs = engine.image_attrs(client, ref)
        if attrs:
            loaded_ids.append(attrs["Id"])
    loaded = sorted(set(loaded_ids))
    if len(loaded) != 1:
        raise ArchiveError(f"{path} held {len(loaded)} images, not one: {', '.join(i[:19] for i in loaded) or 'none'}; "
                           "no tag was moved")
    image_id = loaded[0]
    attrs = engine.image_attrs(client, image_id)
    labels = engine.image_labels(attrs)
    problem = None
    if image_id != expected_id:
        problem = f"the loaded image is {image_id[:19]}, the manifest says {expected_id[:19]}"
    elif labels.get(HASH_LABEL) != content_hash:
        problem = (f"the loaded image's {HASH_LABEL} label is {str(labels.get(HASH_LABEL))[:16]!r}, "
                   f"the manifest says {content_hash[:16]}")
    elif labels.get(STACK_LABEL) != stack:
        problem = f"the loaded image's {STACK_LABEL} label is {labels.get(STACK_LABEL)!r}, the manifest says {stack!r}"
    if problem:
        _forget(client, image_id, before)
        raise ArchiveError(f"{path}: {problem}; no tag was moved")
    with stack_lock(stack):
        engine.tag(client, image_id, hash_tag)
        engine.tag(client, image_id, latest_tag)
    return LoadResult(stack, content_hash, image_id, [hash_tag, latest_tag], time.monotonic() - started,
                      fresh=image_id not in before)


def _forget(client, image_id: str, before: set) -> None:
    """Remove an image this load brought in and that nothing names (a mismatched archive)."""
    import docker.errors
    if image_id in before:
        return
    try:
        if not (client.api.inspect_image(image_id).get("RepoTags") or []):
            client.api.remove_image(image_id, noprune=False)
    except docker.errors.APIError:
        pass


class _ProgressFile:
    """The archive as the request body: read in blocks by the HTTP client, its size known (fstat),
    each block counted for progress."""

    BLOCK = 1 << 20

    def __init__(self, raw, on_progress):
        self._raw, self._on_progress, self._n = raw, on_progress, 0

    def fileno(self) -> int:
        return self._raw.fileno()

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, *args) -> int:
        return self._raw.seek(*args)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        if data:
            self._n += len(data)
            if self._on_progress:
                self._on_progress(self._n)
        return data

    def __iter__(self):
        while True:
            block = self.read(self.BLOCK)
            if not block:
                return
            yield block
