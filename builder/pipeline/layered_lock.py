"""The lock of a stack built on its parent's image: resolved in a container of that image, so the
parent's packages are never resolved again. It pins only what the stack adds (its Debian packages
beyond the parent's, its Python packages beyond the parent's venv) and names the parent image it
was written on (stack, content hash, lock digest); a parent that moves makes it stale."""

from __future__ import annotations

import time

from builder import __version__
from builder.names import CA_BUNDLE_TARGET
from builder.errors import LockCommandError
from builder.pipeline.locker import (_Box, CA_FALLBACK, LockReport, _dry_run, _resolve_apt, deb_records, lock_environment,
                                     use_archive)
from builder.plan.conflicts import from_pip
from builder.plan.layered import layered_inputs, own_apt
from builder.plan.lockfile import Lock, canonical
from builder.plan.pins import LEAF_STEP, base_recipe, constraint_lines, pip_steps
from builder.plan.plan import Plan, image_pins, parent_of, shared_catalog
from builder.settings.host import CABundle, find_ca_bundle


def _parent_venv_pins(parent: Plan) -> dict:
    """canonical name -> PythonPin of what the parent's venv holds (its venv-mode pip steps)."""
    modes = {s.name: s.mode for s in pip_steps(parent.resolved)}
    return {canonical(p.name): p for step, pins in parent.lock.python.items() if modes.get(step) == "venv"
            for p in pins}


def _resolve_leaf(box: _Box, p: Plan, keep: Lock | None, upgrade: set, report: LockReport, log) -> dict:
    """{LEAF_STEP: pins} of the stack's own Python packages, beyond what the parent's venv has."""
    steps = [s for s in pip_steps(p.resolved) if s.name == LEAF_STEP]
    if not steps:
        return {}
    venv_pins = _parent_venv_pins(p.parent)
    named = {canonical(line.split("==")[0]) for line in constraint_lines(p.resolved)}
    previous = {canonical(x.name): x for x in (keep.python.get(LEAF_STEP, ()) if keep else ())
                if canonical(x.name) not in upgrade and canonical(x.name) not in named}
    try:
        pins = _dry_run(box, steps[0], constraint_lines(p.resolved), venv_pins, previous, report)
    except LockCommandError as exc:
        # A pin of the parent image that a dependency of the stack's packages rejects: said as the
        # conflict it is, as plan() says it of the stack's own entries.
        conflict = from_pip(exc.output, p.resolved, p.parent.resolved.name, image_pins(p.parent), shared_catalog())
        if conflict is None:
            raise
        raise conflict from None
    chosen = [x for x in pins if canonical(x.name) not in venv_pins or venv_pins[canonical(x.name)].version != x.version]
    log(f"pip step {LEAF_STEP}: {len(chosen)} package(s) beyond the parent's venv")
    return {LEAF_STEP: tuple(sorted(chosen, key=lambda x: canonical(x.name)))}


def make_layered_lock(client, p: Plan, *, previous: Lock | None = None, upgrade=(), upgrade_all: bool = False,
                      ca_bundle: CABundle | None = None, mirror: str | None = None, vanished=(),
                      log=lambda msg: None) -> tuple[Lock, LockReport]:
    """Resolve the pins of a stack built on its parent's image, in a container of that image (which the
    caller has made sure exists). `vanished`: Debian packages whose pins no source has (a refresh)."""
    report = LockReport()
    upgrade = {canonical(u) for u in upgrade}
    parent = parent_of(p.parent)
    keep = previous if (previous is not None and not upgrade_all and previous.parent) else None
    log(f"resolving pins in a container of the parent image {parent.image}")
    box = _Box(client, parent.image, lock_environment())
    try:
        box.put(CA_BUNDLE_TARGET, (ca_bundle or find_ca_bundle()).read())
        box.sh(CA_FALLBACK, "CA bundle")
        apt = own_apt(p.resolved, parent)
        apt_runtime, debs = {}, {}
        if apt:
            if "image" not in p.resolved.base:   # the image's sources name dlenv's package repository
                use_archive(box, base_recipe(p.resolved.base)["suite"], mirror)
            box.sh("apt-get update -qq", "apt-get update in the lock container")
            apt_runtime = _resolve_apt(box, apt, keep.apt_runtime if keep else {}, "runtime", report,
                                       upgrade | set(vanished))
            if "image" not in p.resolved.base:
                debs = deb_records(box, apt_runtime.items(), previous)
            log(f"Debian: {len(apt_runtime)} package(s) beyond the parent's")
        python = _resolve_leaf(box, p, keep, upgrade, report, log)
        version = box.sh("python3 -c 'import platform; print(platform.python_version())'", "python3 --version").strip()
        arch = box.sh("dpkg --print-architecture", "dpkg --print-architecture").strip()
    finally:
        box.close()
    lock = Lock(stack=p.resolved.name, inputs=layered_inputs(p.resolved, parent),
                platform={"python": version, "arch": arch, "suite": parent.lock.platform.get("suite", "")},
                base={"packages": {}}, apt_build={}, apt_runtime=apt_runtime, sources={}, python=python,
                dlenv_version=__version__, debs=debs, resolved_at=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                parent={"stack": parent.stack, "content_hash": parent.content_hash, "lock": parent.lock.digest})
    return lock, report

