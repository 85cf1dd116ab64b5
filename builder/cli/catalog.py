"""`dlenv list`, `show` and `render`: the catalog and one stack's plan, no build."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from builder import paths
from builder.cli.common import ENGINES, Ctx, plan_of
from builder.engine import dockerapi as engine
from builder.engine.images import promoted_image
from builder.errors import DlenvError, printable
from builder.outputs.catalog_table import catalog_markdown
from builder.plan import buildah_variant
from builder.plan.buildkit_variant import variant
from builder.spec.stack import catalog_stack_names


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--markdown", is_flag=True, help="The catalog table of the README (no engine needed).")
@click.pass_obj
def list_cmd(ctx: Ctx, as_json, markdown):
    """The catalog's stacks."""
    client = None  # the catalog needs no engine; "built" is then unknown
    if not markdown:
        try:
            client = engine.connect(timeout=5)
        except DlenvError:
            pass
    rows = []
    for name in catalog_stack_names(paths.stacks_dir()):
        p = plan_of(name)
        chain = p.resolved.merged.chain
        rows.append({"stack": name, "extends": chain[-2].name if len(chain) > 1 else "",
                     "versions": p.resolved.versions(), "hash": p.content_hash[:16], "lock": p.lock_state,
                     "python_packages": [t for t, _ in p.resolved.merged.python_packages],
                     "built": None if client is None else promoted_image(client, p) is not None,
                     "description": p.resolved.merged.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if markdown:
        click.echo(catalog_markdown(rows), nl=False)
        return
    table = Table("stack", "extends", "key versions", "lock", "content hash", "built")
    for r in rows:
        keys = [f"{k} {v}" for k, v in r["versions"].items() if k in ("python", "chainer", "cupy", "cuda", "openmpi", "mpi4py")]
        built = {True: "yes", False: "no", None: "?"}[r["built"]]
        table.add_row(*(Text(printable(v)) for v in (r["stack"], r["extends"], ", ".join(keys), r["lock"], r["hash"], built)))
    ctx.console.print(table)


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
