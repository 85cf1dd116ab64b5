"""builder.doctor.run_checks with a fake engine (no Docker needed), a real tiny HTTP server on 127.0.0.1
standing in for a registry, and `dlenv doctor` through click's CliRunner."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import threading
from collections import namedtuple

import docker.errors
import pytest

from builder import doctor
from builder.engine import buildah
from builder.cli.app import main
from builder.cli.doctor import doctor as doctor_cmd
from builder.errors import EngineError
from builder.plan.pins import base_ref
from builder.settings.settings import KEYS, load_settings

if "doctor" not in main.commands:  # until builder/cli.py registers it
    main.add_command(doctor_cmd, "doctor")

GB = 10**9
DiskUsage = namedtuple("DiskUsage", "total used free")
DEFAULT_BASE_REF = base_ref(doctor.DEFAULT_BASE)
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


# --- fakes ------------------------------------------------------------------------------------------

class FakeAPI:
    def __init__(self, images):
        self.images = set(images)

    def inspect_image(self, ref):
        if ref not in self.images:
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return {"Id": "sha256:" + "0" * 64, "Config": {"Labels": {}}}


class FakeClient:
    def __init__(self, info, images=()):
        self._info = info
        self.api = FakeAPI(images)

    def info(self):
        return self._info

    def version(self):
        return {"Version": self._info.get("ServerVersion"), "ApiVersion": "1.41"}


def make_info(root, **changes) -> dict:
    info = {"ServerVersion": "20.10.24+dfsg1", "Driver": "overlay2", "DockerRootDir": str(root),
            "Runtimes": {"runc": {"path": "runc"}},
            "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}}}
    info.update(changes)
    return info


def factory_for(client):
    calls = []

    def factory(timeout=None):
        calls.append(timeout)
        return client

    factory.calls = calls
    return factory


def failing_factory(exc):
    def factory(timeout=None):
        raise exc
    return factory


@pytest.fixture
def env(tmp_path):
    """A clean environment: nothing from the host's DOCKER_*, DLENV_*, CA or registry variables."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            "DLENV_DEBIAN_MIRROR": "http://mirror.example/debian"}


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "docker-root"
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def plenty_of_disk(monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: DiskUsage(500 * GB, 100 * GB, 400 * GB))


BUILDAH_DOCTOR_STATUS = buildah.doctor_status   # the real one, before the fixture below replaces it


@pytest.fixture(autouse=True)
def buildah_present(monkeypatch):
    """This machine's buildah (or its absence) does not decide these tests; test_buildah_check does."""
    monkeypatch.setattr(buildah, "doctor_status", lambda required, environ=None: ("ok", "buildah 1.28.2", None))


HPC_RUNTIME_CHECKS = doctor.hpc_runtime_checks   # the real one, before the fixture below replaces it


@pytest.fixture(autouse=True)
def no_hpc_runtimes(monkeypatch):
    """This machine's runtimes, kernel and /dev/fuse do not decide these tests; test_hpc_runtime_checks does."""
    monkeypatch.setattr(doctor, "hpc_runtime_checks", lambda: [])


def test_hpc_runtime_checks(monkeypatch):
    hpc = doctor.hpc
    monkeypatch.setattr(hpc, "runtime_versions", lambda: {"charliecloud": "0.31", "podman": "4.3.1"})
    monkeypatch.setattr(hpc, "user_namespaces", lambda: (True, "user.max_user_namespaces=96367"))
    monkeypatch.setattr(hpc, "fuse_for_users", lambda: (False, "/dev/fuse mode 0600"))
    monkeypatch.setattr(hpc, "host_slurm_missing", lambda: [])
    checks = {c.name: c for c in HPC_RUNTIME_CHECKS()}
    assert {n: c.status for n, c in checks.items()} == {"HPC runtimes": "ok", "user namespaces": "ok",
                                                         "/dev/fuse for jobs": "warn", "host Slurm": "ok"}
    assert checks["HPC runtimes"].detail == "charliecloud 0.31, podman 4.3.1; not found: apptainer"
    assert "--format dir" in checks["/dev/fuse for jobs"].fix
    monkeypatch.setattr(hpc, "runtime_versions", lambda: {})
    monkeypatch.setattr(hpc, "user_namespaces", lambda: (False, "user.max_user_namespaces is 0"))
    monkeypatch.setattr(hpc, "host_slurm_missing", lambda: ["slurmd", "munged"])
    checks = {c.name: c for c in HPC_RUNTIME_CHECKS()}
    assert checks["HPC runtimes"].status == "warn" and "charliecloud-runtime" in checks["HPC runtimes"].fix
    assert checks["user namespaces"].status == "warn" and "max_user_namespaces" in checks["user namespaces"].fix
    assert checks["host Slurm"].status == "skip" and "missing slurmd, munged" in checks["host Slurm"].detail


