"""Resolution: from a merged stack to exact component versions, checked against every constraint.

Pure. Each component declares versions and constraints on other components (`requires`);
the stack asks for exact versions or ranges. `resolve` picks, for every component the stack
names or a chosen version requires, one version that satisfies all of them (backtracking,
deterministic: an unconstrained component takes its catalog default, a range takes the newest
match). A conflict is explained in one message naming both sides and the files they come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.specifiers import SpecifierSet

from builder.plan.catalog import GROUPS, Catalog, Component, ComponentVersion
from builder.errors import CatalogError, ResolveError, SpecError
from builder.spec.stack import MergedStack, Origin

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ResolvedComponent:
    component: Component
    version: ComponentVersion
    reason: str         # why it is in the stack: the stack line, or "required by X"

    @property
    def name(self) -> str:
        return self.component.name


@dataclass(frozen=True)
class ResolvedStack:
    name: str
    merged: MergedStack
    components: tuple           # ResolvedComponent in build order
    base: dict

    def get(self, name: str) -> ResolvedComponent | None:
        return next((c for c in self.components if c.name == name), None)

    def versions(self) -> dict:
        return {c.name: c.version.text for c in self.components}

    def in_group(self, group: str) -> list:
        return [c for c in self.components if c.component.group == group]

    @property
    def apt_build(self) -> list:
        return sorted({p for c in self.components for p in c.component.apt_build} | set(self.merged.apt_packages))

    @property
    def apt_runtime(self) -> list:
        return sorted({p for c in self.components for p in c.component.apt_runtime} | set(self.merged.apt_packages))

    @property
    def env(self) -> dict:
        env: dict = {}
        for c in self.components:
            env.update(c.component.env)
        env.update(self.merged.env)
        return dict(sorted(env.items()))

    @property
    def path(self) -> str:
        entries = []
        for c in reversed(self.components):  # later (leaf) components first on PATH
            entries.extend(p for p in c.component.path if p not in entries)
        return ":".join(entries + [SYSTEM_PATH])

    @property
    def ld_paths(self) -> list:
        return [p for c in self.components for p in c.component.ld_paths]

    @property
    def checks(self) -> list:
        return [chk for c in self.components for chk in c.component.checks] + list(self.merged.checks)


@dataclass
class _Rejection:
    name: str
    version: str
    by: str
    why: str


def _constraints(comp: Component, v: ComponentVersion) -> dict:
    """What this version requires: every target is added to the stack."""
    out = dict(comp.requires)
    for target, spec in v.requires.items():
        out[target] = (out[target] & spec) if target in out else spec
    return out


def _all_constraints(comp: Component, v: ComponentVersion) -> dict:
    """Requirements plus `constrains`: conditions on a component only if the stack has it anyway
    (torch brings its own CUDA wheels, so it does not add the cuda component, but where a stack has one
    the two must agree)."""
    out = _constraints(comp, v)
    for extra in (comp.constrains, v.constrains):
        for target, spec in extra.items():
            out[target] = (out[target] & spec) if target in out else spec
    return out


class _Search:
    """A backtracking search over component versions: the stack's wishes first (in group order), then
    what the chosen versions require; every rejected candidate is recorded to explain a failure."""

    def __init__(self, merged: MergedStack, catalog: Catalog):
        self.catalog = catalog
        self.wanted: dict[str, tuple[SpecifierSet, str, Origin]] = dict(merged.components)
        self.comps = {}
        for name, (_, _, origin) in self.wanted.items():
            try:
                self.comps[name] = catalog.get(name)
            except CatalogError as exc:
                raise SpecError(origin.path, exc.message, line=origin.line, field=origin.field, hint=exc.hint) from None
        self.rejections: list[_Rejection] = []
        self.reasons: dict[str, str] = {name: str(origin) for name, (_, _, origin) in self.wanted.items()}

    def candidates(self, name: str) -> list[ComponentVersion]:
        comp = self.comps[name]
        if name in self.wanted:
            spec, text, origin = self.wanted[name]
            matching = [v for v in comp.versions if spec.contains(v.version, prereleases=True)]
            if not matching:
                raise ResolveError(
                    f"{origin}: {origin.field}: {name} {text} matches no version in the catalog "
                    f"(available: {', '.join(v.text for v in comp.versions)})")
            return matching
        default = comp.version(comp.default)
        return [default] + [v for v in comp.versions if v is not default]

    def describe(self, name: str, v: ComponentVersion) -> str:
        return f"{name} {v.text} ({self.comps[name].folder / 'component.yaml'})"

    def consistent(self, name: str, v: ComponentVersion, assigned: dict) -> _Rejection | None:
        wanted, comps = self.wanted, self.comps
        if name in wanted and not wanted[name][0].contains(v.version, prereleases=True):
            return _Rejection(name, v.text, str(wanted[name][2]), f"stack asks {name} {wanted[name][1]}")
        for other, ov in assigned.items():
            spec = _all_constraints(comps[other], ov).get(name)
            if spec is not None and not spec.contains(v.version, prereleases=True):
                why = f"{other} {ov.text} needs {name}{spec}"
                if name in wanted:
                    why += f", but stack asks {name} {wanted[name][1]} ({wanted[name][2]})"
                return _Rejection(name, v.text, self.describe(other, ov), why)
        for target, spec in _all_constraints(comps[name], v).items():
            if target in assigned and not spec.contains(assigned[target].version, prereleases=True):
                side = (f"stack asks {target} {wanted[target][1]} ({wanted[target][2]})" if target in wanted
                        else f"{target} {assigned[target].text} was chosen ({self.reasons.get(target, '')})")
                return _Rejection(name, v.text, self.describe(name, v), f"{name} {v.text} needs {target}{spec}, but {side}")
        return None

    def required(self, name: str, v: ComponentVersion, assigned: dict, rest: list) -> list:
        """Components `name` at `v` requires that are neither chosen nor pending yet."""
        added = []
        for target in sorted(_constraints(self.comps[name], v)):
            if target not in assigned and target not in rest and target not in added:
                if target not in self.comps:
                    self.comps[target] = self.catalog.get(target)
                self.reasons[target] = f"required by {name} {v.text}"
                added.append(target)
        return added

    def solve(self, assigned: dict, pending: list) -> dict | None:
        if not pending:
            return assigned
        name, rest = pending[0], pending[1:]
        for v in self.candidates(name):
            rejected = self.consistent(name, v, assigned)
            if rejected:
                self.rejections.append(rejected)
                continue
            new_assigned = {**assigned, name: v}
            result = self.solve(new_assigned, rest + self.required(name, v, new_assigned, rest))
            if result is not None:
                return result
        return None


def resolve(merged: MergedStack, catalog: Catalog) -> ResolvedStack:
    """Choose one version per component so that every constraint holds; explain a conflict by both sides."""
    search = _Search(merged, catalog)
    order = sorted(search.wanted, key=lambda n: (GROUPS.index(search.comps[n].group), n))
    solution = search.solve({}, order)
    if solution is None:
        raise ResolveError(_explain(search.rejections, search.wanted))
    return ResolvedStack(name=merged.name, merged=merged, components=_build_order(solution, search.comps, search.reasons),
                         base=merged.base)


def _explain(rejections: list, wanted: dict) -> str:
    """One message naming both sides of the conflict and the files they come from."""
    if not rejections:
        return "no combination of component versions satisfies every constraint"
    # Prefer a rejection that names a stack demand: it is the one a user can act on.
    best = next((r for r in rejections if "stack asks" in r.why), None)
    if best is not None:
        return f"cannot resolve {best.name}: {best.why} (from {best.by})"
    name = rejections[-1].name
    reasons = []
    for r in rejections:
        if r.name == name and f"{r.why} ({r.by})" not in reasons:
            reasons.append(f"{r.why} ({r.by})")
    asked = [f"stack asks {n} {text} ({origin})" for n, (_, text, origin) in sorted(wanted.items())
             if any(n in r for r in reasons)]
    return f"cannot resolve {name}: " + "; ".join(reasons + asked)


def _build_order(solution: dict, comps: dict, reasons: dict) -> tuple:
    """Group order first (layer cost), then dependencies before dependants, then name.

    `after` orders like a dependency but only among components the stack already has: Open MPI
    compiles against UCX when a stack chooses UCX, and a stack without it still resolves."""
    ordered: list[str] = []
    visiting: set = set()

    def visit(name: str):
        if name in ordered or name in visiting:
            return
        visiting.add(name)
        for dep in sorted(set(_constraints(comps[name], solution[name])) | set(comps[name].after)):
            if dep in solution and comps[dep].group == comps[name].group:
                visit(dep)
        visiting.discard(name)
        ordered.append(name)

    for group in GROUPS:
        for name in sorted(n for n in solution if comps[n].group == group):
            visit(name)
    return tuple(ResolvedComponent(comps[n], solution[n], reasons.get(n, "")) for n in ordered)
