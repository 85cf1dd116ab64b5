"""`dlenv shell` and `dlenv run`: the stack's image as a login shell or an MPI job, the current folder
mounted at /workspace, as the host user."""

from __future__ import annotations

import os
import sys

import click

from builder.cli.common import Ctx, image_for_use, warn_once
from builder.engine import dockerapi as engine
from builder.run.cluster import ContainerOptions, gpu_runtime
from builder.run.session import host_identity, parse_env, parse_ports, parse_volumes, run_mpi
from builder.run.session import shell as run_shell
from builder.settings.settings import load_settings


def _container_options(shm_size, ipc, env, ports, volumes, workspace=True):
    settings = load_settings({"shm_size": shm_size})
    client = engine.connect()
    opts = ContainerOptions(shm_size=settings.get("shm_size"), ipc_host=(ipc == "host"),
                            gpu=gpu_runtime(client.info()), workspace=os.getcwd() if workspace else None,
                            env=parse_env(env), ports=parse_ports(ports), volumes=parse_volumes(volumes),
                            on_warning=warn_once)
    return client, opts


_use_options = [
    click.option("--shm-size", help="Size of /dev/shm (default 8g, or the shm_size setting)."),
    click.option("--ipc", type=click.Choice(["private", "host"]), default="private", show_default=True,
                 help="`host` shares the host's IPC namespace instead of a private /dev/shm."),
    click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE", help="Set a variable (repeatable)."),
    click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]",
                 help="Extra mount (repeatable); the Docker socket is refused."),
    click.option("--build", is_flag=True, help="Build the stack first if its image does not exist."),
    click.option("--skip-driver-check", is_flag=True,
                 help="Do not check the host's NVIDIA driver against the image's CUDA."),
]


def use_options(func):
    for option in reversed(_use_options):
        func = option(func)
    return func


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("stack")
@use_options
@click.option("-p", "--publish", "ports", multiple=True, metavar="[HOSTPORT:]PORT",
              help="Publish a container port on 127.0.0.1 (repeatable).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def shell(ctx: Ctx, stack, shm_size, ipc, env, volumes, build, skip_driver_check, ports, command):
    """Open a shell in STACK's image with the current folder at /workspace, as you.

    `dlenv shell STACK -- CMD...` runs CMD instead and exits with its status.
    """
    client, opts = _container_options(shm_size, ipc, env, ports, volumes)
    image = image_for_use(ctx, client, stack, build, opts.gpu, skip_driver_check)
    code = run_shell(client, image, opts, host_identity(), list(command) or None)
    sys.exit(code)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("stack")
@click.option("-n", "--np", "ranks", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Number of MPI ranks.")
@click.option("--nodes", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Containers on a private network; ranks are spread over them and started over ssh.")
@click.option("--all-ranks", is_flag=True, help="Show the output of every rank (default: rank 0 only).")
@use_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run(ctx: Ctx, stack, ranks, nodes, all_ranks, shm_size, ipc, env, volumes, build, skip_driver_check, command):
    """Run COMMAND under mpiexec in STACK's image, e.g. `dlenv run chainermn -n 4 -- python train.py`."""
    client, opts = _container_options(shm_size, ipc, env, (), volumes)
    image = image_for_use(ctx, client, stack, build, opts.gpu, skip_driver_check)
    code = run_mpi(client, image, opts, host_identity(), list(command), ranks, nodes=nodes, all_ranks=all_ranks)
    sys.exit(code)
