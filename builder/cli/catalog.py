"""`dlenv list`, `show` and `render`: the catalog and one stack's plan, no build."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from builder import paths
from builder.cli.common import ENGINES, Ctx, plan_of
from builder.engine import dockerapi as engine
from builder.engine.availability import LockPins, check_locks, debian_sources
from builder.engine.images import promoted_image
from builder.errors import DlenvError, one_line, printable
from builder.outputs.catalog_table import catalog_markdown
from builder.plan import buildah_variant
from builder.pipeline.packages import lock_files, uses_store
from builder.plan.buildkit_variant import variant
from builder.settings.settings import load_settings
from builder.spec.stack import catalog_stack_names


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--markdown", is_flag=True, help="The catalog table of the README (no engine needed).")
@click.option("--offline", is_flag=True,
              help="Ask no mirror whether the locks' Debian files are still there: only say what the store lacks.")
@click.pass_obj
def list_cmd(ctx: Ctx, as_json, markdown, offline):
    """The catalog's stacks, and whether the Debian files their locks pin can still be had."""
    client = None  # the catalog needs no engine; "built" is then unknown
    if not markdown:
        try:
            client = engine.connect(timeout=5)
        except DlenvError:
            pass
    rows, plans = [], {}
    for name in catalog_stack_names(paths.stacks_dir()):
        p = plans[name] = plan_of(name)
        chain = p.resolved.merged.chain
        rows.append({"stack": name, "extends": chain[-2].name if len(chain) > 1 else "",
                     "versions": p.resolved.versions(), "hash": p.content_hash[:16], "lock": p.lock_state,
                     "python_packages": [t for t, _ in p.resolved.merged.python_packages],
                     "built": None if client is None else promoted_image(client, p) is not None,
                     "description": p.resolved.merged.description})
    if markdown:   # the README's table: no network, the lock's state only
        click.echo(catalog_markdown(rows), nl=False)
        return
    pins = _pin_checks(plans, offline)
    for r in rows:
        r["pins"] = pins.get(r["stack"])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("stack", "extends", "key versions", "lock", "content hash", "built")
    for r in rows:
        keys = [f"{k} {v}" for k, v in r["versions"].items() if k in ("python", "chainer", "cupy", "cuda", "openmpi", "mpi4py")]
        built = {True: "yes", False: "no", None: "?"}[r["built"]]
        lock = lock_column(r["lock"], r["pins"])
        table.add_row(*(Text(printable(v)) for v in (r["stack"], r["extends"], ", ".join(keys), lock, r["hash"], built)))
    ctx.console.print(table)


def _pin_checks(plans: dict, offline: bool) -> dict:
    """{stack: pins} for every locked stack whose build takes its Debian files from the store: one
    parallel pass over all their files (a file several locks pin is asked for once). A lock whose
    sources cannot be named, or a pass that cannot start, says why instead of failing the list."""
    out, jobs = {}, {}
    try:
        settings = load_settings({})
        mirror, snapshots = settings.get("debian_mirror"), tuple((settings.get("debian_snapshot") or "").split())
    except DlenvError as exc:
        mirror, snapshots, broken = None, (), exc.one_line()
    else:
        broken = ""
    for name, p in plans.items():
        if p.lock_state != "locked" or not uses_store(p):
            continue
        files, unknown = lock_files(p.lock)
        if broken:
            out[name] = _pins_json(None, broken)
            continue
        try:
            sources = debian_sources(p.resolved.base, mirror=mirror, snapshots=snapshots)
        except DlenvError as exc:
            out[name] = _pins_json(None, exc.one_line())
            continue
        jobs[name] = LockPins(tuple(files), tuple(unknown), sources, p.lock.resolved_at)
    try:
        checks = check_locks(jobs, offline=offline)
    except DlenvError as exc:
        checks, reason = {}, exc.one_line()
        out.update({name: _pins_json(None, reason) for name in jobs})
    for name, check in checks.items():
        out[name] = _pins_json(check)
    return out


