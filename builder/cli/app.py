"""The command line. Thin: parse options, call one library function, show its result.

Only this module prints or exits. Every `DlenvError` becomes one red line on stderr and
exit status 1 (tracebacks only with --debug); Ctrl-C exits 130.
"""

from __future__ import annotations

import json
import sys
import time

import click

from builder import __version__
from builder.engine.images import promoted_image, verify_target
from builder.plan.plan import stale_error


class Ctx:
    def __init__(self, debug: bool, quiet: bool):
        self.debug = debug
        self.quiet = quiet
        self._console = None
        self._err = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console
            self._console = Console(highlight=False, soft_wrap=True)
        return self._console

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console
            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(msg, markup=False)


def _fail(ctx: Ctx, exc) -> None:
    from rich.text import Text
    ctx.err.print(Text("dlenv: error: ", style="bold red") + Text(exc.one_line(), style="red"))
    from builder.errors import BuildError, VerifyError
    if isinstance(exc, BuildError):
        if exc.log_tail:
            ctx.err.print(Text(f"last {len(exc.log_tail)} log lines:", style="dim"))
            for line in exc.log_tail:
                ctx.err.print(Text("  " + line, style="dim"))
        if exc.log_path:
            ctx.err.print(Text(f"full build log: {exc.log_path}", style="dim"))
    if isinstance(exc, VerifyError) and exc.report is not None:
        for r in exc.report.results:
            if r.status == "failed":
                ctx.err.print(Text(f"  FAILED {r.name}: {r.reason}", style="red"))
                if r.command:
                    ctx.err.print(Text(f"    $ {r.command}", style="dim"))
                for line in r.output.splitlines()[-15:]:
                    ctx.err.print(Text(f"    {line}", style="dim"))


