"""Rendering: a resolved stack becomes a build context (a Dockerfile and a few generated files).

Pure: `render_context(resolved)` returns text and bytes; nothing is written. Templates stay
dumb: every list is computed and sorted here, every value that reaches a shell line has been
validated by spec/catalog and is quoted again by the `q` filter; values that reach `ENV` or
`LABEL` go through `dq` (Dockerfile double-quoted string, `$` escaped so nothing expands).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field

import jinja2

from . import __version__, paths, projectfiles
from .catalog import GROUPS
from .errors import RenderError
from .resolve import ResolvedStack

VENV = "/opt/venv"
LEAF = "/opt/leaf"                 # the stack's own python_packages (a prefix on PYTHONPATH)
RUNTIME_USER = "dlenv"
RUNTIME_UID = 1000
WORKDIR = "/workspace"
BUILD_FILES = "dlenv-build"        # context folder, copied into the build stage only
RUNTIME_FILES = "dlenv-runtime"    # context folder, copied into the runtime stage
COPIED_FILES = "dlenv-files"       # the stack's own files (`files:`), copied last into the runtime stage
CA_BUNDLE_PATH = f"{BUILD_FILES}/ca.crt"   # written by the engine; never hashed, never in the runtime stage
LABEL_PREFIX = "org.dlenv"


def dockerfile_string(value: str) -> str:
    """A Dockerfile double-quoted word with no variable expansion."""
    text = str(value)
    if any(ch in text for ch in "\n\r\x00"):
        raise RenderError(f"value {text[:40]!r} spans lines; it cannot go into an ENV or LABEL")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def base_ref(base: dict) -> str:
    if "image" in base:
        return base["image"]
    return f"dlenv/base:{base_tag(base)}"


def base_recipe(base: dict) -> dict:
    """What identifies a bootstrapped base (never a local image id)."""
    boot = base["bootstrap"]
    return {"suite": boot["suite"], "variant": boot.get("variant", "minbase"),
            "epoch": int(boot.get("epoch", DEFAULT_EPOCH))}


DEFAULT_EPOCH = 1735689600  # 2025-01-01T00:00:00Z: a fixed SOURCE_DATE_EPOCH makes the rootfs bit-identical


def base_tag(base: dict) -> str:
    recipe = base_recipe(base)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{recipe['suite']}-{recipe['variant']}-{digest}"


@dataclass(frozen=True)
class BuildContext:
    stack: str
    dockerfile: str
    files: dict = field(default_factory=dict)   # relative path -> bytes (CA bundle not included)
    modes: dict = field(default_factory=dict)   # relative path -> mode, where not 0644
    versions: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["dq"] = dockerfile_string
    env.filters["qjoin"] = lambda vs: " ".join(shlex.quote(str(v)) for v in vs)
    return env


def _pip_requirements(comp, version) -> list:
    values = {"version": version.text, **version.vars}
    try:
        return [tmpl.format(**values) for tmpl in comp.pip]
    except KeyError as exc:
        raise RenderError(f"component {comp.name!r}: pip requirement uses unknown variable {exc}") from None


def render_context(resolved: ResolvedStack) -> BuildContext:
    env = _environment()
    blocks = []
    for rc in resolved.components:
        comp, version = rc.component, rc.version
        fragment_vars = {
            "name": comp.name, "version": version.text, "vars": dict(sorted(version.vars.items())),
            "pip_requirements": _pip_requirements(comp, version), "pip_options": list(comp.pip_options),
            "prefix": comp.prefix or "", "venv": VENV, "versions": resolved.versions(),
        }
        try:
            build = env.get_template(f"components/{comp.name}/build.j2").render(**fragment_vars)
            runtime = (env.get_template(f"components/{comp.name}/runtime.j2").render(**fragment_vars)
                       if comp.has_runtime_fragment else "")
        except jinja2.TemplateError as exc:
            raise RenderError(f"component {comp.name!r}: template error: {exc}") from None
        blocks.append({"name": comp.name, "version": version.text, "group": comp.group,
                       "build": build.strip("\n"), "runtime": runtime.strip("\n")})

    python_pins = sorted(
        {req for rc in resolved.components if rc.component.group == "python"
         for req in _pip_requirements(rc.component, rc.version) if "==" in req}, key=str.lower)
    constraints = "".join(f"{req}\n" for req in python_pins)
    leaf_packages = [text for text, _ in resolved.merged.python_packages]
    versions = resolved.versions()
    runtime_env = resolved.env
    path = resolved.path
    leaf_site = ""
    if leaf_packages:
        python = resolved.get("python")
        if python is None:
            raise RenderError(f"stack {resolved.name!r} has python_packages but no python component")
        # The stack's own packages live in their own prefix: changing them re-copies only this small
        # layer into the runtime stage, never the venv with the components' packages.
        leaf_site = f"{LEAF}/lib/python{python.version.text}/site-packages"
        runtime_env = dict(sorted({**runtime_env, "PYTHONPATH": leaf_site}.items()))
        path = f"{LEAF}/bin:{path}"
    ld_conf = "".join(f"{p}\n" for p in resolved.ld_paths)
    profile_lines = ["# dlenv: the image's environment for login shells (/etc/profile resets PATH).",
                     f"export PATH={shlex.quote(path)}"]
    profile_lines += [f"export {k}={shlex.quote(v)}" for k, v in runtime_env.items()]
    profile = "\n".join(profile_lines) + "\n"

    labels = {
        "org.opencontainers.image.title": f"dlenv/{resolved.name}",
        "org.opencontainers.image.description": resolved.merged.description or f"dlenv stack {resolved.name}",
        f"{LABEL_PREFIX}.stack": resolved.name,
        f"{LABEL_PREFIX}.dlenv-version": __version__,
        f"{LABEL_PREFIX}.base": base_ref(resolved.base),
        f"{LABEL_PREFIX}.components": ",".join(f"{k}={v}" for k, v in versions.items()),
    }
    labels.update({f"{LABEL_PREFIX}.component.{k}": v for k, v in versions.items()})

    context = {
        "dlenv_version": __version__,
        "stack": resolved.name,
        "chain": [s.name for s in resolved.merged.chain],
        "base_ref": base_ref(resolved.base),
        "apt_build": resolved.apt_build,
        "apt_runtime": resolved.apt_runtime,
        "groups": [{"name": g, "blocks": [b for b in blocks if b["group"] == g]} for g in GROUPS],
        # The venv is made by the python component (system group); any stack with it ships the venv.
        "has_python": resolved.get("python") is not None or any(b["group"] == "python" for b in blocks)
        or bool(leaf_packages),
        "leaf_packages": leaf_packages,
        "leaf": LEAF,
        "venv": VENV,
        "user": RUNTIME_USER,
        "uid": RUNTIME_UID,
        "workdir": WORKDIR,
        "path": path,
        "env": runtime_env,
        "labels": dict(sorted(labels.items())),
        "has_ld_conf": bool(ld_conf),
        "build_files": BUILD_FILES,
        "runtime_files": RUNTIME_FILES,
        "label_prefix": LABEL_PREFIX,
    }
    copy_blocks = projectfiles.collect(resolved.merged.files, prefix=COPIED_FILES)
    context["copies"] = [
        {"source": f"{COPIED_FILES}/{b.index}/" if b.is_dir else next(iter(b.files), f"{COPIED_FILES}/{b.index}/"),
         "dest": b.dest.rstrip("/") + "/" if b.is_dir else b.dest}
        for b in copy_blocks if b.files]
    try:
        dockerfile = env.get_template("Dockerfile.j2").render(**context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"Dockerfile template error: {exc}") from None
    files = {f"{BUILD_FILES}/constraints.txt": constraints.encode(),
             f"{RUNTIME_FILES}/profile.sh": profile.encode(),
             f"{RUNTIME_FILES}/ld.so.conf": ld_conf.encode()}
    modes = {}
    for block in copy_blocks:
        for rel, (data, mode) in block.files.items():
            files[rel] = data
            modes[rel] = mode
    return BuildContext(stack=resolved.name, dockerfile=dockerfile, files=files, versions=versions,
                        base=resolved.base, modes=modes)


def content_hash(ctx: BuildContext) -> str:
    """The one name of an image: Dockerfile, generated files, versions and the base recipe."""
    base = {"image": ctx.base["image"]} if "image" in ctx.base else {"bootstrap": base_recipe(ctx.base)}
    doc = {
        "format": 1,
        "dockerfile": hashlib.sha256(ctx.dockerfile.encode()).hexdigest(),
        "files": {k: hashlib.sha256(v).hexdigest() + (f":{ctx.modes[k]:o}" if ctx.modes.get(k, 0o644) != 0o644 else "")
                  for k, v in sorted(ctx.files.items())},
        "versions": dict(sorted(ctx.versions.items())),
        "base": base,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