@pytest.fixture
def which(monkeypatch):
    """`which(found)`: pretend mmdebstrap is (or is not) installed."""
    real = shutil.which

    def set_(found: bool):
        monkeypatch.setattr(doctor.shutil, "which",
                            lambda name, *a, **k: ("/usr/bin/mmdebstrap" if found else None)
                            if name == "mmdebstrap" else real(name, *a, **k))
    set_(True)
    return set_


def run(env, client=None, factory=None, project=None, **overrides):
    settings = load_settings(overrides, environ=env, cwd=project)
    return {c.name: c for c in doctor.run_checks(settings, factory or factory_for(client), environ=env)}


def test_all_good(env, root, which):
    checks = run(env, FakeClient(make_info(root, Runtimes={"nvidia": {"path": "nvidia-container-runtime"}}),
                                 images=[DEFAULT_BASE_REF]))
    assert list(checks) == ["config", "engine", "storage driver", "disk space", "nvidia runtime", "base image",
                            "mmdebstrap", "debian mirror", "ca bundle", "registry", "buildah"]
    statuses = {name: c.status for name, c in checks.items()}
    assert statuses == {**{name: "ok" for name in checks}, "ca bundle": "warn", "registry": "skip"}
    assert "Docker 20.10.24+dfsg1 (API 1.41)" in checks["engine"].detail
    assert checks["storage driver"].detail == "overlay2"
    assert "400.0 GB free in " + str(root) in checks["disk space"].detail
    assert DEFAULT_BASE_REF in checks["base image"].detail
    assert all(c.fix is None for c in checks.values() if c.status == "ok")


def test_the_engine_is_asked_with_a_short_timeout(env, root):
    factory = factory_for(FakeClient(make_info(root)))
    run(env, factory=factory)
    assert factory.calls == [doctor.ENGINE_TIMEOUT] and doctor.ENGINE_TIMEOUT <= 30


def test_unreachable_engine_fails_with_its_hint_and_skips_what_needs_it(env, which):
    error = EngineError("cannot reach the Docker engine at unix:///nonexistent",
                        hint="start it (sudo dockerd, or systemctl start docker) or fix DOCKER_HOST")
    checks = run(env, factory=failing_factory(error))
    engine = checks["engine"]
    assert engine.status == "fail"
    assert engine.detail == error.message and engine.fix == error.hint
    for name in ("storage driver", "disk space", "nvidia runtime", "base image"):
        assert checks[name].status == "skip", name
        assert "engine is unreachable" in checks[name].detail
    # the checks that do not need the engine still run
    assert checks["mmdebstrap"].status == "ok"
    assert checks["debian mirror"].status == "ok"
    assert checks["registry"].status == "skip"


@pytest.mark.parametrize("exc", [docker.errors.DockerException("Error while fetching server API version"),
                                 RuntimeError("something odd")])
def test_any_engine_exception_is_a_fail_not_a_crash(env, exc):
    checks = run(env, factory=failing_factory(exc))
    assert checks["engine"].status == "fail" and checks["engine"].fix
    assert checks["storage driver"].status == "skip"


def test_info_that_raises_is_an_engine_fail(env, root):
    class Broken(FakeClient):
        def info(self):
            raise docker.errors.APIError("500 Server Error: Internal Server Error")

    checks = run(env, Broken(make_info(root)))
    assert checks["engine"].status == "fail" and "500 Server Error" in checks["engine"].detail
    assert checks["disk space"].status == "skip"


def test_mmdebstrap_missing_with_engine_down_is_a_warning(env, which):
    which(False)
    checks = run(env, factory=failing_factory(EngineError("down", hint="start it")))
    assert checks["mmdebstrap"].status == "warn"
    assert checks["mmdebstrap"].fix == "apt-get install mmdebstrap"


def test_no_nvidia_runtime_warns_that_device_checks_are_skipped(env, root):
    check = run(env, FakeClient(make_info(root)))["nvidia runtime"]
    assert check.status == "warn"
    assert "device checks" in check.detail and "GPU" in check.detail
    assert "nvidia-container-toolkit" in check.fix


