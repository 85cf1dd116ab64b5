"""Rendering: a resolved stack becomes a build context (a Dockerfile and a few generated files).

Pure: `render_context(resolved)` returns text and bytes; nothing is written. Templates stay
dumb: every list is computed and sorted here, every value that reaches a shell line has been
validated by spec/catalog and is quoted again by the `q` filter; values that reach `ENV` or
`LABEL` go through `dq` (Dockerfile double-quoted string, `$` escaped so nothing expands).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field

import jinja2

from builder import __version__, paths
from builder.spec import projectfiles as projectfiles
from builder.plan.catalog import GROUPS
from builder.errors import RenderError, SpecError
from builder.plan.lockfile import Lock
from builder.plan.pins import (DEFAULT_EPOCH, LEAF_STEP, base_identity, base_recipe, base_ref, constraint_lines,
                                debian_sources, pip_requirements)
from builder.plan.resolve import ResolvedStack
from builder.names import (APT_BUILD_FILE, APT_RUNTIME_FILE, BASE_LABEL, BUILD_FILES, COMPONENT_LABEL, COMPONENTS_LABEL,
                           COPIED_FILES, LABEL_PREFIX, LEAF, LOCK_LABEL, REFRESHED_LABEL, PYLOCK_DIR, RUNTIME_FILES, RUNTIME_HOME,
                           PATH_REFERENCES, RUNTIME_UID, RUNTIME_USER, SOURCE_LABEL, STACK_LABEL, VENV, VERSION_LABEL,
                           WORKDIR, PACKAGE_REPO_URL, SOURCE_TARBALLS, image_repo)


def dockerfile_string(value: str) -> str:
    """A Dockerfile double-quoted word with no variable expansion."""
    text = str(value)
    if any(ch in text for ch in "\n\r\x00"):
        raise RenderError(f"value {text[:40]!r} spans lines; it cannot go into an ENV or LABEL")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


@dataclass(frozen=True)
class BuildContext:
    stack: str
    dockerfile: str
    files: dict = field(default_factory=dict)   # relative path -> bytes (CA bundle not included)
    modes: dict = field(default_factory=dict)   # relative path -> mode, where not 0644
    versions: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    base_pins: dict = field(default_factory=dict)   # locked Debian packages of a bootstrapped base
    base_digest: str = ""                           # locked digest of a registry base
    lock_digest: str = ""                           # empty: rendered without a lock
    parent_hash: str = ""                           # built on the parent's image with this content hash

    @property
    def base_ref(self) -> str:
        return base_ref(self.base, self.base_pins or None, self.base_digest or None)


def jinja_environment() -> jinja2.Environment:
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


def _locked_pip(step: str, mode: str, options: list) -> tuple[list, list]:
    """(pip_options, pip_requirements) that install exactly the lock's files for one step."""
    path = f"{PYLOCK_DIR}/{step}.txt"
    if mode == "venv":
        # The lock holds the whole dependency set of the step: pip must not resolve again.
        return [*options, "--no-deps"], ["--require-hashes", "-r", path]
    return list(options), ["--require-hashes", "-r", path]


def locked_sources(resolved: ResolvedStack, lock: Lock | None) -> dict:
    """The Debian source packages compiled from, with the lock's tarball checksums when locked."""
    sources = debian_sources(resolved)
    if lock is not None:
        for comp, src in sources.items():
            locked = lock.sources.get(comp)
            if locked is None or any(locked.get(k) != src[k] for k in ("package", "version", "file")):
                raise RenderError(f"{lock.path}: sources.{comp}: the lock does not match the stack",
                                  hint="run `dlenv lock` again")
            src["sha256"] = locked["sha256"]
    return sources


def _pylock_file(lock: Lock, step: str) -> tuple[str, bytes]:
    """(context path, text) of one pip step's locked requirements."""
    if step not in lock.python:
        raise RenderError(f"{lock.path}: python.{step}: missing from the lock", hint="run `dlenv lock` again")
    return f"{BUILD_FILES}/pylock/{step}.txt", lock.requirements_text(step).encode()


