"""Using an environment: `dlenv shell` (interactive or one command) and `dlenv run` (MPI).

Owns who the process runs as inside the container (the host user's uid:gid, resolvable to a
user with a home, also for ranks started over ssh; the image's own user when the host user is
root), the workspace mount, and how MPI output is shown. Containers are started through
`cluster` (docker-py) and always removed; the interactive shell hands the terminal to the
Docker CLI's `docker exec -it`, the one piece docker-py cannot do well.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker.types

from builder.engine.containers import interrupts_deferred, remove_named
from builder.run.cluster import Cluster, ContainerOptions, image_env_names, mpi_launch
from builder.errors import EngineError, UsageError
from builder.names import ROLE_LABEL, WORKDIR
import io
import shlex
import tarfile

HOST_USER = "dlenv-host"
HOST_HOME = "/home/dlenv-host"
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=.*$", re.S)
_PORT_RE = re.compile(r"^(?:(\d{1,5}):)?(\d{1,5})(/(tcp|udp))?$")
_TAGGED = re.compile(r"^\[(\d+),(\d+)\]<(stdout|stderr)>:(.*)$", re.S)


@dataclass(frozen=True)
class Identity:
    """Who runs inside: `user` for docker ("uid:gid" or None for the image's user) and the
    passwd/group lines that make a foreign uid a real user with a home."""
    user: str | None
    passwd_line: str | None = None
    group_line: str | None = None
    uid: int | None = None
    gid: int | None = None


def host_identity(uid: int | None = None, gid: int | None = None) -> Identity:
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    if uid == 0:
        return Identity(None)
    return Identity(f"{uid}:{gid}",
                    passwd_line=f"{HOST_USER}:x:{uid}:{gid}:dlenv host user:{HOST_HOME}:/bin/bash",
                    group_line=f"{HOST_USER}:x:{gid}:", uid=uid, gid=gid)


def parse_env(values) -> dict:
    out = {}
    for value in values:
        if "=" not in value:
            if value in os.environ:  # `-e NAME` passes the host's value, like docker run
                out[value] = os.environ[value]
                continue
            raise UsageError(f"-e {value!r}: expected NAME=VALUE or the name of a set host variable")
        if not _ENV_RE.match(value) or "\x00" in value:
            raise UsageError(f"-e {value.split('=', 1)[0]!r}: not a valid variable name")
        name, _, val = value.partition("=")
        out[name] = val
    return out


def parse_ports(values) -> dict:
    out = {}
    for value in values:
        m = _PORT_RE.match(value)
        if not m:
            raise UsageError(f"-p {value!r}: expected HOSTPORT:CONTAINERPORT or PORT")
        host, container, proto = m.group(1) or m.group(2), m.group(2), m.group(4) or "tcp"
        out[f"{container}/{proto}"] = ("127.0.0.1", int(host))
    return out


def parse_volumes(values) -> list:
    out = []
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            raise UsageError(f"-v {value!r}: expected HOSTPATH:CONTAINERPATH[:ro|rw]")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise UsageError(f"-v {value!r}: mode must be ro or rw")
        if not Path(parts[0]).exists():
            raise UsageError(f"-v {value!r}: {parts[0]} does not exist")
        out.append((parts[0], parts[1], mode))
    return out


def _image_file(client, image: str, path: str) -> str:
    """Read a small text file from an image without running it."""

    name = f"dlenv-inspect-{secrets.token_hex(5)}"
    try:
        with interrupts_deferred():    # then removed by its name, as the caller does not hold it yet
            container = client.containers.create(image, ["true"], labels={ROLE_LABEL: "inspect"}, name=name)
        bits, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            member = tar.getmembers()[0]
            return tar.extractfile(member).read().decode("utf-8", "replace")
    finally:
        remove_named(client, name)


class IdentityFiles:
    """passwd/group files (the image's plus the host user) mounted read-only, and a home."""

    def __init__(self, client, image: str, ident: Identity):
        self.client, self.image, self.ident = client, image, ident
        self.dir: Path | None = None

    def __enter__(self) -> list:
        if self.ident.passwd_line is None:
            return []
        passwd = _image_file(self.client, self.image, "/etc/passwd")
        group = _image_file(self.client, self.image, "/etc/group")
        uids = {line.split(":")[2] for line in passwd.splitlines() if line.count(":") >= 6}
        if str(self.ident.uid) in uids:
            return []  # the image already has this uid (e.g. its own user, 1000)
        self.dir = Path(tempfile.mkdtemp(prefix="dlenv-identity-"))
        (self.dir / "passwd").write_text(passwd.rstrip("\n") + "\n" + self.ident.passwd_line + "\n")
        gids = {line.split(":")[2] for line in group.splitlines() if line.count(":") >= 3}
        extra = "" if str(self.ident.gid) in gids else self.ident.group_line + "\n"
        (self.dir / "group").write_text(group.rstrip("\n") + "\n" + extra)
        for name in ("passwd", "group"):
            os.chmod(self.dir / name, 0o644)
        return [
            docker.types.Mount("/etc/passwd", str(self.dir / "passwd"), type="bind", read_only=True),
            docker.types.Mount("/etc/group", str(self.dir / "group"), type="bind", read_only=True),
            docker.types.Mount(HOST_HOME, None, type="tmpfs",
                               tmpfs_mode=0o700),
        ]

    def __exit__(self, *exc) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _prepare_home(container, ident: Identity) -> None:
    """The tmpfs home belongs to root when mounted; hand it to the host user (as root, once)."""
    if ident.passwd_line is None:
        return
    code, out = container.exec_run(["chown", f"{ident.uid}:{ident.gid}", HOST_HOME], user="0:0")
    if code != 0 and b"No such file" not in (out or b""):
        raise EngineError(f"cannot prepare the home of uid {ident.uid}: {out.decode(errors='replace').strip()}")


def docker_cli() -> str:
    path = shutil.which("docker")
    if not path:
        raise EngineError("the interactive shell needs the docker command-line client",
                          hint="apt-get install docker.io (it brings /usr/bin/docker)")
    return path


def shell(client, image: str, opts: ContainerOptions, ident: Identity, command: list | None = None,
          interactive: bool | None = None) -> int:
    """Start a container, run a login shell (or `command`) in it, return the exit status."""
    if interactive is None:
        interactive = sys.stdin.isatty() and not command
    with IdentityFiles(client, image, ident) as mounts:
        opts = ContainerOptions(**{**opts.__dict__, "user": ident.user, "extra_mounts": mounts})
        with Cluster(client, image, opts, "shell") as cluster:
            _prepare_home(cluster.main, ident)
            tty = interactive or (sys.stdin.isatty() and sys.stdout.isatty())
            argv = [docker_cli(), "exec", "-i"] + (["-t"] if tty else [])
            argv += ["-w", WORKDIR if opts.workspace else "/", cluster.main.id]
            argv += command if command else ["bash", "-l"]
            if tty:
                # The terminal's Ctrl-C belongs to the shell inside; we only wait, then remove the container.
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    return subprocess.call(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
                finally:
                    signal.signal(signal.SIGINT, previous)
            child = subprocess.Popen(argv)
            try:
                return child.wait()
            except KeyboardInterrupt:
                # Without a terminal `docker exec` forwards no signal: stop the command by removing
                # its container (the Cluster does, on the way out) and report the interrupt.
                child.terminate()
                raise


def show_rank_line(line: str, all_ranks: bool) -> tuple[str, str] | None:
    """mpiexec --tag-output lines: `[job,rank]<stdout>:text`. Returns (stream, text) to show, or None."""
    m = _TAGGED.match(line)
    if not m:
        return ("stderr", line)  # mpiexec's own messages are always shown
    rank, stream, text = int(m.group(2)), m.group(3), m.group(4)
    if all_ranks:
        return (stream, f"[rank {rank}] {text}")
    return (stream, text) if rank == 0 else None


def run_mpi(client, image: str, opts: ContainerOptions, ident: Identity, command: list, ranks: int,
            nodes: int = 1, all_ranks: bool = False, out=sys.stdout, err=sys.stderr) -> int:
    """Run `command` under mpiexec in one container or across `nodes`; return its exit status."""

    with IdentityFiles(client, image, ident) as mounts:
        opts = ContainerOptions(**{**opts.__dict__, "user": ident.user, "extra_mounts": mounts})
        with Cluster(client, image, opts, "run", nodes) as cluster:
            for c in cluster.containers:
                _prepare_home(c, ident)
            # Ranks started over ssh see only what mpiexec exports: the image's env and the user's -e.
            exported = sorted(set(image_env_names(client, image)) | set(opts.env))
            launch = mpi_launch(ranks, cluster.hosts, exported, tag_output=True)
            if not cluster.hosts and ranks > (os.cpu_count() or 1):
                # Open MPI refuses more ranks than cores unless told; a user who asks for -n N means it.
                launch = launch.replace("mpiexec ", "mpiexec --oversubscribe ", 1)
            line = f"{launch} {shlex.join(command)}"
            exec_id = client.api.exec_create(cluster.main.id, ["bash", "-c", line],
                                             workdir=WORKDIR if opts.workspace else None)["Id"]
            buffers = {"stdout": "", "stderr": ""}
            for chunk_out, chunk_err in client.api.exec_start(exec_id, stream=True, demux=True):
                for name, chunk in (("stdout", chunk_out), ("stderr", chunk_err)):
                    if not chunk:
                        continue
                    buffers[name] += chunk.decode("utf-8", "replace")
                    *lines, buffers[name] = buffers[name].split("\n")
                    for text in lines:
                        shown = show_rank_line(text, all_ranks)
                        if shown:
                            (out if shown[0] == "stdout" else err).write(shown[1] + "\n")
                            (out if shown[0] == "stdout" else err).flush()
            for name, rest in buffers.items():
                if rest:
                    shown = show_rank_line(rest, all_ranks)
                    if shown:
                        (out if shown[0] == "stdout" else err).write(shown[1] + "\n")
            code = client.api.exec_inspect(exec_id).get("ExitCode")
            return 1 if code is None else int(code)
