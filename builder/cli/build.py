"""`dlenv base`, `build` and `lock`: bootstrap the base, build and promote a stack, pin what it installs."""

from __future__ import annotations

import contextlib
import time

import click

from builder import paths
from builder.cli.common import (ENGINES, Ctx, bundle_and_mirror, check_driver, package_sources_of, plan_of, print_check,
                                print_refresh, print_slowest, step_printer)
from builder.cli.registry import LayerProgress
from builder.engine import base as base_mod
from builder.engine import dockerapi as engine
from builder.engine.availability import check_pins, debian_sources
from builder.engine.images import promoted_image
from builder.errors import EngineError, LockError, UsageError
from builder.pipeline import build as build_mod
from builder.pipeline import buildah_build, diskcheck
from builder.pipeline.packages import lock_files, uses_store
from builder.pipeline.vendor import adopt_bundled_locks
from builder.plan.lockfile import load as load_lock
from builder.plan.lockfile import lock_changes
from builder.plan.plan import is_catalog_stack, stale_error
from builder.run.cluster import gpu_runtime
from builder.settings.settings import load_settings


@click.command()
@click.option("--suite", default="bookworm", show_default=True)
@click.option("--force", is_flag=True, help="Bootstrap again even when the base exists.")
@click.pass_obj
def base(ctx: Ctx, suite, force):
    """Bootstrap the default Debian base image (mmdebstrap + docker import)."""
    spec = {"bootstrap": {"suite": suite, "variant": "minbase"}}
    client = engine.connect()
    start = time.monotonic()
    ref = base_mod.ensure_base(client, spec, ctx.info, force=force, mirror=bundle_and_mirror(None)[1])
    click.echo(f"{ref} ready ({time.monotonic() - start:.1f}s)")


@click.command()
@click.argument("stack", required=False, default=".")
@click.option("--no-verify", is_flag=True, help="Promote without running the checks.")
@click.option("--no-cache", "nocache", is_flag=True, help="Build every layer again.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="Extra CA bundle for pip inside the build stage.")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]",
              help="Try to pull this content hash from the registry before building (default: the registry setting).")
@click.option("--no-pull", is_flag=True, help="Do not try the registry; always build here.")
@click.option("--relock", is_flag=True, help="Lock again first (a stale lock is otherwise refused).")
@click.option("--locked", "frozen", is_flag=True,
              help="Never write the lock: fail when it is missing or stale, or names Debian files no source has "
                   "(instead of refreshing those pins).")
@click.option("--vendor", "vendor", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="A bundle written by `dlenv vendor`: Debian files come from it before any network source.")
@click.option("--engine", "engine_name", type=ENGINES,
              help="sdk (docker-py, classic builder; the default, or the engine setting), buildkit "
                   "(a Docker CLI with BuildKit: apt/pip cache mounts, CA bundle as a secret) or buildah "
                   "(one image id per lock, recorded in the lock).")
@click.option("--check", "check", is_flag=True,
              help="buildah: then build again without cache and fail unless the image id is the same.")
@click.option("--skip-disk-check", is_flag=True,
              help="Build even when a disk it writes to has less free space than the lock says the build needs "
                   "(the estimate counts every step, also those the cache would spare).")