def _pins_json(check, not_checked: str = "") -> dict:
    """A lock's pins for `list --json`: files counted, the vanished pins, pins without bytes, and why
    some (or all) could not be checked."""
    if check is None:
        return {"files": None, "gone": [], "no_bytes": 0, "not_checked": 0, "why_not_checked": one_line(not_checked),
                "offline": False, "all_without_bytes": False}
    return {"files": check.files, "gone": check.gone_keys, "no_bytes": len(check.no_bytes),
            "not_checked": len(check.unchecked), "why_not_checked": "; ".join(check.reasons),
            "offline": check.offline, "all_without_bytes": bool(check.no_bytes) and not check.debs}


def lock_column(state: str, pins: dict | None) -> str:
    """`locked`, or what is wrong with its pins: `locked, 2 pins gone`, `locked, no bytes recorded`,
    `locked, pins not checked: REASON` (`N pins not in the store` with --offline)."""
    if state != "locked" or not pins:
        return state
    parts = []
    gone = len(pins["gone"])
    if gone:
        parts.append(f"{gone} pin{'s' if gone != 1 else ''} gone")
    if pins["all_without_bytes"]:
        parts.append("no bytes recorded")
    elif pins["no_bytes"]:
        parts.append(f"no bytes recorded for {pins['no_bytes']} pin{'s' if pins['no_bytes'] != 1 else ''}")
    if pins["files"] is None:
        parts.append(f"pins not checked: {pins['why_not_checked']}")
    elif pins["not_checked"]:
        n = pins["not_checked"]
        if pins["offline"]:
            parts.append(f"{n} pin{'s' if n != 1 else ''} not in the store")
        else:
            parts.append(f"{'' if not gone else f'{n} '}pins not checked: {pins['why_not_checked']}")
    return ", ".join(["locked", *parts])


@click.command()
@click.argument("stack", required=False, default=".")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(ctx: Ctx, stack, as_json):
    """Resolved components of STACK, why each is there, and its content hash."""
    p = plan_of(stack)
    data = {"stack": p.resolved.name, "chain": [str(s.path) for s in p.resolved.merged.chain],
            "content_hash": p.content_hash, "image": p.hash_tag,
            "components": [{"name": c.name, "version": c.version.text, "group": c.component.group, "reason": c.reason}
                           for c in p.resolved.components],
            "python_packages": [t for t, _ in p.resolved.merged.python_packages],
            "apt_runtime": p.resolved.apt_runtime,
            "lock": {"file": str(p.lock_file), "state": p.lock_state, "stale_because": p.stale_reason,
                     "digest": p.lock.digest if p.lock is not None and p.lock_state == "locked" else "",
                     **(p.lock.counts() if p.lock is not None and p.lock_state == "locked" else {})}}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    # User text (paths, a lock's stack name, why it is stale) goes out as Text: never read as markup.
    ctx.console.print(Text.assemble((data["stack"], "bold"), f"  {data['image']}"))
    ctx.console.print(f"content hash {data['content_hash']}", markup=False)
    lk = data["lock"]
    lock_file = printable(lk["file"])
    if lk["state"] == "locked":
        ctx.console.print(f"lock {lock_file}: {lk['debian']} Debian packages, {lk['python']} Python packages, "
                          f"{lk['sources']} source package(s)", markup=False)
    elif lk["state"] == "stale":
        ctx.console.print(Text(f"lock {lock_file} is stale ({printable(lk['stale_because'])}): `dlenv lock` or "
                               "`dlenv build --relock`", style="yellow"))
    else:
        ctx.console.print(Text(f"no lock ({lock_file}): `dlenv build` writes one, or run `dlenv lock`", style="yellow"))
    table = Table("component", "version", "layer group", "why")
    for c in data["components"]:
        table.add_row(*(Text(printable(c[k])) for k in ("name", "version", "group", "reason")))
    ctx.console.print(table)


@click.command()
@click.argument("stack", required=False, default=".")
@click.option("--engine", "engine_name", type=ENGINES, default="sdk", show_default=True,
              help="buildkit: the variant with cache and secret mounts; buildah: the exec-form variant "
                   "(same content hash).")
@click.pass_obj
def render(ctx: Ctx, stack, engine_name):
    """Print the Dockerfile of STACK (deterministic; nothing is written)."""
    p = plan_of(stack)
    if engine_name == "buildkit":
        click.echo(variant(p.context.dockerfile, base=p.resolved.base), nl=False)
        return
    if engine_name == "buildah":
        click.echo(buildah_variant.variant(p.context.dockerfile), nl=False)
        return
    click.echo(p.context.dockerfile, nl=False)
