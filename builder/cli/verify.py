"""`dlenv verify`: a stack's (or an image's) checks in containers, with a report."""

from __future__ import annotations

import json
import sys

import click

from builder.cli.common import Ctx, check_driver, print_check, print_report
from builder.engine import dockerapi as engine
from builder.engine.images import verify_target
from builder.errors import VerifyError
from builder.run.cluster import gpu_runtime
from builder.verify.checks import plan_checks
from builder.verify.runner import verify_image


@click.command()
@click.argument("target", required=False, default=".")
@click.option("--nodes", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Run the MPI checks across this many containers on a private network (ssh launcher).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--skip-driver-check", is_flag=True,
              help="Do not check the host's NVIDIA driver against the image's CUDA.")
@click.pass_obj
def verify(ctx: Ctx, target, nodes, as_json, skip_driver_check):
    """Run the checks of STACK (or of the stack an IMAGE was built from) in a container."""
    client = engine.connect()
    p, image, components = verify_target(client, target)
    check_driver(gpu_runtime(client.info()), components, image, skip_driver_check)
    report = verify_image(client, image, plan_checks(p.resolved, p.lock if p.lock_state == "locked" else None, p.parent_locks),
                          nodes=nodes,
                          testinfra_files=p.resolved.merged.testinfra,
                          on_result=None if as_json or not ctx.err.is_terminal else (lambda r: print_check(ctx, r)))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        if not report.passed:
            sys.exit(1)
        return
    print_report(ctx, report)
    c = report.counts
    if not report.passed:
        raise VerifyError(f"{c['failed']} of {len(report.results)} checks failed on {image}", report=report)
    click.echo(f"{image}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped in {report.seconds:.1f}s")
