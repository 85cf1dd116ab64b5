"""`dlenv init` (a starter dlenv.yaml for a repository) and `dlenv gc` (old tags and build cache)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import yaml

from builder import paths
from builder.cli.common import Ctx
from builder.engine import dockerapi as engine
from builder.engine.gc import apply_gc, list_images, plan_gc
from builder.errors import SpecError
from builder.fileio import write_text_atomic
from builder.spec.schema import validate_document
from builder.spec.stack import find_stack
from builder.spec.starter import detect, init_text, target_path


@click.command()
@click.option("--keep", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Hash tags to keep per stack besides latest (newest first).")
@click.option("--build-cache", is_flag=True, help="Also remove dangling build-stage layers built on a dlenv base.")
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
@click.pass_obj
def gc(ctx: Ctx, keep, build_cache, dry_run):
    """Remove old candidate and hash tags of dlenv images (and, asked, their build cache)."""
    client = engine.connect()
    plan = plan_gc(list_images(client), keep=keep, build_cache=build_cache)
    verb = "would remove" if dry_run else "removing"
    for ref in plan.untag:
        ctx.info(f"{verb} {ref}")
    if plan.cache:
        ctx.info(f"{verb} {len(plan.cache)} cached build layer chain(s), {plan.reclaim_bytes / 1e9:.2f} GB or more")
    failed = [] if dry_run else apply_gc(client, plan)
    for line in failed:
        ctx.err.print(f"[yellow]dlenv: warning: could not remove {line}[/yellow]")
    done = "would remove" if dry_run else "removed"
    click.echo(f"{done} {len(plan.untag) - len(failed)} tag(s) and {len(plan.cache)} build cache chain(s); "
               f"kept {len(plan.keep)} tag(s)")


@click.command("init")
@click.option("--from", "parent", default="chainermn", show_default=True, metavar="STACK",
              help="The stack to extend (a catalog name or a path).")
@click.option("--name", help="Stack name (default: the folder's name).")
@click.option("--no-detect", is_flag=True, help="Do not take over requirements files.")
@click.option("-y", "--yes", is_flag=True, help="Take over detected requirements without asking.")
@click.option("--force", is_flag=True, help="Replace an existing dlenv.yaml.")
@click.pass_obj
def init_cmd(ctx: Ctx, parent, name, no_detect, yes, force):
    """Write a commented starter dlenv.yaml here, taking over requirements files it finds."""
    folder = Path(os.getcwd())
    target = target_path(folder)
    if target.exists() and not force:
        raise SpecError(target, "already exists", hint="pass --force to replace it")
    find_stack(parent, paths.stacks_dir(), relative_to=folder)  # refuse an unknown parent now
    take = not no_detect
    found = detect(folder) if take else []
    if take and any(d.packages for d in found) and not yes and sys.stdin.isatty():
        summary = ", ".join(f"{len(d.packages)} from {d.source}" for d in found if d.packages)
        take = click.confirm(f"Take over Python requirements ({summary})?", default=True, err=True)
    text, found = init_text(folder, parent, take_over=take, name=name)
    if name is not None:
        validate_document(yaml.safe_load(text), {}, target, "stack")
    write_text_atomic(target, text)
    for d in found:
        if d.packages:
            ctx.info(f"took over {len(d.packages)} package(s) from {d.source}")
        for entry, why in d.skipped:
            ctx.info(f"not taken from {d.source}: {entry} ({why})")
    click.echo(f"wrote {target}; next: dlenv build")
