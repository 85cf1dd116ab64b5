"""`dlenv doctor` and `dlenv config`: commands registered on `builder.cli.app`.

Thin like the rest of the CLI: each calls `builder.doctor` / `builder.settings.settings` and renders the result.
"""

from __future__ import annotations

import json
import sys

import click
from builder import doctor as host_checks
from builder.settings.settings import KEYS
from builder.settings.settings import load_settings
from builder.settings.settings import project_config_path, user_config_path
from rich.table import Table
from rich.text import Text

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
STORE = "package store"


def _settings(ctx):
    """The settings the main group loaded (if it ever does, with its flags), else load them here."""
    return getattr(ctx, "settings", None) or load_settings()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def doctor(ctx, as_json):
    """Check that this machine can build: engine, disk, GPU runtime, base image, mirror, CA bundle, registry.

    Exits 1 when a check fails; warnings do not fail.
    """

    checks = host_checks.run_checks(getattr(ctx, "settings", None))
    counts = host_checks.summary(checks)
    store = host_checks.package_store()
    if as_json:
        click.echo(json.dumps({"checks": [c.to_json() for c in checks], "summary": counts,
                               "passed": counts["fail"] == 0, "package_store": store}, indent=2))
    else:
        width = max([len(c.name) for c in checks] + [len(STORE)])
        for c in checks:
            if ctx.quiet and c.status in ("ok", "skip"):
                continue
            line = Text(f"{c.status:<5} ", style=STYLE[c.status]) + Text(f"{c.name:<{width}}  {c.detail}")
            ctx.console.print(line)
            if c.fix and c.status in ("warn", "fail"):
                ctx.console.print(Text(f"{'':<5} {'':<{width}}  fix: {c.fix}", style="dim" if c.status == "warn" else ""))
        if not ctx.quiet:   # what is there, not a check: no status of its own, not counted
            ctx.console.print(Text(f"{'info':<5} ", style="dim") +
                              Text(f"{STORE:<{width}}  {host_checks.package_store_line(store)}"))
        if not ctx.quiet or counts["fail"]:
            ctx.console.print(Text(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no checks",
                                   style="bold red" if counts["fail"] else "green" if not counts["warn"] else "yellow"))
    if counts["fail"]:
        sys.exit(1)


@click.group("config", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def config_cmd(click_ctx, as_json):
    """Show every effective setting, its value and where it came from.

    Precedence: default < user file < project file (.dlenv.yaml) < environment < command-line flag.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.obj
    settings = _settings(ctx)
    rows = [{"key": key, "value": settings.get(key), "source": settings.source(key), "env": var, "help": help_}
            for key, (var, _, _, help_) in KEYS.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("setting", "value", "source", "environment")
    for r in rows:
        value = Text("(unset)", style="dim") if r["value"] is None else Text(str(r["value"]))
        table.add_row(Text(r["key"]), value, Text(r["source"]), Text(r["env"]))
    ctx.console.print(table)


@config_cmd.command("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def config_path(ctx, as_json):
    """Where the user and project config files are (they need not exist)."""
    paths = {"user": user_config_path(), "project": project_config_path()}
    if as_json:
        click.echo(json.dumps({k: {"path": str(p), "exists": p.is_file()} for k, p in paths.items()}, indent=2))
        return
    for kind, path in paths.items():
        click.echo(f"{kind:<8} {path}" + ("" if path.is_file() else "  (not created)"))
