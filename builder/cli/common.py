"""What the command modules share: the context object (consoles, --quiet), printing of check results and
reports, the settings the pipeline takes (CA bundle, mirror), the driver check and the image a
`shell`/`run` starts from (built when asked). Only the CLI reads settings, prints or exits.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from builder.engine.buildlog import slowest, step_row
from builder.engine.images import promoted_image
from builder.errors import BuildError, EngineError, VerifyError, one_line, printable
from builder.pipeline import build as build_mod
from builder.pipeline.packages import package_sources
from builder.plan.plan import Plan, plan
from builder.run.driver import check_host_driver
from builder.settings.host import CABundle, find_ca_bundle
from builder.settings.settings import load_settings


ENGINES = click.Choice(["sdk", "buildkit", "buildah"])


class Ctx:
    def __init__(self, debug: bool, quiet: bool):
        self.debug = debug
        self.quiet = quiet
        self._console = None
        self._err = None

    @property
    def console(self):
        if self._console is None:
            self._console = Console(highlight=False, soft_wrap=True)
        return self._console

    @property
    def err(self):
        if self._err is None:
            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(escaped_lines(msg), markup=False)


def escaped_lines(text: str) -> str:
    """Text for the terminal: its lines kept, every control character in them escaped."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def fail(ctx: Ctx, exc) -> None:
    ctx.err.print(Text("dlenv: error: ", style="bold red") + Text(exc.one_line(), style="red"))
    if isinstance(exc, BuildError):
        if exc.log_tail:
            ctx.err.print(Text(f"last {len(exc.log_tail)} log lines:", style="dim"))
            for line in exc.log_tail:
                ctx.err.print(Text("  " + printable(line), style="dim"))
        if exc.log_path:
            ctx.err.print(Text(f"full build log: {printable(exc.log_path)}", style="dim"))
    if isinstance(exc, VerifyError) and exc.report is not None:
        for r in exc.report.results:
            if r.status == "failed":
                ctx.err.print(Text(one_line(f"  FAILED {r.name}: {r.reason}"), style="red"))
                if r.command:
                    ctx.err.print(Text(f"    $ {one_line(r.command)}", style="dim"))
                for line in r.output.splitlines()[-15:]:
                    ctx.err.print(Text(f"    {printable(line)}", style="dim"))


def plan_of(ref: str) -> Plan:
    return plan(ref)


def bundle_and_mirror(ca_bundle_option: str | None) -> tuple[CABundle, str | None]:
    """The build's CA bundle (flag, setting, environment) and Debian mirror, from the settings: only the
    CLI reads settings; the pipeline takes these values."""
    settings = load_settings({"ca_bundle": ca_bundle_option})
    bundle = find_ca_bundle(settings.get("ca_bundle"), source=settings.source("ca_bundle"))
    return bundle, settings.get("debian_mirror")


def package_sources_of(p: Plan, mirror: str | None, vendor=(), bundle: CABundle | None = None):
    """Where a build's files may come from after the store: --vendor bundles, the debian_snapshot
    setting, the mirror (setting or the host's apt sources), pip's indexes (with the CA bundle)."""
    snapshots = tuple((load_settings({}).get("debian_snapshot") or "").split())
    return package_sources(p, mirror=mirror, snapshots=snapshots, bundles=tuple(vendor),
                           cafile=str(bundle.path) if bundle is not None and bundle.path else None)


def print_refresh(ctx: Ctx, prov) -> None:
    """The pins a build refreshed because no source had their files: a table and one summary line."""
    rows = prov.moved
    if rows:
        width = max(len(r["package"]) for r in rows)
        click.echo(f"{'package'.ljust(width)}  stage    locked -> used  (pocket)", err=True)
        for r in rows:
            click.echo(f"{r['package'].ljust(width)}  {r['stage']:<7}  {r['locked']} -> {r['used']}"
                       f"{'  (' + r['pocket'] + ')' if r.get('pocket') else ''}", err=True)
    click.echo(f"refreshed the lock: {len(rows)} Debian pin(s) moved because no source had their files any more; "
               f"recorded in {prov.refreshed_to}", err=True)


def print_check(ctx: Ctx, r) -> None:
    if ctx.quiet:
        return
    mark = {"passed": "[green]ok[/green]  ", "failed": "[red]FAIL[/red]", "skipped": "[yellow]skip[/yellow]"}[r.status]
    ctx.err.print(f"  {mark} {r.name} [dim]({r.seconds:.1f}s)[/dim]")


def print_report(ctx: Ctx, report) -> None:
    if ctx.quiet:
        return
    table = Table("check", "result", "time", "note")
    style = {"passed": "green", "failed": "red", "skipped": "yellow"}
    for r in report.results:
        table.add_row(r.name, f"[{style[r.status]}]{r.status}[/]", f"{r.seconds:.1f}s", r.reason)
    ctx.console.print(table)


def check_driver(gpu, components: dict, image: str, skip: bool) -> None:
    """On the GPU path only: the host's NVIDIA driver against the image's CUDA, before any
    container starts (an error for a driver too old to run it, a warning for partial support)."""
    if skip or not gpu:
        return
    check_host_driver(gpu, components, image, on_warning=warn_once)


def image_for_use(ctx: Ctx, client, stack: str, build: bool, gpu=None, skip_driver_check=False) -> str:
    """The stack's promoted image for this content hash; offer (or, with --build, run) the build.
    On a GPU host the driver is checked first, so a driver too old for the stack stops before a build."""
    p = plan_of(stack)
    check_driver(gpu, p.resolved.versions(), p.hash_tag, skip_driver_check)
    if promoted_image(client, p) is not None:
        return p.hash_tag
    if not build:
        if sys.stdin.isatty() and sys.stderr.isatty():
            build = click.confirm(f"{p.hash_tag} does not exist yet. Build it now?", default=True, err=True)
        if not build:
            raise EngineError(f"{p.hash_tag} does not exist yet",
                              hint=f"run `dlenv build {stack}` or pass --build")
    bundle, mirror = bundle_and_mirror(None)
    build_mod.build(p, client, ca_bundle=bundle, mirror=mirror, log=ctx.info, on_check=lambda r: print_check(ctx, r))
    return p.hash_tag


_WARNED: set = set()


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        click.echo(f"dlenv: warning: {one_line(message)}", err=True)


def step_printer(ctx: Ctx):
    """Progress callback: one line per build step (BuildKit numbers steps per stage: a step is its triple)."""
    last = {"step": None}

    def on_progress(progress, line):
        key = (progress.step, progress.total, progress.instruction)
        if ctx.quiet or not progress.step or key == last["step"]:
            return
        last["step"] = key
        ctx.err.print(f"[cyan]step {progress.step}/{progress.total}[/cyan] {escape(progress.instruction[:110])}",
                      markup=True, highlight=False)
    return on_progress


def print_slowest(ctx: Ctx, steps: list) -> None:
    """After a build that ran steps: the few that took longest (the full table is in the build log)."""
    top = slowest(steps)
    if ctx.quiet or not top:
        return
    ctx.err.print(Text("slowest steps:", style="cyan"))
    for timed in top:
        ctx.err.print(Text("  " + printable(step_row(timed, width=60)), style="dim"))
