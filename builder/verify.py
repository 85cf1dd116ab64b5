"""Verification: run a stack's checks inside a running container, through pytest-testinfra.

Owns the check kinds (command, python, file, library, package, script), their deadlines and
the report. Containers started here are always removed, also on Ctrl-C.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker.errors
import testinfra

from .errors import EngineError
from .spec import Check

CHECKS_DIR = "/tmp/dlenv-checks"
VENV_PYTHON = "/opt/venv/bin/python"
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
        return {"image": self.image, "passed": self.passed, "counts": self.counts,
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


def plan_checks(resolved) -> list[PlannedCheck]:
    planned = []
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


def _run_one(host, container, planned: PlannedCheck) -> CheckResult:
    chk = planned.check
    target = planned.fill(chk.target)
    start = time.monotonic()

    def result(ok: bool, command: str, output: str, reason: str = "") -> CheckResult:
        return CheckResult(planned.name, chk.kind, "passed" if ok else "failed", time.monotonic() - start,
                           command, _clip(output), "" if ok else reason)

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
        local = Path(chk.base_dir) / chk.target
        if not local.is_file():
            return result(False, "", "", f"check script {local} not found")
        _put_file(container, local, f"{CHECKS_DIR}/{local.name}")
        run = f"python {CHECKS_DIR}/{local.name}"
        if chk.ranks:
            run = f"mpiexec -n {int(chk.ranks)} {run}"
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
        import re
        if not re.search(matches, output, re.MULTILINE):
            return result(False, command, output, f"output does not match {matches!r}")
    return result(True, command, output)


def _put_file(container, local: Path, dest: str) -> None:
    data = local.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(Path(dest).name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    container.exec_run(["mkdir", "-p", str(Path(dest).parent)])
    container.put_archive(str(Path(dest).parent), buf.getvalue())


def verify_image(client, image: str, planned: list[PlannedCheck], on_result=None, shm_size: str = "1g") -> Report:
    report = Report(image=image)
    start = time.monotonic()
    try:
        container = client.containers.run(image, ["sleep", "infinity"], detach=True, shm_size=shm_size,
                                          labels={"org.dlenv.role": "verify"}, network_mode="none")
    except docker.errors.ImageNotFound:
        raise EngineError(f"image {image} not found", hint="build it first with `dlenv build`") from None
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot start a container from {image}: {exc.explanation}") from None
    try:
        host = testinfra.get_host(f"docker://{container.id}")
        for item in planned:
            longest = item.check.timeout + 30
            watchdog = threading.Timer(longest, _kill_quietly, args=(container,))
            watchdog.start()  # a hung check must not hang verify: the container dies, the check fails
            try:
                res = _run_one(host, container, item)
            finally:
                watchdog.cancel()
            report.results.append(res)
            if on_result:
                on_result(res)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
        report.seconds = time.monotonic() - start
    return report


def _kill_quietly(container) -> None:
    try:
        container.kill()
    except docker.errors.APIError:
        pass
