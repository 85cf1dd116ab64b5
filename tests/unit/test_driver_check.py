"""The host driver check (builder/driver.py): parsing recorded-format `nvidia-smi` outputs, the
comparison against the image's CUDA, the messages, reading the host with faked commands, and the
CLI path (shell, run, verify) through CliRunner with the reading monkeypatched."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

import builder.pipeline.build
import builder.cli.app
import builder.cli.common
import builder.cli.use
import builder.cli.verify
import builder.run.driver as driver
import builder.engine.dockerapi
import builder.engine.images
import builder.run.session
import builder.verify.runner
from builder.run.driver import HostDriver, Verdict, assess, check_host_driver, read_host_driver
from builder.errors import DlenvError, DriverError
from builder.verify.checks import Report

from dlenv_unit import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"
IMAGE = "dlenv/chainermn:0123456789ab"
TABLES = sorted(FIXTURES.glob("table-*.txt"))
QUERIES = sorted(FIXTURES.glob("query-*.csv"))
FAILURES = ["failed-no-driver.txt", "failed-version-mismatch.txt", "no-devices.txt"]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- parsing ---------------------------------------------------------------------------------------

def test_the_fixtures_cover_the_drivers_the_check_distinguishes():
    drivers = {p.name.split("-")[1] for p in TABLES}
    assert {"470.223.02", "525.60.13", "535.183.01", "550.54.15", "560.35.03"} <= drivers
    assert len(QUERIES) >= 6


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_plain_table_header_gives_driver_and_cuda(path):
    _, version, cuda = path.stem.split("-")[:3]
    assert driver.parse_smi_table(path.read_text()) == (version, cuda.removeprefix("cuda"))


@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.name)
def test_csv_query_gives_one_version_per_gpu(path):
    versions = driver.parse_query_csv(path.read_text())
    expected = path.stem.split("-")[1]
    assert versions and set(versions) == {expected}
    assert len(versions) == (8 if "8gpu" in path.name else 1)


def test_multi_gpu_table_has_one_header_and_eight_gpus():
    text = fixture("table-560.35.03-cuda12.6-8gpu.txt")
    assert text.count("NVIDIA H100 80GB HBM3") == 8
    assert driver.parse_smi_table(text) == ("560.35.03", "12.6")


def test_lowest_driver_decides_when_gpus_disagree():
    assert driver.lowest(["560.35.03", "535.183.01", "560.35.03"]) == "535.183.01"
    assert driver.lowest(["470.82.01", "470.82"]) == "470.82"  # 470.82 reads as 470.82.0
    assert driver.lowest([]) is None


@pytest.mark.parametrize("name", FAILURES)
def test_failure_outputs_give_no_version(name):
    text = fixture(name)
    assert driver.parse_query_csv(text) == []
    assert driver.parse_smi_table(text) == (None, None)
    assert driver.parse_proc_version(text) is None


def test_garbage_gives_no_version():
    for text in ("", "\n\n", "Driver Version: banana  CUDA Version: 12.4", "12.4\n", "N/A\n", "550.54.15.1.2\n"):
        assert driver.parse_query_csv(text) == []
        assert driver.parse_smi_table(text) == (None, None)


def test_header_without_cuda_version_still_gives_the_driver():
    assert driver.parse_smi_table("| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: N/A |") == \
        ("550.54.15", None)


@pytest.mark.parametrize("name, version", [("proc-version-550.54.15.txt", "550.54.15"),
                                           ("proc-version-open-560.35.03.txt", "560.35.03")])
def test_proc_driver_version(name, version):
    assert driver.parse_proc_version(fixture(name)) == version


def test_version_key_orders_two_and_three_part_versions():
    key = driver.version_key
    assert key("455.23") == (455, 23, 0)
    assert key("525.60.13") > key("525.60.12") > key("470.223.02")
    assert key("535.183.01") > key("535.54.03")  # numeric, not text: 183 > 54
    for bad in ("", "N/A", "12", "abc.def", "550.54.15.1"):
        with pytest.raises(ValueError):
            key(bad)


def test_cuda_version_from_components_or_labels():
    assert driver.cuda_version({"python": "3.11", "cuda": "12.6"}) == "12.6"
    assert driver.cuda_version({"org.dlenv.component.cuda": "12.6", "org.dlenv.stack": "x"}) == "12.6"
    assert driver.cuda_version({"cuda-headers": "12.6"}) == "12.6"
    assert driver.cuda_version({"python": "3.11"}) is None
    assert driver.cuda_version({}) is None


def test_driver_tables_are_ordered_and_consistent():
    key = driver.version_key
    rows = sorted(driver.TOOLKIT_DRIVER.items(), key=lambda kv: tuple(int(p) for p in kv[0].split(".")))
    assert [key(v) for _, v in rows] == sorted(key(v) for _, v in rows)
    for major, minimum in driver.MINOR_COMPAT_MIN.items():
        first = driver.TOOLKIT_DRIVER[f"{major}.0"]
        assert key(minimum) >= key(first) or major == 11  # 11.x: 450.80.02 came after 11.0 GA's 450.51.05
    assert driver.TOOLKIT_DRIVER["12.0"] == driver.MINOR_COMPAT_MIN[12] == "525.60.13"
    assert driver.TOOLKIT_DRIVER["12.6"] == "560.28.03"


def test_toolkit_driver_for_gaps_updates_and_the_unknown():
    assert driver.toolkit_driver("12.6") == "560.28.03"
    assert driver.toolkit_driver("12.6.77") == "560.28.03"
    assert driver.toolkit_driver("12.7") == "560.28.03"   # never released: the nearest older one
    assert driver.toolkit_driver("12.11") is None          # newer than the table: unknown
    assert driver.toolkit_driver("10.2") is None
    assert driver.toolkit_driver("twelve") is None
    assert driver.supported_cuda("470.223.02") == "11.4"
    assert driver.supported_cuda("535.183.01") == "12.2"
    assert driver.supported_cuda("400.1") is None


# --- judging ---------------------------------------------------------------------------------------

def host_from_fixture(version: str) -> HostDriver:
    table = next(p for p in TABLES if p.name.startswith(f"table-{version}-"))
    found, cuda = driver.parse_smi_table(table.read_text())
    return HostDriver(found, cuda, "nvidia-smi")


@pytest.mark.parametrize("version, level", [
    ("470.223.02", "error"),   # CUDA 11.4 driver: CUDA 12 does not run at all
    ("525.60.13", "warn"),     # the CUDA 12.x minimum: runs through minor version compatibility
    ("535.183.01", "warn"),
    ("550.54.15", "warn"),
    ("560.35.03", "ok"),       # newer than 12.6's own driver
])
def test_cuda_12_6_image_against_recorded_drivers(version, level):
    assert assess(host_from_fixture(version), "12.6", IMAGE).level == level


@pytest.mark.parametrize("version, level", [
    ("525.60.12", "error"), ("525.60.13", "warn"), ("560.28.02", "warn"), ("560.28.03", "ok"), ("570.86.10", "ok"),
])
def test_boundaries(version, level):
    assert assess(HostDriver(version, None, "nvidia-smi"), "12.6", IMAGE).level == level


def test_a_cuda_11_image_runs_on_an_old_driver_and_a_12_0_image_needs_no_newer_one():
    assert assess(host_from_fixture("470.223.02"), "11.4", IMAGE).level == "ok"
    assert assess(host_from_fixture("470.223.02"), "11.8", IMAGE).level == "warn"
    assert assess(host_from_fixture("525.60.13"), "12.0", IMAGE).level == "ok"


def test_error_message_is_one_line_with_driver_cuda_and_what_to_do():
    verdict = assess(host_from_fixture("470.223.02"), "12.6", IMAGE)
    line = DriverError(verdict.message, hint=verdict.hint).one_line()
    assert "\n" not in line
    assert line.startswith("the host's NVIDIA driver 470.223.02 (CUDA 11.4) is too old for CUDA 12.6 in " + IMAGE)
    assert "CUDA 12.x needs driver 525.60.13 or newer" in line
    assert "upgrade the host's NVIDIA driver to 560.28.03 or newer" in line
    assert "use a stack built for CUDA 11.4 or older" in line
    assert "--skip-driver-check" in line


def test_error_without_reported_cuda_names_the_cuda_the_table_gives():
    verdict = assess(HostDriver("470.223.02", None, driver.PROC_VERSION), "12.6", IMAGE)
    assert verdict.level == "error" and "(CUDA" not in verdict.message
    assert "CUDA 11.4 or older" in verdict.hint


def test_warning_says_minor_version_compatibility_and_the_full_driver():
    verdict = assess(host_from_fixture("535.183.01"), "12.6", IMAGE)
    assert verdict.level == "warn" and verdict.hint is None
    for part in ("535.183.01 (CUDA 12.2)", "560.28.03", "minor version compatibility", "PTX", IMAGE):
        assert part in verdict.message


def test_unreadable_or_unknown_is_a_warning_never_an_error():
    assert assess(HostDriver(problem="nvidia-smi not found; no /proc/driver/nvidia/version"), "12.6", IMAGE) \
        .level == "warn"
    assert "nvidia-smi not found" in assess(HostDriver(problem="nvidia-smi not found"), "12.6", IMAGE).message
    assert assess(HostDriver("weird", None, "nvidia-smi"), "12.6", IMAGE).level == "warn"
    assert assess(HostDriver("560.35.03", "12.6", "nvidia-smi"), "14.0", IMAGE).level == "warn"
    newer = assess(HostDriver("560.35.03", "12.6", "nvidia-smi"), "12.11", IMAGE)
    assert newer.level == "warn" and "525.60.13" in newer.message
    assert assess(HostDriver("500.1", None, "nvidia-smi"), "12.11", IMAGE).level == "error"


# --- reading the host (effectful, with fake commands) ----------------------------------------------

def fake_smi(query: str | None = None, table: str | None = None, rc: int = 0, error: Exception | None = None):
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        if error is not None:
            raise error
        text = fixture(query) if len(argv) > 1 else fixture(table or query)
        return subprocess.CompletedProcess(argv, rc, stdout=text, stderr="")

    run.calls = calls
    return run


def which_smi(name):
    return "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None


def test_read_uses_the_csv_query_then_the_table_for_cuda():
    run = fake_smi("query-550.54.15.csv", "table-550.54.15-cuda12.4.txt")
    host = read_host_driver(run=run, which=which_smi, proc_path="/nonexistent")
    assert host == HostDriver("550.54.15", "12.4", "nvidia-smi")
    assert run.calls[0] == ["/usr/bin/nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    assert run.calls[1] == ["/usr/bin/nvidia-smi"]


def test_read_multi_gpu():
    run = fake_smi("query-560.35.03-8gpu.csv", "table-560.35.03-cuda12.6-8gpu.txt")
    assert read_host_driver(run=run, which=which_smi, proc_path="/nonexistent") == \
        HostDriver("560.35.03", "12.6", "nvidia-smi")


def test_read_falls_back_to_proc_when_nvidia_smi_fails(tmp_path):
    proc = tmp_path / "version"
    proc.write_text(fixture("proc-version-open-560.35.03.txt"))
    host = read_host_driver(run=fake_smi("failed-no-driver.txt", rc=9), which=which_smi, proc_path=str(proc))
    assert host == HostDriver("560.35.03", None, str(proc))


@pytest.mark.parametrize("name", FAILURES)
def test_read_reports_why_when_nothing_answers(name):
    host = read_host_driver(run=fake_smi(name, rc=9), which=which_smi, proc_path="/nonexistent")
    assert host.version is None
    assert host.problem.startswith("nvidia-smi failed: ") and "no /nonexistent" in host.problem
    assert fixture(name).split()[0] in host.problem


def test_read_without_nvidia_smi_or_proc():
    def run(*a, **k):
        raise AssertionError("nvidia-smi must not run when it is not installed")

    host = read_host_driver(run=run, which=lambda name: None, proc_path="/nonexistent")
    assert host == HostDriver(problem="nvidia-smi not found; no /nonexistent")


def test_read_survives_a_hanging_or_broken_nvidia_smi(tmp_path):
    hung = read_host_driver(run=fake_smi(error=subprocess.TimeoutExpired("nvidia-smi", 20)), which=which_smi,
                            proc_path="/nonexistent")
    assert hung.version is None and "did not answer within" in hung.problem
    broken = read_host_driver(run=fake_smi(error=PermissionError(13, "Permission denied")), which=which_smi,
                              proc_path="/nonexistent")
    assert broken.version is None and "Permission denied" in broken.problem
    garbage = tmp_path / "version"
    garbage.write_text("garbage\n")
    assert "has no driver version" in read_host_driver(which=lambda n: None, proc_path=str(garbage)).problem


def test_read_keeps_the_version_when_only_the_table_fails():
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        if len(argv) == 1:
            raise subprocess.TimeoutExpired(argv, 20)
        return subprocess.CompletedProcess(argv, 0, stdout="535.183.01\n", stderr="")

    assert read_host_driver(run=run, which=which_smi, proc_path="/nonexistent") == \
        HostDriver("535.183.01", None, "nvidia-smi")


# --- check_host_driver: when it runs at all --------------------------------------------------------

def must_not_read():
    raise AssertionError("the driver must not be read here")


def test_no_gpu_runtime_means_no_check():
    assert check_host_driver(None, {"cuda": "12.6"}, IMAGE, read=must_not_read) is None


def test_image_without_cuda_means_no_check():
    assert check_host_driver("nvidia", {"python": "3.11"}, IMAGE, read=must_not_read) is None


def test_remote_engine_is_not_checked_against_this_host():
    warnings = []
    verdict = check_host_driver("nvidia", {"cuda": "12.6"}, IMAGE, read=must_not_read, on_warning=warnings.append,
                                environ={"DOCKER_HOST": "ssh://gpu-node"})
    assert verdict.level == "warn" and warnings == [verdict.message] and "ssh://gpu-node" in warnings[0]


def test_check_raises_a_driver_error_or_warns():
    old = lambda: HostDriver("470.223.02", "11.4", "nvidia-smi")  # noqa: E731
    with pytest.raises(DriverError) as info:
        check_host_driver("nvidia", {"cuda": "12.6"}, IMAGE, read=old, environ={})
    assert isinstance(info.value, DlenvError) and info.value.hint
    warnings = []
    mid = lambda: HostDriver("535.183.01", "12.2", "nvidia-smi")  # noqa: E731
    assert check_host_driver("nvidia", {"cuda": "12.6"}, IMAGE, read=mid, on_warning=warnings.append,
                             environ={"DOCKER_HOST": "unix:///var/run/docker.sock"}) == Verdict("warn", warnings[0])
    new = lambda: HostDriver("560.35.03", "12.6", "nvidia-smi")  # noqa: E731
    assert check_host_driver("nvidia", {"cuda": "12.6"}, IMAGE, read=new, on_warning=warnings.append,
                             environ={}).level == "ok"
    assert len(warnings) == 1


# --- the CLI path ----------------------------------------------------------------------------------

class FakeClient:
    def __init__(self, runtimes):
        self.runtimes = runtimes

    def info(self):
        return {"Runtimes": self.runtimes}


@pytest.fixture
def host(monkeypatch):
    """An engine (nvidia runtime or not) and a host driver, with every container start recorded."""
    state = SimpleNamespace(runtimes={"runc": {}}, driver=None, reads=0, started=[], builds=[])

    def read():
        state.reads += 1
        return state.driver

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(builder.cli.common, "_WARNED", set())
    monkeypatch.setattr(builder.engine.dockerapi, "connect", lambda *a, **k: FakeClient(state.runtimes))
    monkeypatch.setattr(builder.engine.dockerapi, "image_attrs", lambda client, ref: None)   # verify's id lookup
    monkeypatch.setattr(driver, "read_host_driver", read)
    monkeypatch.setattr(builder.cli.common, "promoted_image", lambda client, p: object())
    monkeypatch.setattr(builder.engine.images, "require_promoted", lambda client, p, target: None)
    monkeypatch.setattr(builder.pipeline.build, "build", lambda *a, **k: state.builds.append(a))
    monkeypatch.setattr(builder.cli.use, "run_shell",
                        lambda client, image, opts, ident, command=None: state.started.append(("shell", opts.gpu)) or 0)
    monkeypatch.setattr(builder.cli.use, "run_mpi",
                        lambda client, image, opts, ident, command, ranks, **k: state.started.append(("run", opts.gpu))
                        or 0)
    monkeypatch.setattr(builder.cli.verify, "verify_image",
                        lambda client, image, planned, **k: state.started.append(("verify", image)) or Report(image))
    return state


COMMANDS = {
    "shell": ["shell", "chainermn", "--", "true"],
    "run": ["run", "chainermn", "-n", "2", "--", "true"],
    "verify": ["verify", "chainermn"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_too_old_driver_stops_with_one_line_before_any_container(cli, host, command):
    host.runtimes = {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}
    host.driver = HostDriver("470.223.02", "11.4", "nvidia-smi")
    result = cli(*COMMANDS[command])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dlenv: error: the host's NVIDIA driver 470.223.02 (CUDA 11.4) is too old for "
                               "CUDA 12.6 in dlenv/chainermn:")
    assert "upgrade the host's NVIDIA driver" in lines[0] and "--skip-driver-check" in lines[0]
    assert "Traceback" not in result.output
    assert host.reads == 1 and host.started == [] and host.builds == []


@pytest.mark.parametrize("command", COMMANDS)
def test_gpu_less_host_does_not_run_the_check(cli, host, command):
    host.driver = HostDriver("470.223.02", "11.4", "nvidia-smi")  # would fail, were it read
    result = cli(*COMMANDS[command])
    assert result.exit_code == 0, (result.output, result.exception)
    assert host.reads == 0 and len(host.started) == 1
    assert "driver" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_skip_driver_check(cli, host, command):
    host.runtimes = {"nvidia": {}}
    host.driver = HostDriver("470.223.02", "11.4", "nvidia-smi")
    argv = list(COMMANDS[command])
    argv.insert(2, "--skip-driver-check")
    result = cli(*argv)
    assert result.exit_code == 0, (result.output, result.exception)
    assert host.reads == 0 and len(host.started) == 1


def test_partial_support_warns_and_starts(cli, host):
    host.runtimes = {"nvidia": {}}
    host.driver = HostDriver("535.183.01", "12.2", "nvidia-smi")
    result = cli(*COMMANDS["shell"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr.startswith("dlenv: warning: the host's NVIDIA driver 535.183.01 (CUDA 12.2) is older than "
                                    "560.28.03")
    assert host.started == [("shell", "nvidia")]


def test_unreadable_driver_warns_and_starts(cli, host):
    host.runtimes = {"nvidia": {}}
    host.driver = HostDriver(problem="nvidia-smi not found; no /proc/driver/nvidia/version")
    result = cli(*COMMANDS["run"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "dlenv: warning: the engine has the NVIDIA runtime but this host's NVIDIA driver version could not be " \
           "read (nvidia-smi not found" in result.stderr
    assert host.started == [("run", "nvidia")]


def test_cpu_stack_on_a_gpu_host_is_not_checked(cli, host):
    host.runtimes = {"nvidia": {}}
    host.driver = HostDriver("470.223.02", "11.4", "nvidia-smi")
    result = cli("shell", "chainer", "--", "true")
    assert result.exit_code == 0, (result.output, result.exception)
    assert host.reads == 0 and host.started == [("shell", "nvidia")]


def test_missing_image_with_old_driver_fails_before_offering_a_build(cli, host, monkeypatch):
    monkeypatch.setattr(builder.cli.common, "promoted_image", lambda client, p: None)
    host.runtimes = {"nvidia": {}}
    host.driver = HostDriver("470.223.02", "11.4", "nvidia-smi")
    result = cli("shell", "chainermn", "--build", "--", "true")
    assert result.exit_code == 1 and "too old for CUDA 12.6" in result.stderr
    assert host.builds == [] and host.started == []


def test_verify_of_an_image_reference_reads_the_cuda_label(cli, host, monkeypatch):
    labels = {"org.dlenv.stack": "chainermn", "org.dlenv.component.cuda": "12.6"}
    monkeypatch.setattr(builder.engine.dockerapi, "image_attrs", lambda client, ref: {"Config": {"Labels": labels}})
    host.runtimes = {"nvidia": {}}
    host.driver = HostDriver("470.223.02", None, "/proc/driver/nvidia/version")
    result = cli("verify", "registry.example/dlenv/chainermn:abc")
    assert result.exit_code == 1
    assert "too old for CUDA 12.6 in registry.example/dlenv/chainermn:abc" in result.stderr
    assert host.started == []


def test_help_mentions_the_flag(cli):
    for command in ("shell", "run", "verify"):
        assert "--skip-driver-check" in cli(command, "--help").stdout
