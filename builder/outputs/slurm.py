"""A local Slurm cluster of node images, as text and values: the node image's Dockerfile and its hash,
slurm.conf, the node names, and the readings of `sinfo` and `scontrol show job` (state, exit code).

Pure: every value is checked here and placed by the templates under `templates/slurm/`; the
containers, the build and the jobs are builder.run.slurm.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import jinja2

from builder import paths
from builder.errors import SlurmError
from builder.names import (APT_SOURCES_DIR, MUNGE_DIR, PACKAGE_REPO_SOURCES, RUNTIME_UID, SLURM_APT_SOURCES, SLURM_CONTROLLER_HOST,
                           SLURM_NODE_HOST, SLURM_NODE_LABEL, SLURM_SPOOL, SLURM_START)

NODE_PACKAGES = ("slurmd", "slurmctld", "slurm-client", "munge", "libpmix2")
START_SCRIPT = "dlenv-slurm-start"
PARTITION = "main"
MAX_NODES = 16
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE")

_CLUSTER_ID = re.compile(r"^[0-9a-f]{8}$")
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_.-]+$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~:-]{0,63}$")
_JOB_ID = re.compile(r"^[0-9]{1,12}$")
_EXIT = re.compile(r"^([0-9]+):([0-9]+)$")


def _environment() -> jinja2.Environment:
    folders = [paths.templates_dir() / "slurm", paths._data_dir("templates") / "slurm"]
    return jinja2.Environment(loader=jinja2.FileSystemLoader([str(f) for f in folders]),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render_template(template: str, **values) -> str:
    """A template of templates/slurm/ with checked values."""
    try:
        return _environment().get_template(template).render(**values)
    except jinja2.TemplateError as exc:
        raise SlurmError(f"Slurm template {template}: {exc}",
                         hint="the dlenv installation is incomplete: reinstall it") from None


def start_script() -> bytes:
    """The node image's entrypoint (munged, then slurmctld or slurmd in the foreground)."""
    for folder in (paths.templates_dir() / "slurm", paths._data_dir("templates") / "slurm"):
        if (folder / START_SCRIPT).is_file():
            return (folder / START_SCRIPT).read_bytes()
    raise SlurmError(f"{START_SCRIPT} is missing from the templates", hint="reinstall dlenv")


# ------------------------------------------------------------------------------------ node image

@dataclass(frozen=True)
class NodeImage:
    """What the node image build gets: its Dockerfile, the files beside it and its identity."""
    stack: str
    base_image: str      # the stack's promoted image, dlenv/<stack>:<hash16>
    node_hash: str       # sha256 of the stack's content hash and everything below
    dockerfile: str
    files: dict          # name -> (bytes, mode)


def node_image(stack: str, base_image: str, content_hash: str, user: str, apt_sources: bytes = b"") -> NodeImage:
    """The node image on `base_image`; its hash covers the stack's content hash, the fragment and the
    entrypoint, so a change to any of them builds it again. `apt_sources`: the host's Debian sources,
    used when the stack image has none (built with buildah); like the CA bundle, not hashed."""
    if not _IMAGE_REF.match(base_image):
        raise SlurmError(f"{base_image!r} is not an image reference")
    if not re.match(r"^[0-9]+(:[0-9]+)?$", user):
        raise SlurmError(f"the image user {user!r} is not numeric", hint="rebuild the stack with this dlenv")
    start = start_script()
    values = dict(stack=stack, image=base_image, packages=" ".join(NODE_PACKAGES), munge_dir=MUNGE_DIR,
                  start=SLURM_START, node_label=SLURM_NODE_LABEL, user=user, sources_file=SLURM_APT_SOURCES,
                  sources_target=f"{APT_SOURCES_DIR}/{SLURM_APT_SOURCES}", repo_sources=PACKAGE_REPO_SOURCES)
    unlabelled = render_template("node.Dockerfile.j2", node_hash="", **values)
    digest = hashlib.sha256()
    for part in (content_hash.encode(), unlabelled.encode(), start):
        digest.update(hashlib.sha256(part).digest())
    node_hash = digest.hexdigest()
    return NodeImage(stack, base_image, node_hash, render_template("node.Dockerfile.j2", node_hash=node_hash, **values),
                     {START_SCRIPT: (start, 0o755), SLURM_APT_SOURCES: (apt_sources, 0o644)})


def version_label_dockerfile(image: str, label: str, version: str) -> str:
    """The one-line layer that records the installed Slurm version in a label."""
    if not _IMAGE_REF.match(image):
        raise SlurmError(f"{image!r} is not an image reference")
    if not _VERSION.match(version):
        raise SlurmError(f"slurmd reported the version {version!r}, which is no Debian version",
                         hint="the node image is broken: remove it and run again")
    return f'FROM {image}\nLABEL {label}="{version}"\n'


