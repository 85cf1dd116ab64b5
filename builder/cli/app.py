"""The command line's entry point: the `dlenv` group, its global options and the one place where a
`DlenvError` becomes one red line and exit status 1 (tracebacks only with --debug; Ctrl-C exits
130). SIGTERM and SIGHUP (what `timeout`, CI runners, systemd and Slurm's `scancel` send) are turned
into the same interrupt, so every command cleans up exactly as on Ctrl-C, and exit 143 and 129.
Each command lives in the module of its group; this module only registers them.
"""

from __future__ import annotations

import sys

import click
import docker.errors
import requests.exceptions

from builder import __version__
from builder.cli.build import base, build, lock
from builder.cli.catalog import list_cmd, render, show
from builder.cli.common import Ctx, fail
from builder.cli.signals import catch_termination, exit_code, stopped_by
from builder.cli.doctor import config_cmd, doctor
from builder.cli.export import export, load, save
from builder.cli.project import gc, init_cmd
from builder.cli.registry import pull, push
from builder.cli.sbom import diff_cmd, sbom
from builder.cli.slurm import slurm
from builder.cli.use import run, shell
from builder.cli.vendor import vendor
from builder.cli.verify import verify
from builder.errors import DlenvError


class DlenvGroup(click.Group):
    def invoke(self, click_ctx):
        catch_termination()
        try:
            return super().invoke(click_ctx)
        except DlenvError as exc:
            obj = click_ctx.obj or Ctx(False, False)
            if obj.debug:
                raise
            fail(obj, exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            obj = click_ctx.obj or Ctx(False, False)
            obj.err.print(f"[red]dlenv: {stopped_by(exc)}; no tag was moved[/red]")
            sys.exit(exit_code(exc))
        except Exception as exc:  # noqa: BLE001 - the engine's own errors, unexpected: still one line
            obj = click_ctx.obj or Ctx(False, False)
            if obj.debug or not isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException)):
                raise
            explanation = getattr(exc, "explanation", None) or str(exc)
            fail(obj, DlenvError(f"the Docker engine reported: {' '.join(str(explanation).split())[:300]}",
                                  hint="run it again; --debug shows where it happened"))
            sys.exit(1)


@click.group(cls=DlenvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlenv")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors.")
@click.pass_context
def main(click_ctx, debug, quiet):
    """dlenv: reproducible, verified deep-learning environments from short YAML stacks."""
    click_ctx.obj = Ctx(debug, quiet)


COMMANDS = {"list": list_cmd, "show": show, "render": render, "base": base, "build": build, "lock": lock,
            "verify": verify, "shell": shell, "run": run, "gc": gc, "init": init_cmd, "doctor": doctor,
            "config": config_cmd, "push": push, "pull": pull, "export": export, "save": save, "load": load,
            "sbom": sbom, "diff": diff_cmd, "slurm": slurm, "vendor": vendor}
for _name, _command in COMMANDS.items():
    main.add_command(_command, _name)


if __name__ == "__main__":
    main()
