"""The difference between two inventories (pure): packages added, removed and changed, keyed by
ecosystem and normalized name, and the org.dlenv.* labels that differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.outputs.sbom.model import ECOSYSTEMS, Inventory


@dataclass(frozen=True)
class Change:
    ecosystem: str
    name: str
    before: tuple = ()      # ((version, where), ...): empty when added
    after: tuple = ()       # empty when removed

    def to_json(self) -> dict:
        def side(items):
            return [{"version": v, "where": w} for v, w in items]
        return {"ecosystem": self.ecosystem, "name": self.name, "a": side(self.before), "b": side(self.after)}


@dataclass(frozen=True)
class LabelChange:
    label: str
    a: str | None
    b: str | None


@dataclass(frozen=True)
class Diff:
    a: Inventory
    b: Inventory
    added: tuple = ()
    removed: tuple = ()
    changed: tuple = ()
    labels: tuple = ()

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed or self.labels)

    def summary(self) -> str:
        if self.identical:
            return "no differences"
        parts = [f"{len(self.added)} added", f"{len(self.removed)} removed", f"{len(self.changed)} changed"]
        if self.labels:
            parts.append(f"{len(self.labels)} label(s) differ")
        return ", ".join(parts)

    def to_json(self) -> dict:
        def who(inv: Inventory) -> dict:
            return {"image": inv.image, "name": inv.name, "content_hash": inv.content_hash}
        return {
            "a": who(self.a), "b": who(self.b), "identical": self.identical,
            "added": [c.to_json() for c in self.added], "removed": [c.to_json() for c in self.removed],
            "changed": [c.to_json() for c in self.changed],
            "labels": [{"label": c.label, "a": c.a, "b": c.b} for c in self.labels],
        }


def _grouped(inv: Inventory) -> dict:
    groups: dict = {}
    for pkg in inv.packages:
        groups.setdefault(pkg.key, {"name": pkg.name, "items": set()})["items"].add((pkg.version, pkg.where))
    return {k: (g["name"], tuple(sorted(g["items"]))) for k, g in groups.items()}


def _order(key: tuple) -> tuple:
    return (ECOSYSTEMS.index(key[0]) if key[0] in ECOSYSTEMS else len(ECOSYSTEMS), key[1])


def diff(a: Inventory, b: Inventory) -> Diff:
    """Packages keyed by ecosystem and normalized name: added (only in b), removed (only in a),
    changed (version, architecture or location differ); and the org.dlenv.* labels that differ."""
    ga, gb = _grouped(a), _grouped(b)
    added = tuple(Change(k[0], gb[k][0], (), gb[k][1]) for k in sorted(gb.keys() - ga.keys(), key=_order))
    removed = tuple(Change(k[0], ga[k][0], ga[k][1], ()) for k in sorted(ga.keys() - gb.keys(), key=_order))
    changed = tuple(Change(k[0], gb[k][0], ga[k][1], gb[k][1])
                    for k in sorted(ga.keys() & gb.keys(), key=_order) if ga[k][1] != gb[k][1])
    la, lb = a.dlenv_labels, b.dlenv_labels
    labels = tuple(LabelChange(k, la.get(k), lb.get(k)) for k in sorted(la.keys() | lb.keys())
                   if la.get(k) != lb.get(k))
    return Diff(a, b, added, removed, changed, labels)


def describe(items: tuple, show_where: bool = True) -> str:
    """`1.16.0`, or `1.16.0 (/opt/venv/...)` where the location/arch matters."""
    if not items:
        return ""
    return ", ".join(f"{v} ({w})" if show_where and w else v for v, w in items)
