"""A stack built on its parent's image against the Python pins of that image (issue #24).

Its own packages are installed on top of the parent image with the parent's venv pins as constraints
(pipeline/layered_lock.py), so a requirement those pins do not satisfy can never be locked.
`check_parent_pins` finds such a requirement in python_packages before any container starts, from the
parent's lock alone; `from_pip` reads pip's ResolutionImpossible explanation (a conflict through a
dependency, which only the resolution in the lock container finds) into the same one-line error. Both
name the entry, the two requirements, the parent and the ways out: drop or widen the requirement, or
build the project whole from the base with a component that pins the package (`components:` in the
stack file), where the catalog has one.

Pure: values in, a ParentPinConflict out.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from builder.errors import CatalogError, ParentPinConflict, RenderError, ResolveError, SpecError
from builder.plan.catalog import Catalog
from builder.plan.lockfile import Lock, canonical
from builder.plan.pins import pip_requirements, pip_steps
from builder.plan.resolve import ResolvedStack, resolve
from builder.spec.stack import Origin


@dataclass(frozen=True)
class ImagePin:
    """A Python package in the venv of the image a stack builds on, and the lock that pins it."""
    name: str           # as the lock spells it
    version: str
    stack: str          # the stack whose lock pins it
    step: str           # its pip step in that lock (a component's name)
    lock_file: str      # that lock's file name

    @property
    def line(self) -> str:
        return f"{self.name}=={self.version}"


def venv_pins(resolved: ResolvedStack, lock: Lock | None) -> dict:
    """canonical name -> ImagePin of what the venv of the whole build `resolved`, locked by `lock`, holds
    (its venv steps; the --target prefixes of the CUDA components are no constraint of a stack on it)."""
    if lock is None:
        return {}
    modes = {s.name: s.mode for s in pip_steps(resolved)}
    where = lock.path.name if lock.path else f"the lock of {resolved.name}"
    return {canonical(p.name): ImagePin(p.name, p.version, resolved.name, step, where)
            for step, pins in lock.python.items() if modes.get(step) == "venv" for p in pins}


def accepts(req: Requirement, version: str) -> bool:
    """Whether `req` allows `version`, a pre-release too (a pin is what the image holds, chosen or not)."""
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True     # what packaging cannot read, pip judges in the lock container


def _requirement(text: str) -> Requirement | None:
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def check_parent_pins(resolved: ResolvedStack, parent: str, pins: dict, catalog: Catalog) -> None:
    """ParentPinConflict when an entry of the stack's python_packages rejects the version its parent's
    image holds (`pins`: venv_pins of that image); the first such entry, counting the others."""
    found = []
    for text, origin in resolved.merged.python_packages:
        req = _requirement(text)
        pin = pins.get(canonical(req.name)) if req is not None else None
        if pin is not None and not accepts(req, pin.version):
            found.append((text, origin, req, pin))
    if found:
        text, origin, req, pin = found[0]
        raise _conflict(resolved, origin, text, req, pin, parent, catalog, others=[t for t, *_ in found[1:]])


# --- pip's explanation of a conflict ----------------------------------------------------------------
_CANNOT = re.compile(r"Cannot install (.+?) because these package versions have conflicting dependencies")
_CAUSED_BY = "The conflict is caused by:"
_USER = "The user requested "
_CONSTRAINT = "The user requested (constraint) "
_DEPENDS = re.compile(r"^(\S+) (\S+) depends on (.+)$")


@dataclass(frozen=True)
class PipConflict:
    """pip's ResolutionImpossible, read: what it could not install and why."""
    triggers: tuple     # requirement texts pip names after "Cannot install"
    causes: tuple       # (who, requirement text): who is "" for the user's own request, "foo 1.0" for a dependency
    constraints: tuple  # requirement texts of the constraints involved


def read_pip_conflict(output: str) -> PipConflict | None:
    """pip's explanation in `output` (stderr and stdout of a failed `pip install`), or None when it
    reports no ResolutionImpossible. With --quiet, pip prints the triggers but not the causes."""
    if "ResolutionImpossible" not in output:
        return None
    m = _CANNOT.search(output)
    triggers = tuple(t.strip() for t in re.split(r", | and ", m[1])) if m else ()
    causes, constraints = [], []
    lines = [ln.strip() for ln in output.splitlines()]
    if _CAUSED_BY in lines:
        for text in lines[lines.index(_CAUSED_BY) + 1:]:
            if not text:
                break
            if text.startswith(_CONSTRAINT):
                constraints.append(text[len(_CONSTRAINT):])
            elif text.startswith(_USER):
                causes.append(("", text[len(_USER):]))
            elif (d := _DEPENDS.match(text)) is not None:
                causes.append((f"{d[1]} {d[2]}", d[3]))
    return PipConflict(triggers, tuple(causes), tuple(constraints))