def test_nvidia_runtime_registered_is_ok(env, root):
    info = make_info(root, Runtimes={"runc": {"path": "runc"}, "nvidia": {"path": "/usr/bin/nvidia-container-runtime"}})
    check = run(env, FakeClient(info))["nvidia runtime"]
    assert check.status == "ok" and "/usr/bin/nvidia-container-runtime" in check.detail


def test_other_storage_drivers_warn(env, root):
    check = run(env, FakeClient(make_info(root, Driver="vfs")))["storage driver"]
    assert check.status == "warn" and "vfs" in check.detail and "overlay2" in check.fix


@pytest.mark.parametrize("free_gb, status", [
    (400, "ok"), (20, "ok"), (19.9, "warn"), (10, "warn"), (5, "warn"), (4.9, "fail"), (0, "fail"),
])
def test_disk_thresholds(env, root, monkeypatch, free_gb, status):
    seen = []

    def usage(path):
        seen.append(str(path))
        return DiskUsage(500 * GB, 0, int(free_gb * GB))

    monkeypatch.setattr(doctor.shutil, "disk_usage", usage)
    check = run(env, FakeClient(make_info(root)))["disk space"]
    assert seen == [str(root)]            # measured where Docker keeps its data
    assert check.status == status
    assert f"{free_gb:.1f} GB free in {root}" in check.detail
    assert (check.fix is None) == (status == "ok")


def test_disk_of_a_docker_root_not_visible_here_is_measured_on_its_nearest_parent(env, root, monkeypatch):
    seen = []
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: seen.append(str(p)) or DiskUsage(1, 0, 30 * GB))
    check = run(env, FakeClient(make_info(root, DockerRootDir=str(root / "not" / "here"))))["disk space"]
    assert check.status == "ok" and seen == [str(root)]


def test_disk_of_a_remote_engine_is_skipped(env, root):
    env["DOCKER_HOST"] = "tcp://build-box.example:2376"
    check = run(env, FakeClient(make_info(root)))["disk space"]
    assert check.status == "skip" and "another machine" in check.detail


def test_base_absent_warns_to_run_dlenv_base(env, root, which):
    checks = run(env, FakeClient(make_info(root), images=[]))
    assert checks["base image"].status == "warn"
    assert DEFAULT_BASE_REF in checks["base image"].detail
    assert "dlenv base" in checks["base image"].fix
    assert checks["mmdebstrap"].status == "ok"


def test_mmdebstrap_missing_and_base_absent_fails(env, root, which):
    which(False)
    check = run(env, FakeClient(make_info(root), images=[]))["mmdebstrap"]
    assert check.status == "fail" and check.fix == "apt-get install mmdebstrap"


def test_mmdebstrap_missing_but_base_present_only_warns(env, root, which):
    which(False)
    check = run(env, FakeClient(make_info(root), images=[DEFAULT_BASE_REF]))["mmdebstrap"]
    assert check.status == "warn"


def test_a_configured_base_image_is_the_one_checked(env, root, which):
    which(False)
    image = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
    checks = run(env, FakeClient(make_info(root), images=[]), base=image)
    assert checks["base image"].status == "warn" and image in checks["base image"].detail
    assert "--base" in checks["base image"].detail
    assert checks["mmdebstrap"].status == "skip"
    checks = run(env, FakeClient(make_info(root), images=[image]), base=image)
    assert checks["base image"].status == "ok"


def test_debian_mirror_from_settings_is_honoured(env, root, tmp_path):
    env.pop("DLENV_DEBIAN_MIRROR")
    user = tmp_path / "xdg" / "dlenv" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("debian_mirror: http://deb.example.org/debian\n")
    check = run(env, FakeClient(make_info(root)))["debian mirror"]
    assert check.status == "ok"
    assert check.detail == f"http://deb.example.org/debian (from {user})"


def test_no_debian_mirror_anywhere_fails(env, root, monkeypatch, tmp_path):
    from builder.settings import host as config
    env.pop("DLENV_DEBIAN_MIRROR")
    monkeypatch.setattr(config, "APT_SOURCES", (tmp_path / "none.d", tmp_path / "sources.list"))
    check = run(env, FakeClient(make_info(root)))["debian mirror"]
    assert check.status == "fail"
    assert "bookworm" in check.detail and "debian_mirror" in check.fix


