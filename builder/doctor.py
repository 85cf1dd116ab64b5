"""`dlenv doctor`: is this machine ready to build? Every check says ok, warn, fail or skip, and how to fix it.

Pure of printing: `run_checks` returns a list of `DoctorCheck`; the CLI renders it. A check that
cannot be made (the engine is unreachable) is reported as `skip` with the reason, never raised.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from builder.engine import buildah, dockerapi as engine
from builder.errors import DlenvError
from builder.engine.base import base_present
from builder.engine.store import PackageStore
from builder.plan.pins import base_ref
from builder.run import hpcruntimes as hpc
from builder.run.cluster import gpu_runtime
from builder.settings.host import CA_ENV_VARS, debian_sources, find_ca_bundle
from builder.settings.settings import KEYS
from builder.settings.settings import Settings, load_settings, project_config_path, user_config_path
import re
import requests

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)

GB = 10**9
DISK_WARN_BYTES = 20 * GB   # a chainermn build stage plus its runtime image take about 10 GB
DISK_FAIL_BYTES = 5 * GB
ENGINE_TIMEOUT = 20         # seconds; the CLI's builds use engine.connect's own, longer default
REGISTRY_TIMEOUT = 3.0
DEFAULT_SUITE = "bookworm"
DEFAULT_BASE = {"bootstrap": {"suite": DEFAULT_SUITE, "variant": "minbase"}}


@dataclass
class DoctorCheck:
    name: str
    status: str            # ok | warn | fail | skip
    detail: str
    fix: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def summary(checks: list[DoctorCheck]) -> dict:
    return {status: sum(1 for c in checks if c.status == status) for status in STATUSES}


def run_checks(settings=None, client_factory: Callable = engine.connect, environ=os.environ) -> list[DoctorCheck]:
    """Every check, in order. `settings` is a `builder.settings.settings.Settings`; None loads them here, and a
    broken config file then becomes a failed `config` check instead of an exception.
    `client_factory(timeout=SECONDS)` returns a connected docker client or raises `EngineError`."""
    checks: list[DoctorCheck] = []
    settings = _settings_check(settings, environ, checks)

    engine_check, client, info = _engine_check(client_factory, environ)
    checks.append(engine_check)
    why = "the Docker engine is unreachable (see the engine check)"

    checks.append(_storage_check(info) if info is not None else DoctorCheck("storage driver", SKIP, why))
    checks.append(_disk_check(info, environ) if info is not None else DoctorCheck("disk space", SKIP, why))
    checks.append(_gpu_check(info) if info is not None else DoctorCheck("nvidia runtime", SKIP, why))
    base_spec = {"image": settings.get("base")} if settings.get("base") else DEFAULT_BASE
    if client is not None:
        base_check, base_is_present = _base_check(client, base_spec, settings)
    else:
        base_check, base_is_present = DoctorCheck("base image", SKIP, why), None
    checks.append(base_check)
    checks.append(_mmdebstrap_check(base_spec, base_is_present))
    checks.append(_mirror_check(settings, environ, needed="image" not in base_spec))
    checks.append(_ca_check(settings, environ))
    checks.append(_registry_check(settings, environ, info))
    checks.append(DoctorCheck("buildah", *buildah.doctor_status(settings.get("engine") == "buildah", environ)))
    checks.extend(hpc_runtime_checks())
    return checks


def hpc_runtime_checks() -> list[DoctorCheck]:
    """The runtimes a cluster job starts the image through, and what an unprivileged job needs from the host."""
    versions = hpc.runtime_versions()
    found = ", ".join(f"{name} {version}".strip() for name, version in versions.items())
    absent = [name for name, _tool, _flag in hpc.RUNTIMES if name not in versions and name != "singularity"]
    runtimes = DoctorCheck("HPC runtimes", OK if versions else WARN,
                           (found or "none found") + (f"; not found: {', '.join(absent)}" if absent else ""),
                           None if versions else "install Debian's charliecloud-runtime (and charliecloud-builders for "
                                                 "`dlenv export charliecloud`) or podman to run exports under Slurm")
    usable, why = hpc.user_namespaces()
    userns = DoctorCheck("user namespaces", OK if usable else WARN, why,
                         None if usable else "Charliecloud, rootless podman and unprivileged Apptainer need them: "
                                             "set user.max_user_namespaces (and kernel.unprivileged_userns_clone) above 0")
    fuse_ok, fuse_why = hpc.fuse_for_users()
    fuse = DoctorCheck("/dev/fuse for jobs", OK if fuse_ok else WARN, fuse_why,
                       None if fuse_ok else "unprivileged jobs cannot mount SquashFS images (ch-run with squashfuse): "
                                            "use `dlenv export charliecloud --format dir`, or make /dev/fuse mode 0666")
    missing = hpc.host_slurm_missing()
    slurm = DoctorCheck("host Slurm", OK if not missing else SKIP,
                        "slurmctld, slurmd, munged and the Slurm client are installed" if not missing
                        else f"missing {', '.join(missing)}: `dlenv verify --slurm --runtime` cannot start a Slurm here",
                        None if not missing else "install Debian's slurmd, slurmctld, slurm-client and munge")
    return [runtimes, userns, fuse, slurm]


def package_store() -> dict:
    """Where dlenv's package store is and what it holds (not a check: a store of any size is fine;
    `dlenv gc --store` trims it)."""
    store = PackageStore()
    try:
        files, size = store.usage()
    except OSError as exc:
        return {"path": str(store.root), "files": None, "bytes": None, "error": exc.strerror or str(exc)}
    return {"path": str(store.root), "files": files, "bytes": size}


def package_store_line(info: dict) -> str:
    if info.get("files") is None:
        return f"{info['path']}: cannot be read ({info.get('error', '')})"
    size = info["bytes"]
    shown = f"{size / GB:.2f} GB" if size >= GB else f"{size / 10**6:.1f} MB"
    return f"{info['path']}: {info['files']} file(s), {shown} (`dlenv gc --store` trims it)"


# --- configuration ----------------------------------------------------------------------------------

def _settings_check(settings, environ, checks: list) -> object:
    if settings is None:
        try:
            settings = load_settings(environ=environ)
        except DlenvError as exc:
            checks.append(DoctorCheck("config", FAIL, exc.one_line(),
                                      "fix or remove that file (`dlenv config path` shows where the files are)"))
            # Go on with defaults and the environment alone, so that the other checks still run.
            return _defaults_only(Settings())
    files = [str(p) for p in (user_config_path(environ), project_config_path()) if p.is_file()]
    changed = sorted({settings.source(k) for k in settings.values} - {"default"})
    detail = f"settings from {', '.join(changed)}" if changed else "defaults only"
    if not files:
        detail += " (no config file)"
    checks.append(DoctorCheck("config", OK, detail))
    return settings


def _defaults_only(settings):
    for key, (_, default, _, _) in KEYS.items():
        if default is not None:
            settings.values[key] = default
            settings.sources[key] = "default"
    return settings


# --- the engine -------------------------------------------------------------------------------------

def _docker_host(environ) -> str:
    return environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _engine_check(client_factory, environ) -> tuple[DoctorCheck, object, dict | None]:
    host = _docker_host(environ)
    try:
        client = client_factory(timeout=ENGINE_TIMEOUT)
        info = client.info()
    except DlenvError as exc:
        return DoctorCheck("engine", FAIL, exc.message,
                           exc.hint or "check DOCKER_HOST and that dockerd is running"), None, None
    except Exception as exc:  # noqa: BLE001 - docker-py and requests raise many kinds; all mean "not usable"
        text = " ".join(str(exc).split())[:200]
        return DoctorCheck("engine", FAIL, f"Docker engine at {host} failed: {text}",
                           "check DOCKER_HOST and that dockerd is running"), None, None
    version = info.get("ServerVersion") or "unknown version"
    try:
        api = client.version().get("ApiVersion")
    except Exception:  # noqa: BLE001 - the API version is a detail, not a requirement
        api = None
    detail = f"Docker {version}" + (f" (API {api})" if api else "") + f" at {host}"
    return DoctorCheck("engine", OK, detail), client, info


def _storage_check(info: dict) -> DoctorCheck:
    driver = info.get("Driver") or "unknown"
    if driver == "overlay2":
        return DoctorCheck("storage driver", OK, driver)
    return DoctorCheck("storage driver", WARN, f"{driver} (builds are slower and use more disk than with overlay2)",
                       'set "storage-driver": "overlay2" in /etc/docker/daemon.json and restart dockerd '
                       "(existing images are not carried over)")


def _disk_check(info: dict, environ) -> DoctorCheck:
    root = info.get("DockerRootDir") or "/var/lib/docker"
    host = _docker_host(environ)
    if not host.startswith(("unix://", "npipe://")) and "localhost" not in host and "127.0.0.1" not in host:
        return DoctorCheck("disk space", SKIP, f"the engine at {host} is on another machine; "
                                               f"check free space in its {root} there")
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return DoctorCheck("disk space", SKIP, f"cannot measure free space in {root}: {exc.strerror or exc}")
    free = usage.free
    where = f"{free / GB:.1f} GB free in {root}"
    fix = f"free space on the file system of {root} (unused images, containers and build cache), or move Docker's data-root"
    if free < DISK_FAIL_BYTES:
        return DoctorCheck("disk space", FAIL, f"{where}; a build needs at least {DISK_FAIL_BYTES // GB} GB", fix)
    if free < DISK_WARN_BYTES:
        return DoctorCheck("disk space", WARN, f"{where}; a chainermn build needs about 10 GB, "
                                               f"{DISK_WARN_BYTES // GB} GB leaves room for its cache", fix)
    return DoctorCheck("disk space", OK, where)


def _gpu_check(info: dict) -> DoctorCheck:
    runtime = gpu_runtime(info)
    if runtime:
        path = ((info.get("Runtimes") or {}).get(runtime) or {}).get("path") or "?"
        return DoctorCheck("nvidia runtime", OK, f"runtime {runtime!r} registered ({path}): verify runs the device checks")
    names = ", ".join(sorted(info.get("Runtimes") or {})) or "none"
    return DoctorCheck("nvidia runtime", WARN,
                       f"no NVIDIA runtime registered (runtimes: {names}): containers do not use a GPU and "
                       "verify skips the device checks",
                       "on a GPU host install nvidia-container-toolkit, run `nvidia-ctk runtime configure "
                       "--runtime=docker` and restart dockerd; on a host without a GPU nothing is needed")


def _base_check(client, base_spec: dict, settings) -> tuple[DoctorCheck, bool | None]:
    ref = base_ref(base_spec)
    try:
        present = base_present(client, base_spec)
    except DlenvError as exc:
        return DoctorCheck("base image", FAIL, exc.one_line()), None
    if "image" in base_spec:
        origin = f"from {settings.source('base')}"
        if present:
            return DoctorCheck("base image", OK, f"{ref} present ({origin})"), True
        return DoctorCheck("base image", WARN, f"{ref} ({origin}) is not present locally; builds will try to pull it",
                           f"docker pull {ref} (or docker load it), or unset `base` to use the bootstrapped "
                           "Debian base"), False
    if present:
        return DoctorCheck("base image", OK, f"{ref} present"), True
    return DoctorCheck("base image", WARN, f"default base {ref} is not present; the first build bootstraps it",
                       "run `dlenv base` (about 25 s)"), False


def _mmdebstrap_check(base_spec: dict, base_is_present: bool | None) -> DoctorCheck:
    tool = shutil.which("mmdebstrap")
    if tool:
        return DoctorCheck("mmdebstrap", OK, tool)
    fix = "apt-get install mmdebstrap"
    if "image" in base_spec:
        return DoctorCheck("mmdebstrap", SKIP, f"not installed; not needed while the base is {base_spec['image']}")
    if base_is_present is False:
        return DoctorCheck("mmdebstrap", FAIL, "not installed, and the default base image is missing: "
                                               "builds cannot bootstrap it", fix)
    if base_is_present is None:
        return DoctorCheck("mmdebstrap", WARN, "not installed; needed if the default base image is missing "
                                               "(the engine could not be asked)", fix)
    return DoctorCheck("mmdebstrap", WARN, "not installed; the default base is present, but "
                                           "`dlenv base --force` could not rebuild it", fix)


# --- host settings ----------------------------------------------------------------------------------

def _mirror_check(settings, environ, needed: bool) -> DoctorCheck:

    mirror = settings.get("debian_mirror")
    env = dict(environ)
    if mirror:
        env["DLENV_DEBIAN_MIRROR"] = mirror
    else:
        env.pop("DLENV_DEBIAN_MIRROR", None)
    try:
        sources = debian_sources(DEFAULT_SUITE, environ=env)
    except DlenvError as exc:
        fix = "set debian_mirror in the config file (`dlenv config path`) or DLENV_DEBIAN_MIRROR to a Debian mirror URL"
        return DoctorCheck("debian mirror", FAIL if needed else WARN,
                           exc.message + ("" if needed else " (not needed while the base comes from an image)"), fix)
    uris = list(dict.fromkeys(re.findall(r"^URIs: (\S+)", sources, flags=re.M)))
    origin = f"from {settings.source('debian_mirror')}" if mirror else "from the host's apt sources"
    return DoctorCheck("debian mirror", OK, f"{', '.join(uris)} ({origin})")


def _ca_check(settings, environ) -> DoctorCheck:
    explicit = settings.get("ca_bundle")
    try:
        bundle = find_ca_bundle(explicit, environ=environ)
    except DlenvError as exc:
        message = exc.message
        if explicit and "(from --ca-bundle)" in message:
            message = message.replace("(from --ca-bundle)", f"(from {settings.source('ca_bundle')})")
        return DoctorCheck("ca bundle", FAIL, message, exc.hint or "point ca_bundle at a PEM bundle or unset it")
    if bundle.path is None:
        return DoctorCheck("ca bundle", WARN, "none found: pip in builds uses the image's own Debian CA certificates",
                           "behind a TLS-intercepting proxy set ca_bundle in the config file, or DLENV_CA_BUNDLE / "
                           "PIP_CERT, to the proxy's PEM bundle")
    source = settings.source("ca_bundle") if explicit and bundle.source == "--ca-bundle" else bundle.source
    if source in CA_ENV_VARS:
        source = f"${source}"
    return DoctorCheck("ca bundle", OK, f"{bundle.path} (from {source}); used in the build stage only")


# --- registry -------------------------------------------------------------------------------------

def _registry_check(settings, environ, info: dict | None) -> DoctorCheck:
    registry = settings.get("registry")
    if not registry:
        return DoctorCheck("registry", SKIP, "no registry configured (push and pull are off; builds do not try a pull)")
    host = registry.split("/", 1)[0]
    if not ("." in host or ":" in host or host == "localhost"):
        return DoctorCheck("registry", FAIL, f"{registry!r} ({settings.source('registry')}) does not name a registry "
                                             "host: Docker would read it as a Docker Hub user",
                           "give HOST:PORT, a domain name or localhost, e.g. 127.0.0.1:5000")
    user, password = environ.get("DLENV_REGISTRY_USER"), environ.get("DLENV_REGISTRY_PASSWORD")
    if bool(user) != bool(password):
        set_, unset = ("DLENV_REGISTRY_USER", "DLENV_REGISTRY_PASSWORD")[::1 if user else -1]
        return DoctorCheck("registry", FAIL, f"{set_} is set but {unset} is not: push and pull refuse to start",
                           "set both, or neither to use the Docker config (`docker login HOST`)")
    answer, scheme, error = _ping_registry(host, environ)
    if answer is None:
        return DoctorCheck("registry", FAIL, f"{host} ({settings.source('registry')}) is unreachable: {error}",
                           f"start the registry or fix `registry` (now from {settings.source('registry')})")
    status, is_registry = answer
    where = f"{scheme}://{host}/v2/"
    if status == 401:
        auth = registry_auth_source(host, environ)
        if auth:
            check = DoctorCheck("registry", OK, f"{where} reachable, needs login; credentials in {auth}")
        else:
            check = DoctorCheck("registry", WARN, f"{where} reachable, needs login, and no credentials were found",
                                f"`docker login {host}`, or set DLENV_REGISTRY_USER and DLENV_REGISTRY_PASSWORD")
    elif status == 200 and is_registry:
        check = DoctorCheck("registry", OK, f"{where} reachable")
    elif status == 200:
        return DoctorCheck("registry", WARN, f"{where} answers 200 but not as a Docker registry "
                                             "(no Docker-Distribution-API-Version header)",
                           f"check `registry` (from {settings.source('registry')})")
    else:
        return DoctorCheck("registry", WARN, f"{where} answered HTTP {status}",
                           f"check `registry` (from {settings.source('registry')}) and the registry's logs")
    if scheme == "http" and info is not None and not engine_allows_http(info, host):
        check.status = WARN
        check.detail += "; it speaks plain http but the engine will insist on https"
        check.fix = (f'add "{host}" to "insecure-registries" in /etc/docker/daemon.json and restart dockerd, '
                     "or serve the registry over TLS")
    return check


def _ping_registry(host: str, environ) -> tuple[tuple[int, bool] | None, str, str]:
    """GET /v2/ over http, then over https unless http answered 200 or 401.
    Returns ((status, looks_like_a_registry) or None, scheme, error)."""

    session = requests.Session()
    # A registry on this machine must not be reached through the user's HTTP proxy.
    session.trust_env = not _is_loopback(host)
    first, error = None, ""
    for scheme in ("http", "https"):
        try:
            response = session.get(f"{scheme}://{host}/v2/", timeout=REGISTRY_TIMEOUT, allow_redirects=False)
        except requests.exceptions.RequestException as exc:
            error = error or _short_request_error(exc)
            continue
        looks = "docker-distribution-api-version" in {k.lower() for k in response.headers}
        answer = ((response.status_code, looks), scheme, "")
        if response.status_code in (200, 401):
            return answer
        first = first or answer
    return first or (None, "", error)


def _short_request_error(exc) -> str:
    if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no answer within {REGISTRY_TIMEOUT:g}s"
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "No route to host", "Network is unreachable", "CERTIFICATE_VERIFY_FAILED"):
        if marker in text:
            return marker.lower() if marker != "CERTIFICATE_VERIFY_FAILED" else "certificate verify failed"
    return " ".join(text.split())[:160]


def _split_host(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    name = _split_host(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def engine_allows_http(info: dict, host: str) -> bool:
    """Whether the engine would talk plain http to `host` (its insecure-registries, or a CIDR match)."""
    config = info.get("RegistryConfig") or {}
    index = (config.get("IndexConfigs") or {}).get(host)
    if index is not None:
        return not index.get("Secure", True)
    cidrs = []
    for item in config.get("InsecureRegistryCIDRs") or []:
        try:
            cidrs.append(ipaddress.ip_network(item if isinstance(item, str) else "", strict=False))
        except ValueError:
            continue
    name = _split_host(host)
    try:
        addresses = {ipaddress.ip_address(name)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(a[4][0].split("%")[0]) for a in socket.getaddrinfo(name, None)}
        except (OSError, ValueError):
            return False
    return any(addr in net for addr in addresses for net in cidrs if addr.version == net.version)


def registry_auth_source(host: str, environ=os.environ) -> str | None:
    """Where credentials for `host` are: $DLENV_REGISTRY_USER/PASSWORD or the docker client config, or None."""
    if environ.get("DLENV_REGISTRY_USER") and environ.get("DLENV_REGISTRY_PASSWORD"):
        return "$DLENV_REGISTRY_USER/$DLENV_REGISTRY_PASSWORD"
    folder = environ.get("DOCKER_CONFIG") or os.path.join(environ.get("HOME") or str(Path.home()), ".docker")
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key, entry in (data.get("auths") or {}).items():
        name = key.split("://", 1)[-1].split("/", 1)[0]
        if name == host and isinstance(entry, dict) and (entry or data.get("credsStore")):
            return str(path)
    if host in (data.get("credHelpers") or {}):
        return f"{path} (credential helper)"
    return None