def from_pip(output: str, resolved: ResolvedStack, parent: str, pins: dict, catalog: Catalog) -> ParentPinConflict | None:
    """The ParentPinConflict that pip's failed resolution of the stack's python_packages on its parent's
    image amounts to, or None when what pip could not satisfy is no pin of that image."""
    conflict = read_pip_conflict(output)
    if conflict is None:
        return None
    causes = conflict.causes or tuple(("", t) for t in conflict.triggers)
    entries = {}
    for text, origin in resolved.merged.python_packages:
        req = _requirement(text)
        if req is not None:
            entries[canonical(req.name)] = (text, origin)
    triggered = [entries[canonical(r.name)] for t in conflict.triggers
                 for r in [_requirement(t)] if r is not None and canonical(r.name) in entries]
    for who, text in causes:
        need = _requirement(text)
        pin = pins.get(canonical(need.name)) if need is not None else None
        if pin is None or accepts(need, pin.version):
            continue
        if not who:     # the stack's own request
            entry, origin = entries.get(canonical(need.name), (str(need), None))
            return _conflict(resolved, origin, entry, need, pin, parent, catalog)
        named = entries.get(canonical(who.split()[0]))
        entry, origin = named or (triggered[0] if triggered else (", ".join(conflict.triggers) or "python_packages", None))
        return _conflict(resolved, origin, entry, need, pin, parent, catalog, via=who)
    return None


# --- the message ---------------------------------------------------------------------------------
def _conflict(resolved: ResolvedStack, origin: Origin | None, entry: str, need: Requirement, pin: ImagePin,
              parent: str, catalog: Catalog, *, via: str = "", others=()) -> ParentPinConflict:
    """The one-line error: the entry and its requirement, the parent's pin, the ways out."""
    stack_file = Path(resolved.merged.path).name
    held = f"{pin.line} in the image of its parent {parent} (pinned by {pin.lock_file}, pip step {pin.step})"
    if via:
        message = f"{entry} needs {_spelled(need)} ({via} depends on it), which conflicts with {held}"
    else:
        message = f"{entry} conflicts with {held}"
    if others:
        message += f"; so {'does' if len(others) == 1 else 'do'} {', '.join(others)}"
    keep = f"{parent}'s {pin.name} {pin.version}"
    if via:
        first = f"use a version of {via.split()[0]} that accepts {keep}, or drop {entry}"
    elif len(need.specifier) == 1 and next(iter(need.specifier)).operator in ("==", "==="):
        first = f"drop the pin to use {keep}"
    else:
        first = f"widen the requirement to accept {keep}, or drop it"
    hint = f"{first}{_whole_build(resolved, catalog, pin, need, parent, stack_file)}"
    if origin is None:
        return ParentPinConflict(resolved.merged.path, message, field="python_packages", hint=hint)
    return ParentPinConflict(origin.path, message, line=origin.line, field=origin.field, hint=hint)


def _spelled(req: Requirement) -> str:
    return f"{req.name}{req.specifier}" if req.specifier else req.name


def _whole_build(resolved: ResolvedStack, catalog: Catalog, pin: ImagePin, need: Requirement, parent: str,
                 stack_file: str) -> str:
    """The second way out, to follow the first: a component that pins the package at a version `need`
    accepts and that resolves with the stack's other components, in a whole build; or why a whole build
    would not help."""
    offers = _component_pins(catalog, pin.name)
    fitting = [(comp, text) for comp, text, version in offers if accepts(need, version)]
    for comp, text in fitting:
        if _resolves_with(resolved, catalog, comp, text):
            return (f", or add `components: {{{comp}: \"{text}\"}}` to {stack_file}, which builds the project "
                    f"whole from the base instead of on {parent}'s image")
    whole = f"building the project whole with `components:` in {stack_file} instead of on {parent}'s image"
    if fitting:
        listed = ", ".join(f"{comp} {text}" for comp, text in fitting)
        return f"; {whole} would not help: {listed} does not go with the stack's other components"
    if offers:
        listed = "; ".join(f"{comp}: {', '.join(v for c, _, v in offers if c == comp)}"
                           for comp in dict.fromkeys(c for c, _, _ in offers))
        return (f"; {whole} would not help: the components that pin {pin.name} offer no version it accepts "
                f"({listed})")
    return (f"; {whole} would not help: no catalog component pins {pin.name}, so the {pin.step} component's "
            "pip step resolves it again")


def _resolves_with(resolved: ResolvedStack, catalog: Catalog, comp: str, version: str) -> bool:
    """Whether the stack's components resolve with `comp` at exactly `version` added."""
    origin = Origin(str(resolved.merged.path), None, f"components.{comp}")
    components = {**resolved.merged.components, comp: (SpecifierSet(f"=={version}"), version, origin)}
    try:
        resolve(dataclasses.replace(resolved.merged, components=components), catalog)
    except (ResolveError, CatalogError, SpecError):
        return False
    return True


def _component_pins(catalog: Catalog, name: str) -> list:
    """[(component, its version, the version it pins `name` at)] of the catalog's Python components whose
    exact pip pins name the package (they constrain every Python step of a whole build), newest first."""
    out = []
    for comp_name in catalog.names():
        try:
            comp = catalog.get(comp_name)
        except (CatalogError, SpecError):
            continue    # a broken component is reported where it is used, not in this hint
        if comp.group != "python":
            continue
        for version in comp.versions:
            try:
                lines = pip_requirements(comp, version)
            except RenderError:
                continue
            for line in lines:
                req = _requirement(line)
                exact = [s.version for s in req.specifier if s.operator == "=="] if req is not None else []
                if exact and canonical(req.name) == canonical(name):
                    out.append((comp.name, version.text, exact[0]))
    return out