@click.pass_obj
def build(ctx: Ctx, stack, no_verify, nocache, ca_bundle, registry, no_pull, relock, frozen, vendor, engine_name, check,
          skip_disk_check):
    """Build STACK from its lock, verify it, then tag it by content hash and as latest.

    A stack without a lock is locked first (the lock file is written next to the stack: commit it)."""
    if relock and frozen:
        raise UsageError("--relock and --locked contradict each other")
    for name in adopt_bundled_locks(vendor, shipped_lock_digest):
        ctx.info(f"using the refreshed lock of {name} from the bundle")
    p = plan_of(stack)
    registry = None if no_pull else load_settings({"registry": registry}).get("registry")
    engine_name = load_settings({"engine": engine_name}).get("engine")
    if check and engine_name != "buildah":
        raise UsageError("--check needs the buildah engine (--engine buildah)")
    bundle, mirror = bundle_and_mirror(ca_bundle)
    packages = package_sources_of(p, mirror, vendor, bundle)
    client = _connect(ctx, engine_name)
    if client is None:
        _build_without_docker(ctx, p, bundle, mirror, nocache, check, not skip_disk_check)
        return
    on_refresh = lambda prov: print_refresh(ctx, prov)  # noqa: E731
    if not no_verify:  # the device checks of a GPU host would otherwise fail deep inside CuPy
        check_driver(gpu_runtime(client.info()), p.resolved.versions(), p.hash_tag, False)
    on_progress = step_printer(ctx)
    if p.parent is not None and not (p.lock_state == "locked" and promoted_image(client, p) is not None):
        how = build_mod.ensure_parent(p, client, registry=registry, ca_bundle=bundle, mirror=mirror, log=ctx.info,
                                      on_check=lambda r: print_check(ctx, r), on_progress=on_progress,
                                      engine_name=engine_name, packages=packages, locked=frozen, on_refresh=on_refresh,
                                      disk_check=not skip_disk_check)
        _print_parent(ctx, p, how, registry)
    if p.lock_state != "locked" or relock:
        p = build_mod.ensure_lock(p, client, relock=relock, frozen=frozen, ca_bundle=bundle, mirror=mirror, log=ctx.info,
                                  on_written=lambda new, report: _print_lock_written(ctx, p, new, report))

    if not ctx.quiet:
        ctx.info(f"{p.resolved.name}: content hash {p.content_hash[:16]}")
    with LayerProgress(ctx, "pull") if registry else contextlib.nullcontext() as pull_progress:
        result = build_mod.build(p, client, ca_bundle=bundle, mirror=mirror, verify=not no_verify, nocache=nocache,
                                 log=ctx.info, on_progress=on_progress, on_check=lambda r: print_check(ctx, r),
                                 registry=registry, on_pull=pull_progress.update if pull_progress else None,
                                 engine_name=engine_name, packages=packages, locked=frozen, on_refresh=on_refresh,
                                 disk_check=not skip_disk_check)
    p = result.plan
    if result.pulled:
        click.echo(f"pulled {p.hash_tag} from {registry} instead of building ({result.seconds:.0f}s)")
    elif result.noop:
        click.echo(f"{p.hash_tag} is up to date ({result.seconds:.2f}s)")
    else:
        verified = f", {result.report.counts['passed']} checks passed" if result.report else ", not verified"
        click.echo(f"built {p.hash_tag} and {p.latest_tag} in {result.seconds:.0f}s{verified}")
        print_slowest(ctx, result.steps)
    if check:
        _check(ctx, result.plan, client, bundle, mirror, on_progress)


def shipped_lock_digest(stack: str):
    """The digest of the lock the catalog ships for `stack` (None when it has none)."""
    path = paths.stacks_dir() / f"{stack}.lock"
    return load_lock(path).digest if path.is_file() else None


def _connect(ctx: Ctx, engine_name: str):
    """The Docker engine; for buildah, None when none answers (it builds without one)."""
    try:
        return engine.connect()
    except EngineError as exc:
        if engine_name != "buildah":
            raise
        ctx.info(f"no Docker engine ({exc.message}): building with buildah alone, into the host's containers-storage")
        return None


def _build_without_docker(ctx: Ctx, p, bundle, mirror, nocache: bool, check: bool, disk_check: bool) -> None:
    bh = buildah_build.find()
    if disk_check and p.lock_state == "locked":
        diskcheck.check(p, None, "buildah", buildah_cli=bh.cli)
    on_progress = step_printer(ctx)
    got = buildah_build.build_without_docker(bh, p, bundle, nocache=nocache, mirror=mirror, log=ctx.info,
                                             on_progress=on_progress)
    click.echo(f"built {p.hash_tag} ({got['id'][:19]}) in {got['seconds']:.0f}s, not verified: the checks run in "
               f"the Docker engine; in {got['store']} for podman: `podman run --rm -it {p.hash_tag}`")
    print_slowest(ctx, got["steps"])
    if check:
        _check(ctx, p, None, bundle, mirror, on_progress)


def _check(ctx: Ctx, p, client, bundle, mirror, on_progress) -> None:
    """`build --check`: a second no-cache buildah build must give the same image id."""
    bh = buildah_build.find()
    ctx.info(f"{p.resolved.name}: building again without cache to check the image id")
    started = time.monotonic()
    got = buildah_build.check(bh, client, p, bundle, mirror=mirror, log=ctx.info, on_progress=on_progress)
    click.echo(f"reproduced {got['id'][:19]} ({got['key']}) in {time.monotonic() - started:.0f}s")


def _print_parent(ctx: Ctx, p, how: str, registry: str | None) -> None:
    where = {"found": "found in the engine", "pulled": f"pulled from {registry}", "built": "built and verified"}[how]
    ctx.info(f"{p.resolved.name} builds on {p.parent.hash_tag} ({where})")


def _print_lock_written(ctx: Ctx, old_plan, new_plan, report) -> None:
    lock = new_plan.lock
    counts = lock.counts()
    ctx.info(f"wrote {new_plan.lock_file}: {counts['debian']} Debian packages, {counts['python']} Python packages, "
             f"{counts['sources']} source package(s); commit it next to the stack")
    changes = lock_changes(old_plan.lock, lock)
    if old_plan.lock is not None:
        ctx.info(f"{len(changes)} pin(s) changed, {report.kept} kept" + (":" if changes else ""))
        for line in changes[:40]:
            ctx.info(f"  {line}")
        if len(changes) > 40:
            ctx.info(f"  ... and {len(changes) - 40} more")
    for note in report.notes:
        ctx.info(f"note: {note}")