def test_debian_mirror_from_the_host_apt_sources(env, root, monkeypatch, tmp_path):
    from builder.settings import host as config
    env.pop("DLENV_DEBIAN_MIRROR")
    listing = tmp_path / "sources.list"
    listing.write_text("deb http://apt.example.net/debian bookworm main\n"
                       "deb http://apt.example.net/debian trixie main\n")
    monkeypatch.setattr(config, "APT_SOURCES", (tmp_path / "none.d", listing))
    check = run(env, FakeClient(make_info(root)))["debian mirror"]
    assert (check.status, check.detail) == ("ok", "http://apt.example.net/debian (from the host's apt sources)")


def test_ca_bundle_from_settings_is_ok_with_its_source(env, root, tmp_path):
    bundle = tmp_path / "corp.pem"
    bundle.write_bytes(PEM)
    check = run(env, FakeClient(make_info(root)), ca_bundle=str(bundle))["ca bundle"]
    assert check.status == "ok" and check.detail.startswith(f"{bundle} (from --ca-bundle)")
    env["DLENV_CA_BUNDLE"] = str(bundle)
    check = run(env, FakeClient(make_info(root)))["ca bundle"]
    assert check.status == "ok" and f"{bundle} (from $DLENV_CA_BUNDLE)" in check.detail


def test_ca_bundle_from_pip_cert(env, root, tmp_path):
    bundle = tmp_path / "pip.pem"
    bundle.write_bytes(PEM)
    env["PIP_CERT"] = str(bundle)
    check = run(env, FakeClient(make_info(root)))["ca bundle"]
    assert check.status == "ok" and "(from $PIP_CERT)" in check.detail


def test_no_ca_bundle_warns_that_the_image_cas_are_used(env, root):
    check = run(env, FakeClient(make_info(root)))["ca bundle"]
    assert check.status == "warn" and "image's own Debian CA" in check.detail and check.fix


def test_a_ca_bundle_that_is_not_pem_fails(env, root, tmp_path):
    bundle = tmp_path / "not.pem"
    bundle.write_text("hello\n")
    user = tmp_path / "xdg" / "dlenv" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(f"ca_bundle: {bundle}\n")
    check = run(env, FakeClient(make_info(root)))["ca bundle"]
    assert check.status == "fail" and str(bundle) in check.detail and f"from {user}" in check.detail


