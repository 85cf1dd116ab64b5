"""`dlenv vendor`: every file a stack's lock pins, in one folder a build can take instead of the network."""

from __future__ import annotations

import json

import click

from builder.cli.common import Ctx, bundle_and_mirror, package_sources_of, plan_of
from builder.errors import printable
from builder.pipeline.vendor import vendor as vendor_bundle


@click.command()
@click.argument("stack", required=False, default=".")
@click.option("-o", "--output", "output", required=True, type=click.Path(), metavar="DIR",
              help="The bundle's folder: new, empty, or a bundle written before (replaced whole).")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="Extra CA bundle for https sources (a proxy's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@click.pass_obj
def vendor(ctx: Ctx, stack, output, ca_bundle, as_json):
    """Write every file STACK's lock pins (its parents' too) into the folder DIR.

    `dlenv build STACK --vendor DIR` then builds with no other source: no Debian mirror, no Python
    index. DIR/debian is also a flat apt repository (`deb [trusted=yes] file:DIR/debian ./`)."""
    p = plan_of(stack)
    bundle, mirror = bundle_and_mirror(ca_bundle)
    result = vendor_bundle(p, output, package_sources_of(p, mirror, (), bundle), ref=stack, log=ctx.info)
    for report in result.reports:
        if report.fetched:
            ctx.info(f"files: {report.summary()}")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    c = result.counts
    click.echo(f"vendored {result.stack}: {c['deb']} .deb, {c['source']} source tarball(s), {c['python']} Python "
               f"file(s), {result.total_bytes / 1e6:.1f} MB in {printable(result.path)}")
