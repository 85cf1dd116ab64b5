"""`dlenv export apptainer|charliecloud|slurm|mpijob|devcontainer`, `dlenv save` and `dlenv load`.

Thin like cli.py: parse options, plan the stack, call builder.outputs.exports, and write the result:
text exports go to stdout unless `-o FILE` names a file; the devcontainer goes to
`.devcontainer/devcontainer.json` under the current folder (or `-o DIR|FILE`). An existing file
with other contents is replaced only with `--force`. Registered in cli.py with
`main.add_command(...)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from builder import paths
from builder.engine import dockerapi as engine
from builder.engine.archive import load_image
from builder.engine.archive import save_image
from builder.engine.charliecloud import FORMATS as CHARLIECLOUD_FORMATS
from builder.engine.charliecloud import export_charliecloud
from builder.errors import DlenvError, ExportError
from builder.fileio import write_text_atomic
from builder.outputs.exports.apptainer import apptainer_def
from builder.outputs.exports.common import artifact_name
from builder.outputs.exports.devcontainer import devcontainer as make_devcontainer
from builder.outputs.exports.mpijob import mpijob as make_mpijob
from builder.outputs.exports.slurm import DEFAULT_TIME_LIMIT, SLURM_RUNTIMES, slurm_script
from builder.plan.plan import plan
from builder.settings.settings import load_settings
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

REGISTRY_HELP = "Registry HOST[:PORT][/PREFIX] (default: DLENV_REGISTRY or the `registry` setting)."


def _plan(stack: str):
    return plan(stack)


def _registry(option: str | None, *, use_setting: bool = True) -> str | None:
    """--registry, else (when use_setting) DLENV_REGISTRY or the `registry` setting, else None."""
    if option is None and not use_setting:
        return None
    value = load_settings({"registry": option}).get("registry")
    return value.rstrip("/") if value else None


def _shm_size() -> str:
    return load_settings().get("shm_size") or "8g"


def write_output(ctx, text: str, output: str | None, force: bool) -> None:
    """stdout when OUTPUT is None or '-'; else the file, atomically, never replacing a different
    existing file without --force."""
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    target = Path(output)
    if target.is_dir():
        raise ExportError(f"{target} is a directory", hint="give a file name")
    if target.exists():
        if target.read_bytes() == text.encode():
            ctx.info(f"{target} is up to date")
            return
        if not force:
            raise ExportError(f"{target} exists and differs from this export", hint="pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    ctx.info(f"wrote {target}")


_output_options = [
    click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of stdout ('-': stdout)."),
    click.option("--force", is_flag=True, help="Replace an existing output file that differs."),
]


def output_options(func):
    for option in reversed(_output_options):
        func = option(func)
    return func


@click.group()
def export():
    """Use STACK's image elsewhere: Apptainer, Charliecloud, Slurm, Kubernetes (MPIJob), a dev container.

    Every export names the image by its content hash, so it runs exactly the environment `dlenv
    build` verified; export again when the stack changes.
    """


@export.command()
@click.argument("stack")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]",
              help="Bootstrap from this registry (`Bootstrap: docker`); default: the registry setting, "
                   "else the local engine (`Bootstrap: docker-daemon`).")
@click.option("--local", is_flag=True, help="Bootstrap from the local engine even when a registry is configured.")
@output_options
@click.pass_obj
def apptainer(ctx, stack, registry, local, output, force):
    """An Apptainer definition file for STACK's image."""
    if local and registry:
        raise ExportError("--local and --registry exclude each other")
    p = _plan(stack)
    write_output(ctx, apptainer_def(p, None if local else _registry(registry)), output, force)


@export.command()
@click.argument("stack")
@click.option("-N", "--nodes", type=int, required=True, help="Nodes to allocate.")
@click.option("--gpus-per-node", type=int, required=True, help="GPUs per node (0: none).")
@click.option("--ntasks-per-node", type=int, help="Ranks per node (default: one per GPU, or 1).")
@click.option("-t", "--time", "time_limit", metavar="[D-]HH:MM:SS",
              help=f"Time limit of the job: every srun's deadline (default {DEFAULT_TIME_LIMIT}).")
