"""User checks: a `checks:` list and a pytest-testinfra file named by the stack become rows of the
verify report (table and --json); a failing one makes verify exit 1 and shows its output."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

TESTINFRA_FILE = '''
def test_python_package(host):
    assert host.file("/opt/venv/bin/python").exists


def test_runs_as_dlenv(host):
    assert host.user().name == "dlenv"


def test_user_env(host):
    assert host.run("printenv PROJECT").stdout.strip() == "{project}"
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_yaml_and_testinfra_checks_in_the_report(docker_client, run_dlenv, tmp_path):
    write(tmp_path, "test_image.py", TESTINFRA_FILE.format(project="dlenv-itest"))
    stack = write(tmp_path, "stack.yaml", """
        schema: 1
        name: dlenv-itest-usercheck
        extends: python
        env: {PROJECT: dlenv-itest}
        testinfra: test_image.py
        checks:
          - name: project variable is set
            command: printenv PROJECT
            contains: dlenv-itest
          - name: venv python exists
            file: /opt/venv/bin/python
    """)
    try:
        built = run_dlenv("build", str(stack))
        assert built.returncode == 0, built.stderr
        verified = run_dlenv("verify", str(stack), "--json")
        report = json.loads(verified.stdout)
        assert verified.returncode == 0, verified.stdout
        assert set(report) >= {"image", "nodes", "passed", "counts", "seconds", "checks"}
        rows = {c["name"]: c for c in report["checks"]}
        for name in ("project variable is set", "venv python exists", "test_image.py::test_python_package",
                     "test_image.py::test_runs_as_dlenv", "test_image.py::test_user_env"):
            assert rows[name]["status"] == "passed", rows.get(name)
        for row in report["checks"]:
            assert set(row) == {"name", "kind", "status", "seconds", "command", "output", "reason"}
        table = run_dlenv("verify", str(stack))
        assert table.returncode == 0
        assert "test_image.py::test_user_env" in table.stdout and "passed" in table.stdout

        # The same image with a failing testinfra test: verify exits 1 and says which and why.
        write(tmp_path, "test_image.py", TESTINFRA_FILE.format(project="another-project"))
        failing = run_dlenv("verify", str(stack), "--json")
        assert failing.returncode == 1
        bad = {c["name"]: c for c in json.loads(failing.stdout)["checks"]}["test_image.py::test_user_env"]
        assert bad["status"] == "failed" and "another-project" in bad["output"]
        shown = run_dlenv("verify", str(stack))
        assert shown.returncode == 1 and "FAILED test_image.py::test_user_env" in shown.stderr
    finally:
        for image in docker_client.images.list(name="dlenv/dlenv-itest-usercheck"):
            for tag in image.tags:
                docker_client.images.remove(tag)
