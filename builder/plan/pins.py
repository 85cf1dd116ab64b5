"""What a stack installs, as exact lines: the base's identity, pip requirement lines, the components'
constraint pins, the pip steps and Debian source packages of a resolved stack, and the lock's inputs.

Pure functions of a resolved stack; shared by the lock (what to pin) and render (what to install).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from builder.errors import LockError, RenderError
from builder.names import BASE_REPO
from builder.plan.resolve import ResolvedStack


def base_ref(base: dict, pins: dict | None = None, digest: str | None = None) -> str:
    """The FROM of both stages: a registry image (by digest when the lock knows it) or the
    bootstrapped base named by its recipe and, when locked, its pinned package set."""
    if "image" in base:
        return f"{base['image'].split('@')[0]}@{digest}" if digest else base["image"]
    return f"{BASE_REPO}:{base_tag(base, pins)}"


def base_recipe(base: dict) -> dict:
    """What identifies a bootstrapped base (never a local image id)."""
    boot = base["bootstrap"]
    return {"suite": boot["suite"], "variant": boot.get("variant", "minbase"),
            "epoch": int(boot.get("epoch", DEFAULT_EPOCH))}


DEFAULT_EPOCH = 1735689600  # 2025-01-01T00:00:00Z: a fixed SOURCE_DATE_EPOCH makes the rootfs bit-identical


def packages_digest(packages: dict) -> str:
    return hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(packages.items())).encode()).hexdigest()


def base_identity(base: dict, pins: dict | None = None) -> dict:
    """What names a bootstrapped base: its recipe, plus the locked package set when there is one."""
    recipe = base_recipe(base)
    if pins:
        recipe = {**recipe, "packages": packages_digest(pins)}
    return recipe


def base_tag(base: dict, pins: dict | None = None) -> str:
    recipe = base_recipe(base)
    digest = hashlib.sha256(json.dumps(base_identity(base, pins), sort_keys=True).encode()).hexdigest()[:12]
    return f"{recipe['suite']}-{recipe['variant']}-{digest}"


def pip_requirements(comp, version) -> list:
    values = {"version": version.text, **version.vars}
    try:
        return [tmpl.format(**values) for tmpl in comp.pip]
    except KeyError as exc:
        raise RenderError(f"component {comp.name!r}: pip requirement uses unknown variable {exc}") from None


def constraint_lines(resolved: ResolvedStack) -> list:
    """The components' exact pins, applied to every pip step of the python group and the leaf."""
    return sorted(
        {req for rc in resolved.components if rc.component.group == "python"
         for req in pip_requirements(rc.component, rc.version) if "==" in req}, key=str.lower)


LEAF_STEP = "python_packages"      # the stack's own packages; component names cannot contain "_"


@dataclass(frozen=True)
class PipStep:
    """One `pip install` of the build stage, as the unlocked Dockerfile would run it."""
    name: str               # component name, or LEAF_STEP
    mode: str               # "venv" (into the venv, with dependencies), "target" (--target, no deps), "prefix" (leaf)
    requirements: tuple
    options: tuple
    constrained: bool       # the components' pins apply (PIP_CONSTRAINT in the python group and the leaf)


def pip_steps(resolved) -> list[PipStep]:
    steps = []
    for rc in resolved.components:
        reqs = pip_requirements(rc.component, rc.version)
        if not reqs:
            continue
        mode = "target" if rc.component.prefix else "venv"
        steps.append(PipStep(rc.name, mode, tuple(reqs), tuple(rc.component.pip_options),
                             constrained=rc.component.group == "python"))
    leaf = [text for text, _ in resolved.merged.python_packages]
    if leaf:
        steps.append(PipStep(LEAF_STEP, "prefix", tuple(leaf), (), constrained=True))
    return steps


def debian_sources(resolved) -> dict:
    """{component: {"package", "version", "file"}} for components compiled from a Debian source package."""
    out = {}
    for rc in resolved.components:
        src = rc.component.source
        if not src:
            continue
        values = {"version": rc.version.text, **rc.version.vars}
        try:
            out[rc.name] = {key: str(src[key]).format(**values) for key in ("package", "version", "file")}
        except KeyError as exc:
            raise LockError(f"component {rc.name!r}: source uses unknown variable {exc}") from None
    return out


def lock_inputs(resolved) -> dict:
    base = resolved.base
    return {
        "base": {"image": base["image"]} if "image" in base else base_recipe(base),
        "components": dict(resolved.versions()),
        "apt": {"build": list(resolved.apt_build), "runtime": list(resolved.apt_runtime)},
        "sources": debian_sources(resolved),
        "constraints": constraint_lines(resolved),
        "python": {s.name: {"mode": s.mode, "requirements": list(s.requirements), "options": list(s.options),
                            "constrained": s.constrained} for s in pip_steps(resolved)},
    }
