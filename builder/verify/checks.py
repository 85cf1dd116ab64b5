"""Check planning, pure: what verify will run and how its outcome is reported.

Owns PlannedCheck (a stack's check with its placeholders filled in), CheckResult and Report,
the lock check (what the lock says the runtime stage holds, and the comparison with what a
container lists) and the Python snippets that run inside the image, as data. Runs nothing:
builder.verify.runner executes these plans in containers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from builder.names import LEAF, VENV
from builder.plan.lockfile import canonical
from builder.plan.pins import LEAF_STEP
from builder.spec.stack import Check


@dataclass
class CheckResult:
    name: str
    kind: str
    status: str            # passed | failed | skipped
    seconds: float
    command: str = ""
    output: str = ""
    reason: str = ""


@dataclass
class Report:
    image: str
    results: list = field(default_factory=list)
    seconds: float = 0.0
    nodes: int = 1

    @property
    def passed(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    @property
    def counts(self) -> dict:
        out = {"passed": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_json(self) -> dict:
        return {"image": self.image, "nodes": self.nodes, "passed": self.passed, "counts": self.counts,
                "seconds": round(self.seconds, 2), "checks": [asdict(r) for r in self.results]}


class JobsReport:
    """Results of checks run as MPI jobs, in order, and the exit code of the first failed job (what
    `verify --slurm` exits with: 1 when that job ended by a signal or with no code)."""

    def __init__(self, image: str, nodes: int, on_result=None):
        self.report = Report(image=image, nodes=nodes)
        self.first_failure = 0
        self.on_result = on_result

    def record(self, res: CheckResult, rc: int) -> None:
        self.report.results.append(res)
        if res.status == "failed" and not self.first_failure:
            self.first_failure = rc if 0 < rc < 256 else 1
        if self.on_result:
            self.on_result(res)


@dataclass(frozen=True)
class PlannedCheck:
    """A check with its placeholders ({version}, {major}, component vars) filled in."""
    check: Check
    values: dict

    def fill(self, text: str | None) -> str | None:
        if text is None:
            return None
        for key, value in self.values.items():
            text = text.replace("{" + key + "}", str(value))
        return text

    @property
    def name(self) -> str:
        return self.fill(self.check.name)


LOCK_CHECK_KIND = "lock"


# Lists what is installed where the lock says it should be: Debian's database and, per install
# prefix, the Python distributions found there (importlib.metadata reads *.dist-info).
INSTALLED_SCRIPT = r"""
import json, os, subprocess, sys
out = {"debian": {}, "python": {}}
fmt = "${Package}\t${Version}\t${db:Status-Abbrev}\n"
for line in subprocess.run(["dpkg-query", "-W", "-f=" + fmt], capture_output=True, text=True).stdout.splitlines():
    name, version, status = (line.split("\t") + ["", "", ""])[:3]
    if status.startswith("ii"):
        out["debian"][name.split(":")[0]] = version
try:
    import importlib.metadata as md
except ImportError:
    md = None
for path in sys.argv[1:]:
    if md is None or not os.path.isdir(path):
        out["python"][path] = None
        continue
    out["python"][path] = {d.metadata["Name"]: d.version for d in md.distributions(path=[path])}
print(json.dumps(out))
"""


def lock_expectations(resolved, lock) -> dict:
    """What the runtime stage must hold according to the lock: Debian versions, and per Python
    install location the distributions of the steps that install there."""
    python = resolved.get("python")
    pyver = python.version.text if python else ""
    where = {}
    for rc in resolved.components:
        if rc.name in lock.python and not rc.component.pip_build_only:
            where[rc.name] = rc.component.prefix or f"{VENV}/lib/python{pyver}/site-packages"
    where[LEAF_STEP] = f"{LEAF}/lib/python{pyver}/site-packages"
    expected_python: dict = {}
    for step, pins in lock.python.items():
        path = where.get(step)
        if path:
            expected_python.setdefault(path, {}).update({p.name: p.version for p in pins})
    return {"debian": {**lock.base_packages, **lock.apt_runtime}, "python": expected_python}


def compare_installed(expected: dict, found: dict) -> list[str]:
    """Differences between the lock's expectations and what a container holds (pure)."""
    problems = []
    deb = found.get("debian", {})
    for name, version in sorted(expected["debian"].items()):
        if deb.get(name) != version:
            problems.append(f"deb {name} is {deb.get(name) or 'missing'}, the lock says {version}")
    for name in sorted(set(deb) - set(expected["debian"])):
        problems.append(f"deb {name} {deb[name]} is installed but not in the lock")
    for path, pins in sorted(expected["python"].items()):
        dists = found.get("python", {}).get(path)
        if dists is None:
            continue  # a build-stage-only prefix (e.g. headers to compile against)
        have = {canonical(k): v for k, v in dists.items()}
        for name, version in sorted(pins.items()):
            if have.get(canonical(name)) != version:
                problems.append(f"{name} in {path} is {have.get(canonical(name)) or 'missing'}, the lock says {version}")
    return problems


def merged_expectations(resolved, locks: list) -> dict:
    """The lock expectations of an image built on its parents' images: every lock of the chain, root
    first (a layered stack adds no components, so its resolved stack places every lock's steps)."""
    expected: dict = {"debian": {}, "python": {}}
    for lock in locks:
        own = lock_expectations(resolved, lock)
        expected["debian"].update(own["debian"])
        for where, pins in own["python"].items():
            expected["python"].setdefault(where, {}).update(pins)
    return expected


def plan_checks(resolved, lock=None, parent_locks=()) -> list[PlannedCheck]:
    """The checks of a stack's image: the lock check (with the parents' locks of a layered stack), then
    every component's checks and the stack's own."""
    planned = []
    if lock is not None:
        planned.append(PlannedCheck(
            Check(name="installed packages are the locked versions", kind=LOCK_CHECK_KIND,
                  target=json.dumps(merged_expectations(resolved, [*parent_locks, lock]), sort_keys=True), timeout=60,
                  origin=str(lock.path or "")), {}))
    for rc in resolved.components:
        values = {"version": rc.version.text, "major": rc.version.version.major, **rc.version.vars}
        planned.extend(PlannedCheck(chk, values) for chk in rc.component.checks)
    pins = {}
    for text, _ in resolved.merged.python_packages:
        name, sep, version = text.partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    planned.extend(PlannedCheck(chk, {"version": pins.get(chk.target.lower(), "")}) for chk in resolved.merged.checks)
    return planned


def library_code(target: str) -> str:
    """Python that loads the shared library `target` (a library check)."""
    return f"import ctypes; ctypes.CDLL({target!r}); print('loaded {target}')"


def package_version_code(target: str) -> str:
    """Python that prints the installed version of the distribution `target` (a package check)."""
    return f"import importlib.metadata as m; print(m.version({target!r}))"
