"""Making a lock: every apt, pip and source pin resolved inside a container of the stack's base.

Effects live here (a throwaway container, the Debian archive, the package index); what a lock
holds, how the container's answers are parsed and when a lock is stale live in `lock`.

The container reproduces the build stage's own conditions (same base, same apt sources, the
pinned build packages, Debian's Python and its venv), so pins are resolved for the image's
interpreter and platform, never the host's. Per pip step it runs `pip install --dry-run
--ignore-installed --report` with that step's options: the report carries the sha256 the index
publishes for the file pip chose, and wheels are not downloaded (their metadata is enough).

Pins already in a previous lock are kept unless asked to upgrade (like pip-compile): a relock
after adding one package changes only what that package brings. A kept pin that can no longer
be installed (gone from the archive, or in conflict with a new requirement) is resolved again
and reported.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
import uuid
from dataclasses import dataclass, field

import docker.errors

from builder import __version__
from builder.engine import base as base_mod
from builder.engine import dockerapi as engine
from builder.engine.containers import interrupts_deferred, remove_named
from builder.settings.host import CABundle, find_ca_bundle, pip_build_args
from builder.settings.host import debian_sources as debian_sources_text
from builder.errors import BaseImageError, EngineError, LockCommandError, LockError
from builder.plan.lockfile import (Lock, canonical, digest, parse_apt_simulation, parse_dpkg_list, parse_pip_report,
                                    parse_source_uris)
from builder.plan.pins import LEAF_STEP, base_recipe, constraint_lines, debian_sources, lock_inputs, pip_steps
from builder.names import (APT_SOURCES_DIR, APT_SOURCES_LIST, CA_BUNDLE_TARGET, PACKAGE_REPO_HOST, ROLE_LABEL, SYSTEM_CA,
                           VENV)
from builder.plan.debs import deb_files, pin_key, repository_sources

WORK = "/tmp/dlenv-lock"


@dataclass
class LockReport:
    """What a lock run changed, for the CLI to print."""
    kept: int = 0
    notes: list = field(default_factory=list)       # kept pins that had to be resolved again, and why
    pockets: dict = field(default_factory=dict)     # PACKAGE=VERSION -> archive pocket, of pins that moved


class _Box:
    """The lock container: a base image with the build's pip settings, run as root."""

    def __init__(self, client, image: str, env: dict, repo: str | None = None):
        self.client = client
        # With dlenv's package repository (a refresh), the container reaches it on the host's loopback.
        network = {"network_mode": "host"} if repo else {}
        name = f"dlenv-lock-{uuid.uuid4().hex[:10]}"
        try:
            # As root also where the image's default user is not (a parent image runs as its user). An
            # interrupt waits for the create and start, then removes the container by its name.
            with interrupts_deferred():
                self.container = client.containers.run(
                    image, ["sleep", "infinity"], detach=True, labels={ROLE_LABEL: "lock"}, user="0:0",
                    name=name, environment=env, init=True, **network)
        except docker.errors.DockerException as exc:
            remove_named(client, name)      # run() leaves a container it created but could not start
            raise EngineError(f"could not start the lock container from {image}: {' '.join(str(exc).split())[:200]}") from None
        except BaseException:
            remove_named(client, name)
            raise

    def sh(self, script: str, what: str, env: dict | None = None) -> str:
        code, (out, err) = self.container.exec_run(["bash", "-o", "pipefail", "-c", script], environment=env or {},
                                                  demux=True)
        stdout = (out or b"").decode(errors="replace")
        stderr = (err or b"").decode(errors="replace")
        if code != 0:
            lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
            # pip and apt put the reason last or on an "E:"/"ERROR:" line; show those first.
            key = [ln for ln in lines if ln.startswith(("E:", "ERROR:", "error:"))] or lines[-3:]
            raise LockCommandError(f"{what} failed: {' | '.join(key[-3:])[:400]}", output=stderr + "\n" + stdout)
        return stdout

    def put(self, path: str, data: bytes) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[-1])
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        self.sh(f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])}", "mkdir")
        self.container.put_archive(path.rsplit("/", 1)[0], buf.getvalue())

    def close(self) -> None:
        try:
            self.container.remove(force=True)
        except docker.errors.DockerException:
            pass


