"""The rest of the catalog built and verified for real: chainer (CPU training run), chainer-gpu
(CUDA libraries and cuDNN visible to Chainer; GPU checks skipped without a GPU runtime), and
datascience (MFCC, cross-validation, plotting, and a Jupyter server answering HTTP)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("stack, must_pass", [
    ("chainer", {"Chainer trains a small MLP", "chainer and chainermn import", "numpy is 1.26.4"}),
    ("chainer-gpu", {"Chainer trains a small MLP", "chainer sees CUDA and cuDNN", "libcudnn loadable",
                     "libnccl loadable"}),
    ("datascience", {"MFCC of a generated tone has the expected shape",
                     "cross-validated scikit-learn model on a bundled dataset",
                     "pandas and matplotlib render a plot"}),
])
def test_catalog_stack_builds_and_verifies(docker_client, run_dlenv, stack, must_pass):
    built = run_dlenv("build", stack, "--locked", timeout=2400)
    assert built.returncode == 0, built.stderr[-4000:]
    verified = run_dlenv("verify", stack, "--json", timeout=900)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["passed"], json.dumps(report, indent=1)[-4000:]
    passed = {c["name"] for c in report["checks"] if c["status"] == "passed"}
    assert must_pass | {"installed packages are the locked versions"} <= passed, must_pass - passed
    skipped = [c for c in report["checks"] if c["status"] == "skipped"]
    assert all("NVIDIA" in c["reason"] for c in skipped)


def test_jupyter_answers_http_from_dlenv_shell(docker_client, run_dlenv, dlenv_path, tmp_path):
    assert run_dlenv("build", "datascience", timeout=2400).returncode == 0
    token = secrets.token_hex(12)
    port = 18000 + secrets.randbelow(2000)
    ws = tmp_path / "ws"
    ws.mkdir()
    ws.chmod(0o777)
    proc = subprocess.Popen(
        [dlenv_path, "shell", "datascience", "-p", f"{port}:8888", "--", "jupyter", "server", "--ip=0.0.0.0",
         "--port=8888", "--no-browser", f"--IdentityProvider.token={token}"],
        cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, NO_COLOR="1"))
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                    status = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert status is not None and "started" in status, "the Jupyter server never answered"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5)
        assert denied.value.code == 403  # the token is required
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert not docker_client.containers.list(all=True, filters={"label": "org.dlenv.role=shell"})