def test_a_broken_config_file_is_a_failed_check_not_a_crash(env, root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dlenv.yaml").write_text("registy: example.org\n")
    checks = {c.name: c for c in doctor.run_checks(None, factory_for(FakeClient(make_info(root))), environ=env)}
    assert checks["config"].status == "fail"
    assert "registy" in checks["config"].detail and "did you mean 'registry'?" in checks["config"].detail
    assert checks["engine"].status == "ok"
    assert checks["registry"].status == "skip"


# --- registry ---------------------------------------------------------------------------------------

class Registry:
    """A tiny HTTP server on 127.0.0.1 answering GET /v2/ with a chosen status."""

    def __init__(self):
        self.status, self.headers, self.paths = 200, {"Docker-Distribution-API-Version": "registry/2.0"}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.paths.append(self.path)
                body = b"{}"
                self.send_response(outer.status)
                for k, v in outer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry():
    server = Registry()
    yield server
    server.close()


@pytest.fixture
def refused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_registry_configured_is_skipped(env, root):
    check = run(env, FakeClient(make_info(root)))["registry"]
    assert check.status == "skip" and "no registry configured" in check.detail


def test_registry_200_is_ok(env, root, registry):
    check = run(env, FakeClient(make_info(root)), registry=registry.host + "/team")["registry"]
    assert check.status == "ok" and f"http://{registry.host}/v2/ reachable" in check.detail
    assert registry.paths == ["/v2/"]


def test_registry_200_that_is_not_a_registry_warns(env, root, registry):
    registry.headers = {}
    check = run(env, FakeClient(make_info(root)), registry=registry.host)["registry"]
    assert check.status == "warn" and "not as a Docker registry" in check.detail


def test_registry_401_without_credentials_warns(env, root, registry):
    registry.status = 401
    check = run(env, FakeClient(make_info(root)), registry=registry.host)["registry"]
    assert check.status == "warn" and "reachable, needs login" in check.detail
    assert f"docker login {registry.host}" in check.fix and "DLENV_REGISTRY_USER" in check.fix


def test_registry_401_with_env_credentials_is_ok(env, root, registry):
    registry.status = 401
    env.update(DLENV_REGISTRY_USER="ci", DLENV_REGISTRY_PASSWORD="secret")
    check = run(env, FakeClient(make_info(root)), registry=registry.host)["registry"]
    assert check.status == "ok" and "needs login" in check.detail and "DLENV_REGISTRY_USER" in check.detail
    assert "secret" not in check.detail


@pytest.mark.parametrize("key", ["{host}", "http://{host}", "https://{host}/v1/"])
def test_registry_401_with_a_docker_config_auth_is_ok(env, root, registry, tmp_path, key):
    registry.status = 401
    config = tmp_path / "home" / ".docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"auths": {key.format(host=registry.host): {"auth": "Y2k6c2VjcmV0"}}}))
    check = run(env, FakeClient(make_info(root)), registry=registry.host)["registry"]
    assert check.status == "ok" and str(config) in check.detail


def test_registry_401_with_auth_for_another_host_warns(env, root, registry, tmp_path):
    registry.status = 401
    env["DOCKER_CONFIG"] = str(tmp_path / "dockercfg")
    (tmp_path / "dockercfg").mkdir()
    (tmp_path / "dockercfg" / "config.json").write_text(json.dumps({"auths": {"other.example": {"auth": "eA=="}}}))
    assert run(env, FakeClient(make_info(root)), registry=registry.host)["registry"].status == "warn"


@pytest.mark.parametrize("var", ["DLENV_REGISTRY_USER", "DLENV_REGISTRY_PASSWORD"])
def test_half_of_the_registry_credentials_fails(env, root, registry, var):
    env[var] = "x"
    check = run(env, FakeClient(make_info(root)), registry=registry.host)["registry"]
    assert check.status == "fail" and check.detail.startswith(f"{var} is set but ")
    assert registry.paths == []


def test_a_registry_without_a_host_fails(env, root):
    check = run(env, FakeClient(make_info(root)), registry="myteam/images")["registry"]
    assert check.status == "fail" and "Docker Hub" in check.detail and "127.0.0.1:5000" in check.fix


def test_registry_refused_fails(env, root, refused_port):
    host = f"127.0.0.1:{refused_port}"
    check = run(env, FakeClient(make_info(root)), registry=host)["registry"]
    assert check.status == "fail"
    assert host in check.detail and "connection refused" in check.detail
    assert "--registry" in check.fix


def test_registry_other_status_warns(env, root, registry):
    registry.status = 404
    check = run(env, FakeClient(make_info(root)), registry=registry.host)["registry"]
    assert check.status == "warn" and "HTTP 404" in check.detail


def test_registry_checked_even_when_the_engine_is_down(env, registry):
    checks = run(env, factory=failing_factory(EngineError("down")), registry=registry.host)
    assert checks["registry"].status == "ok"


def test_plain_http_registry_the_engine_would_refuse_warns(env, root, registry):
    info = make_info(root, RegistryConfig={"InsecureRegistryCIDRs": [], "IndexConfigs": {}})
    check = run(env, FakeClient(info), registry=registry.host)["registry"]
    assert check.status == "warn" and "insist on https" in check.detail
    assert "insecure-registries" in check.fix


@pytest.mark.parametrize("config, host, allowed", [
    ({"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}}, "127.0.0.1:5000", True),
    ({"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}}, "localhost:5000", True),
    ({"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}}, "10.1.2.3:5000", False),
    ({"InsecureRegistryCIDRs": ["10.0.0.0/8"], "IndexConfigs": {}}, "10.1.2.3", True),
    ({"InsecureRegistryCIDRs": [], "IndexConfigs": {"reg.lan:5000": {"Secure": False}}}, "reg.lan:5000", True),
    ({"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {"localhost:5000": {"Secure": True}}},
     "localhost:5000", False),
    ({}, "127.0.0.1:5000", False),
])
def test_engine_allows_http(config, host, allowed):
    assert doctor.engine_allows_http({"RegistryConfig": config}, host) is allowed


def test_registry_auth_source_ignores_a_broken_docker_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert doctor.registry_auth_source("reg.lan", {"DOCKER_CONFIG": str(tmp_path)}) is None
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"reg.lan": "pass"}}))
    assert "credential helper" in doctor.registry_auth_source("reg.lan", {"DOCKER_CONFIG": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg.lan": {}}, "credsStore": "desktop"}))
    assert doctor.registry_auth_source("reg.lan", {"DOCKER_CONFIG": str(tmp_path)}) == str(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg.lan": {}}}))
    assert doctor.registry_auth_source("reg.lan", {"DOCKER_CONFIG": str(tmp_path)}) is None


# --- dlenv doctor -----------------------------------------------------------------------------------

REAL_RUN_CHECKS = doctor.run_checks


@pytest.fixture
def doctor_cli(cli, env, monkeypatch, tmp_path, which):
    """`dlenv [GLOBAL...] doctor ARGS...` in-process, with run_checks bound to a fake engine."""
    monkeypatch.chdir(tmp_path)
    clean = {var: None for var, *_ in KEYS.values()}
    clean.update({var: None for var in ("DOCKER_HOST", "DOCKER_CONFIG", "PIP_CERT", "SSL_CERT_FILE",
                                        "REQUESTS_CA_BUNDLE", "DLENV_REGISTRY_USER", "DLENV_REGISTRY_PASSWORD")})

    def invoke(*args, factory, before=()):
        monkeypatch.setattr(doctor, "run_checks", functools.partial(REAL_RUN_CHECKS, client_factory=factory))
        return cli(*before, "doctor", *args, env={**clean, **env, "COLUMNS": "200"})

    return invoke


def check_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln[:5].rstrip() in doctor.STATUSES]


def test_cli_warnings_exit_0_with_aligned_lines_and_fixes(doctor_cli, root):
    result = doctor_cli(factory=factory_for(FakeClient(make_info(root), images=[DEFAULT_BASE_REF])))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    gpu = next(i for i, ln in enumerate(lines) if "nvidia runtime" in ln)
    assert lines[gpu].startswith("warn  nvidia runtime  no NVIDIA runtime")
    assert lines[gpu + 1].lstrip().startswith("fix: ") and "nvidia-container-toolkit" in lines[gpu + 1]
    assert any(ln.startswith("ok    engine ") and "Docker 20.10.24+dfsg1" in ln for ln in lines)
    # status, name and detail are columns: every detail (and every fix) starts at the same place
    rows = check_lines(result.stdout)
    assert len(rows) == 11
    width = max(len(name) for name in ("storage driver", "nvidia runtime")) + 2
    assert {ln[6 + width - 1] for ln in rows} == {" "} and all(ln[6 + width] != " " for ln in rows)
    assert lines[gpu + 1].index("fix:") == 6 + width
    assert lines[-1] == "8 ok, 2 warn, 1 skip"


def test_cli_json_and_exit_1_on_a_fail(doctor_cli):
    error = EngineError("cannot reach the Docker engine at unix:///nonexistent", hint="start it")
    result = doctor_cli("--json", factory=failing_factory(error))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    engine = next(c for c in data["checks"] if c["name"] == "engine")
    assert engine == {"name": "engine", "status": "fail", "detail": error.message, "fix": "start it"}
    assert data["passed"] is False and data["summary"]["fail"] == 1
    assert [c["status"] for c in data["checks"][2:6]] == ["skip"] * 4


def test_cli_text_exit_1_on_a_fail(doctor_cli):
    factory = failing_factory(EngineError("cannot reach the Docker engine at unix:///x", hint="start it"))
    result = doctor_cli(factory=factory)
    assert result.exit_code == 1
    assert "fail  engine" in result.stdout and "fix: start it" in result.stdout
    assert "skip  storage driver  the Docker engine is unreachable" in result.stdout
    assert "Traceback" not in result.output


def test_cli_quiet_prints_only_warnings_and_failures(doctor_cli, root):
    factory = factory_for(FakeClient(make_info(root), images=[DEFAULT_BASE_REF]))
    result = doctor_cli(factory=factory, before=["--quiet"])
    assert result.exit_code == 0, result.output
    assert [ln.split("  ")[0] for ln in check_lines(result.stdout)] == ["warn", "warn"]
    assert "ok    engine" not in result.stdout


def test_buildah_check_without_buildah_skips_or_fails_when_it_is_the_engine(tmp_path):
    env = {"PATH": str(tmp_path)}   # no buildah on it
    assert BUILDAH_DOCTOR_STATUS(False, env)[0] == "skip"
    failed = BUILDAH_DOCTOR_STATUS(True, env)
    assert failed[0] == "fail" and "buildah is not installed" in failed[1] and "setup-host.sh" in failed[2]