def use_archive(box: _Box, suite: str, mirror: str | None, repo: str | None = None) -> None:
    """Point the lock container's apt at the Debian archive (the image's own sources name dlenv's
    package repository, which serves only a lock's files), and, for a refresh, at that repository too:
    pins the archive dropped but the store keeps are then still installable."""
    text = debian_sources_text(suite, mirror=mirror) + ("\n" + repository_sources() if repo else "")
    box.sh(f"rm -f {APT_SOURCES_LIST} {APT_SOURCES_DIR}/*", "clearing the image's apt sources")
    box.put(f"{APT_SOURCES_DIR}/dlenv-lock.sources", text.encode())
    if repo:   # only dlenv's host goes through the repository; the archive is reached as usual
        box.put("/etc/apt/apt.conf.d/99dlenv-lock-proxy",
                f'Acquire::http::Proxy::{PACKAGE_REPO_HOST} "{repo}";\n'.encode())


def deb_records(box: _Box, pins, previous: Lock | None) -> dict:
    """{PACKAGE=VERSION: {arch, size, sha256, file}} of `pins` ((name, version) pairs), as the archive's
    index says (the previous lock's record where it has one: the bytes of a pin never change)."""
    known = dict(previous.debs) if previous is not None else {}
    keys = {pin_key(n, v) for n, v in pins}
    out = {k: known[k] for k in keys if k in known and "priority" in known[k]}
    wanted = sorted(k for k in keys if k not in out)
    if wanted:
        text = box.sh(f"apt-cache show {' '.join(shlex.quote(w) for w in wanted)} 2>/dev/null || true",
                      "reading the Debian index")
        for key, deb in deb_files(text).items():
            if key in wanted and deb.filename.startswith("pool/"):
                out[key] = deb.lock_entry()
    out.update({k: known[k] for k in wanted if k not in out and k in known})   # only the store has it now
    missing = [k for k in wanted if k not in out]
    if missing:
        raise LockError(f"the Debian index has no file for {', '.join(missing[:6])}"
                        f"{f' and {len(missing) - 6} more' if len(missing) > 6 else ''}",
                        hint="run `apt-get update` on the mirror's side, or lock again later")
    return dict(sorted(out.items()))


def _pockets(box: _Box, now: dict, before: dict) -> dict:
    """{PACKAGE=VERSION: pocket} of the pins in `now` that differ from `before` (apt-cache madison)."""
    moved = sorted(n for n, v in now.items() if before.get(n) != v)
    if not moved:
        return {}
    out = {}
    text = box.sh(f"apt-cache madison {' '.join(shlex.quote(n) for n in moved)} || true", "apt-cache madison")
    for line in text.splitlines():
        parts = [x.strip() for x in line.split("|")]
        if len(parts) >= 3 and now.get(parts[0]) == parts[1]:
            words = parts[2].split()
            out.setdefault(pin_key(parts[0], parts[1]), words[1].split("/")[0] if len(words) > 1 else "")
    return out


def _apt_words(names, keep: dict) -> list[str]:
    return [f"{n}={keep[n]}" if n in keep else n for n in names]