@click.command()
@click.argument("stack", required=False, default=".")
@click.option("--upgrade", "upgrade", multiple=True, metavar="PKG",
              help="Resolve this Python or Debian package again (repeatable); other pins are kept.")
@click.option("--upgrade-all", is_flag=True, help="Resolve every pin again, as if there were no lock.")
@click.option("--check", is_flag=True,
              help="Write nothing: say whether the lock matches the stack and whether every Debian file it pins can "
                   "still be had from the store, a bundle, a snapshot service or a mirror (exit 1 if not).")
@click.option("--vendor", "vendor", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="With --check: a bundle written by `dlenv vendor` whose files count as obtainable.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="Extra CA bundle for pip in the lock container.")
@click.pass_obj
def lock(ctx: Ctx, stack, upgrade, upgrade_all, check, vendor, ca_bundle):
    """Pin every package STACK installs: Debian packages, Python files with sha256, sources, the base.

    The lock is written next to the stack file (stacks/NAME.lock, ./dlenv.lock). Pins of an
    existing lock are kept where they still apply, unless --upgrade PKG or --upgrade-all."""
    p = plan_of(stack)
    if check:
        _check_lock(ctx, p, stack, vendor)
        return
    if vendor:
        raise UsageError("--vendor goes with --check (a build takes it: `dlenv build --vendor DIR`)")
    bundle, mirror = bundle_and_mirror(ca_bundle)
    client = engine.connect()
    start = time.monotonic()
    if p.parent is not None:    # the lock is resolved in a container of the parent's image
        registry = load_settings({}).get("registry")
        how = build_mod.ensure_parent(p, client, registry=registry, ca_bundle=bundle, mirror=mirror, log=ctx.info,
                                      on_check=lambda r: print_check(ctx, r), on_progress=step_printer(ctx))
        _print_parent(ctx, p, how, registry)
    new_plan, report = build_mod.write_lock(p, client, upgrade=upgrade, upgrade_all=upgrade_all,
                                            ca_bundle=bundle, mirror=mirror, log=ctx.info)
    _print_lock_written(ctx, p, new_plan, report)
    click.echo(f"locked {new_plan.resolved.name} in {time.monotonic() - start:.0f}s: {new_plan.lock_file} "
               f"(image {new_plan.hash_tag})")


def _check_lock(ctx: Ctx, p, stack: str, vendor) -> None:
    """`lock --check`: the lock matches the stack (else exit 1, as ever), then every Debian file it pins
    is in the store or a bundle, or a snapshot service or mirror answers for it (HEAD, no download)."""
    if p.lock_state == "missing":
        raise LockError(f"{p.lock_file} is missing", hint=f"run `dlenv lock {stack}`")
    if p.lock_state != "locked":
        raise stale_error(p)
    matches = f"{p.lock_file} matches {p.resolved.merged.path}"   # said only on success: an error is one line
    if not uses_store(p):
        click.echo(matches)
        click.echo("its Debian packages come from the base image's apt sources: no pinned files to check")
        return
    settings = load_settings({})
    snapshots = tuple((settings.get("debian_snapshot") or "").split())
    sources = debian_sources(p.resolved.base, mirror=settings.get("debian_mirror"), snapshots=snapshots,
                             bundles=vendor)
    files, unknown = lock_files(p.lock)
    result = check_pins(files, sources, unknown=unknown, resolved_at=p.lock.resolved_at)
    relock = "; `make relock` for the catalog's maintainers" if is_catalog_stack(p.resolved) else ""
    if result.gone:
        keys = result.gone_keys
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        tarballs = ("; a source tarball is not refreshed: build with --vendor DIR or set debian_snapshot"
                    if any(f.kind != "deb" for f in result.gone) else "")
        raise LockError(f"{p.lock_file}: {len(keys)} pinned Debian file(s) in no source (store, bundle, snapshot, "
                        f"mirror): {shown}", hint=f"`dlenv build {stack}` refreshes them{relock}{tarballs}")
    if result.unchecked:
        raise LockError(f"{p.lock_file}: {len(result.unchecked)} pinned Debian file(s) the store lacks could not "
                        f"be checked: {'; '.join(result.reasons)}",
                        hint="check the Debian mirror (`dlenv doctor`) and run it again, or pass --vendor DIR")
    click.echo(matches)
    if result.no_bytes:
        click.echo(f"{result.files} pinned file(s) obtainable; {len(result.no_bytes)} pin(s) have no bytes recorded "
                   f"(a lock written before locks named their files): `dlenv build {stack}` records them{relock}")
        return
    click.echo(f"all {result.files} pinned files obtainable")
