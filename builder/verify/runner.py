"""Verification: run a stack's checks inside a running container, through pytest-testinfra.

Owns the check kinds (command, python, file, library, package, script), their deadlines and
the report. Containers started here are always removed, also on Ctrl-C.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import testinfra

from builder.run.cluster import Cluster, ContainerOptions, gpu_runtime, image_env_names, mpi_launch, put_file
from builder.spec.stack import Check
from builder.names import VENV_PYTHON

CHECKS_DIR = "/tmp/dlenv-checks"
OUTPUT_LIMIT = 4000


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
_INSTALLED_SCRIPT = r"""
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
    from builder.plan.pins import LEAF_STEP
    from builder.plan.render import LEAF, VENV
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
    from builder.plan.lockfile import canonical
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


def plan_checks(resolved, lock=None) -> list[PlannedCheck]:
    planned = []
    if lock is not None:
        planned.append(PlannedCheck(
            Check(name="installed packages are the locked versions", kind=LOCK_CHECK_KIND,
                  target=json.dumps(lock_expectations(resolved, lock), sort_keys=True), timeout=60,
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


def _shell(command: str, login: bool, timeout: int) -> str:
    mode = "-lc" if login else "-c"
    return f"timeout -s KILL {int(timeout)} bash {mode} {shlex.quote(command)}"


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT else "..." + text[-OUTPUT_LIMIT:]


def _run_one(host, container, planned: PlannedCheck, hosts=None, env_names=()) -> CheckResult:
    chk = planned.check
    target = planned.fill(chk.target)
    start = time.monotonic()

    def result(ok: bool, command: str, output: str, reason: str = "") -> CheckResult:
        return CheckResult(planned.name, chk.kind, "passed" if ok else "failed", time.monotonic() - start,
                           command, _clip(output), "" if ok else reason)

    if chk.kind == LOCK_CHECK_KIND:
        expected = json.loads(chk.target)
        paths = " ".join(shlex.quote(p) for p in sorted(expected["python"]))
        command = _shell(f"python3 -c {shlex.quote(_INSTALLED_SCRIPT)} {paths}", False, chk.timeout)
        out = host.run(command)
        if out.rc != 0:
            return result(False, "list installed packages", out.stdout + out.stderr, f"exit status {out.rc}")
        problems = compare_installed(expected, json.loads(out.stdout))
        counted = len(expected["debian"]) + sum(len(v) for v in expected["python"].values())
        if problems:
            return result(False, "compare dpkg-query and dist-info with the lock", "\n".join(problems),
                          f"{len(problems)} package(s) differ from the lock: {problems[0]}")
        return result(True, "compare dpkg-query and dist-info with the lock", f"{counted} pins match")
    if chk.kind == "file":
        ok = host.file(target).exists
        return result(ok, f"test -e {target}", "", f"{target} does not exist")
    if chk.kind == "library":
        code = f"import ctypes; ctypes.CDLL({target!r}); print('loaded {target}')"
        outputs = []
        for login in (False, True):
            command = _shell(f"python -c {shlex.quote(code)}", login, chk.timeout)
            out = host.run(command)
            outputs.append(out.stdout + out.stderr)
            if out.rc != 0:
                shell = "login" if login else "non-login"
                return result(False, command, "\n".join(outputs), f"cannot load {target} in a {shell} shell")
        return result(True, f"python -c ctypes.CDLL({target!r}) (login and non-login)", "\n".join(outputs))
    if chk.kind == "package":
        expected = planned.values.get("version", "")
        code = f"import importlib.metadata as m; print(m.version({target!r}))"
        command = _shell(f"python -c {shlex.quote(code)}", False, chk.timeout)
        out = host.run(command)
        installed = out.stdout.strip()
        if out.rc != 0:
            return result(False, command, out.stdout + out.stderr, f"{target} is not installed")
        if expected and installed != expected:
            return result(False, command, installed, f"{target} is {installed}, the lock says {expected}")
        return result(True, command, installed)
    if chk.kind == "python":
        command = _shell(f"python -c {shlex.quote(target)}", chk.login, chk.timeout)
    elif chk.kind == "script":
        run = f"{VENV_PYTHON} {CHECKS_DIR}/{Path(chk.target).name}"
        if chk.ranks:
            run = f"{mpi_launch(chk.ranks, hosts, list(env_names))} {run}"
        command = _shell(run, chk.login, chk.timeout)
    else:
        command = _shell(target, chk.login, chk.timeout)
    out = host.run(command)
    output = out.stdout + out.stderr
    if out.rc == 137 or out.rc == 124:
        return result(False, command, output, f"did not finish within {chk.timeout}s and was killed")
    if out.rc != chk.exit:
        return result(False, command, output, f"exit status {out.rc}, expected {chk.exit}")
    contains = planned.fill(chk.contains)
    if contains and contains not in output:
        return result(False, command, output, f"output does not contain {contains!r}")
    matches = planned.fill(chk.matches)
    if matches:
        if not re.search(matches, output, re.MULTILINE):
            return result(False, command, output, f"output does not match {matches!r}")
    return result(True, command, output)


NO_GPU_REASON = "no NVIDIA container runtime registered in the Docker engine"


def verify_image(client, image: str, planned: list, on_result=None, shm_size: str = "1g",
                 nodes: int = 1, testinfra_files: tuple = ()) -> Report:
    report = Report(image=image, nodes=nodes)
    start = time.monotonic()
    gpu = gpu_runtime(client.info())

    def record(res: CheckResult) -> None:
        report.results.append(res)
        if on_result:
            on_result(res)

    try:
        with Cluster(client, image, ContainerOptions(shm_size=shm_size, gpu=gpu), "verify", nodes) as cluster:
            env_names = image_env_names(client, image)
            host = testinfra.get_host(f"docker://{cluster.main.id}")
            root_host = testinfra.get_host(f"docker://root@{cluster.main.id}")
            for item in planned:
                if item.check.device and not gpu:
                    record(CheckResult(item.name, item.check.kind, "skipped", 0.0, reason=NO_GPU_REASON))
                    continue
                if item.check.kind == "script":
                    local = Path(item.check.base_dir) / item.check.target
                    for c in cluster.containers:
                        put_file(c, local.read_bytes(), f"{CHECKS_DIR}/{local.name}")
                watchdog = threading.Timer(item.check.timeout + 30, cluster.kill)
                watchdog.start()  # a hung check must not hang verify: the containers die, the check fails
                try:
                    hosts = cluster.hosts if item.check.ranks else None
                    res = _run_one(root_host if item.check.as_root else host, cluster.main, item, hosts, env_names)
                finally:
                    watchdog.cancel()
                if hosts:
                    res.name = f"{res.name} ({len(hosts)} containers)"
                record(res)
            for path in testinfra_files:
                for res in run_testinfra_file(cluster.main, Path(path)):
                    record(res)
    finally:
        report.seconds = time.monotonic() - start
    return report


def run_testinfra_file(container, path: Path) -> list:
    """Run a user's pytest-testinfra file against the container; one result per test."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dlenv-testinfra-") as tmp:
        junit = Path(tmp) / "junit.xml"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--hosts=docker://{container.id}",
             f"--junitxml={junit}", f"--rootdir={path.parent}", str(path)],
            capture_output=True, text=True, cwd=path.parent)
        if not junit.exists():
            return [CheckResult(f"testinfra {path.name}", "testinfra", "failed", time.monotonic() - start,
                                f"pytest {path}", _clip(proc.stdout + proc.stderr), "pytest did not run")]
        results = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            # testinfra parametrizes each test by host; the container id changes every run.
            test = re.sub(r"\[docker://[^\]]+\]$", "", case.get("name") or "")
            detail = next((case.find(tag) for tag in ("failure", "error", "skipped") if case.find(tag) is not None),
                          None)
            status = "passed" if detail is None else ("skipped" if detail.tag == "skipped" else "failed")
            results.append(CheckResult(
                f"{path.name}::{test}", "testinfra", status, float(case.get("time") or 0),
                f"pytest {path.name}::{test}", _clip(detail.text or "") if detail is not None else "",
                (detail.get("message") or "")[:300] if detail is not None else ""))
        if not results:
            results.append(CheckResult(f"testinfra {path.name}", "testinfra", "failed", time.monotonic() - start,
                                       f"pytest {path}", _clip(proc.stdout + proc.stderr), "no test collected"))
        return results