def _resolve_apt(box: _Box, names: list, previous: dict, stage: str, report: LockReport, upgrade: set) -> dict:
    """{package: version} the stage installs or upgrades; previous pins kept where they still install."""
    if not names:
        return {}
    fresh = parse_apt_simulation(box.sh(
        f"apt-get install -s --no-install-recommends {' '.join(shlex.quote(n) for n in names)}",
        f"resolving the {stage} stage's Debian packages ({', '.join(names)})"))
    keep = {n: v for n, v in previous.items() if n in fresh and n not in upgrade and fresh[n] != v}
    if not keep:
        report.kept += sum(1 for n, v in fresh.items() if previous.get(n) == v)
        return fresh
    # A pin no index has any more moves alone (to what apt picks); the others are kept.
    unavailable = _unavailable(box, keep)
    if unavailable:
        report.notes.append(f"{stage}: {len(unavailable)} pin(s) no source has any more moved: "
                            f"{', '.join(sorted(unavailable)[:6])}")
        keep = {n: v for n, v in keep.items() if n not in unavailable}
    words = _apt_words(sorted(set(names) | set(keep)), keep)
    try:
        pinned = parse_apt_simulation(box.sh(
            f"apt-get install -s --no-install-recommends {' '.join(shlex.quote(w) for w in words)}", "apt pins"))
    except LockError as exc:
        report.notes.append(f"{stage}: previous Debian pins no longer install ({exc.message[:160]}); resolved again")
        return fresh
    report.kept += sum(1 for n, v in pinned.items() if previous.get(n) == v)
    return pinned


def _unavailable(box: _Box, pins: dict) -> set:
    """The names of `pins` whose version no index of the container has."""
    if not pins:
        return set()
    text = box.sh(f"apt-cache show {' '.join(shlex.quote(pin_key(n, v)) for n, v in sorted(pins.items()))} "
                  "2>/dev/null || true", "apt-cache show")
    found = {key.split("=", 1)[0] for key in deb_files(text) if key.split("=", 1)[0] in pins
             and pins[key.split("=", 1)[0]] == key.split("=", 1)[1]}
    return set(pins) - found


def _lock_base(client, base: dict, keep: Lock | None, report: LockReport, mirror: str | None, log,
               repo: str | None = None) -> str:
    """The base the lock resolves in: the previous lock's pinned base when it still bootstraps."""
    bootstrapped = "image" not in base
    pins = None
    if keep is not None and bootstrapped and keep.base.get("suite") == base_recipe(base)["suite"] \
            and keep.base.get("epoch") == base_recipe(base)["epoch"] and keep.base_packages:
        pins = keep.base_packages
    try:
        ref = base_mod.ensure_base(client, base, log, pins=pins, mirror=mirror, repo=repo if pins else None)
    except BaseImageError as exc:  # a pinned base that no longer bootstraps is resolved again
        if pins is None:
            raise
        report.notes.append(f"base: {exc.message[:200]}; bootstrapped afresh")
        pins = None
        ref = base_mod.ensure_base(client, base, log, mirror=mirror)
    if bootstrapped and not engine.image_labels(engine.image_attrs(client, ref)).get(base_mod.PACKAGES_LABEL):
        log("the local base has no recorded rootfs checksum and package set: bootstrapping it again")
        ref = base_mod.ensure_base(client, base, log, force=True, pins=pins, mirror=mirror)
    return ref


def _resolve_sources(box: _Box, resolved) -> dict:
    """Each Debian source package compiled from, with its upstream tarball's size and sha256."""
    sources = {}
    for comp, src in debian_sources(resolved).items():
        uris = parse_source_uris(box.sh(
            f"apt-get source --print-uris --only-source {shlex.quote(src['package'] + '=' + src['version'])}",
            f"finding the Debian source package {src['package']} {src['version']} (component {comp})"))
        if src["file"] not in uris:
            raise LockError(f"component {comp}: Debian source package {src['package']} {src['version']} has no "
                            f"file {src['file']} (it has: {', '.join(sorted(uris)) or 'nothing'})")
        size, sha = uris[src["file"]]
        sources[comp] = {**src, "sha256": sha, "size": size}
    return sources


def _base_document(client, base: dict, ref: str, base_packages: dict) -> dict:
    """The lock's `base`: a bootstrapped base's recipe and rootfs checksum, or a registry base's digest."""
    if "image" not in base:
        return {**base_recipe(base), "rootfs_sha256": base_mod.rootfs_sha256(client, ref), "packages": base_packages}
    attrs = engine.image_attrs(client, ref) or {}
    repo = base["image"].split("@")[0].rsplit(":", 1)[0]
    digests = [d for d in attrs.get("RepoDigests", []) if d.split("@")[0] == repo]
    return {"image": base["image"], "digest": digests[0].split("@", 1)[1] if digests else "",
            "id": attrs.get("Id", ""), "packages": base_packages}


