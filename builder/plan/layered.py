"""Stacks built on their parent's verified image (issue #16).

A stack that extends another and adds no components (a project: its own Python packages, Debian
packages, environment, files, build-time commands and checks) is not built from the Debian base
again: its Dockerfile starts FROM the parent's promoted image, named by the parent's content hash,
and adds only the stack's own layers. A small build stage derived from the parent image installs
the stack's Python packages (with the CA bundle, which never reaches the runtime stage; with the
parent's locked build packages only when an sdist has to be compiled).

Catalog stacks all add components, whose steps interleave by cost (system, compile, CUDA,
Python) inside one multi-stage build: they stay whole builds.

Pure: values in, a BuildContext out. The parent's plan is handed in as plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import RenderError
from builder.names import (APT_RUNTIME_FILE, BUILD_FILES, CA_BUNDLE_TARGET, COPIED_FILES, LEAF, PARENT_LABEL,
                           PYLOCK_DIR, RUNTIME_FILES, RUNTIME_UID, VENV, WORKDIR)
from builder.plan.lockfile import Lock
from builder.plan.pins import DEFAULT_EPOCH, LEAF_STEP, constraint_lines, pip_steps
from builder.plan.render import (BuildContext, context_files, copy_lines, jinja_environment, image_labels, leaf_install,
                                 locked_sources, profile_text, refuse_build_args_in_env, render_dockerfile, run_commands, runtime_environment)
from builder.plan.resolve import ResolvedStack
from builder.spec import projectfiles
from builder.spec.stack import MergedStack, StackSpec


@dataclass(frozen=True)
class Parent:
    """What a layered stack needs of its parent's plan."""
    stack: str
    content_hash: str
    image: str                   # the parent's promoted hash tag
    lock: Lock
    apt_runtime: tuple           # Debian packages the parent's runtime stage installs (names)
    python_packages: tuple       # the parent's own python_packages (must be empty to layer on it)
    source_date_epoch: int


def layered_parent(merged: MergedStack) -> StackSpec | None:
    """The parent a stack builds on, or None for a whole build: the stack extends a parent and its own
    file declares no components and no base."""
    own = merged.chain[-1]
    if len(merged.chain) < 2 or own.components or own.base:
        return None
    return merged.chain[-2]


def own_apt(resolved: ResolvedStack, parent: Parent) -> list:
    """Debian packages of the stack's runtime stage that the parent image does not already install."""
    return sorted(set(resolved.apt_runtime) - set(parent.apt_runtime))


def layered_inputs(resolved: ResolvedStack, parent: Parent) -> dict:
    """What a layered lock is made from: the parent's identity and the stack's own installs only."""
    leaf = [s for s in pip_steps(resolved) if s.name == LEAF_STEP]
    return {
        "parent": {"stack": parent.stack, "content_hash": parent.content_hash, "lock": parent.lock.digest},
        "apt": {"runtime": own_apt(resolved, parent)},
        "constraints": constraint_lines(resolved),
        "python": {s.name: {"mode": s.mode, "requirements": list(s.requirements), "options": list(s.options),
                            "constrained": s.constrained} for s in leaf},
    }


def parent_changed(lock: Lock, parent: Parent) -> str:
    """Why a layered lock no longer fits its parent, in a few words ("" when it does)."""
    recorded = lock.parent or {}
    if not recorded:
        return f"it was not written on top of {parent.image} (lock it again to build on the parent's image)"
    if recorded.get("content_hash") != parent.content_hash:
        return (f"its parent {parent.stack} changed (content hash {str(recorded.get('content_hash'))[:16]} -> "
                f"{parent.content_hash[:16]})")
    return ""


def _needs_compilers(lock: Lock | None) -> bool:
    """An sdist among the stack's locked Python files is compiled: the build stage then gets the parent's
    locked build packages (compilers, headers); wheels need none."""
    return lock is not None and any(not p.file.endswith(".whl") for p in lock.python.get(LEAF_STEP, ()))


def render_layered(resolved: ResolvedStack, parent: Parent, lock: Lock | None = None) -> BuildContext:
    """The build context of a stack built on its parent's image; with `lock`, every install is pinned."""
    if parent.python_packages:
        raise RenderError(f"stack {resolved.name!r}: its parent {parent.stack} has python_packages of its own",
                          hint="declare the packages in one of the two stacks")
    env = jinja_environment()
    sources = locked_sources(resolved, None)
    pylock_files: dict = {}
    leaf_packages, leaf_args = leaf_install(resolved, lock, pylock_files)
    runtime_env, path = runtime_environment(resolved, bool(leaf_packages))
    own = resolved.merged.chain[-1]
    copy_blocks = projectfiles.collect(own.files, prefix=COPIED_FILES)
    labels = {**image_labels(resolved, parent.image, lock, sources), PARENT_LABEL: parent.image}
    compilers = _needs_compilers(lock)
    context = {
        "stack": resolved.name, "parent": parent.stack, "parent_image": parent.image,
        "lock_note": (f"Locked by {lock.path.name if lock.path else 'its lock'} (pins {lock.digest[:16]})."
                      if lock is not None else "Not locked: `dlenv lock` pins every package it installs."),
        "source_date_epoch": parent.source_date_epoch or DEFAULT_EPOCH,
        "apt_runtime": own_apt(resolved, parent),
        "apt_runtime_file": APT_RUNTIME_FILE if lock is not None else "",
        "compilers": compilers,
        "leaf_packages": leaf_packages, "leaf_install": leaf_args,
        "leaf_pylock": f"{PYLOCK_DIR}/{LEAF_STEP}.txt" if lock is not None and leaf_packages else "",
        "leaf_pylock_source": f"{BUILD_FILES}/pylock/{LEAF_STEP}.txt",
        "leaf": LEAF, "venv": VENV, "uid": RUNTIME_UID, "workdir": WORKDIR, "ca_target": CA_BUNDLE_TARGET,
        "path": path, "env": runtime_env, "labels": dict(sorted(labels.items())),
        "build_files": BUILD_FILES, "runtime_files": RUNTIME_FILES,
        "run_commands": run_commands(own.run), "copies": copy_lines(copy_blocks),
    }
    dockerfile = render_dockerfile(env, context, template="Dockerfile.layered.j2")
    # Every ARG of the template, also those of a build stage this stack does not need (yet).
    refuse_build_args_in_env(resolved, dockerfile + env.loader.get_source(env, "Dockerfile.layered.j2")[0])
    constraints = "".join(f"{req}\n" for req in constraint_lines(resolved))
    files, modes = context_files(constraints, profile_text(path, runtime_env), "", lock, pylock_files, copy_blocks)
    files.pop(f"{RUNTIME_FILES}/ld.so.conf", None)     # the parent's loader configuration stays as it is
    if compilers:
        files[f"{BUILD_FILES}/apt-build.txt"] = Lock.apt_text(parent.lock.apt_build).encode()
    else:
        files.pop(f"{BUILD_FILES}/apt-build.txt", None)
    return BuildContext(stack=resolved.name, dockerfile=dockerfile, files=files, versions=resolved.versions(),
                        base={"image": parent.image}, modes=modes, lock_digest=lock.digest if lock is not None else "",
                        parent_hash=parent.content_hash)
