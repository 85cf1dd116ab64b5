"""Starting one container of an image the way dlenv starts every container: its options (shared
memory, ulimits, GPU, user, mounts, network), the role label, and the fallback for engines that
refuse a ulimit. Never mounts the Docker socket and never runs a container privileged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import docker.types

from builder.errors import EngineError
from builder.names import ROLE_LABEL, ULIMITS, WORKDIR

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
INTERRUPTS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def is_docker_socket(path: str) -> bool:
    real = os.path.realpath(path)
    return real in DOCKER_SOCKETS or any(os.path.realpath(s) == real for s in DOCKER_SOCKETS) \
        or real.endswith("/docker.sock")


@dataclass
class ContainerOptions:
    """How a container is started. Values come from the CLI and settings, validated there."""
    shm_size: str | None = "8g"
    ipc_host: bool = False
    gpu: str | None = None            # runtime name, from gpu_runtime()
    user: str | None = None           # "uid:gid"; None: the image's default user
    workspace: Path | None = None     # host folder mounted at /workspace
    env: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)      # container port -> host port
    volumes: list = field(default_factory=list)    # (host path, container path, mode)
    extra_mounts: list = field(default_factory=list)  # docker.types.Mount
    init: bool = True
    network_name: str | None = None
    on_warning: object = None         # callable(str) for things the user should know
    hostname: str | None = None       # default: the container's name
    aliases: list = field(default_factory=list)    # names the other containers of network_name resolve
    tmpfs: dict = field(default_factory=dict)      # container path -> mount options
    labels: dict = field(default_factory=dict)     # besides the role label


def container_kwargs(opts: ContainerOptions, role: str) -> dict:
    kwargs: dict = dict(detach=True, labels={**opts.labels, ROLE_LABEL: role}, init=opts.init,
                        ulimits=[docker.types.Ulimit(name=n, soft=s, hard=h) for n, s, h in ULIMITS],
                        privileged=False)
    if opts.ipc_host:
        kwargs["ipc_mode"] = "host"
    elif opts.shm_size:
        kwargs["shm_size"] = opts.shm_size
    if opts.gpu:
        kwargs.update(runtime=opts.gpu, device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])])
    if opts.user:
        kwargs["user"] = opts.user
    volumes = {}
    if opts.workspace is not None:
        volumes[str(Path(opts.workspace).resolve())] = {"bind": WORKDIR, "mode": "rw"}
        kwargs["working_dir"] = WORKDIR
    for host, target, mode in opts.volumes:
        if is_docker_socket(host):
            raise EngineError(f"refusing to mount the Docker socket ({host}) into a container",
                              hint="a container with the socket controls the host's engine")
        volumes[str(Path(host).resolve())] = {"bind": target, "mode": mode}
    if volumes:
        kwargs["volumes"] = volumes
    if opts.extra_mounts:
        kwargs["mounts"] = list(opts.extra_mounts)
    if opts.env:
        kwargs["environment"] = dict(opts.env)
    if opts.ports:
        kwargs["ports"] = dict(opts.ports)
    if opts.network_name:
        kwargs["network"] = opts.network_name
    if opts.tmpfs:
        kwargs["tmpfs"] = dict(opts.tmpfs)
    if opts.hostname:
        kwargs["hostname"] = opts.hostname
    return kwargs


def remove_named(client, name: str) -> None:
    """Remove the container `name` if it exists (force: also a running one)."""
    try:
        client.api.remove_container(name, force=True)
    except docker.errors.APIError:
        pass        # gone already, or the engine removes it itself


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done, then arrive as ever. For engine calls that
    make something: cut off half-way, the engine still makes it (a container created after the client gave
    up on it), and no cleanup knows of it. Only in the main thread, the one that takes signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)    # a pending interrupt is raised here


def start_container(client, image: str, opts: ContainerOptions, role: str, command=None, name: str | None = None):
    """Create and start a container, named (by the caller, else dlenv-ROLE-RANDOM). An interrupt waits until
    the create or start is done, then removes it: the caller does not hold it yet, so nothing else would."""
    kwargs = container_kwargs(opts, role)
    kwargs.pop("detach")
    if name:
        kwargs["hostname"] = opts.hostname or name
    kwargs["name"] = name or f"dlenv-{role}-{secrets.token_hex(5)}"
    if opts.aliases and opts.network_name:
        kwargs["networking_config"] = {
            opts.network_name: client.api.create_endpoint_config(aliases=list(opts.aliases))}
    limits = list(kwargs["ulimits"])
    while True:
        try:
            with interrupts_deferred():
                container = client.containers.create(image, command or ["sleep", "infinity"], **kwargs)
        except docker.errors.ImageNotFound:
            raise EngineError(f"image {image} not found", hint="build it first with `dlenv build`") from None
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot create a container from {image}: {exc.explanation}") from None
        except BaseException:
            remove_named(client, kwargs["name"])
            raise
        try:
            with interrupts_deferred():
                container.start()
            return container
        except docker.errors.APIError as exc:
            text = str(exc.explanation)
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
            # Some hosts (rootless engines, sandboxes) may not raise RLIMIT_MEMLOCK: drop the limit
            # the runtime refused, say so, and go on with the rest rather than not start at all.
            if "error setting rlimit" in text and limits:
                dropped = limits.pop(0)
                kwargs["ulimits"] = limits
                if opts.on_warning:
                    opts.on_warning(f"this engine refuses --ulimit {dropped['Name']}={dropped['Soft']}; "
                                    "starting without it (NCCL may pin less memory)")
                continue
            raise EngineError(f"cannot start a container from {image}: {text}") from None
        except BaseException:
            remove_named(client, kwargs["name"])
            raise
