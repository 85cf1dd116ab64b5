"""`dlenv doctor` against the real Docker engine, and against an engine that is not there."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
from click.testing import CliRunner

from builder.engine.base import base_present
from builder.cli.app import main
from builder.cli.doctor import doctor
from builder.doctor import DEFAULT_BASE
from builder.settings.settings import KEYS
from builder.verify.runner import gpu_runtime

if "doctor" not in main.commands:  # until builder/cli.py registers it
    main.add_command(doctor, "doctor")

_CLICK = tuple(int(p) for p in version("click").split(".")[:2])
_RUNNER_ARGS = {} if _CLICK >= (8, 2) else {"mix_stderr": False}


@pytest.fixture
def dlenv(tmp_path, monkeypatch):
    """`dlenv ARGS...` in-process, with no config file and none of the DLENV_* settings of the caller."""
    monkeypatch.chdir(tmp_path)
    base_env = {var: None for var, *_ in KEYS.values()}
    base_env.update(NO_COLOR="1", COLUMNS="200", XDG_CONFIG_HOME=str(tmp_path / "xdg"),
                    DLENV_STATE_DIR=str(tmp_path / "state"))

    def invoke(*args, env=None):
        return CliRunner(**_RUNNER_ARGS).invoke(main, list(args), env={**base_env, **(env or {})})

    return invoke


def test_doctor_json_reports_the_real_engine(docker_client, dlenv):
    result = dlenv("doctor", "--json")
    assert "Traceback" not in result.output, result.output
    data = json.loads(result.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    info = docker_client.info()

    engine = checks["engine"]
    assert engine["status"] == "ok"
    assert f"Docker {docker_client.version()['Version']} " in engine["detail"]

    storage = checks["storage driver"]
    assert storage["detail"].split()[0] == info["Driver"]
    assert info["Driver"] == "overlay2" and storage["status"] == "ok"

    assert info["DockerRootDir"] in checks["disk space"]["detail"]
    assert checks["disk space"]["status"] in ("ok", "warn", "fail")
    assert checks["nvidia runtime"]["status"] == ("ok" if gpu_runtime(info) else "warn")
    assert checks["base image"]["status"] == ("ok" if base_present(docker_client, DEFAULT_BASE) else "warn")
    assert checks["registry"]["status"] == "skip"

    failed = [c for c in data["checks"] if c["status"] == "fail"]
    assert data["passed"] is (not failed)
    assert result.exit_code == (1 if failed else 0), failed


def test_doctor_with_no_engine_fails_with_a_fix(dlenv):
    result = dlenv("doctor", env={"DOCKER_HOST": "unix:///nonexistent"})
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("fail  engine"))
    assert "unix:///nonexistent" in lines[at]
    assert lines[at + 1].strip().startswith("fix: ") and "DOCKER_HOST" in lines[at + 1]
    for name in ("storage driver", "disk space", "nvidia runtime", "base image"):
        assert any(ln.startswith(f"skip  {name}") for ln in lines), name
    assert "Traceback" not in result.output

    data = json.loads(dlenv("doctor", "--json", env={"DOCKER_HOST": "unix:///nonexistent"}).stdout)
    engine = next(c for c in data["checks"] if c["name"] == "engine")
    assert engine["status"] == "fail" and engine["fix"] and data["passed"] is False
