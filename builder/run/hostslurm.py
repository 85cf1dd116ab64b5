"""A Slurm on this host: munged, slurmctld and N slurmd started here, as root, from Debian's Slurm, in
one folder of their own, with a temporary unprivileged user that jobs run as; `sbatch` as that user.

Owns the daemons (each in its own session, so a Ctrl-C to dlenv's terminal reaches dlenv, which then
stops them), the job user (useradd/userdel), waiting until every node is idle, running a batch job under
a deadline, and teardown: every process of the daemons' sessions (slurmstepd and the job's tasks
included) and of the job user is killed, the user and the folder removed, also after a failure, Ctrl-C
or SIGTERM. A record in the state folder lets `sweep` remove what a killed dlenv left behind.
The text (slurm.conf, layout) is builder.outputs.hostslurm.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from builder.engine.containers import interrupts_deferred
from builder.errors import SlurmError
from builder.fileio import write_text_atomic
from builder.outputs.hostslurm import (IMAGES_DIR, JOBS_DIR, LOG_DIR, MUNGE_KEY_DIR, MUNGE_RUN_DIR,
                                       HostSlurmLayout, host_layout, host_slurm_conf, job_user_name)
from builder.outputs.slurm import (check_job_id, job_exit_code, job_finished, memory_mib, parse_job, sinfo_nodes,
                                   unusable_nodes)

READY_SECONDS = 60
STOP_SECONDS = 5
RECORD_PREFIX = "hostslurm-"
POLL_SECONDS = 0.3
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "scancel", "useradd", "userdel", "runuser")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class HostSlurm:
    layout: HostSlurmLayout
    record: str                                   # the state-folder record of this cluster
    processes: dict = field(default_factory=dict)  # name -> Popen
    uid: int = -1
    gid: int = -1
    home: str = ""

    @property
    def folder(self) -> Path:
        return Path(self.layout.folder)

    @property
    def env(self) -> dict:
        """The environment of every Slurm command: this cluster's slurm.conf."""
        return {"PATH": _PATH, "SLURM_CONF": self.layout.conf, "LANG": "C.UTF-8"}

    def job_env(self) -> dict:
        """What a login of the job user would have, plus SLURM_CONF; sbatch passes it to the job."""
        return {**self.env, "HOME": self.home, "USER": self.layout.job_user, "LOGNAME": self.layout.job_user}


def missing_tools() -> list:
    return [t for t in TOOLS if shutil.which(t, path=_PATH) is None]


def _free_ports(count: int) -> list:
    """Ports nothing listens on now (the kernel picks them); slurmd binds them a moment later."""
    held, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    return ports


def _memory_mib() -> int:
    """RealMemory as `slurmd -C` computes it from this host's MemTotal."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return memory_mib(int(line.split()[1]) * 1024)
    return 1


def _record_path(state_dir: Path, cluster_id: str) -> Path:
    return Path(state_dir) / f"{RECORD_PREFIX}{cluster_id}.json"


def _save_record(cluster: HostSlurm) -> None:
    data = {"cluster_id": cluster.layout.cluster_id, "folder": cluster.layout.folder,
            "job_user": cluster.layout.job_user, "owner": [os.getpid(), _start_time(os.getpid())],
            "sessions": sorted(p.pid for p in cluster.processes.values())}
    write_text_atomic(Path(cluster.record), json.dumps(data, indent=2) + "\n")


def _start_time(pid: int) -> int:
    """The process's start time (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return -1


def _owner_alive(owner) -> bool:
    try:
        pid, started = int(owner[0]), int(owner[1])
    except (TypeError, ValueError, IndexError):
        return False
    return started >= 0 and _start_time(pid) == started


# ------------------------------------------------------------------------------------ up / down

