"""`dlenv verify`: a stack's (or an image's) checks in containers, with a report."""

from __future__ import annotations

import json
import sys

import click

from builder import paths
from builder.cli.common import Ctx, check_driver, print_check, print_report
from builder.cli.slurm import node_image_for
from builder.engine import dockerapi as engine
from builder.engine.images import verify_target
from builder.errors import VerifyError
from builder.plan.lockimages import reproducible_summary
from builder.run.cluster import gpu_runtime
from builder.verify.checks import plan_checks
from builder.verify.runner import verify_image
from builder.verify.slurm import verify_slurm


@click.command()
@click.argument("target", required=False, default=".")
@click.option("--nodes", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Run the MPI checks across this many containers on a private network (ssh launcher).")
@click.option("--slurm", "under_slurm", is_flag=True,
              help="Run the MPI checks with `srun --mpi=pmix` across the nodes of a temporary local Slurm "
                   "cluster of the stack's node image (--nodes, at least 2).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--skip-driver-check", is_flag=True,
              help="Do not check the host's NVIDIA driver against the image's CUDA.")
@click.pass_obj
def verify(ctx: Ctx, target, nodes, under_slurm, as_json, skip_driver_check):
    """Run the checks of STACK (or of the stack an IMAGE was built from) in a container."""
    client = engine.connect()
    if under_slurm:
        _verify_slurm(ctx, client, target, max(nodes, 2), as_json)
        return
    p, image, components = verify_target(client, target)
    check_driver(gpu_runtime(client.info()), components, image, skip_driver_check)
    report = verify_image(client, image, plan_checks(p.resolved, p.lock if p.lock_state == "locked" else None, p.parent_locks),
                          nodes=nodes,
                          testinfra_files=p.resolved.merged.testinfra,
                          on_result=None if as_json or not ctx.err.is_terminal else (lambda r: print_check(ctx, r)))
    images = p.lock.images if p.lock else {}
    repro = reproducible_summary(images, (engine.image_attrs(client, image) or {}).get("Id", "") if images else "")
    refreshed = (p.lock.refreshed if p.lock else {}) or {}
    if as_json:
        click.echo(json.dumps({**report.to_json(), "reproducible": repro, "refreshed": refreshed}, indent=2))
        if not report.passed:
            sys.exit(1)
        return
    print_report(ctx, report)
    c = report.counts
    ctx.info(repro["line"])
    if refreshed:
        moved = ", ".join(f"{m['package']} {m['locked']} -> {m['used']}" for m in refreshed.get("moved", []))
        ctx.info(f"built from a refreshed lock ({p.lock.path}): {moved or 'no pin moved, bytes recorded'}")
    if not report.passed:
        raise VerifyError(f"{c['failed']} of {len(report.results)} checks failed on {image}", report=report)
    click.echo(f"{image}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped in {report.seconds:.1f}s")


def _verify_slurm(ctx: Ctx, client, target: str, nodes: int, as_json: bool) -> None:
    """The stack's MPI checks under a temporary Slurm cluster; exits with the failed job's exit code."""
    p, _image, _components = verify_target(client, target)
    image = node_image_for(ctx, client, target, False)
    report, code = verify_slurm(
        client, image, plan_checks(p.resolved, None), paths.state_dir(), nodes=nodes,
        on_result=None if as_json or not ctx.err.is_terminal else (lambda r: print_check(ctx, r)))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        if not report.passed:
            sys.exit(code or 1)
        return
    print_report(ctx, report)
    c = report.counts
    if not report.passed:
        error = VerifyError(f"{c['failed']} of {len(report.results)} Slurm checks failed on {image}", report=report)
        error.exit_code = code or 1
        raise error
    click.echo(f"{image} under Slurm ({nodes} nodes): {c['passed']} passed, {c['failed']} failed "
               f"in {report.seconds:.1f}s")
