"""The all-in-one CPU stack (Chainer, PyTorch, TensorFlow, Jupyter Server) built from its lock and
verified for real. Heavy (about 5 GB of wheels): run by `make e2e-all`, not by `make test` (this
folder is in pytest's norecursedirs, so `pytest tests` never collects it; `pytest tests/e2e_all` does).

Prints the build time and the runtime image size, and writes them to $DLENV_E2E_ALL_REPORT (JSON)
when that is set, for BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = pytest.mark.e2e

MUST_PASS = {
    "Chainer trains a small MLP",
    "PyTorch linear regression loss falls",
    "tf.keras model fits random data",
    "Chainer, PyTorch and TensorFlow share one NumPy",
    "jupyter server is installed",
    "numpy is 1.26.4",
    "torch is 2.5.1",
    "tensorflow is 2.18.0",
}


def test_all_in_one_builds_and_verifies(docker_client, run_dlenv):
    started = time.monotonic()
    built = run_dlenv("build", "all-in-one", "--locked", "--no-pull", "--no-verify", timeout=5400)
    build_s = time.monotonic() - started
    assert built.returncode == 0, built.stderr[-4000:]
    started = time.monotonic()
    verified = run_dlenv("verify", "all-in-one", "--json", timeout=1800)
    verify_s = time.monotonic() - started
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["passed"], json.dumps(report, indent=1)[-4000:]
    passed = {c["name"] for c in report["checks"] if c["status"] == "passed"}
    assert MUST_PASS <= passed, MUST_PASS - passed
    assert not [c for c in report["checks"] if c["status"] == "skipped"]

    image = docker_client.images.get("dlenv/all-in-one:latest")
    figures = {"stack": "all-in-one", "build_s": round(build_s, 1), "verify_s": round(verify_s, 1),
               "image_bytes": image.attrs["Size"], "image": image.tags}
    print(json.dumps(figures))
    if os.environ.get("DLENV_E2E_ALL_REPORT"):
        with open(os.environ["DLENV_E2E_ALL_REPORT"], "w") as fh:
            json.dump(figures, fh, indent=1)