def up(nodes: int, state_dir: Path) -> HostSlurm:
    """Start a host Slurm of `nodes` slurmd and wait until every node is idle. Root only: slurmd starts
    the tasks as the job user. Anything that fails on the way is taken down again."""
    if os.geteuid() != 0:
        raise SlurmError("a Slurm on this host needs root (slurmd starts the job's tasks as another user)",
                         hint="run it with sudo, or use `dlenv verify --slurm` without --runtime (Docker)")
    missing = missing_tools()
    if missing:
        raise SlurmError(f"the host Slurm needs {', '.join(missing)}",
                         hint="install Debian's slurmd, slurmctld, slurm-client and munge (scripts/setup-host.sh)")
    sweep(state_dir)
    cluster_id = secrets.token_hex(4)
    folder = Path(tempfile.mkdtemp(prefix=f"dlenv-slurm-{cluster_id}-"))
    folder.chmod(0o755)   # the job user reaches the munge socket, its home and its job folders through it
    layout = host_layout(cluster_id, str(folder), socket.gethostname().split(".")[0], _free_ports(nodes + 1),
                         os.cpu_count() or 1, _memory_mib(), job_user_name(cluster_id))
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    cluster = HostSlurm(layout, str(_record_path(state_dir, cluster_id)))
    try:
        _save_record(cluster)
        _make_folder(cluster)
        _add_job_user(cluster)
        _save_record(cluster)
        _start(cluster, "munged", ["munged", "--foreground", "--force", f"--socket={layout.munge_socket}",
                                   f"--key-file={layout.munge_key}", f"--pid-file={layout.path(MUNGE_RUN_DIR, 'munged.pid')}",
                                   f"--seed-file={layout.path(MUNGE_KEY_DIR, 'seed')}",
                                   f"--log-file={layout.path(LOG_DIR, 'munged.log')}"])
        _wait_for(lambda: Path(layout.munge_socket).exists(), cluster, "munged", 10)
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-i"])
        for node in layout.nodes:
            _start(cluster, node.name, ["slurmd", "-D", "-N", node.name])
        wait_ready(cluster)
    except BaseException:
        down(cluster)
        raise
    return cluster


def _make_folder(cluster: HostSlurm) -> None:
    layout = cluster.layout
    folder = cluster.folder
    for name, mode in ((MUNGE_KEY_DIR, 0o700), (MUNGE_RUN_DIR, 0o755), (LOG_DIR, 0o755), (IMAGES_DIR, 0o755),
                       ("state", 0o700), (JOBS_DIR, 0o755)):
        (folder / name).mkdir(mode=mode)
        (folder / name).chmod(mode)
    for node in layout.nodes:
        (folder / f"spool-{node.name}").mkdir(mode=0o755)
        (folder / f"tmp-{node.name}").mkdir(mode=0o1777)
        (folder / f"tmp-{node.name}").chmod(0o1777)
    fd = os.open(layout.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(1024))
    write_text_atomic(Path(layout.conf), host_slurm_conf(layout))
    Path(layout.conf).chmod(0o644)


def _add_job_user(cluster: HostSlurm) -> None:
    """A fresh unprivileged user with a home where this host's users have theirs (and, from useradd, its
    own subordinate uid range, which rootless podman needs). Not in the cluster's folder under /tmp: podman
    binds the home into the container, and a bind below /tmp broke Open MPI's session directory there."""
    layout = cluster.layout
    _run(["useradd", "--create-home", "--shell", "/bin/bash", "--user-group",
          "--comment", f"dlenv host Slurm {layout.cluster_id} job user", layout.job_user], "useradd")
    entry = pwd.getpwnam(layout.job_user)
    cluster.uid, cluster.gid, cluster.home = entry.pw_uid, entry.pw_gid, entry.pw_dir
    os.chown(cluster.folder / JOBS_DIR, cluster.uid, cluster.gid)


def _run(argv: list, what: str, env: dict | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env or {"PATH": _PATH}, check=False)
    if proc.returncode != 0:
        raise SlurmError(f"{what} failed (exit status {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc.stdout


def _start(cluster: HostSlurm, name: str, argv: list) -> None:
    log = open(cluster.folder / LOG_DIR / f"{name}.log", "ab")  # noqa: SIM115 - the daemon keeps it
    with closing(log):
        cluster.processes[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                   env=cluster.env, cwd=cluster.folder, start_new_session=True)
    _save_record(cluster)


def _log_tail(cluster: HostSlurm, name: str) -> str:
    try:
        lines = (cluster.folder / LOG_DIR / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-4:] if line.strip())[-500:]