@click.option("-p", "--partition", help="Slurm partition.")
@click.option("-J", "--job-name", help="Job name (default dlenv-STACK).")
@click.option("--runtime", type=click.Choice(list(SLURM_RUNTIMES)), default="apptainer", show_default=True,
              help="Container runtime on the nodes (charliecloud and podman ran for real under a host Slurm; "
                   "apptainer and pyxis are written from their documentation).")
@click.option("--mpi", type=click.Choice(["pmix", "pmi2"]), default="pmix", show_default=True,
              help="srun's --mpi plugin.")
@click.option("--mpi-mode", type=click.Choice(["direct", "hybrid"]), default="direct", show_default=True,
              help="direct: srun starts the ranks; hybrid: the host's Open MPI 4.1 mpirun does (Apptainer only).")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]", help=REGISTRY_HELP)
@click.option("--local", is_flag=True, help="Ignore the registry setting (image file made from the local engine).")
@click.option("--image-file", metavar="PATH",
              help="The image to run: SIF (Apptainer), squashfs (pyxis), directory or SquashFS file (Charliecloud), "
                   "`docker save` archive (podman).")
@output_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def slurm(ctx, stack, nodes, gpus_per_node, ntasks_per_node, time_limit, partition, job_name, runtime, mpi,
          mpi_mode, registry, local, image_file, output, force, command):
    """An sbatch script running `-- COMMAND...` in STACK's image on Slurm, one rank per task."""
    if local and registry:
        raise ExportError("--local and --registry exclude each other")
    p = _plan(stack)
    text = slurm_script(p, list(command), nodes=nodes, gpus_per_node=gpus_per_node,
                        ntasks_per_node=ntasks_per_node, time_limit=time_limit, partition=partition,
                        runtime=runtime, mpi=mpi, mpi_mode=mpi_mode,
                        registry=None if local else _registry(registry), image_file=image_file, job_name=job_name)
    write_output(ctx, text, output, force)


@export.command()
@click.argument("stack")
@click.option("-o", "--output", metavar="PATH", help="The image directory, or the SquashFS file with --format squashfs "
                                                      "(default: ./dlenv-STACK-HASH16, or that name + .sqfs).")
@click.option("--format", "fmt", type=click.Choice(list(CHARLIECLOUD_FORMATS)), default="dir", show_default=True,
              help="dir: a directory ch-run runs as it is; squashfs: one file, mounted by ch-run with squashfuse.")
@click.option("--force", is_flag=True, help="Replace an existing image at PATH.")
@click.option("--skip-disk-check", is_flag=True,
              help="Convert even when PATH's filesystem has less free space than the conversion needs (2 x the image).")
@click.pass_obj
def charliecloud(ctx, stack, output, fmt, force, skip_disk_check):
    """STACK's verified image as a Charliecloud image (converted by Charliecloud's ch-convert).

    It carries the image's environment in /ch/environment (`ch-run --set-env`) and, in /ch/dlenv.json, the
    stack, content hash and lock it was built from: `dlenv verify PATH` reads them.
    """
    p = _plan(stack)
    target = output or artifact_name(p, ".sqfs" if fmt == "squashfs" else "")
    client = engine.connect()
    ctx.info(f"converting {p.hash_tag} with ch-convert ({fmt}); a chainermn-sized image takes minutes")
    result = export_charliecloud(client, p, target, fmt, force=force, disk_check=not skip_disk_check,
                                 log_path=paths.state_dir() / "logs" / f"{p.resolved.name}-charliecloud.log")
    click.echo(f"wrote {result.path} ({fmt}, {_size(result.bytes)}, from {result.image}) in {result.seconds:.1f}s; "
               f"run it with `ch-run --set-env {result.path} -- COMMAND`")