def _component_block(env: jinja2.Environment, resolved: ResolvedStack, rc, lock: Lock | None, sources: dict,
                     pylock_files: dict) -> dict:
    """One component's build and runtime fragments, rendered; its locked requirements go to `pylock_files`."""
    comp, version = rc.component, rc.version
    requirements = pip_requirements(comp, version)
    options = list(comp.pip_options)
    pylock = ""
    if lock is not None and requirements:
        rel, text = _pylock_file(lock, comp.name)
        options, requirements = _locked_pip(comp.name, "target" if comp.prefix else "venv", options)
        pylock = f"{PYLOCK_DIR}/{comp.name}.txt"
        pylock_files[rel] = text
    src = sources.get(comp.name)
    fragment_vars = {
        "name": comp.name, "version": version.text, "vars": dict(sorted(version.vars.items())),
        "pip_requirements": requirements, "pip_options": options,
        "prefix": comp.prefix or "", "venv": VENV, "versions": resolved.versions(),
        "source": {"sha256": "", **src, "url": f"{PACKAGE_REPO_URL}{SOURCE_TARBALLS}/{src['file']}"} if src else {},
    }
    try:
        build = env.get_template(f"components/{comp.name}/build.j2").render(**fragment_vars)
        runtime = (env.get_template(f"components/{comp.name}/runtime.j2").render(**fragment_vars)
                   if comp.has_runtime_fragment else "")
    except jinja2.TemplateError as exc:
        raise RenderError(f"component {comp.name!r}: template error: {exc}") from None
    return {"name": comp.name, "version": version.text, "group": comp.group,
            "build": build.strip("\n"), "runtime": runtime.strip("\n"),
            "pylock": pylock, "pylock_source": f"{BUILD_FILES}/pylock/{comp.name}.txt"}


def leaf_install(resolved: ResolvedStack, lock: Lock | None, pylock_files: dict) -> tuple[list, list]:
    """(the stack's own python_packages, what their pip step installs: the lock's file or the packages)."""
    leaf_packages = [text for text, _ in resolved.merged.python_packages]
    if not leaf_packages:
        return [], []
    if lock is None:
        return leaf_packages, leaf_packages
    rel, text = _pylock_file(lock, LEAF_STEP)
    pylock_files[rel] = text
    leaf_options, leaf_requirements = _locked_pip(LEAF_STEP, "venv", [])
    return leaf_packages, leaf_options + leaf_requirements


def runtime_environment(resolved: ResolvedStack, has_leaf: bool) -> tuple[dict, str]:
    """(ENV of the runtime stage, PATH): the leaf prefix goes first on PYTHONPATH and PATH, then a
    stack's own PATH entries wrap the result."""
    runtime_env, path = resolved.env, resolved.path
    if not has_leaf:
        return own_path(runtime_env, path)
    python = resolved.get("python")
    if python is None:
        raise RenderError(f"stack {resolved.name!r} has python_packages but no python component")
    # The stack's own packages live in their own prefix: changing them re-copies only this small
    # layer into the runtime stage, never the venv with the components' packages.
    leaf_site = f"{LEAF}/lib/python{python.version.text}/site-packages"
    return own_path(dict(sorted({**runtime_env, "PYTHONPATH": leaf_site}.items())), f"{LEAF}/bin:{path}")


def own_path(env: dict, path: str) -> tuple[dict, str]:
    """A stack's `env: {PATH: "/opt/x:$PATH"}` extends the image's PATH (spec checked it names $PATH
    once); every other variable is set as written."""
    if "PATH" not in env:
        return env, path
    env = dict(env)
    value = env.pop("PATH")
    for ref in PATH_REFERENCES:
        value = value.replace(ref, "\0")
    return env, value.replace("\0", path)