def _check_alive(cluster: HostSlurm) -> None:
    for name, proc in cluster.processes.items():
        if proc.poll() is not None:
            raise SlurmError(f"{name} stopped (exit status {proc.returncode}) while the host Slurm came up: "
                             f"{_log_tail(cluster, name)}", hint=f"its log is in {cluster.folder / LOG_DIR}")


def _wait_for(ready, cluster: HostSlurm, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        _check_alive(cluster)
        if time.monotonic() > deadline:
            raise SlurmError(f"{what} was not ready after {seconds:.0f}s: {_log_tail(cluster, what)}")
        time.sleep(0.1)


def wait_ready(cluster: HostSlurm, seconds: float = READY_SECONDS) -> None:
    """Until every node is `idle` in sinfo; fails fast on a daemon that stopped or a node Slurm refuses."""
    want = {n.name for n in cluster.layout.nodes}
    deadline = time.monotonic() + seconds
    while True:
        _check_alive(cluster)
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                              env=cluster.env, check=False)
        states = sinfo_nodes(proc.stdout) if proc.returncode == 0 else {}
        if want <= {n for n, s in states.items() if s == "idle"}:
            return
        bad = unusable_nodes(states)
        if bad:
            raise SlurmError(f"Slurm will not use these nodes: {', '.join(bad)}: {_log_tail(cluster, 'slurmctld')}")
        if time.monotonic() > deadline:
            raise SlurmError(f"the nodes were not idle after {seconds:.0f}s: {states or proc.stderr.strip()[:200]}",
                             hint=f"the daemons' logs are in {cluster.folder / LOG_DIR}")
        time.sleep(0.2)


def _sessions_members(sessions: set) -> list:
    """Pids of every process whose session is one of `sessions` (the daemons and whatever they forked:
    slurmstepd, the job's tasks, the runtime's processes)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) in sessions and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


def _user_processes(uid: int) -> list:
    pids = []
    if uid < 0:
        return pids
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _kill_all(pids_of, deadline: float) -> None:
    """SIGTERM, then SIGKILL after the deadline, until pids_of() is empty."""
    sig = signal.SIGTERM
    while True:
        pids = pids_of()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                time.sleep(0.2)
                if not pids_of():
                    return
                deadline += STOP_SECONDS
            sig = signal.SIGKILL
        time.sleep(0.1)


def _teardown(folder: str, job_user: str, sessions: set, uid: int) -> None:
    """Stop every process of the daemons' sessions and of the job user, remove the user and the folder."""
    def mine() -> list:
        return sorted(set(_sessions_members(sessions)) | set(_user_processes(uid)))
    _kill_all(mine, time.monotonic() + STOP_SECONDS)
    try:
        pwd.getpwnam(job_user)
        subprocess.run(["userdel", "--remove", "--force", job_user], capture_output=True, env={"PATH": _PATH},
                       check=False)
    except KeyError:
        pass
    if uid >= 0:
        _remove_user_leftovers(uid)
    shutil.rmtree(folder, ignore_errors=True)


def _remove_user_leftovers(uid: int) -> None:
    """What the job user's runtimes left outside its home (podman's /tmp/podman-run-UID and
    /tmp/containers-user-UID, /dev/shm segments of a killed rank)."""
    for parent in (Path(tempfile.gettempdir()), Path("/dev/shm"), Path("/run/user")):
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                owner = entry.lstat().st_uid
            except OSError:
                continue
            if owner == uid:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def down(cluster: HostSlurm) -> None:
    """Stop and remove everything `up` made. Ctrl-C or SIGTERM during teardown waits until it is done."""
    with interrupts_deferred():
        sessions = {p.pid for p in cluster.processes.values()}
        for proc in cluster.processes.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for proc in cluster.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _teardown(cluster.layout.folder, cluster.layout.job_user, sessions, cluster.uid)
        Path(cluster.record).unlink(missing_ok=True)


