"""Verification: run planned checks inside running containers, through pytest-testinfra.

Owns the execution of each check kind (command, python, file, library, package, script, lock),
their deadlines and watchdog, and a user's testinfra files. What to check and the report's shape
come from builder.verify.checks. Containers started here are always removed, also on Ctrl-C.
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
from pathlib import Path

import testinfra

from builder.names import CHECKS_DIR, VENV_PYTHON
from builder.run.cluster import Cluster, ContainerOptions, gpu_runtime, image_env_names, mpi_launch, put_file
from builder.verify.checks import (INSTALLED_SCRIPT, LOCK_CHECK_KIND, CheckResult, PlannedCheck, Report,
                                   compare_installed, library_code, package_version_code)

OUTPUT_LIMIT = 4000


def _shell(command: str, login: bool, timeout: int) -> str:
    mode = "-lc" if login else "-c"
    return f"timeout -s KILL {int(timeout)} bash {mode} {shlex.quote(command)}"


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT else "..." + text[-OUTPUT_LIMIT:]


class Outcome:
    """Makes the CheckResult of one planned check, timed from its start."""

    def __init__(self, planned: PlannedCheck):
        self.planned = planned
        self.start = time.monotonic()

    def __call__(self, ok: bool, command: str, output: str, reason: str = "") -> CheckResult:
        return CheckResult(self.planned.name, self.planned.check.kind, "passed" if ok else "failed",
                           time.monotonic() - self.start, command, _clip(output), "" if ok else reason)


def _run_lock_check(host, planned: PlannedCheck, result: Outcome) -> CheckResult:
    """Lists the packages in the container and compares them with the lock's expectations."""
    chk = planned.check
    expected = json.loads(chk.target)
    paths = " ".join(shlex.quote(p) for p in sorted(expected["python"]))
    command = _shell(f"python3 -c {shlex.quote(INSTALLED_SCRIPT)} {paths}", False, chk.timeout)
    out = host.run(command)
    if out.rc != 0:
        return result(False, "list installed packages", out.stdout + out.stderr, f"exit status {out.rc}")
    problems = compare_installed(expected, json.loads(out.stdout))
    counted = len(expected["debian"]) + sum(len(v) for v in expected["python"].values())
    if problems:
        return result(False, "compare dpkg-query and dist-info with the lock", "\n".join(problems),
                      f"{len(problems)} package(s) differ from the lock: {problems[0]}")
    return result(True, "compare dpkg-query and dist-info with the lock", f"{counted} pins match")


def _run_file_check(host, planned: PlannedCheck, result: Outcome) -> CheckResult:
    target = planned.fill(planned.check.target)
    ok = host.file(target).exists
    return result(ok, f"test -e {target}", "", f"{target} does not exist")


def _run_library_check(host, planned: PlannedCheck, result: Outcome) -> CheckResult:
    """The library must load in a non-login and in a login shell."""
    chk = planned.check
    target = planned.fill(chk.target)
    code = library_code(target)
    outputs = []
    for login in (False, True):
        command = _shell(f"python -c {shlex.quote(code)}", login, chk.timeout)
        out = host.run(command)
        outputs.append(out.stdout + out.stderr)
        if out.rc != 0:
            shell = "login" if login else "non-login"
            return result(False, command, "\n".join(outputs), f"cannot load {target} in a {shell} shell")
    return result(True, f"python -c ctypes.CDLL({target!r}) (login and non-login)", "\n".join(outputs))


def _run_package_check(host, planned: PlannedCheck, result: Outcome) -> CheckResult:
    """The distribution must be installed, at the locked version when there is one."""
    chk = planned.check
    target = planned.fill(chk.target)
    expected = planned.values.get("version", "")
    command = _shell(f"python -c {shlex.quote(package_version_code(target))}", False, chk.timeout)
    out = host.run(command)
    installed = out.stdout.strip()
    if out.rc != 0:
        return result(False, command, out.stdout + out.stderr, f"{target} is not installed")
    if expected and installed != expected:
        return result(False, command, installed, f"{target} is {installed}, the lock says {expected}")
    return result(True, command, installed)


def _command(planned: PlannedCheck, hosts, env_names) -> str:
    """The shell line of a command, python or script check, under its deadline."""
    chk = planned.check
    target = planned.fill(chk.target)
    if chk.kind == "python":
        return _shell(f"python -c {shlex.quote(target)}", chk.login, chk.timeout)
    if chk.kind == "script":
        run = f"{VENV_PYTHON} {CHECKS_DIR}/{Path(chk.target).name}"
        if chk.ranks:
            run = f"{mpi_launch(chk.ranks, hosts, list(env_names))} {run}"
        return _shell(run, chk.login, chk.timeout)
    return _shell(target, chk.login, chk.timeout)


class CommandOutput:
    """A finished command as judge_output reads it (the shape of testinfra's CommandResult), for checks
    that run outside testinfra: srun in a cluster, sbatch jobs."""

    def __init__(self, rc: int, text: str):
        self.rc, self.stdout, self.stderr = rc, text, ""


def judge_output(planned: PlannedCheck, command: str, out, result: Outcome) -> CheckResult:
    """Exit status (a killed check timed out), then `contains` and `matches` on the output."""
    chk = planned.check
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


_SPECIAL_KINDS = {LOCK_CHECK_KIND: _run_lock_check, "file": _run_file_check, "library": _run_library_check,
                  "package": _run_package_check}


def _run_one(host, container, planned: PlannedCheck, hosts=None, env_names=()) -> CheckResult:
    result = Outcome(planned)
    special = _SPECIAL_KINDS.get(planned.check.kind)
    if special is not None:
        return special(host, planned, result)
    command = _command(planned, hosts, env_names)
    return judge_output(planned, command, host.run(command), result)


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