def profile_text(path: str, runtime_env: dict) -> str:
    """/etc/profile.d/dlenv.sh: the image's environment for login shells."""
    lines = ["# dlenv: the image's environment for login shells (/etc/profile resets PATH).",
             f"export PATH={shlex.quote(path)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in runtime_env.items()]
    return "\n".join(lines) + "\n"


def _locked_base(resolved: ResolvedStack, lock: Lock | None) -> tuple[dict, str]:
    """(pinned Debian packages of a bootstrapped base, digest of a registry base), from the lock."""
    if lock is None:
        return {}, ""
    if "image" in resolved.base:
        return {}, str(lock.base.get("digest") or "")
    return lock.base_packages, ""


def image_labels(resolved: ResolvedStack, from_ref: str, lock: Lock | None, sources: dict) -> dict:
    """OCI and org.dlenv.* labels, sorted (the content-hash label is a build argument, not here)."""
    versions = resolved.versions()
    labels = {
        "org.opencontainers.image.title": image_repo(resolved.name),
        "org.opencontainers.image.description": resolved.merged.description or f"dlenv stack {resolved.name}",
        STACK_LABEL: resolved.name,
        VERSION_LABEL: __version__,
        BASE_LABEL: from_ref,
        COMPONENTS_LABEL: ",".join(f"{k}={v}" for k, v in versions.items()),
        LOCK_LABEL: lock.digest if lock is not None else "unlocked",
    }
    if lock is not None and lock.refreshed:
        labels[REFRESHED_LABEL] = refreshed_label(lock.refreshed)
    labels.update({f"{COMPONENT_LABEL}{k}": v for k, v in versions.items()})
    # What a compiled component was built from, checksum included, so an SBOM can name it.
    labels.update({f"{SOURCE_LABEL}{comp}": f"{src['package']}={src['version']} {src['file']} sha256:{src['sha256']}"
                   for comp, src in sources.items() if src.get("sha256")})
    return dict(sorted(labels.items()))


def refreshed_label(refreshed: dict) -> str:
    """The lock-refreshed label: the shipped lock's digest, then each moved pin as name=old->new."""
    moved = " ".join(f"{m['package']}={m['locked']}->{m['used']}" for m in refreshed.get("moved", []))
    return f"{refreshed['from']} {moved}".strip()


def run_commands(run: tuple) -> list:
    """Build-time commands in exec form: the JSON array quotes the command as one argument to bash
    (no Dockerfile or shell word splitting of the user's text; Docker expands nothing in RUN)."""
    out = []
    for rc in run:
        prefix = [] if rc.as_root else ["runuser", "-u", RUNTIME_USER, "--", "env", f"HOME={RUNTIME_HOME}"]
        out.append(json.dumps(prefix + ["bash", "-o", "pipefail", "-c", rc.command]))
    return out


def copy_lines(copy_blocks: list) -> list:
    """The runtime stage's COPY lines of the stack's own files: a folder keeps its trailing slash."""
    return [{"source": f"{COPIED_FILES}/{b.index}/" if b.is_dir else next(iter(b.files), f"{COPIED_FILES}/{b.index}/"),
             "dest": b.dest.rstrip("/") + "/" if b.is_dir else b.dest}
            for b in copy_blocks if b.files]


def context_files(constraints: str, profile: str, ld_conf: str, lock: Lock | None, pylock_files: dict,
                   copy_blocks: list) -> tuple[dict, dict]:
    """(relative path -> bytes, relative path -> mode where not 0644) of the generated and copied files."""
    files = {f"{BUILD_FILES}/constraints.txt": constraints.encode(),
             f"{RUNTIME_FILES}/profile.sh": profile.encode(),
             f"{RUNTIME_FILES}/ld.so.conf": ld_conf.encode()}
    if lock is not None:
        files[f"{BUILD_FILES}/apt-build.txt"] = Lock.apt_text(lock.apt_build).encode()
        files[f"{RUNTIME_FILES}/apt.txt"] = Lock.apt_text(lock.apt_runtime).encode()
        files.update(pylock_files)
    modes = {}
    for block in copy_blocks:
        for rel, (data, mode) in block.files.items():
            files[rel] = data
            modes[rel] = mode
    return files, modes


_ARG = re.compile(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def dockerfile_args(dockerfile: str) -> set:
    """The names the Dockerfile declares with ARG: the build sets them, so a stack's ENV must not."""
    return set(_ARG.findall(dockerfile))


def refuse_build_args_in_env(resolved: ResolvedStack, dockerfile: str) -> None:
    clash = sorted(dockerfile_args(dockerfile) & set(resolved.merged.env))
    if clash:
        spec = next(s for s in reversed(resolved.merged.chain) if clash[0] in s.env)
        raise SpecError(spec.path, "is a build argument of the Dockerfile; a stack cannot set it",
                        line=spec.line("env", clash[0]), field=f"env.{clash[0]}",
                        hint="pass index and proxy settings to dlenv (`dlenv config`), not through env:")


def render_dockerfile(env: jinja2.Environment, context: dict, template: str = "Dockerfile.j2") -> str:
    try:
        return env.get_template(template).render(**context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"Dockerfile template error: {exc}") from None


def render_context(resolved: ResolvedStack, lock: Lock | None = None) -> BuildContext:
    """The build context of a stack; with `lock`, every apt, pip and source install is pinned."""
    env = jinja_environment()
    sources = locked_sources(resolved, lock)
    pylock_files: dict = {}
    blocks = [_component_block(env, resolved, rc, lock, sources, pylock_files) for rc in resolved.components]
    leaf_packages, leaf_args = leaf_install(resolved, lock, pylock_files)
    runtime_env, path = runtime_environment(resolved, bool(leaf_packages))
    ld_conf = "".join(f"{p}\n" for p in resolved.ld_paths)
    base_pins, base_digest = _locked_base(resolved, lock)
    from_ref = base_ref(resolved.base, base_pins or None, base_digest or None)
    copy_blocks = projectfiles.collect(resolved.merged.files, prefix=COPIED_FILES)
    context = {
        "dlenv_version": __version__,
        "stack": resolved.name,
        "chain": [s.name for s in resolved.merged.chain],
        "lock_note": (f"Locked by {lock.path.name if lock.path else 'its lock'} (pins {lock.digest[:16]})."
                      if lock is not None else "Not locked: `dlenv lock` pins every package it installs."),
        "base_ref": from_ref,
        "apt_build": resolved.apt_build,
        "apt_runtime": resolved.apt_runtime,
        "source_date_epoch": base_recipe(resolved.base)["epoch"] if "image" not in resolved.base else DEFAULT_EPOCH,
        "apt_build_file": APT_BUILD_FILE if lock is not None else "",
        "apt_runtime_file": APT_RUNTIME_FILE if lock is not None else "",
        "groups": [{"name": g, "blocks": [b for b in blocks if b["group"] == g]} for g in GROUPS],
        # The venv is made by the python component (system group); any stack with it ships the venv.
        "has_python": resolved.get("python") is not None or any(b["group"] == "python" for b in blocks)
        or bool(leaf_packages),
        "leaf_packages": leaf_packages,
        "leaf_install": leaf_args,
        "leaf_pylock": f"{PYLOCK_DIR}/{LEAF_STEP}.txt" if lock is not None and leaf_packages else "",
        "leaf_pylock_source": f"{BUILD_FILES}/pylock/{LEAF_STEP}.txt",
        "leaf": LEAF, "venv": VENV, "user": RUNTIME_USER, "uid": RUNTIME_UID, "workdir": WORKDIR,
        "path": path,
        "env": runtime_env,
        "labels": image_labels(resolved, from_ref, lock, sources),
        "has_ld_conf": bool(ld_conf),
        "build_files": BUILD_FILES,
        "runtime_files": RUNTIME_FILES,
        "label_prefix": LABEL_PREFIX,
        "run_commands": run_commands(resolved.merged.run),
        "copies": copy_lines(copy_blocks),
    }
    dockerfile = render_dockerfile(env, context)
    refuse_build_args_in_env(resolved, dockerfile)
    constraints = "".join(f"{req}\n" for req in constraint_lines(resolved))
    files, modes = context_files(constraints, profile_text(path, runtime_env), ld_conf, lock, pylock_files, copy_blocks)
    return BuildContext(stack=resolved.name, dockerfile=dockerfile, files=files, versions=resolved.versions(),
                        base=resolved.base, modes=modes, base_pins=base_pins, base_digest=base_digest,
                        lock_digest=lock.digest if lock is not None else "")


def content_hash(ctx: BuildContext) -> str:
    """The one name of an image: Dockerfile, generated files (the lock's pins among them), versions,
    the lock's digest and the base's identity."""
    if ctx.parent_hash:
        # A stack built on its parent's image: the parent's content hash names everything below it.
        base = {"parent": ctx.parent_hash}
    elif "image" in ctx.base:
        base = {"image": ctx.base["image"], **({"digest": ctx.base_digest} if ctx.base_digest else {})}
    else:
        base = {"bootstrap": base_identity(ctx.base, ctx.base_pins or None)}
    doc = {
        "format": 1,
        "lock": ctx.lock_digest,
        "dockerfile": hashlib.sha256(ctx.dockerfile.encode()).hexdigest(),
        "files": {k: hashlib.sha256(v).hexdigest() + (f":{ctx.modes[k]:o}" if ctx.modes.get(k, 0o644) != 0o644 else "")
                  for k, v in sorted(ctx.files.items())},
        "versions": dict(sorted(ctx.versions.items())),
        "base": base,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def render_component(resolved: ResolvedStack, name: str, lock: Lock | None = None) -> dict:
    """One component's rendered fragments ({"build", "runtime"}) as they appear in the stack's Dockerfile:
    a change to one component's template shows in its own golden file (tests/golden/components/)."""
    rc = next((c for c in resolved.components if c.name == name), None)
    if rc is None:
        raise RenderError(f"stack {resolved.name!r} has no component {name!r}")
    block = _component_block(jinja_environment(), resolved, rc, lock, locked_sources(resolved, lock), {})
    return {"build": block["build"], "runtime": block["runtime"]}
