"""Containers that dlenv starts for people and checks: one, or several on a private network
with ssh between them so Open MPI can launch ranks across them.

Owns the per-run ssh keys (made inside the containers' /tmp, never in an image), the mpirun
command line and cleanup: everything a `Cluster` started is removed when it closes, also on
Ctrl-C. Starting one container (options, ulimits, GPU, mounts) is `builder.engine.containers`.
"""

from __future__ import annotations

import io
import secrets
import shlex
import tarfile
from pathlib import Path

import docker.errors

from builder.engine.containers import ContainerOptions, interrupts_deferred, start_container
from builder.errors import EngineError
from builder.names import ROLE_LABEL

SSH_DIR = "/tmp/dlenv-ssh"
SSH_PORT = 2222

_SSHD_CONFIG = f"""Port {SSH_PORT}
HostKey {SSH_DIR}/host_key
AuthorizedKeysFile {SSH_DIR}/authorized_keys
PidFile {SSH_DIR}/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitUserEnvironment no
"""
_SSH_CONFIG = f"""Host *
  Port {SSH_PORT}
  IdentityFile {SSH_DIR}/id
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
"""
_SSH_SETUP = (
    f"set -e; mkdir -p {SSH_DIR}; chmod 700 {SSH_DIR}; cd {SSH_DIR}; "
    "ssh-keygen -q -t ed25519 -N '' -f id; ssh-keygen -q -t ed25519 -N '' -f host_key; "
    "cp id.pub authorized_keys; "
    f"printf %s {shlex.quote(_SSHD_CONFIG)} > sshd_config; printf %s {shlex.quote(_SSH_CONFIG)} > ssh_config"
)


def gpu_runtime(info: dict) -> str | None:
    """The engine's GPU runtime name, from `docker info` (`Runtimes`), or None."""
    runtimes = info.get("Runtimes") or {}
    return "nvidia" if "nvidia" in runtimes else None


def exec_checked(container, command: str, what: str) -> str:
    code, out = container.exec_run(["bash", "-c", command])
    text = out.decode("utf-8", "replace") if out else ""
    if code != 0:
        raise EngineError(f"{what} failed in {container.name}: {' '.join(text.split())[-300:]}")
    return text


def put_file(container, data: bytes, dest: str, mode: int = 0o644) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(Path(dest).name)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
    container.exec_run(["mkdir", "-p", str(Path(dest).parent)])
    container.put_archive(str(Path(dest).parent), buf.getvalue())


def setup_ssh(containers: list) -> None:
    """Keys made for this run only, inside the containers; sshd runs as the container's user on
    an unprivileged port; every node is checked to reach every other before MPI starts."""
    first = containers[0]
    exec_checked(first, _SSH_SETUP, "making ssh keys")
    bits, _ = first.get_archive(SSH_DIR)
    archive = b"".join(bits)
    for other in containers[1:]:
        other.put_archive("/tmp", archive)
    for c in containers:
        exec_checked(c, f"/usr/sbin/sshd -f {SSH_DIR}/sshd_config -E {SSH_DIR}/sshd.log", "starting sshd")
    for c in containers:
        for peer in containers:
            exec_checked(c, f"ssh -F {SSH_DIR}/ssh_config {peer.name} true", f"ssh from {c.name} to {peer.name}")


def mpi_launch(ranks: int, hosts: list | None, env_names: list, tag_output: bool = False) -> str:
    """The mpiexec prefix: one container, or ranks spread over `hosts` and launched through ssh."""
    tag = " --tag-output" if tag_output else ""
    if not hosts:
        return f"mpiexec -n {int(ranks)}{tag}"
    per_host = -(-int(ranks) // len(hosts))
    exports = " ".join(f"-x {name}" for name in env_names)
    return (f"mpiexec -n {int(ranks)}{tag} --host {','.join(f'{h}:{per_host}' for h in hosts)} "
            f"--mca plm_rsh_agent {shlex.quote(f'ssh -F {SSH_DIR}/ssh_config')} {exports}").strip()


def image_env_names(client, image: str) -> list:
    env = (client.api.inspect_image(image).get("Config") or {}).get("Env") or []
    return sorted(e.split("=", 1)[0] for e in env if e.split("=", 1)[0] not in ("HOME", "HOSTNAME"))


class Cluster:
    """One container, or `nodes` containers on a private network with ssh between them."""

    def __init__(self, client, image: str, opts: ContainerOptions, role: str, nodes: int = 1):
        self.client, self.image, self.opts, self.role, self.nodes = client, image, opts, role, nodes
        self.containers: list = []
        self.network = None

    @property
    def main(self):
        return self.containers[0]

    @property
    def hosts(self) -> list | None:
        return [c.name for c in self.containers] if self.nodes > 1 else None

    def __enter__(self) -> "Cluster":
        try:
            if self.nodes > 1:
                token = secrets.token_hex(4)
                with interrupts_deferred():     # held once made, so that close() removes it
                    self.network = self.client.networks.create(f"dlenv-{self.role}-{token}", driver="bridge",
                                                               labels={ROLE_LABEL: self.role})
                opts = ContainerOptions(**{**self.opts.__dict__, "network_name": self.network.name})
                for i in range(self.nodes):
                    self.containers.append(start_container(self.client, self.image, opts, self.role,
                                                           name=f"dlenv-{self.role}-{token}-node{i}"))
                setup_ssh(self.containers)
            else:
                self.containers.append(start_container(self.client, self.image, self.opts, self.role))
        except BaseException:
            self.close()
            raise
        return self

    def kill(self) -> None:
        for c in self.containers:
            try:
                c.kill()
            except docker.errors.APIError:
                pass

    def close(self) -> None:
        for c in self.containers:
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass
        self.containers = []
        if self.network is not None:
            try:
                self.network.remove()
            except docker.errors.APIError:
                pass
            self.network = None

    def __exit__(self, *exc) -> None:
        self.close()
