"""`dlenv slurm up|submit|down`: a local Slurm cluster (a controller and N nodes) from a stack's image,
jobs submitted with the real sbatch, waited for, their output printed, their exit code returned."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from builder import paths
from builder.cli.common import Ctx, bundle_and_mirror, image_for_use, step_printer, warn_once
from builder.cli.signals import exit_code, stopped_by
from builder.engine import dockerapi as engine
from builder.engine.containers import interrupts_deferred
from builder.errors import SlurmError
from builder.names import TAG_CHARS
from builder.outputs.slurm import MAX_NODES, job_exit_code, job_summary
from builder.plan.pins import base_recipe
from builder.plan.plan import plan
from builder.run import slurm as cluster_mod
from builder.run import slurm_jobs as jobs
from builder.run.session import parse_env
from builder.settings.host import debian_sources, pip_build_args

CANCEL_WAIT_SECONDS = 60


def node_image_for(ctx: Ctx, client, stack: str, build: bool) -> str:
    """The stack's promoted image (offered or built like `dlenv shell`), then its Slurm node image."""
    base = image_for_use(ctx, client, stack, build)
    p = plan(stack)
    start = time.monotonic()
    log_path = paths.state_dir() / "logs" / f"{p.resolved.name}-slurm-{p.content_hash[:TAG_CHARS]}.log"
    _, mirror = bundle_and_mirror(None)
    sources = b"" if "image" in p.resolved.base else \
        debian_sources(base_recipe(p.resolved.base)["suite"], mirror=mirror).encode()
    tag, built = cluster_mod.ensure_node_image(client, p.resolved.name, base, p.content_hash, paths.state_dir(),
                                               log_path, pip_build_args(), on_progress=step_printer(ctx),
                                               apt_sources=sources)
    if built:
        ctx.info(f"{tag}: Slurm node image built in {time.monotonic() - start:.1f}s (log {log_path})")
    return tag


@click.group()
def slurm():
    """A local Slurm cluster of a stack's image: controller and nodes in containers on this engine."""


@slurm.command()
@click.argument("stack", required=False, default=".")
@click.option("-N", "--nodes", type=click.IntRange(1, MAX_NODES), default=2, show_default=True,
              help="Node containers besides the controller.")
@click.option("--build", is_flag=True, help="Build the stack first if its image does not exist.")
@click.pass_obj
def up(ctx: Ctx, stack, nodes, build):
    """Start a controller and N nodes of STACK's image; the current folder is /workspace on every node."""
    client = engine.connect()
    state_dir = paths.state_dir()
    existing = cluster_mod.load_state(cluster_mod.state_path(state_dir))
    if existing is not None:
        if cluster_mod.running(client, existing):
            raise SlurmError(f"cluster {existing.cluster_id} is up already ({existing.nodes} nodes of {existing.image})",
                             hint="run `dlenv slurm down` first")
        cluster_mod.down(client, existing, cluster_mod.state_path(state_dir))
    image = node_image_for(ctx, client, stack, build)
    start = time.monotonic()
    try:
        state = cluster_mod.up(client, image, nodes, Path.cwd(), state_dir, on_warning=warn_once)
    except KeyboardInterrupt as exc:
        ctx.err.print(f"[red]dlenv: {stopped_by(exc)}; the cluster's containers, network and key were removed[/red]")
        sys.exit(exit_code(exc))
    ctx.info(f"cluster {state.cluster_id}: controller and {nodes} node(s) of {image} idle in "
             f"{time.monotonic() - start:.1f}s; {state.workspace} is /workspace")
    click.echo(state.cluster_id)


def _finish(ctx: Ctx, client, state, job_id: str, fields: dict) -> int:
    out, err = jobs.output(client, state, fields)
    if out:
        click.echo(out, nl=not out.endswith("\n"))
    if err:
        click.echo(err, nl=not err.endswith("\n"), err=True)
    ctx.info(job_summary(job_id, fields))
    return job_exit_code(fields)


@slurm.command()
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the job, print its output and exit with its exit code.")
@click.option("--timeout", type=click.IntRange(1), metavar="SECONDS",
              help="Cancel the job when it runs longer than this (default: its own --time).")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE",
              help="Set a variable for sbatch, which passes it to the job (repeatable).")
@click.pass_obj
def submit(ctx: Ctx, script, wait, timeout, env):
    """Submit SCRIPT (in the cluster's shared folder) with sbatch as the image user, from /workspace."""
    variables = parse_env(env)
    client = engine.connect()
    state = cluster_mod.load_state(cluster_mod.state_path(paths.state_dir()))
    if state is None or not cluster_mod.running(client, state):
        raise SlurmError("no Slurm cluster is up", hint="run `dlenv slurm up STACK` in the job's folder")
    script_path = jobs.script_in_workspace(state, Path(script))
    job_id = None
    try:
        with interrupts_deferred():     # not cut off inside sbatch: a job it queued is known, and cancelled below
            job_id = jobs.submit(client, state, script_path, env=variables)
        if not wait:
            click.echo(job_id)
            return
        ctx.info(f"submitted job {job_id}; waiting (Ctrl-C cancels it)")
        deadline = time.monotonic() + timeout if timeout else None
        fields = jobs.wait(client, state, job_id, deadline)
    except KeyboardInterrupt as exc:
        if job_id is None:
            raise
        ctx.err.print(f"[red]dlenv: {stopped_by(exc)}; cancelling job {job_id}[/red]")
        jobs.cancel(client, state, job_id)
        fields = jobs.wait(client, state, job_id, time.monotonic() + CANCEL_WAIT_SECONDS)
        _finish(ctx, client, state, job_id, fields)
        sys.exit(exit_code(exc))
    sys.exit(_finish(ctx, client, state, job_id, fields))


@slurm.command()
@click.option("--all", "everything", is_flag=True,
              help="Remove every dlenv Slurm cluster on this engine, also those of other state folders.")
@click.pass_obj
def down(ctx: Ctx, everything):
    """Remove the cluster's containers, network, munge key and state."""
    client = engine.connect()
    state_dir = paths.state_dir()
    path = cluster_mod.state_path(state_dir)
    start = time.monotonic()
    if everything:
        removed = cluster_mod.down(client, None, path)
        cluster_mod.remove_all_secrets(state_dir)
        ctx.info(f"every dlenv Slurm cluster removed ({removed} containers) in {time.monotonic() - start:.1f}s")
        return
    state = cluster_mod.load_state(path)
    if state is None:
        ctx.info("no Slurm cluster is up")
        return
    removed = cluster_mod.down(client, state, path)
    ctx.info(f"cluster {state.cluster_id} down ({removed} containers) in {time.monotonic() - start:.1f}s")