def sweep(state_dir: Path) -> int:
    """Remove host Slurms whose dlenv was killed before it could (their record is left, its owner gone):
    daemons still running in those sessions, the job user, the folder. Returns how many were removed."""
    removed = 0
    for record in sorted(Path(state_dir).glob(f"{RECORD_PREFIX}*.json")):
        try:
            data = json.loads(record.read_text())
            folder, user, sessions = str(data["folder"]), str(data["job_user"]), {int(s) for s in data["sessions"]}
            host_layout(str(data["cluster_id"]), folder, "localhost", [1024, 1025], 1, 1, user)  # checks the values
        except (OSError, ValueError, KeyError, TypeError, SlurmError):
            record.unlink(missing_ok=True)
            continue
        if _owner_alive(data.get("owner")):
            continue    # another dlenv's cluster, in use
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            uid = -1
        with interrupts_deferred():
            _teardown(folder, user, sessions, uid)
            record.unlink(missing_ok=True)
        removed += 1
    return removed


# ------------------------------------------------------------------------------------ jobs

@dataclass
class JobResult:
    job_id: str
    exit_code: int        # the batch script's exit status (1 for a job killed, cancelled or never started)
    state: str            # JobState from scontrol
    output: str           # the job's output file
    seconds: float        # from submission to the end, as dlenv saw it


def job_folder(cluster: HostSlurm, name: str) -> Path:
    """A folder the job user owns, for one job's script, inputs and output."""
    folder = cluster.folder / JOBS_DIR / name
    folder.mkdir(mode=0o755)
    os.chown(folder, cluster.uid, cluster.gid)
    return folder


def give_to_job_user(cluster: HostSlurm, path: Path) -> None:
    os.chown(path, cluster.uid, cluster.gid)


def _show_job(cluster: HostSlurm, job_id: str) -> dict:
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                          env=cluster.env, check=False)
    return parse_job(proc.stdout) if proc.returncode == 0 else {}


def submit_and_wait(cluster: HostSlurm, script: Path, timeout: int, extra_env: dict | None = None) -> JobResult:
    """`sbatch SCRIPT` as the job user from the script's folder, with `extra_env` added to the environment
    sbatch passes to the job, then its state polled until it ends. A job still running after `timeout`
    seconds (its own --time should end it first) is cancelled; so is the job on Ctrl-C or SIGTERM."""
    folder = script.parent
    argv = ["runuser", "-u", cluster.layout.job_user, "--", "sbatch", "--parsable",
            f"--output={folder}/slurm-%j.out", str(script)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=folder,
                          env={**cluster.job_env(), **(extra_env or {})}, check=False)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused {script.name} (exit status {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[:300]}")
    job_id = check_job_id(proc.stdout)
    note = ""
    try:
        while True:
            fields = _show_job(cluster, job_id)
            if job_finished(fields):
                break
            if time.monotonic() - start > timeout:
                _cancel(cluster, job_id)
                note = f"\n(dlenv: job {job_id} cancelled after {timeout}s)"
                fields = _wait_ended(cluster, job_id)
                break
            time.sleep(POLL_SECONDS)
    except BaseException:
        _cancel(cluster, job_id)
        raise
    output_file = folder / f"slurm-{job_id}.out"
    output = output_file.read_text(errors="replace") if output_file.is_file() else ""
    return JobResult(job_id, job_exit_code(fields), fields.get("JobState", "?"), output + note,
                     time.monotonic() - start)


def _wait_ended(cluster: HostSlurm, job_id: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    fields = _show_job(cluster, job_id)
    while not job_finished(fields) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        fields = _show_job(cluster, job_id)
    return fields


def _cancel(cluster: HostSlurm, job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, env=cluster.env, check=False)
