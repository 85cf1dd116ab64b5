"""Per-component golden files: each catalog component's fragments, rendered (locked) in the smallest
catalog stack that has it, in tests/golden/components/<name>.txt. A change to one component's
template fails its own test instead of only every stack's Dockerfile golden."""

from __future__ import annotations

from pathlib import Path

from builder import paths
from builder.plan.plan import plan
from builder.plan.render import render_component
from builder.spec.stack import catalog_stack_names

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "components"


def representatives() -> dict:
    """component name -> the smallest catalog stack (fewest components, then name) that has it."""
    plans = sorted((plan(name) for name in catalog_stack_names(paths.stacks_dir())),
                   key=lambda p: (len(p.resolved.components), p.resolved.name))
    out = {}
    for p in plans:
        for rc in p.resolved.components:
            out.setdefault(rc.name, p)
    return dict(sorted(out.items()))


def component_text(name: str, p) -> str:
    lock = p.lock if p.lock_state == "locked" else None
    fragments = render_component(p.resolved, name, lock)
    return (f"# component {name}, rendered in stack {p.resolved.name}\n"
            f"# --- build stage\n{fragments['build']}\n# --- runtime stage\n{fragments['runtime']}\n")
