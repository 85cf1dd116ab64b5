"""Engine-free logic of verify: GPU runtime detection, the MPI launch line, check placeholders,
and that device checks are reported as skipped (never dropped, never passed) without a GPU runtime."""

from __future__ import annotations

from pathlib import Path

from builder.run import cluster as cluster
from builder.verify import runner as verify
from builder.plan.plan import plan
from builder.run.cluster import gpu_runtime, mpi_launch
from builder.verify.checks import plan_checks

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_runtime_detection_from_engine_info():
    assert gpu_runtime({"Runtimes": {"runc": {"path": "runc"}}}) is None
    assert gpu_runtime({}) is None
    assert gpu_runtime({"Runtimes": None}) is None
    # A runtime registered under the name `nvidia` is what `--gpus` needs, whatever binary it points at.
    assert gpu_runtime({"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}) == "nvidia"


def test_mpi_launch_single_and_multi_container():
    assert mpi_launch(2, None, ["PATH"]) == "mpiexec -n 2"
    line = mpi_launch(4, ["a", "b"], ["PATH", "CHAINER_WARN_VERSION_MISMATCH"])
    assert line.startswith("mpiexec -n 4 --host a:2,b:2 ")
    assert "--mca plm_rsh_agent 'ssh -F /tmp/dlenv-ssh/ssh_config'" in line
    assert line.endswith("-x PATH -x CHAINER_WARN_VERSION_MISMATCH")
    assert "--host a:2,b:2" in mpi_launch(3, ["a", "b"], [])


def test_check_placeholders_are_filled_from_resolved_versions():
    planned = plan_checks(plan("chainermn").resolved)
    names = [p.name for p in planned]
    assert "Open MPI is 4.1.4" in names
    assert "libcudnn loadable" in names
    cudnn = next(p for p in planned if p.name == "libcudnn loadable")
    assert cudnn.fill(cudnn.check.target) == "libcudnn.so.8"
    assert any(p.check.device for p in planned)


class _FakeContainer:
    id = "fake"
    name = "fake"

    def remove(self, force=False):
        self.removed = True


class _FakeClient:
    def __init__(self, runtimes):
        self._runtimes = runtimes
        self.started = []

    def info(self):
        return {"Runtimes": self._runtimes}

    class api:  # noqa: N801 - mimics docker-py's attribute
        @staticmethod
        def inspect_image(image):
            return {"Config": {"Env": ["PATH=/usr/bin"]}}


def test_device_checks_are_skipped_with_reason_without_gpu_runtime(monkeypatch):
    container = _FakeContainer()
    monkeypatch.setattr(cluster, "start_container", lambda *a, **k: container)
    monkeypatch.setattr(verify.testinfra, "get_host", lambda spec: None)
    planned = [p for p in plan_checks(plan("chainermn").resolved) if p.check.device]
    report = verify.verify_image(_FakeClient({"runc": {}}), "img", planned)
    assert [r.status for r in report.results] == ["skipped"] * len(planned)
    assert all(r.reason == verify.NO_GPU_REASON for r in report.results)
    assert report.passed and report.counts["skipped"] == len(planned) and report.counts["passed"] == 0
    assert container.removed
    as_json = report.to_json()
    assert {c["status"] for c in as_json["checks"]} == {"skipped"}