def lock_environment() -> dict:
    """The lock container's environment: the build's pip settings, the CA bundle where the build has it."""
    return {**pip_build_args(), "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8",
            "PIP_CERT": CA_BUNDLE_TARGET, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_ROOT_USER_ACTION": "ignore", "PIP_NO_INPUT": "1"}


def make_lock(client, resolved, *, previous: Lock | None = None, upgrade=(), upgrade_all: bool = False,
              ca_bundle: CABundle | None = None, mirror: str | None = None, repo: str | None = None,
              vanished=(), log=lambda msg: None) -> tuple[Lock, LockReport]:
    """Resolve every pin of `resolved` in a container of its base, keeping `previous` pins that still apply.
    `repo`: dlenv's package repository of the previous lock's obtainable files, and `vanished` the Debian
    packages whose pins no source has (a refresh: only those move, and what apt must move with them)."""
    report = LockReport()
    upgrade = {canonical(u) for u in upgrade}
    apt_upgrade = upgrade | set(vanished)
    keep = previous if (previous is not None and not upgrade_all) else None
    base = resolved.base
    ref = _lock_base(client, base, keep, report, mirror, log,
                     repo=repo if not (set(vanished) & set(keep.base_packages if keep else {})) else None)
    bundle = (ca_bundle or find_ca_bundle()).read()
    env = lock_environment()
    log(f"resolving pins in a container of {ref}")
    box = _Box(client, ref, env, repo=repo)
    resolved_at = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        box.put(CA_BUNDLE_TARGET, bundle)
        if "image" not in base:
            use_archive(box, base_recipe(base)["suite"], mirror, repo)
        box.sh("apt-get update -qq", "apt-get update in the lock container")
        base_packages = parse_dpkg_list(box.sh(f"dpkg-query -W -f={shlex.quote(base_mod.DPKG_FORMAT)}", "dpkg-query"))
        apt_build = _resolve_apt(box, list(resolved.apt_build), keep.apt_build if keep else {}, "build", report,
                                 apt_upgrade)
        apt_runtime = _resolve_apt(box, list(resolved.apt_runtime), keep.apt_runtime if keep else {}, "runtime",
                                   report, apt_upgrade)
        log(f"Debian: {len(base_packages)} base packages, {len(apt_build)} for the build stage, "
            f"{len(apt_runtime)} for the runtime stage")
        # a stage may install another version of a base package: every (name, version) is a file
        debs = deb_records(box, {*base_packages.items(), *apt_build.items(), *apt_runtime.items()}, previous) \
            if "image" not in base else {}
        if previous is not None:
            report.pockets = _pockets(box, {**base_packages, **apt_build, **apt_runtime},
                                      {**previous.base_packages, **previous.apt_build, **previous.apt_runtime})
        sources = _resolve_sources(box, resolved)
        arch = box.sh("dpkg --print-architecture", "dpkg --print-architecture").strip()
        python, platform = _resolve_python(client, box, ref, env, bundle, resolved, apt_build, keep, upgrade,
                                           report, log)
        platform["arch"] = arch
        platform["suite"] = base_recipe(base)["suite"] if "image" not in base else ""
    finally:
        box.close()
    lock = Lock(stack=resolved.name, inputs=lock_inputs(resolved), platform=platform,
                base=_base_document(client, base, ref, base_packages),
                apt_build=apt_build, apt_runtime=apt_runtime, sources=sources, python=python,
                dlenv_version=__version__, debs=debs, resolved_at=resolved_at)
    return lock, report


CA_FALLBACK = f"{{ [ -s {CA_BUNDLE_TARGET} ] || cp {SYSTEM_CA} {CA_BUNDLE_TARGET}; }}"


def _python_box(client, box: _Box, ref: str, env: dict, bundle: bytes, apt_build: dict, log) -> _Box:
    """A container with the build stage's Debian packages at their locked versions and Debian's venv,
    as in the Dockerfile. Kept as a local image named by base and pins, so the next lock of a stack
    with the same build packages starts at once (without the CA bundle, which is put in per run)."""
    base_id = (engine.image_attrs(client, ref) or {}).get("Id", ref)
    env_ref = f"dlenv/lockenv:{digest({'base': base_id, 'apt': apt_build})[:16]}"
    if engine.image_attrs(client, env_ref) is not None:
        pybox = _Box(client, env_ref, env)
        pybox.put(CA_BUNDLE_TARGET, bundle)
        pybox.sh(CA_FALLBACK, "CA bundle")
        return pybox
    box.put(f"{WORK}/apt-build.txt", Lock.apt_text(apt_build).encode())
    log("installing the build stage's Debian packages in the lock container")
    box.sh(f"xargs --no-run-if-empty --arg-file={WORK}/apt-build.txt apt-get install -y -qq --no-install-recommends"
           f" >/dev/null && python3 -m venv {VENV} && rm -rf /var/lib/apt/lists/* {CA_BUNDLE_TARGET}",
           "installing Python in the lock container")
    try:
        box.container.commit(repository="dlenv/lockenv", tag=env_ref.split(":", 1)[1],
                             conf={"Labels": {ROLE_LABEL: "lockenv"}})
    except docker.errors.DockerException:
        pass  # only a cache: the lock goes on without it
    box.put(CA_BUNDLE_TARGET, bundle)
    box.sh(CA_FALLBACK, "CA bundle")
    return box


def _resolve_python(client, box: _Box, ref: str, env: dict, bundle: bytes, resolved, apt_build: dict,
                    keep: Lock | None, upgrade: set, report: LockReport, log) -> tuple[dict, dict]:
    steps = pip_steps(resolved)
    if not steps:
        return {}, {"python": apt_build.get("python3", "")}
    if resolved.get("python") is None:
        raise LockError(f"stack {resolved.name!r} installs Python packages but has no python component")
    reuse = reusable_steps(resolved, steps, keep, upgrade, apt_build)
    if reuse == len(steps) and keep.platform.get("python"):
        return _resolve_steps(None, resolved, steps, keep, upgrade, report, log, reuse=reuse)
    pybox = _python_box(client, box, ref, env, bundle, apt_build, log)
    try:
        return _resolve_steps(pybox, resolved, steps, keep, upgrade, report, log, reuse=reuse)
    finally:
        if pybox is not box:
            pybox.close()


def reusable_steps(resolved, steps, keep: Lock | None, upgrade: set, apt_build: dict) -> int:
    """How many leading pip steps keep the previous lock's pins without a dry run: the same build
    packages (so the same Python), the same constraints, the step's own inputs unchanged and nothing
    in it asked to upgrade. A relock after adding one package to the stack resolves only that step."""
    if keep is None or keep.apt_build != apt_build or keep.inputs.get("constraints") != constraint_lines(resolved):
        return 0
    previous_inputs = keep.inputs.get("python", {})
    current_inputs = lock_inputs(resolved)["python"]
    count = 0
    for step in steps:
        if step.name not in keep.python or previous_inputs.get(step.name) != current_inputs.get(step.name):
            break
        if any(canonical(p.name) in upgrade for p in keep.python[step.name]):
            break
        count += 1
    return count


def _resolve_steps(box: _Box | None, resolved, steps, keep: Lock | None, upgrade: set, report: LockReport,
                   log, reuse: int = 0) -> tuple[dict, dict]:
    if box is None:
        version = keep.platform["python"]
    else:
        version = box.sh("python3 -c 'import platform; print(platform.python_version())'", "python3 --version").strip()
    base_constraints = constraint_lines(resolved)
    # The components' exact pins come from the stack; everything else may keep its previous pin.
    named = {canonical(line.split("==")[0]) for line in base_constraints}
    previous = {}
    if keep is not None:
        for pins in keep.python.values():
            for p in pins:
                if canonical(p.name) not in upgrade and canonical(p.name) not in named:
                    previous[canonical(p.name)] = p
    venv_pins: dict = {}        # canonical name -> PythonPin installed into the venv by earlier steps
    installed: set = set()      # canonical names really installed in the lock venv
    out: dict = {}
    for index, step in enumerate(steps):
        if index < reuse:
            pins = keep.python[step.name]
            if step.mode == "venv":
                venv_pins.update({canonical(p.name): p for p in pins})
            out[step.name] = pins
            report.kept += len(pins)
            log(f"pip step {step.name}: {len(pins)} package(s), kept (its inputs are unchanged)")
            continue
        if "--no-build-isolation" in step.options:
            # Packages built without isolation use what earlier steps put in the venv (setuptools, wheel, Cython).
            wheels = [p for n, p in sorted(venv_pins.items()) if n not in installed and p.file.endswith(".whl")]
            if wheels:
                box.put(f"{WORK}/preinstall.txt", "".join(f"{p.requirement_line()}\n" for p in wheels).encode())
                box.sh(f"{VENV}/bin/pip install -q --no-deps --require-hashes -r {WORK}/preinstall.txt",
                       f"installing the packages step {step.name} builds with")
                installed.update(canonical(p.name) for p in wheels)
        pins = _dry_run(box, step, base_constraints, venv_pins, previous, report)
        if step.mode == "target":
            chosen = pins
        else:
            chosen = [p for p in pins if venv_pins.get(canonical(p.name), None) is None
                      or venv_pins[canonical(p.name)].version != p.version]
            if step.mode == "venv":
                venv_pins.update({canonical(p.name): p for p in chosen})
        out[step.name] = tuple(sorted(chosen, key=lambda p: canonical(p.name)))
        log(f"pip step {step.name}: {len(out[step.name])} package(s)")
    return out, {"python": version}


def _dry_run(box: _Box, step, base_constraints: list, venv_pins: dict, previous: dict, report: LockReport) -> list:
    def attempt(extra: dict) -> list:
        lines = list(base_constraints) if step.constrained else []
        if step.mode != "target":
            lines += [f"{p.name}=={p.version}" for p in venv_pins.values()]
            lines += [f"{p.name}=={p.version}" for n, p in extra.items() if n not in venv_pins]
        box.put(f"{WORK}/constraints-{step.name}.txt", "".join(f"{ln}\n" for ln in lines).encode())
        # Not --quiet: pip explains a ResolutionImpossible (which requirement, pinned how) at its info level.
        args = ["--dry-run", "--ignore-installed", "--progress-bar", "off", "--report", f"{WORK}/{step.name}.json"]
        if step.mode == "target":
            args += ["--no-deps", "--only-binary=:all:"]
        args += list(step.options) + list(step.requirements)
        where = ("stack python_packages" if step.name == LEAF_STEP else f"component {step.name}")
        box.sh(f"rm -f {WORK}/{step.name}.json && {VENV}/bin/pip install {' '.join(shlex.quote(a) for a in args)}",
               f"resolving pip step {step.name} ({where}: {' '.join(step.requirements)[:120]})",
               env={"PIP_CONSTRAINT": f"{WORK}/constraints-{step.name}.txt"})
        return parse_pip_report(json.loads(box.sh(f"cat {WORK}/{step.name}.json", "reading the pip report")))

    if previous and step.mode != "target":
        try:
            pins = attempt(previous)
            report.kept += sum(1 for p in pins if canonical(p.name) in previous
                               and previous[canonical(p.name)].version == p.version)
            return pins
        except LockError as exc:
            report.notes.append(f"pip step {step.name}: previous pins conflict ({exc.message[-160:]}); resolved again")
    return attempt({})
