"""`dlenv verify`: a stack's (or an image's) checks in containers, with a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from builder import paths
from builder.cli.common import Ctx, check_driver, print_check, print_report
from builder.cli.slurm import node_image_for
from builder.engine import dockerapi as engine
from builder.engine.charliecloud import read_record
from builder.engine.images import verify_target
from builder.errors import DlenvError, VerifyError
from builder.plan.plan import plan
from builder.plan.lockimages import reproducible_summary
from builder.run.cluster import gpu_runtime
from builder.verify.checks import plan_checks
from builder.verify.runner import verify_image
from builder.verify.hostslurm import HOST_RUNTIMES, verify_host_slurm
from builder.verify.slurm import verify_slurm


@click.command()
@click.argument("target", required=False, default=".")
@click.option("--nodes", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Run the MPI checks across this many containers on a private network (ssh launcher).")
@click.option("--slurm", "under_slurm", is_flag=True,
              help="Run the MPI checks with `srun --mpi=pmix` across the nodes of a temporary local Slurm "
                   "cluster of the stack's node image (--nodes, at least 2).")
@click.option("--runtime", type=click.Choice(list(HOST_RUNTIMES)),
              help="With --slurm: run the MPI checks under a Slurm on this host (slurmd as root, the jobs as a "
                   "temporary unprivileged user) through this runtime, with the scripts `dlenv export slurm` writes.")
@click.option("--image-file", metavar="PATH",
              help="With --runtime: the image to run, made before (charliecloud: by `dlenv export charliecloud`; podman: "
                   "a `docker save` archive); default: made from the stack's image for this run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--skip-driver-check", is_flag=True,
              help="Do not check the host's NVIDIA driver against the image's CUDA.")
@click.pass_obj
def verify(ctx: Ctx, target, nodes, under_slurm, runtime, image_file, as_json, skip_driver_check):
    """Run the checks of STACK (or of the stack an IMAGE was built from) in a container.

    TARGET may also be a Charliecloud image (directory or SquashFS file) made by `dlenv export
    charliecloud`: then verify says which stack, content hash and lock it was made from, and whether
    that is still the stack's current lock.
    """
    if (runtime or image_file) and not under_slurm:
        raise VerifyError("--runtime and --image-file go with --slurm",
                          hint=f"dlenv verify {target} --slurm --runtime charliecloud")
    if target != "." and (Path(target).is_dir() or Path(target).is_file()):
        record = read_record(target)
        if record is not None:
            _identify(ctx, target, record, as_json)
            return
    client = engine.connect()
    if under_slurm and runtime:
        _verify_host_slurm(ctx, client, target, max(nodes, 2), runtime, image_file, as_json)
        return
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


def _identify(ctx: Ctx, target: str, record: dict, as_json: bool) -> None:
    """What a Charliecloud image was made from, and whether its stack's current lock still gives it."""
    stack, content_hash = str(record.get("stack", "?")), str(record.get("content_hash", ""))
    try:
        current_plan = plan(stack)
    except DlenvError:
        current_plan = None
    current = current_plan.content_hash if current_plan else None
    same = current == content_hash
    if as_json:
        click.echo(json.dumps({**record, "path": target, "current_content_hash": current, "current": same}, indent=2))
    else:
        click.echo(f"{target}: Charliecloud image of {stack}, content hash {content_hash[:16]}, lock "
                   f"{str(record.get('lock') or '?')[:16]}, made from {record.get('image')} ({str(record.get('image_id'))[:19]}) "
                   f"by dlenv {record.get('dlenv')}")
    if not same:
        raise VerifyError(f"{target} was made from another lock of {stack}: its content hash is {content_hash[:16]}, "
                          f"the stack's is {current[:16] if current else 'unknown here'}",
                          hint=f"export it again: dlenv export charliecloud {stack} -o {target} --force")
    if not as_json:
        lock_path = current_plan.lock.path if current_plan.lock is not None else "unlocked"
        ctx.info(f"that is the current lock of {stack} ({lock_path})")


def _verify_host_slurm(ctx: Ctx, client, target: str, nodes: int, runtime: str, image_file: str | None,
                       as_json: bool) -> None:
    """The MPI checks through RUNTIME under a Slurm on this host; exits with the failed job's exit code."""
    p, _image, _components = verify_target(client, target)
    if not as_json:
        ctx.info(f"starting a Slurm on this host ({nodes} slurmd) and the image for {runtime}; converting a large "
                 "image takes minutes")
    report, code = verify_host_slurm(client, p, plan_checks(p.resolved, None), runtime, paths.state_dir(),
                                     nodes=nodes, image_file=image_file, on_result=_live(ctx, as_json))
    _finish_jobs(ctx, report, code, as_json, f"checks failed through {runtime} under a host Slurm on {p.hash_tag}",
                 f"{p.hash_tag} through {runtime} under a host Slurm ({nodes} nodes)")


def _verify_slurm(ctx: Ctx, client, target: str, nodes: int, as_json: bool) -> None:
    """The stack's MPI checks under a temporary Slurm cluster; exits with the failed job's exit code."""
    p, _image, _components = verify_target(client, target)
    image = node_image_for(ctx, client, target, False)
    report, code = verify_slurm(client, image, plan_checks(p.resolved, None), paths.state_dir(), nodes=nodes,
                                on_result=_live(ctx, as_json))
    _finish_jobs(ctx, report, code, as_json, f"Slurm checks failed on {image}", f"{image} under Slurm ({nodes} nodes)")


def _live(ctx: Ctx, as_json: bool):
    """Print each check as it ends, on a terminal."""
    return None if as_json or not ctx.err.is_terminal else (lambda r: print_check(ctx, r))


def _finish_jobs(ctx: Ctx, report, code: int, as_json: bool, failed: str, summary: str) -> None:
    """Print the report of checks run as jobs; a failure exits with the first failed job's exit code."""
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        if not report.passed:
            sys.exit(code or 1)
        return
    print_report(ctx, report)
    c = report.counts
    if not report.passed:
        error = VerifyError(f"{c['failed']} of {len(report.results)} {failed}", report=report)
        error.exit_code = code or 1
        raise error
    click.echo(f"{summary}: {c['passed']} passed, {c['failed']} failed in {report.seconds:.1f}s")
