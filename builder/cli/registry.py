"""`dlenv push` and `dlenv pull`: prebuilt images in a registry, named by the stack's content hash.

Thin like cli.py: resolve the registry, plan the stack, call builder.engine.registry, show progress on
stderr (a bar per layer on a terminal, one line per layer state otherwise, nothing with --quiet)
and one result line on stdout. Registered in cli.py with `main.add_command(...)`.
"""

from __future__ import annotations

import click
from builder.engine import dockerapi as engine
from builder.engine import registry as registry_mod
from builder.errors import DlenvError
from builder.plan.plan import plan
from builder.settings.settings import load_settings
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
import re

REGISTRY_HELP = "Registry HOST[:PORT][/PREFIX] (default: DLENV_REGISTRY or the `registry` setting)."


def resolve_registry(option: str | None) -> str:
    """--registry, else DLENV_REGISTRY, else the `registry` setting (validated either way)."""
    value = load_settings({"registry": option}).get("registry")
    if not value:
        raise DlenvError("no registry given",
                         hint="pass --registry HOST:PORT, set DLENV_REGISTRY, or put `registry: HOST:PORT` "
                              "in ~/.config/dlenv/config.yaml or .dlenv.yaml")
    return value.rstrip("/")


def _size(n: int | None) -> str:
    if not n:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _countdown(previous: str | None, status: str) -> bool:
    """True for the daemon's once-a-second "Retrying in N seconds" countdown after its first line."""
    a = re.match(r"Retrying in (\d+) second", previous or "")
    b = re.match(r"Retrying in (\d+) second", status)
    return bool(a and b and int(b[1]) < int(a[1]))


class LayerProgress:
    """Per-layer progress of a push or pull on ctx.err. Use as a context manager; `update` is the
    callback handed to builder.engine.registry."""

    # Byte counters for these statuses go to the bars; only their first report prints a line.
    TRANSFER = ("Pushing", "Downloading", "Extracting")
    DONE = ("Pushed", "Layer already exists", "Pull complete", "Already exists", "Mounted from")
    # Bookkeeping states that only add noise to the line-per-state output.
    SILENT = ("Preparing", "Waiting", "Pulling fs layer", "Verifying Checksum", "Download complete")

    def __init__(self, ctx, verb: str):
        self.ctx = ctx
        self.verb = verb
        self.last: dict = {}
        self.tasks: dict = {}
        self.totals: dict = {}
        self.progress = None

    def __enter__(self):
        if not self.ctx.quiet and self.ctx.err.is_terminal:
            self.progress = Progress(TextColumn("{task.fields[layer]}"), TextColumn("{task.description:<22}"),
                                     BarColumn(), DownloadColumn(), console=self.ctx.err, transient=False)
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False

    def update(self, event) -> None:
        if self.ctx.quiet:
            return
        if self.progress is not None:
            self._bar(event)
            return
        previous = self.last.get(event.layer)
        self.last[event.layer] = event.status
        if previous == event.status or event.status in self.SILENT or _countdown(previous, event.status):
            return
        size = f" ({_size(event.total)})" if event.total and event.status in self.TRANSFER else ""
        self.ctx.err.print(f"{self.verb} layer {event.layer}: {event.status}{size}", markup=False, highlight=False)

    def _bar(self, event) -> None:
        task = self.tasks.get(event.layer)
        if task is None:
            task = self.tasks[event.layer] = self.progress.add_task(event.status, layer=event.layer, total=None)
        fields = {"description": event.status}
        if event.status in self.TRANSFER and event.total:
            self.totals[event.layer] = event.total
            fields.update(total=event.total, completed=min(event.current or 0, event.total))
        elif event.status.startswith(self.DONE) or event.status in ("Download complete", "Verifying Checksum"):
            total = self.totals.get(event.layer) or 1
            fields.update(total=total, completed=total)
        self.progress.update(task, **fields)


@click.command()
@click.argument("stack")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]", help=REGISTRY_HELP)
@click.pass_obj
def push(ctx, stack, registry):
    """Push the verified image of STACK to a registry, named by its content hash."""
    where = resolve_registry(registry)
    p = plan(stack)
    client = engine.connect()
    with LayerProgress(ctx, "push") as progress:
        result = registry_mod.push(client, p, where, on_progress=progress.update)
    sent = result.count("Pushed")
    there = result.count("Layer already exists") + sum(1 for s in result.layers.values() if s.startswith("Mounted"))
    click.echo(f"pushed {p.hash_tag} to {result.remote} ({sent} layers sent, {there} already there; "
               f"digest {result.digest}, {result.seconds:.1f}s)")


@click.command()
@click.argument("stack")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]", help=REGISTRY_HELP)
@click.pass_obj
def pull(ctx, stack, registry):
    """Pull the image of STACK's content hash from a registry and tag it as built here."""
    where = resolve_registry(registry)
    p = plan(stack)
    client = engine.connect()
    with LayerProgress(ctx, "pull") as progress:
        result = registry_mod.pull(client, p, where, on_progress=progress.update)
    if result.fresh:
        click.echo(f"pulled {p.hash_tag} from {result.remote} (image id {result.image_id}; "
                   f"also tagged {p.latest_tag}; {result.seconds:.1f}s)")
    else:
        click.echo(f"{p.hash_tag} is already the image {result.remote} holds (image id {result.image_id}); "
                   f"tagged {p.latest_tag}")
