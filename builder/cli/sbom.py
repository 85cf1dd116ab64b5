"""`dlenv sbom` and `dlenv diff`: what a built image holds, and what differs between two images.

Thin like cli.py: find the image (an image reference, or the promoted image of a stack's current
content hash), call builder.outputs.sbom, print the result. Registered in cli.py with `main.add_command(...)`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from builder.engine.images import image_for
from builder.engine import dockerapi as engine
from builder.engine import inventory
from builder.errors import DlenvError
from builder.fileio import write_text_atomic
from builder.names import DLENV_LABELS
from builder.outputs.sbom.cyclonedx import to_cyclonedx
from builder.outputs.sbom.diff import describe
from builder.outputs.sbom.diff import diff
from builder.outputs.sbom.model import ECOSYSTEMS, render_json
from builder.outputs.sbom.model import format_time
from builder.outputs.sbom.spdx import to_spdx
from rich.table import Table
from rich.text import Text
import re
import time


def now_timestamp() -> str:
    """The current time, or SOURCE_DATE_EPOCH when set (reproducible-builds.org)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        if not epoch.isdigit():
            raise DlenvError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
        return format_time(int(epoch))
    return format_time(time.time())


@click.command()
@click.argument("target", metavar="IMAGE|STACK")
@click.option("--format", "fmt", type=click.Choice(["cyclonedx", "spdx"]), default="cyclonedx",
              show_default=True, help="CycloneDX 1.5 JSON or SPDX 2.3 JSON.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the SBOM to this file (default: standard output).")
@click.option("--timestamp", is_flag=True,
              help="Record the current time (SOURCE_DATE_EPOCH when set): CycloneDX metadata.timestamp, "
                   "SPDX creationInfo.created. Without it the SBOM is byte-identical for every build of one lock.")
@click.pass_obj
def sbom(ctx, target, fmt, output, timestamp):
    """SBOM of a built image: Debian packages, Python distributions (venv and /opt/nvidia prefixes)
    and sources compiled in (Open MPI), with package URLs; deterministic."""
    client = engine.connect()
    image = image_for(client, target)
    inv = inventory.collect(client, image)
    stamp = now_timestamp() if timestamp else None
    doc = to_cyclonedx(inv, timestamp=stamp) if fmt == "cyclonedx" else to_spdx(inv, created=stamp)
    text = render_json(doc)
    if not output:
        click.echo(text, nl=False)
        return
    write_text_atomic(Path(output).resolve(), text)
    counts = {eco: sum(1 for p in inv.packages if p.ecosystem == eco) for eco in ECOSYSTEMS}
    label = "CycloneDX 1.5" if fmt == "cyclonedx" else "SPDX 2.3"
    click.echo(f"wrote {output}: {label} SBOM of {inv.name} {inv.content_hash[:16]} "
               f"({counts['deb']} Debian packages, {counts['pypi']} Python distributions, "
               f"{counts['generic']} compiled from source)")


def _short(items: tuple) -> tuple:
    """The venv's site-packages folder reads as `venv` in tables (JSON keeps the full path)."""
    return tuple((v, re.sub(r"^/opt/venv/lib/python[0-9.]+/site-packages$", "venv", w)) for v, w in items)


def _cells(change, ecosystem: str) -> tuple:
    wheres_a = {w for _, w in change.before}
    wheres_b = {w for _, w in change.after}
    several = len(change.before) > 1 or len(change.after) > 1
    if change.before and change.after:
        show = wheres_a != wheres_b or several
    else:
        show = ecosystem != "deb" or several
    return describe(_short(change.before), show), describe(_short(change.after), show)


@click.command("diff")
@click.argument("image_a", metavar="IMAGE_A|STACK")
@click.argument("image_b", metavar="IMAGE_B|STACK")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when the images differ (like `git diff --exit-code`).")
@click.pass_obj
def diff_cmd(ctx, image_a, image_b, as_json, exit_code):
    """Packages added, removed and changed from IMAGE_A to IMAGE_B (Debian, Python, compiled sources),
    and the dlenv labels that differ. Exits 0 unless --exit-code is given and they differ."""
    client = engine.connect()
    ref_a, ref_b = image_for(client, image_a), image_for(client, image_b)
    result = diff(inventory.collect(client, ref_a), inventory.collect(client, ref_b))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_diff(ctx, result, ref_a, ref_b)
    if exit_code and not result.identical:
        sys.exit(1)


def _print_diff(ctx, result, ref_a: str, ref_b: str) -> None:
    console = ctx.console
    console.print(Text(f"A: {ref_a}  ({result.a.name} {result.a.content_hash[:16]})"))
    console.print(Text(f"B: {ref_b}  ({result.b.name} {result.b.content_hash[:16]})"))
    rows = [("added", "green", c) for c in result.added] + [("removed", "red", c) for c in result.removed] \
        + [("changed", "yellow", c) for c in result.changed]
    if rows:
        table = Table("change", "ecosystem")
        table.add_column("package", no_wrap=True)
        table.add_column("A", overflow="fold")
        table.add_column("B", overflow="fold")
        for what, style, change in rows:
            a, b = _cells(change, change.ecosystem)
            table.add_row(Text(what, style=style), change.ecosystem, Text(change.name), Text(a), Text(b))
        console.print(table)
    if result.labels:
        table = Table()
        table.add_column(f"label ({DLENV_LABELS}*)", no_wrap=True)
        table.add_column("A", overflow="fold")
        table.add_column("B", overflow="fold")
        for lc in result.labels:
            table.add_row(Text(lc.label[len(DLENV_LABELS):]), Text(lc.a if lc.a is not None else "-"),
                          Text(lc.b if lc.b is not None else "-"))
        console.print(table)
    console.print(Text(result.summary()))
