"""`dlenv init` (a starter dlenv.yaml for a repository) and `dlenv gc` (old tags, build cache, and the
package store's files no lock names)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import tempfile

import click
from rich.text import Text

from builder import paths
from builder.cli.common import Ctx
from builder.engine import dockerapi as engine
from builder.engine import buildah, buildah_store
from builder.engine.gc import (apply_gc, apply_store_gc, list_images, plan_buildah_gc, plan_gc, plan_store_gc,
                               store_keep, store_locks)
from builder.engine.store import PackageStore
from builder.errors import EngineError, SpecError, shown
from builder.pipeline.buildah_build import BUILDAH_MUTEX
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names, find_stack, load_chain
from builder.spec.starter import NAME, detect, init_text, target_path
from builder.statelock import stack_lock

REPORT_LINES = 10      # "not taken" lines init prints; the rest are counted


@click.command()
@click.option("--keep", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Hash tags to keep per stack besides latest (newest first).")
@click.option("--build-cache", is_flag=True, help="Also remove dangling build-stage layers built on a dlenv base.")
@click.option("--store", "store", is_flag=True,
              help="Also trim dlenv's package store: keep the files that the catalog's locks, the refreshed locks "
                   "in the state folder and this folder's dlenv.lock name; remove the rest.")
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
@click.pass_obj
def gc(ctx: Ctx, keep, build_cache, store, dry_run):
    """Remove old candidate and hash tags of dlenv images (and, asked, their build cache), in the
    Docker engine and in dlenv's buildah storage; with --store, the package store's files no lock names
    (that needs no engine)."""
    if store:
        _gc_store(ctx, dry_run)
    try:
        client = engine.connect()
    except EngineError as exc:
        if not store:
            raise
        ctx.err.print(Text(f"dlenv: warning: images left as they are: {exc.message}", style="yellow"))
        return
    # With a buildah storage, not beside a buildah build: it needs its intermediate images, and its
    # candidate's copy must not be taken for one whose Docker tag is gone.
    guard = stack_lock(BUILDAH_MUTEX, ctx.info) if buildah.storage_root().is_dir() else contextlib.nullcontext()
    with guard:
        _gc(ctx, client, keep, build_cache, dry_run)


def _gc(ctx: Ctx, client, keep: int, build_cache: bool, dry_run: bool) -> None:
    plan = plan_gc(list_images(client), keep=keep, build_cache=build_cache)
    verb = "would remove" if dry_run else "removing"
    for ref in plan.untag:
        ctx.info(f"{verb} {ref}")
    if plan.cache:
        ctx.info(f"{verb} {len(plan.cache)} cached build layer chain(s), {plan.reclaim_bytes / 1e9:.2f} GB or more")
    failed_tags, failed_cache = ([], []) if dry_run else apply_gc(client, plan)
    for line in failed_tags + failed_cache:
        ctx.err.print(f"[yellow]dlenv: warning: could not remove {line}[/yellow]")
    done = "would remove" if dry_run else "removed"
    click.echo(f"{done} {len(plan.untag) - len(failed_tags)} tag(s) and {len(plan.cache) - len(failed_cache)} "
               f"build cache chain(s); kept {len(plan.keep)} tag(s)")
    # What Docker could not untag it still holds: keep buildah's copy too.
    _gc_buildah(ctx, plan.keep + [line.split(": ", 1)[0] for line in failed_tags], build_cache, dry_run)


def _gc_store(ctx: Ctx, dry_run: bool) -> None:
    """The package store less every file no known lock names: the catalog's locks, the refreshed locks
    in the state folder, and the lock of the project in this folder (run it there to keep its files).
    A file only a project elsewhere pins goes: its next build fetches it again, if a source still has it."""
    keep, read, skipped = store_keep(*store_locks(Path.cwd()))
    for line in skipped:
        ctx.info(f"not a lock, its files are not kept: {line}")
    store = PackageStore()
    plan = plan_store_gc(store, keep)
    count, freed = (len(plan.remove), plan.remove_bytes) if dry_run else apply_store_gc(plan)
    done = "would remove" if dry_run else "removed"
    click.echo(f"package store {store.root}: {done} {count} file(s), {_size(freed)}"
               f"{' freed' if not dry_run else ''}; kept {plan.kept_files} file(s) named by {len(read)} lock(s)")


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def _gc_buildah(ctx: Ctx, kept_refs: list, build_cache: bool, dry_run: bool) -> None:
    """The same in dlenv's buildah storage (when there is one): its copies of the images Docker no
    longer keeps, and with --build-cache its layer cache."""
    if not buildah.storage_root().is_dir():
        return
    try:
        cli = buildah.find_buildah()[0]
    except EngineError as exc:
        ctx.info(f"dlenv's buildah storage left as it is: {exc.message}")
        return
    names = plan_buildah_gc(buildah_store.image_names(cli), kept_refs)
    verb = "would remove" if dry_run else "removing"
    for name in names:
        ctx.info(f"{verb} {name} (buildah storage)")
    failed = [] if dry_run else buildah_store.remove_images(cli, names, prune=build_cache)
    for line in failed:
        ctx.err.print(f"[yellow]dlenv: warning: could not remove {line}[/yellow]")
    cache = " and its layer cache" if build_cache else ""
    click.echo(f"buildah storage: {'would remove' if dry_run else 'removed'} {len(names) - len(failed)} image(s){cache}")


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
    _check_name(name)
    load_chain(str(find_stack(parent, paths.stacks_dir(), relative_to=folder)), paths.stacks_dir())  # a real stack
    take = not no_detect
    found = detect(folder) if take else []
    if take and any(d.packages for d in found) and not yes and sys.stdin.isatty():
        summary = ", ".join(f"{len(d.packages)} from {d.source}" for d in found if d.packages)
        take = click.confirm(f"Take over Python requirements ({summary})?", default=True, err=True)
    text, found = init_text(folder, parent, take_over=take, name=name)
    _write_checked(target, text)
    _report(ctx, found)
    click.echo(f"wrote {target}; next: dlenv build")


def _check_name(name: str | None) -> None:
    if name is None:
        return
    if not NAME.match(name):
        raise SpecError("--name", f"{shown(name, 80)} is not a stack name",
                        hint="use lowercase letters, digits and '-', up to 63 characters, e.g. my-project")
    if name in catalog_stack_names(paths.stacks_dir()):
        raise SpecError("--name", f"{name!r} is a catalog stack; give the project its own name",
                        hint=f"e.g. my-{name}")


def _write_checked(target: Path, text: str) -> None:
    """Write the starter only once it loads and plans like any stack: through a temporary file in the
    same folder (so `extends:` resolves the same way), renamed over the target; on error nothing stays."""
    fd, tmp = tempfile.mkstemp(prefix=".dlenv-init-", suffix=".yaml", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            plan(tmp)
        except SpecError as exc:
            raise SpecError(target, f"the generated stack would not load: {exc.message.split(': ', 1)[-1]}",
                            hint="pass --no-detect, or fix the entry it names") from None
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _report(ctx: Ctx, found: list) -> None:
    """What was taken over and, bounded, what was not: a few examples and a count per file."""
    for d in found:
        if d.packages:
            ctx.info(f"took over {len(d.packages)} package(s) from {d.source}")
        for entry, why in d.skipped[:REPORT_LINES]:
            ctx.info(f"not taken from {d.source}: {shown(entry, 80)[1:-1] if isinstance(entry, str) else entry} ({why})")
        if len(d.skipped) > REPORT_LINES:
            ctx.info(f"... and {len(d.skipped) - REPORT_LINES} more entries of {d.source} not taken")