class DlenvGroup(click.Group):
    def invoke(self, click_ctx):
        from builder.errors import DlenvError
        try:
            return super().invoke(click_ctx)
        except DlenvError as exc:
            obj = click_ctx.obj or Ctx(False, False)
            if obj.debug:
                raise
            _fail(obj, exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            obj = click_ctx.obj or Ctx(False, False)
            obj.err.print("[red]dlenv: interrupted; no tag was moved[/red]")
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the engine's own errors, unexpected: still one line
            import docker.errors
            import requests.exceptions
            obj = click_ctx.obj or Ctx(False, False)
            if obj.debug or not isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException)):
                raise
            explanation = getattr(exc, "explanation", None) or str(exc)
            _fail(obj, DlenvError(f"the Docker engine reported: {' '.join(str(explanation).split())[:300]}",
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


def _plan(ref: str):
    from builder.plan.plan import plan
    return plan(ref)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--markdown", is_flag=True, help="The catalog table of the README (no engine needed).")
@click.pass_obj
def list_cmd(ctx: Ctx, as_json, markdown):
    """The catalog's stacks."""
    from builder import paths
    from builder.engine import dockerapi as engine
    from builder.engine.images import promoted_image
    from builder.errors import DlenvError
    from builder.spec.stack import catalog_stack_names
    client = None  # the catalog needs no engine; "built" is then unknown
    if not markdown:
        try:
            client = engine.connect(timeout=5)
        except DlenvError:
            pass
    rows = []
    for name in catalog_stack_names(paths.stacks_dir()):
        p = _plan(name)
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
    from rich.table import Table
    table = Table("stack", "extends", "key versions", "lock", "content hash", "built")
    for r in rows:
        keys = [f"{k} {v}" for k, v in r["versions"].items() if k in ("python", "chainer", "cupy", "cuda", "openmpi", "mpi4py")]
        built = {True: "yes", False: "no", None: "?"}[r["built"]]
        table.add_row(r["stack"], r["extends"], ", ".join(keys), r["lock"], r["hash"], built)
    ctx.console.print(table)


MARKDOWN_SKIP = ("cuda-headers", "setuptools", "openssh")   # build helpers, not what a reader looks for


def catalog_markdown(rows: list) -> str:
    """The README's catalog table: one row per stack, every component version it resolves to."""
    lines = ["| stack | extends | what it is | versions (resolved and locked) |", "|---|---|---|---|"]
    for r in rows:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if k not in MARKDOWN_SKIP)
        if r["python_packages"]:
            versions += "; " + ", ".join(r["python_packages"])
        extends = f"`{r['extends']}`" if r["extends"] else ""
        lines.append(f"| `{r['stack']}` | {extends} | {r['description']} | {versions} |")
    return "\n".join(lines) + "\n"


@main.command()
@click.argument("stack", required=False, default=".")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(ctx: Ctx, stack, as_json):
    """Resolved components of STACK, why each is there, and its content hash."""
    p = _plan(stack)
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
    from rich.table import Table
    ctx.console.print(f"[bold]{data['stack']}[/bold]  {data['image']}")
    ctx.console.print(f"content hash {data['content_hash']}")
    lk = data["lock"]
    if lk["state"] == "locked":
        ctx.console.print(f"lock {lk['file']}: {lk['debian']} Debian packages, {lk['python']} Python packages, "
                          f"{lk['sources']} source package(s)")
    elif lk["state"] == "stale":
        ctx.console.print(f"[yellow]lock {lk['file']} is stale ({lk['stale_because']}): `dlenv lock` or "
                          "`dlenv build --relock`[/yellow]")
    else:
        ctx.console.print(f"[yellow]no lock ({lk['file']}): `dlenv build` writes one, or run `dlenv lock`[/yellow]")
    table = Table("component", "version", "layer group", "why")
    for c in data["components"]:
        table.add_row(c["name"], c["version"], c["group"], c["reason"])
    ctx.console.print(table)


ENGINES = click.Choice(["sdk", "buildkit"])


@main.command()
@click.argument("stack", required=False, default=".")
@click.option("--engine", "engine_name", type=ENGINES, default="sdk", show_default=True,
              help="buildkit: the variant with cache and secret mounts (same content hash).")
@click.pass_obj
def render(ctx: Ctx, stack, engine_name):
    """Print the Dockerfile of STACK (deterministic; nothing is written)."""
    p = _plan(stack)
    if engine_name == "buildkit":
        from builder.engine.buildkit import variant
        click.echo(variant(p.context.dockerfile, base=p.resolved.base), nl=False)
        return
    click.echo(p.context.dockerfile, nl=False)


@main.command()
@click.option("--suite", default="bookworm", show_default=True)
@click.option("--force", is_flag=True, help="Bootstrap again even when the base exists.")
@click.pass_obj
def base(ctx: Ctx, suite, force):
    """Bootstrap the default Debian base image (mmdebstrap + docker import)."""
    from builder.engine import base as base_mod
    from builder.engine import dockerapi as engine
    spec = {"bootstrap": {"suite": suite, "variant": "minbase"}}
    client = engine.connect()
    start = time.monotonic()
    ref = base_mod.ensure_base(client, spec, ctx.info, force=force, mirror=_bundle_and_mirror(None)[1])
    click.echo(f"{ref} ready ({time.monotonic() - start:.1f}s)")


def _bundle_and_mirror(ca_bundle_option: str | None):
    """The build's CA bundle (flag, setting, environment) and Debian mirror, from the settings: only the
    CLI reads settings; the pipeline takes these values."""
    from builder.settings.host import find_ca_bundle
    from builder.settings.settings import load_settings
    settings = load_settings({"ca_bundle": ca_bundle_option})
    bundle = find_ca_bundle(settings.get("ca_bundle"), source=settings.source("ca_bundle"))
    return bundle, settings.get("debian_mirror")


def _print_check(ctx: Ctx, r) -> None:
    if ctx.quiet:
        return
    mark = {"passed": "[green]ok[/green]  ", "failed": "[red]FAIL[/red]", "skipped": "[yellow]skip[/yellow]"}[r.status]
    ctx.err.print(f"  {mark} {r.name} [dim]({r.seconds:.1f}s)[/dim]")


@main.command()
@click.argument("stack", required=False, default=".")
@click.option("--no-verify", is_flag=True, help="Promote without running the checks.")
@click.option("--no-cache", "nocache", is_flag=True, help="Build every layer again.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="Extra CA bundle for pip inside the build stage.")
@click.option("--registry", metavar="HOST[:PORT][/PREFIX]",
              help="Try to pull this content hash from the registry before building (default: the registry setting).")
@click.option("--no-pull", is_flag=True, help="Do not try the registry; always build here.")
@click.option("--relock", is_flag=True, help="Lock again first (a stale lock is otherwise refused).")
@click.option("--locked", "frozen", is_flag=True,
              help="Never write the lock: fail when it is missing or stale (for CI).")
@click.option("--engine", "engine_name", type=ENGINES,
              help="sdk (docker-py, classic builder; the default, or the engine setting) or buildkit "
                   "(a Docker CLI with BuildKit: apt/pip cache mounts, CA bundle as a secret).")
@click.pass_obj
def build(ctx: Ctx, stack, no_verify, nocache, ca_bundle, registry, no_pull, relock, frozen, engine_name):
    """Build STACK from its lock, verify it, then tag it by content hash and as latest.

    A stack without a lock is locked first (the lock file is written next to the stack: commit it)."""
    from builder.pipeline import build as build_mod
    from builder.engine import dockerapi as engine
    from builder.cli.registry import LayerProgress
    from builder.errors import UsageError
    from builder.settings.settings import load_settings
    if relock and frozen:
        raise UsageError("--relock and --locked contradict each other")
    p = _plan(stack)
    registry = None if no_pull else load_settings({"registry": registry}).get("registry")
    engine_name = load_settings({"engine": engine_name}).get("engine")
    bundle, mirror = _bundle_and_mirror(ca_bundle)
    client = engine.connect()
    if not no_verify:  # the device checks of a GPU host would otherwise fail deep inside CuPy
        from builder.run.cluster import gpu_runtime
        _check_driver(gpu_runtime(client.info()), p.resolved.versions(), p.hash_tag, False)
    if p.lock_state != "locked" or relock:
        p = build_mod.ensure_lock(p, client, relock=relock, frozen=frozen, ca_bundle=bundle, mirror=mirror, log=ctx.info,
                                  on_written=lambda new, report: _print_lock_written(ctx, p, new, report))
    last = {"step": None}

    def on_progress(progress, line):
        # BuildKit runs stages side by side and numbers steps per stage: a step is its whole triple.
        key = (progress.step, progress.total, progress.instruction)
        if ctx.quiet or not progress.step or key == last["step"]:
            return
        last["step"] = key
        from rich.markup import escape
        ctx.err.print(f"[cyan]step {progress.step}/{progress.total}[/cyan] {escape(progress.instruction[:110])}",
                      markup=True, highlight=False)

    if not ctx.quiet:
        ctx.info(f"{p.resolved.name}: content hash {p.content_hash[:16]}")
    import contextlib
    with LayerProgress(ctx, "pull") if registry else contextlib.nullcontext() as pull_progress:
        result = build_mod.build(p, client, ca_bundle=bundle, mirror=mirror, verify=not no_verify, nocache=nocache,
                                 log=ctx.info, on_progress=on_progress, on_check=lambda r: _print_check(ctx, r),
                                 registry=registry, on_pull=pull_progress.update if pull_progress else None,
                                 engine_name=engine_name)
    if result.pulled:
        click.echo(f"pulled {p.hash_tag} from {registry} instead of building ({result.seconds:.0f}s)")
    elif result.noop:
        click.echo(f"{p.hash_tag} is up to date ({result.seconds:.2f}s)")
    else:
        verified = f", {result.report.counts['passed']} checks passed" if result.report else ", not verified"
        click.echo(f"built {p.hash_tag} and {p.latest_tag} in {result.seconds:.0f}s{verified}")


def _lock_changes(old, new) -> list[str]:
    """Pins that differ between two locks, as 'name old -> new' lines."""
    if old is None:
        return []
    out = []
    def table(lock):
        rows = {f"deb {k}": v for k, v in {**lock.base_packages, **lock.apt_build, **lock.apt_runtime}.items()}
        rows.update({f"py {k}": v for k, v in lock.python_pins().items()})
        rows.update({f"src {k}": f"{v['version']} {v['sha256'][:12]}" for k, v in lock.sources.items()})
        return rows
    a, b = table(old), table(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key} {a.get(key, '(none)')} -> {b.get(key, '(none)')}")
    return out


def _print_lock_written(ctx: Ctx, old_plan, new_plan, report) -> None:
    lock = new_plan.lock
    counts = lock.counts()
    ctx.info(f"wrote {new_plan.lock_file}: {counts['debian']} Debian packages, {counts['python']} Python packages, "
             f"{counts['sources']} source package(s); commit it next to the stack")
    changes = _lock_changes(old_plan.lock, lock)
    if old_plan.lock is not None:
        ctx.info(f"{len(changes)} pin(s) changed, {report.kept} kept" + (":" if changes else ""))
        for line in changes[:40]:
            ctx.info(f"  {line}")
        if len(changes) > 40:
            ctx.info(f"  ... and {len(changes) - 40} more")
    for note in report.notes:
        ctx.info(f"note: {note}")


@main.command()
@click.argument("stack", required=False, default=".")
@click.option("--upgrade", "upgrade", multiple=True, metavar="PKG",
              help="Resolve this Python or Debian package again (repeatable); other pins are kept.")
@click.option("--upgrade-all", is_flag=True, help="Resolve every pin again, as if there were no lock.")
@click.option("--check", is_flag=True, help="Only say whether the lock matches the stack (exit 1 if not).")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="Extra CA bundle for pip in the lock container.")
@click.pass_obj
def lock(ctx: Ctx, stack, upgrade, upgrade_all, check, ca_bundle):
    """Pin every package STACK installs: Debian packages, Python files with sha256, sources, the base.

    The lock is written next to the stack file (stacks/NAME.lock, ./dlenv.lock). Pins of an
    existing lock are kept where they still apply, unless --upgrade PKG or --upgrade-all."""
    from builder.pipeline import build as build_mod
    from builder.engine import dockerapi as engine
    from builder.errors import LockError
    p = _plan(stack)
    if check:
        if p.lock_state == "locked":
            click.echo(f"{p.lock_file} matches {p.resolved.merged.path}")
            return
        if p.lock_state == "missing":
            raise LockError(f"{p.lock_file} is missing", hint=f"run `dlenv lock {stack}`")
        raise stale_error(p)
    bundle, mirror = _bundle_and_mirror(ca_bundle)
    client = engine.connect()
    start = time.monotonic()
    new_plan, report = build_mod.write_lock(p, client, upgrade=upgrade, upgrade_all=upgrade_all,
                                            ca_bundle=bundle, mirror=mirror, log=ctx.info)
    _print_lock_written(ctx, p, new_plan, report)
    click.echo(f"locked {new_plan.resolved.name} in {time.monotonic() - start:.0f}s: {new_plan.lock_file} "
               f"(image {new_plan.hash_tag})")


@main.command()
@click.argument("target", required=False, default=".")
@click.option("--nodes", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Run the MPI checks across this many containers on a private network (ssh launcher).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--skip-driver-check", is_flag=True,
              help="Do not check the host's NVIDIA driver against the image's CUDA.")
@click.pass_obj
def verify(ctx: Ctx, target, nodes, as_json, skip_driver_check):
    """Run the checks of STACK (or of the stack an IMAGE was built from) in a container."""
    from builder.engine import dockerapi as engine
    from builder.run.cluster import gpu_runtime
    from builder.errors import VerifyError
    from builder.verify.runner import plan_checks, verify_image
    client = engine.connect()
    p, image, components = verify_target(client, target)
    _check_driver(gpu_runtime(client.info()), components, image, skip_driver_check)
    report = verify_image(client, image, plan_checks(p.resolved, p.lock if p.lock_state == "locked" else None),
                          nodes=nodes,
                          testinfra_files=p.resolved.merged.testinfra,
                          on_result=None if as_json or not ctx.err.is_terminal else (lambda r: _print_check(ctx, r)))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        if not report.passed:
            sys.exit(1)
        return
    _print_report(ctx, report)
    c = report.counts
    if not report.passed:
        raise VerifyError(f"{c['failed']} of {len(report.results)} checks failed on {image}", report=report)
    click.echo(f"{image}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped in {report.seconds:.1f}s")


def _print_report(ctx: Ctx, report) -> None:
    if ctx.quiet:
        return
    from rich.table import Table
    table = Table("check", "result", "time", "note")
    style = {"passed": "green", "failed": "red", "skipped": "yellow"}
    for r in report.results:
        table.add_row(r.name, f"[{style[r.status]}]{r.status}[/]", f"{r.seconds:.1f}s", r.reason)
    ctx.console.print(table)


def _check_driver(gpu, components: dict, image: str, skip: bool) -> None:
    """On the GPU path only: the host's NVIDIA driver against the image's CUDA, before any
    container starts (an error for a driver too old to run it, a warning for partial support)."""
    if skip or not gpu:
        return
    from builder.run.driver import check_host_driver
    check_host_driver(gpu, components, image, on_warning=_warn_once)


def _image_for_use(ctx: Ctx, client, stack: str, build: bool, gpu=None, skip_driver_check=False) -> str:
    """The stack's promoted image for this content hash; offer (or, with --build, run) the build.
    On a GPU host the driver is checked first, so a driver too old for the stack stops before a build."""
    from builder.pipeline import build as build_mod
    from builder.errors import EngineError
    p = _plan(stack)
    _check_driver(gpu, p.resolved.versions(), p.hash_tag, skip_driver_check)
    if promoted_image(client, p) is not None:
        return p.hash_tag
    if not build:
        if sys.stdin.isatty() and sys.stderr.isatty():
            build = click.confirm(f"{p.hash_tag} does not exist yet. Build it now?", default=True, err=True)
        if not build:
            raise EngineError(f"{p.hash_tag} does not exist yet",
                              hint=f"run `dlenv build {stack}` or pass --build")
    bundle, mirror = _bundle_and_mirror(None)
    build_mod.build(p, client, ca_bundle=bundle, mirror=mirror, log=ctx.info, on_check=lambda r: _print_check(ctx, r))
    return p.hash_tag


def _container_options(shm_size, ipc, env, ports, volumes, workspace=True):
    from builder.engine import dockerapi as engine
    from builder.run.cluster import ContainerOptions, gpu_runtime
    from builder.run.session import parse_env, parse_ports, parse_volumes
    from builder.settings.settings import load_settings
    import os
    settings = load_settings({"shm_size": shm_size})
    client = engine.connect()
    opts = ContainerOptions(shm_size=settings.get("shm_size"), ipc_host=(ipc == "host"),
                            gpu=gpu_runtime(client.info()), workspace=os.getcwd() if workspace else None,
                            env=parse_env(env), ports=parse_ports(ports), volumes=parse_volumes(volumes),
                            on_warning=_warn_once)
    return client, opts


_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        click.echo(f"dlenv: warning: {message}", err=True)


_use_options = [
    click.option("--shm-size", help="Size of /dev/shm (default 8g, or the shm_size setting)."),
    click.option("--ipc", type=click.Choice(["private", "host"]), default="private", show_default=True,
                 help="`host` shares the host's IPC namespace instead of a private /dev/shm."),
    click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE", help="Set a variable (repeatable)."),
    click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]",
                 help="Extra mount (repeatable); the Docker socket is refused."),
    click.option("--build", is_flag=True, help="Build the stack first if its image does not exist."),
    click.option("--skip-driver-check", is_flag=True,
                 help="Do not check the host's NVIDIA driver against the image's CUDA."),
]