@export.command()
@click.argument("stack")
@click.option("--workers", type=int, required=True, help="Worker pods.")
@click.option("--gpus-per-worker", type=int, required=True, help="GPUs per worker (nvidia.com/gpu; 0: none).")
@click.option("--slots-per-worker", type=int, help="Ranks per worker (default: one per GPU, or 1).")
@click.option("--name", help="MPIJob name (default dlenv-STACK).")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]", help=REGISTRY_HELP + " Required.")
@output_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def mpijob(ctx, stack, workers, gpus_per_worker, slots_per_worker, name, registry, output, force, command):
    """A Kubeflow MPIJob running `-- COMMAND...` under mpirun on STACK's image from a registry."""
    p = _plan(stack)
    text = make_mpijob(p, list(command), registry=_registry(registry), workers=workers,
                       gpus_per_worker=gpus_per_worker, slots_per_worker=slots_per_worker, name=name,
                       shm_size=_shm_size())
    write_output(ctx, text, output, force)


@export.command()
@click.argument("stack")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]",
              help="Pin the registry's image instead of the local one (the registry setting is not used here).")
@click.option("-o", "--output", metavar="DIR|FILE",
              help="A project folder (writes DIR/.devcontainer/devcontainer.json), a .json file, or '-' for stdout "
                   "(default: .devcontainer/devcontainer.json here).")
@click.option("--force", is_flag=True, help="Replace an existing devcontainer.json that differs.")
@click.pass_obj
def devcontainer(ctx, stack, registry, output, force):
    """A dev container definition (VS Code, devcontainer CLI) pinned to STACK's image."""
    p = _plan(stack)
    text = make_devcontainer(p, registry=_registry(registry, use_setting=False), shm_size=_shm_size())
    if output == "-":
        target = "-"
    elif output is None:
        target = str(Path(".devcontainer") / "devcontainer.json")
    elif output.endswith(".json"):
        target = output
    else:
        target = str(Path(output) / ".devcontainer" / "devcontainer.json")
    write_output(ctx, text, target, force)


class _Bytes:
    """Progress on stderr for save/load: a bar with the byte count on a terminal, nothing otherwise."""

    def __init__(self, ctx, verb: str, total: int | None = None):
        self.ctx, self.verb, self.total = ctx, verb, total
        self.progress = None
        self.task = None

    def __enter__(self):
        if not self.ctx.quiet and self.ctx.err.is_terminal:
            self.progress = Progress(TextColumn(self.verb), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                     console=self.ctx.err, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.verb, total=self.total)
        return self

    def update(self, done: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


@click.command()
@click.argument("stack")
@click.option("-o", "--output", metavar="FILE", required=True,
              help="The archive to write (gzip-compressed when it ends in .gz).")
@click.option("--force", is_flag=True, help="Replace an existing FILE.")
@click.pass_obj
def save(ctx, stack, output, force):
    """Write STACK's verified image and its manifest to one archive, for a machine without a registry."""
    p = _plan(stack)
    client = engine.connect()
    with _Bytes(ctx, "save") as progress:
        result = save_image(client, p, output, force=force, on_progress=progress.update)
    click.echo(f"saved {result.image} (image id {result.image_id[:19]}) to {result.path} "
               f"({_size(result.bytes_written)}, {result.seconds:.1f}s)")


def _recorded_images(stack: str, content_hash: str) -> dict:
    """The images section of the lock of `stack` (a catalog stack, or the project here) when it is the
    lock of that content hash; {} when no such lock is found."""
    for ref in (stack, *(["dlenv.yaml"] if Path("dlenv.yaml").is_file() else [])):
        try:
            p = plan(ref)
        except DlenvError:
            continue
        if p.content_hash == content_hash and p.lock is not None:
            return p.lock.images
    return {}


@click.command()
@click.argument("archive", metavar="FILE", type=click.Path(dir_okay=False))
@click.pass_obj
def load(ctx, archive):
    """Load an archive written by `dlenv save`; tag it only if it holds what its manifest says."""
    client = engine.connect()
    total = os.path.getsize(archive) if os.path.isfile(archive) else None
    with _Bytes(ctx, "load", total) as progress:
        result = load_image(client, archive, on_progress=progress.update, recorded=_recorded_images)
    again = "" if result.fresh else " (the engine already had it)"
    click.echo(f"loaded {result.tags[0]} and {result.tags[1]} (image id {result.image_id[:19]}){again} "
               f"in {result.seconds:.1f}s")
