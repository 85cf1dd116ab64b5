"""What the export generators share: the image's names, value checks, the stack's environment,
size parsing and the Jinja environment of the export templates.

Every value is computed, validated and quoted in Python; the Jinja templates under
`templates/exports/` only place it (StrictUndefined). Nothing here prints or writes.
"""

from __future__ import annotations

import re

import jinja2

from builder import paths
from builder.errors import ExportError, RegistryError
from builder.names import TAG_CHARS
from builder.plan.plan import Plan

EXPORT_KINDS = ("apptainer", "slurm", "mpijob", "devcontainer")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHM = re.compile(r"^([0-9]+)([bkmg]?)$")


# ---------------------------------------------------------------------------------------- names

def local_ref(plan: Plan) -> str:
    """The promoted image in the local engine: dlenv/STACK:<hash16>."""
    return plan.hash_tag


def registry_host(registry: str) -> str:
    return registry.split("/", 1)[0]


def registry_ref(plan: Plan, registry: str) -> str:
    """REGISTRY[/PREFIX]/dlenv/STACK:<hash16>, as `dlenv push` names it."""
    registry = registry.strip().rstrip("/")
    host = registry_host(registry)
    if not host or not ("." in host or ":" in host or host == "localhost"):
        # Docker would read `myhost/dlenv/x` as a Docker Hub repository of the user `myhost`.
        raise RegistryError(f"registry {registry!r} does not name a registry host",
                            kind="config", hint="give HOST:PORT, a domain name or localhost, e.g. 127.0.0.1:5000")
    return f"{registry}/{plan.repo}:{plan.content_hash[:TAG_CHARS]}"


def enroot_ref(plan: Plan, registry: str) -> str:
    """enroot's (and so pyxis') spelling of a registry image: HOST[:PORT]#PATH:TAG."""
    host, _, rest = registry_ref(plan, registry).partition("/")
    return f"{host}#{rest}"


def artifact_name(plan: Plan, suffix: str) -> str:
    return f"dlenv-{plan.resolved.name}-{plan.content_hash[:TAG_CHARS]}{suffix}"


def need_registry(registry: str | None, what: str, stack: str) -> str:
    if not registry:
        raise ExportError(f"{what} needs a registry the cluster can pull the image from",
                          hint=f"pass --registry HOST:PORT[/PREFIX] (or set DLENV_REGISTRY) and push the image "
                               f"there first with `dlenv push {stack} --registry HOST:PORT`")
    return registry


# ------------------------------------------------------------------------------------ templates

def _environment() -> jinja2.Environment:
    # The export templates belong to dlenv, not to a catalog: a DLENV_TEMPLATES_DIR catalog
    # without them still finds the shipped ones.
    folders = [paths.templates_dir() / "exports", paths._data_dir("templates") / "exports"]
    # No HTML autoescaping (Jinja's default): these are shell scripts and YAML, and every value is
    # quoted for its target language in Python before it reaches a template.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(f) for f in folders]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **values) -> str:
    try:
        return _environment().get_template(template).render(**values)
    except jinja2.TemplateError as exc:
        raise ExportError(f"export template {template}: {exc}") from None


# --------------------------------------------------------------------------------------- checks

def positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExportError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def command_words(command) -> list:
    words = [str(w) for w in (command or ())]
    if not words:
        raise ExportError("no command given", hint="put the command after `--`, e.g. `-- python train.py`")
    if any("\x00" in w for w in words):
        raise ExportError("a command word contains a NUL character")
    return words


def stack_env(plan: Plan) -> dict:
    env = plan.resolved.env
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ExportError(f"stack {plan.resolved.name}: environment variable name {key!r} cannot be exported")
        if "\x00" in value:
            raise ExportError(f"stack {plan.resolved.name}: the value of {key} contains a NUL character")
    return env


def openmpi_version(plan: Plan) -> str | None:
    rc = plan.resolved.get("openmpi")
    return rc.version.text if rc else None


def has_cuda(plan: Plan) -> bool:
    return plan.resolved.get("cuda") is not None


# ---------------------------------------------------------------------------------------- sizes

def shm_bytes(size: str) -> int:
    """Docker's --shm-size value (the `shm_size` setting: digits and b/k/m/g, binary units)."""
    m = _SHM.match(str(size).strip().lower())
    if not m:
        raise ExportError(f"shm size {size!r} is not a number with an optional b, k, m or g")
    return int(m[1]) * {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2]]


def k8s_quantity(size: str) -> str:
    m = _SHM.match(str(size).strip().lower())
    if not m:
        raise ExportError(f"shm size {size!r} is not a number with an optional b, k, m or g")
    return m[1] + {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[m[2]]