# ------------------------------------------------------------------------------------ cluster

def check_cluster_id(cluster_id: str) -> str:
    if not _CLUSTER_ID.match(cluster_id or ""):
        raise SlurmError(f"{cluster_id!r} is not a cluster id (8 hex digits)",
                         hint="the cluster state file is damaged: run `dlenv slurm down --all`")
    return cluster_id


def check_nodes(nodes: int) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise SlurmError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes!r}")
    return nodes


def node_hosts(nodes: int) -> list:
    """The node host names: node1..nodeN (their NodeName in slurm.conf)."""
    return [f"{SLURM_NODE_HOST}{i}" for i in range(1, check_nodes(nodes) + 1)]


def node_range(nodes: int) -> str:
    """slurm.conf's spelling of node1..nodeN: `node1` or `node[1-N]`."""
    check_nodes(nodes)
    return f"{SLURM_NODE_HOST}1" if nodes == 1 else f"{SLURM_NODE_HOST}[1-{nodes}]"


def network_name(cluster_id: str) -> str:
    return f"dlenv-slurm-{check_cluster_id(cluster_id)}"


def container_name(cluster_id: str, host: str) -> str:
    return f"{network_name(cluster_id)}-{host}"


def slurm_conf(cluster_id: str, nodes: int, cpus: int, memory_mib: int) -> str:
    """slurm.conf for a controller `ctl` and nodes node1..nodeN, each with the host's CPUs and memory
    (what `slurmd -C` reports in a container); one partition, pmix by default, KillOnBadExit=1."""
    for name, value in (("CPUs", cpus), ("RealMemory", memory_mib)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SlurmError(f"the engine reported {name}={value!r}", hint="check `docker info`")
    return render_template("slurm.conf.j2", cluster=check_cluster_id(cluster_id), cluster_name="dlenv",
                   controller=SLURM_CONTROLLER_HOST, uid=RUNTIME_UID, spool=SLURM_SPOOL,
                   nodes=node_range(nodes), cpus=cpus, memory=memory_mib, partition=PARTITION)


def memory_mib(mem_total_bytes: int) -> int:
    """RealMemory from the engine's MemTotal: /proc/meminfo's kB / 1024, as `slurmd -C` computes it."""
    return int(mem_total_bytes) // (1024 * 1024)


def sinfo_nodes(text: str) -> dict:
    """`sinfo -h -N -o '%N %t'` -> {node: state}; `idle` alone means ready (`idle*`: not responding)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def unusable_nodes(states: dict) -> list:
    """Nodes Slurm will not use: drained, failed, invalid (e.g. `Low RealMemory`), down."""
    bad = ("drain", "drng", "drained", "fail", "failg", "inval", "down", "down*")
    return sorted(f"{n} {s}" for n, s in states.items() if s.rstrip("*~#!%$@^-") in bad or s in bad)


# ------------------------------------------------------------------------------------ jobs

def check_job_id(text: str) -> str:
    """`sbatch --parsable` prints `ID` or `ID;CLUSTER`."""
    job = (text or "").strip().split(";", 1)[0]
    if not _JOB_ID.match(job):
        raise SlurmError(f"sbatch printed {text.strip()[:200]!r} instead of a job id",
                         hint="run `dlenv slurm submit` again; `docker logs` of the controller says more")
    return job


def parse_job(text: str) -> dict:
    """`scontrol show job -o ID` (one line of KEY=VALUE) -> dict. Values never contain spaces
    except the last fields' paths, which Slurm does not quote; those are read up to the next KEY=."""
    fields = {}
    for m in re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9:/_]*)=(.*?)(?=\s+[A-Za-z][A-Za-z0-9:/_]*=|\s*$)",
                         text.strip()):
        fields.setdefault(m[1], m[2])
    return fields


def job_finished(fields: dict) -> bool:
    return fields.get("JobState", "") in TERMINAL_STATES


def job_exit_code(fields: dict) -> int:
    """The exit code a submit gives: the batch script's status; 1 for a job ended by a signal, one that
    never started, or one that failed with status 0."""
    m = _EXIT.match(fields.get("ExitCode", ""))
    if not m:
        return 1
    status, signal = int(m[1]), int(m[2])
    if signal:
        return 1
    if fields.get("JobState") != "COMPLETED" and status == 0:
        return 1
    return min(status, 255)


def job_summary(job_id: str, fields: dict) -> str:
    return (f"job {job_id} {fields.get('JobState', '?')}, exit code {fields.get('ExitCode', '?')} "
            f"(status:signal), reason {fields.get('Reason', '?')}, on {fields.get('NodeList', '?')}")
