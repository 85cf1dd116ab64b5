"""A Slurm on this host, as text and values: the layout of its folder (configuration, munge key and
socket, spools, job folders) and its slurm.conf. Several slurmd run on the one machine, as on a real
cluster where slurmd runs on the hosts and a job starts the image through an unprivileged container
runtime (Charliecloud, podman); `dlenv verify --slurm --runtime ...` uses it.

Pure: every value that reaches slurm.conf is checked here (slurm.conf has no quoting); the daemons,
the job user and the jobs are builder.run.hostslurm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from builder.errors import SlurmError
from builder.outputs.slurm import PARTITION, check_cluster_id, check_nodes, node_hosts, render_template

# Where things live in a cluster's folder (one folder per cluster, removed with it).
CONF_FILE = "slurm.conf"
MUNGE_KEY_DIR = "munge-key"        # 0700: the key only root reads
MUNGE_RUN_DIR = "munge"            # 0755: the socket every job user must reach
MUNGE_SOCKET = "munge.socket"
LOG_DIR = "log"
JOBS_DIR = "jobs"                  # the job user's folders (batch scripts, outputs), one per job
IMAGES_DIR = "images"              # images converted for this cluster's runtimes
JOB_USER_PREFIX = "dlenv-job-"     # + the cluster id: the unprivileged user jobs run as

_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
_FOLDER = re.compile(r"^/[A-Za-z0-9._/+-]{1,200}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class HostNode:
    name: str
    port: int


@dataclass(frozen=True)
class HostSlurmLayout:
    """One host Slurm: its folder, the ports its daemons listen on, the user its jobs run as."""
    cluster_id: str
    folder: str
    host: str
    ctld_port: int
    nodes: tuple          # HostNode per slurmd
    cpus: int
    memory_mib: int
    job_user: str

    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.folder, *parts))

    @property
    def conf(self) -> str:
        return self.path(CONF_FILE)

    @property
    def munge_socket(self) -> str:
        return self.path(MUNGE_RUN_DIR, MUNGE_SOCKET)

    @property
    def munge_key(self) -> str:
        return self.path(MUNGE_KEY_DIR, "munge.key")


def job_user_name(cluster_id: str) -> str:
    return f"{JOB_USER_PREFIX}{check_cluster_id(cluster_id)}"


def host_layout(cluster_id: str, folder: str, host: str, ports: list, cpus: int, memory_mib: int,
                job_user: str) -> HostSlurmLayout:
    """The checked layout of a host Slurm with one slurmd per port after the first (slurmctld's)."""
    check_cluster_id(cluster_id)
    if not _FOLDER.match(folder or "") or "/../" in f"{folder}/" or "//" in folder:
        raise SlurmError(f"the host Slurm's folder {folder!r} is not a plain absolute path",
                         hint="set TMPDIR to a folder whose path has no spaces or special characters")
    if not _HOST.match(host or ""):
        raise SlurmError(f"this host's name {host!r} cannot be a Slurm NodeHostname",
                         hint="give the host a plain name (letters, digits, '.', '-')")
    if not _USER.match(job_user or ""):
        raise SlurmError(f"{job_user!r} is not a user name")
    for name, value in (("CPUs", cpus), ("RealMemory", memory_mib)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SlurmError(f"this host reports {name}={value!r}", hint="check /proc/cpuinfo and /proc/meminfo")
    if len(ports) < 2 or len(set(ports)) != len(ports) \
            or any(isinstance(p, bool) or not isinstance(p, int) or not 1024 <= p <= 65535 for p in ports):
        raise SlurmError(f"no usable ports for the host Slurm: {ports!r}")
    names = node_hosts(check_nodes(len(ports) - 1))
    return HostSlurmLayout(cluster_id, folder, host, ports[0],
                           tuple(HostNode(n, p) for n, p in zip(names, ports[1:])), cpus, memory_mib, job_user)


def host_slurm_conf(layout: HostSlurmLayout) -> str:
    """slurm.conf: slurmctld and every slurmd on 127.0.0.1, each slurmd with its own port, spool and TmpFS."""
    return render_template("host-slurm.conf.j2", cluster=layout.cluster_id, folder=layout.folder, host=layout.host,
                           ctld_port=layout.ctld_port, munge_socket=layout.munge_socket, job_user=layout.job_user,
                           nodes=list(layout.nodes), cpus=layout.cpus, memory=layout.memory_mib, partition=PARTITION)