def use_options(func):
    for option in reversed(_use_options):
        func = option(func)
    return func


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("stack")
@use_options
@click.option("-p", "--publish", "ports", multiple=True, metavar="[HOSTPORT:]PORT",
              help="Publish a container port on 127.0.0.1 (repeatable).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def shell(ctx: Ctx, stack, shm_size, ipc, env, volumes, build, skip_driver_check, ports, command):
    """Open a shell in STACK's image with the current folder at /workspace, as you.

    `dlenv shell STACK -- CMD...` runs CMD instead and exits with its status.
    """
    from builder.run.session import host_identity, shell as run_shell
    client, opts = _container_options(shm_size, ipc, env, ports, volumes)
    image = _image_for_use(ctx, client, stack, build, opts.gpu, skip_driver_check)
    code = run_shell(client, image, opts, host_identity(), list(command) or None)
    sys.exit(code)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("stack")
@click.option("-n", "--np", "ranks", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Number of MPI ranks.")
@click.option("--nodes", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Containers on a private network; ranks are spread over them and started over ssh.")
@click.option("--all-ranks", is_flag=True, help="Show the output of every rank (default: rank 0 only).")
@use_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run(ctx: Ctx, stack, ranks, nodes, all_ranks, shm_size, ipc, env, volumes, build, skip_driver_check, command):
    """Run COMMAND under mpiexec in STACK's image, e.g. `dlenv run chainermn -n 4 -- python train.py`."""
    from builder.run.session import host_identity, run_mpi
    client, opts = _container_options(shm_size, ipc, env, (), volumes)
    image = _image_for_use(ctx, client, stack, build, opts.gpu, skip_driver_check)
    code = run_mpi(client, image, opts, host_identity(), list(command), ranks, nodes=nodes, all_ranks=all_ranks)
    sys.exit(code)


@main.command()
@click.option("--keep", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Hash tags to keep per stack besides latest (newest first).")
@click.option("--build-cache", is_flag=True, help="Also remove dangling build-stage layers built on a dlenv base.")
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
@click.pass_obj
def gc(ctx: Ctx, keep, build_cache, dry_run):
    """Remove old candidate and hash tags of dlenv images (and, asked, their build cache)."""
    from builder.engine import dockerapi as engine
    from builder.engine.gc import apply_gc, list_images, plan_gc
    client = engine.connect()
    plan = plan_gc(list_images(client), keep=keep, build_cache=build_cache)
    verb = "would remove" if dry_run else "removing"
    for ref in plan.untag:
        ctx.info(f"{verb} {ref}")
    if plan.cache:
        ctx.info(f"{verb} {len(plan.cache)} cached build layer chain(s), {plan.reclaim_bytes / 1e9:.2f} GB or more")
    failed = [] if dry_run else apply_gc(client, plan)
    for line in failed:
        ctx.err.print(f"[yellow]dlenv: warning: could not remove {line}[/yellow]")
    done = "would remove" if dry_run else "removed"
    click.echo(f"{done} {len(plan.untag) - len(failed)} tag(s) and {len(plan.cache)} build cache chain(s); "
               f"kept {len(plan.keep)} tag(s)")


@main.command("init")
@click.option("--from", "parent", default="chainermn", show_default=True, metavar="STACK",
              help="The stack to extend (a catalog name or a path).")
@click.option("--name", help="Stack name (default: the folder's name).")
@click.option("--no-detect", is_flag=True, help="Do not take over requirements files.")
@click.option("-y", "--yes", is_flag=True, help="Take over detected requirements without asking.")
@click.option("--force", is_flag=True, help="Replace an existing dlenv.yaml.")
@click.pass_obj
def init_cmd(ctx: Ctx, parent, name, no_detect, yes, force):
    """Write a commented starter dlenv.yaml here, taking over requirements files it finds."""
    import os
    from pathlib import Path
    from builder.errors import SpecError
    from builder.fileio import write_text_atomic
    from builder.spec.starter import detect, init_text, target_path
    from builder.spec.stack import find_stack
    from builder import paths
    folder = Path(os.getcwd())
    target = target_path(folder)
    if target.exists() and not force:
        raise SpecError(target, "already exists", hint="pass --force to replace it")
    find_stack(parent, paths.stacks_dir(), relative_to=folder)  # refuse an unknown parent now
    take = not no_detect
    found = detect(folder) if take else []
    if take and any(d.packages for d in found) and not yes and sys.stdin.isatty():
        summary = ", ".join(f"{len(d.packages)} from {d.source}" for d in found if d.packages)
        take = click.confirm(f"Take over Python requirements ({summary})?", default=True, err=True)
    text, found = init_text(folder, parent, take_over=take, name=name)
    if name is not None:
        from builder.spec.stack import validate_document
        import yaml
        validate_document(yaml.safe_load(text), {}, target, "stack")
    write_text_atomic(target, text)
    for d in found:
        if d.packages:
            ctx.info(f"took over {len(d.packages)} package(s) from {d.source}")
        for entry, why in d.skipped:
            ctx.info(f"not taken from {d.source}: {entry} ({why})")
    click.echo(f"wrote {target}; next: dlenv build")


from builder.cli.doctor import config_cmd, doctor  # noqa: E402  (commands defined in their own modules)
from builder.cli.export import export, load, save  # noqa: E402
from builder.cli.registry import pull, push  # noqa: E402
from builder.cli.sbom import diff_cmd, sbom  # noqa: E402

main.add_command(doctor)
main.add_command(config_cmd, "config")
main.add_command(push)
main.add_command(pull)
main.add_command(export)
main.add_command(save)
main.add_command(load)
main.add_command(sbom)
main.add_command(diff_cmd, "diff")


if __name__ == "__main__":
    main()
