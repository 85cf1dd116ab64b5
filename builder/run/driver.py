"""The host's NVIDIA driver against the CUDA an image was built for, checked before a GPU
container starts, so that a too-old driver is one clear line instead of a failure deep inside
CuPy (`cudaErrorInsufficientDriver`, `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`).

Reading the host (`read_host_driver`) is the only effectful part; parsing and judging
(`parse_*`, `assess`) are pure and tested with recorded `nvidia-smi` outputs
(tests/fixtures/nvidia-smi/).

What is enforced, and why:
- Below the *minor version compatibility* minimum of the image's CUDA major release (12.x:
  525.60.13) nothing of that CUDA runs: the CUDA runtime refuses the driver at the first call.
  That is an error. (NVIDIA's forward-compatibility package `cuda-compat` would lift this on
  data-center GPUs, but no dlenv image carries it.)
- Between that minimum and the driver the toolkit release shipped with (12.6: 560.28.03) the
  image runs through minor version compatibility, but whatever needs the newer driver fails:
  PTX newer than the driver knows cannot be JIT-compiled (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`;
  it happens for kernels built as PTX, and for libraries on a GPU they ship no binary code
  for), and APIs new in that release report "not supported". Most work runs, so that is a warning.
- At or above the toolkit's own driver version: nothing to say.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from builder.errors import DriverError
from builder.names import COMPONENT_LABEL

# Components whose version is the image's CUDA version, in order of preference.
CUDA_COMPONENTS = ("cuda", "cuda-headers")
PROC_VERSION = "/proc/driver/nvidia/version"
SMI_TIMEOUT = 20
SKIP_HINT = "--skip-driver-check starts the container anyway"

# Minimum Linux x86_64 driver per CUDA major release under minor version compatibility.
# Source: NVIDIA, "CUDA Compatibility" guide (docs.nvidia.com/deploy/cuda-compatibility/),
# table "Example CUDA Toolkit and minimum driver versions for minor version compatibility",
# and the CUDA Toolkit Release Notes, same table.
MINOR_COMPAT_MIN = {
    11: "450.80.02",
    12: "525.60.13",
    13: "580.65.06",
}

# The driver each CUDA minor release shipped with (its GA release; an update release of the same
# minor may list a slightly newer one, e.g. 12.6 Update 1 560.35.03), Linux x86_64.
# Source: NVIDIA, CUDA Toolkit Release Notes, table "CUDA Toolkit and Corresponding Driver Versions".
TOOLKIT_DRIVER = {
    "11.0": "450.51.05",
    "11.1": "455.23",
    "11.2": "460.27.03",
    "11.3": "465.19.01",
    "11.4": "470.42.01",
    "11.5": "495.29.05",
    "11.6": "510.39.01",
    "11.7": "515.43.04",
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

_VERSION_RE = re.compile(r"^\d{3,4}\.\d{1,3}(?:\.\d{1,3})?$")
_SMI_HEADER_RE = re.compile(r"Driver Version:\s*(\S+)(?:\s+CUDA Version:\s*(\d+\.\d+|N/A))?")
_PROC_RE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)\b")


@dataclass(frozen=True)
class HostDriver:
    """What the host said about its NVIDIA driver. `version` None: nothing could be read, and
    `problem` says why."""
    version: str | None = None
    cuda: str | None = None       # the newest CUDA the driver supports, as nvidia-smi reports it
    source: str = ""              # "nvidia-smi" or PROC_VERSION
    problem: str = ""


@dataclass(frozen=True)
class Verdict:
    level: str                    # ok | warn | error
    message: str = ""
    hint: str | None = None


# --- pure: parsing -------------------------------------------------------------------------------

def version_key(text: str) -> tuple:
    """'525.60.13' -> (525, 60, 13); '455.23' -> (455, 23, 0). ValueError when not a version."""
    text = text.strip()
    if not _VERSION_RE.match(text):
        raise ValueError(f"not a driver version: {text!r}")
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def parse_query_csv(text: str) -> list[str]:
    """`nvidia-smi --query-gpu=driver_version --format=csv,noheader`: one version per GPU.
    Lines that are not a version (an error message, a header) are ignored."""
    out = []
    for line in text.splitlines():
        value = line.split(",")[0].strip()
        if _VERSION_RE.match(value):
            out.append(value)
    return out


def parse_smi_table(text: str) -> tuple[str | None, str | None]:
    """Plain `nvidia-smi`: (driver version, CUDA version) from the header line, or Nones."""
    m = _SMI_HEADER_RE.search(text)
    if not m or not _VERSION_RE.match(m.group(1)):
        return None, None
    cuda = m.group(2) if m.group(2) and m.group(2) != "N/A" else None
    return m.group(1), cuda


def parse_proc_version(text: str) -> str | None:
    """/proc/driver/nvidia/version: 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ...'
    (or '... Open Kernel Module for x86_64  560.35.03 ...')."""
    m = _PROC_RE.search(text)
    return m.group(1) if m else None


def lowest(versions: list[str]) -> str | None:
    """The driver that every GPU has (all GPUs share one driver; should they ever disagree, the
    oldest one decides)."""
    return min(versions, key=version_key) if versions else None


def cuda_version(components: dict) -> str | None:
    """The image's CUDA version from component versions ({name: version}) or image labels."""
    for name in CUDA_COMPONENTS:
        for key in (name, f"{COMPONENT_LABEL}{name}"):
            if components.get(key):
                return str(components[key])
    return None


# --- pure: judging -------------------------------------------------------------------------------

def _major_minor(cuda: str) -> tuple[int, int] | None:
    m = re.match(r"^(\d+)\.(\d+)", cuda.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def toolkit_driver(cuda: str) -> str | None:
    """The driver CUDA `cuda` (e.g. '12.6' or '12.6.77') shipped with; for a minor release the
    table does not list (12.7 was never released), the nearest older one of the same major."""
    mm = _major_minor(cuda)
    if mm is None:
        return None
    known = sorted((_major_minor(k), v) for k, v in TOOLKIT_DRIVER.items())
    same = [(k, v) for k, v in known if k[0] == mm[0]]
    if not same or mm > same[-1][0]:
        return None  # newer than the table: its driver is unknown, not the last one listed
    older = [v for k, v in same if k <= mm]
    return older[-1] if older else None


def supported_cuda(driver: str) -> str | None:
    """The newest CUDA release in the table whose own driver is not newer than `driver`."""
    key = version_key(driver)
    fits = [c for c, d in TOOLKIT_DRIVER.items() if version_key(d) <= key]
    return max(fits, key=_major_minor) if fits else None


def assess(host: HostDriver, cuda: str, image: str) -> Verdict:
    """Judge the host's driver against the image's CUDA version. Pure."""
    mm = _major_minor(cuda)
    if host.version is None:
        why = f" ({host.problem})" if host.problem else ""
        return Verdict("warn", f"the engine has the NVIDIA runtime but this host's NVIDIA driver version could "
                               f"not be read{why}; the driver is not checked against CUDA {cuda} of {image}")
    try:
        have = version_key(host.version)
    except ValueError:
        return Verdict("warn", f"cannot understand the NVIDIA driver version {host.version!r} from {host.source}; "
                               f"the driver is not checked against CUDA {cuda} of {image}")
    if mm is None or mm[0] not in MINOR_COMPAT_MIN:
        return Verdict("warn", f"dlenv does not know which NVIDIA driver CUDA {cuda} of {image} needs; "
                               f"the driver ({host.version}) is not checked")
    full = toolkit_driver(cuda)
    floor = MINOR_COMPAT_MIN[mm[0]] if full is None else min(MINOR_COMPAT_MIN[mm[0]], full, key=version_key)
    reports = f" (CUDA {host.cuda})" if host.cuda else ""
    driver = f"the host's NVIDIA driver {host.version}{reports}"
    if have < version_key(floor):
        can = host.cuda or supported_cuda(host.version)
        older = f"use a stack built for CUDA {can} or older" if can else "use a stack built for an older CUDA"
        return Verdict("error",
                       f"{driver} is too old for CUDA {cuda} in {image}: CUDA {mm[0]}.x needs driver {floor} or newer",
                       hint=f"upgrade the host's NVIDIA driver to {full or floor} or newer, or {older}; {SKIP_HINT}")
    if full is None:
        return Verdict("warn", f"dlenv does not know which NVIDIA driver CUDA {cuda} was released with: {driver} "
                               f"meets the CUDA {mm[0]}.x minimum ({floor}) for {image}, but what is new in "
                               f"CUDA {cuda} may need a newer driver")
    if have < version_key(full):
        return Verdict("warn",
                       f"{driver} is older than {full}, the driver of CUDA {mm[0]}.{mm[1]}: {image} runs through "
                       f"CUDA minor version compatibility, but what needs the newer driver fails (JIT of newer PTX: "
                       f"CUDA_ERROR_UNSUPPORTED_PTX_VERSION); upgrade the driver to {full} or newer for full support")
    return Verdict("ok")


# --- effectful: reading the host -----------------------------------------------------------------

def _first_line(text: str) -> str:
    return next((" ".join(ln.split()) for ln in text.splitlines() if ln.strip()), "")[:160]


def read_host_driver(run=subprocess.run, which=shutil.which, proc_path: str = PROC_VERSION) -> HostDriver:
    """Ask `nvidia-smi` (the driver of every GPU, then the header for its CUDA version); without
    a working nvidia-smi read /proc/driver/nvidia/version. Never raises."""
    problems = []
    smi = which("nvidia-smi")
    if smi:
        try:
            proc = run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=SMI_TIMEOUT)
            version = lowest(parse_query_csv(proc.stdout)) if proc.returncode == 0 else None
            if version:
                cuda = None
                try:
                    table = run([smi], capture_output=True, text=True, timeout=SMI_TIMEOUT)
                    cuda = parse_smi_table(table.stdout)[1]
                except (OSError, subprocess.SubprocessError):
                    pass  # the CUDA version only makes the message better
                return HostDriver(version, cuda, "nvidia-smi")
            said = _first_line(proc.stdout + "\n" + proc.stderr) or f"exit status {proc.returncode}"
            problems.append(f"nvidia-smi failed: {said}")
        except subprocess.TimeoutExpired:
            problems.append(f"nvidia-smi did not answer within {SMI_TIMEOUT}s")
        except OSError as exc:
            problems.append(f"nvidia-smi could not run: {exc.strerror or exc}")
    else:
        problems.append("nvidia-smi not found")
    try:
        with open(proc_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        problems.append(f"no {proc_path}")
    else:
        version = parse_proc_version(text)
        if version:
            return HostDriver(version, None, proc_path)
        problems.append(f"{proc_path} has no driver version")
    return HostDriver(problem="; ".join(problems))


def engine_is_remote(environ=os.environ) -> str | None:
    """DOCKER_HOST when it points at another machine (tcp://, ssh://): its driver is not ours."""
    host = environ.get("DOCKER_HOST") or ""
    return host if host and not host.startswith(("unix://", "npipe://")) else None


def check_host_driver(gpu: str | None, components: dict, image: str, *, on_warning=None,
                      read=None, environ=os.environ) -> Verdict | None:
    """Before a GPU container starts: raise DriverError when the host's driver cannot run the
    image's CUDA, warn (through `on_warning`) when it runs it only in part or cannot be read.
    Does nothing (returns None) without a GPU runtime or for an image without CUDA."""
    if not gpu:
        return None
    cuda = cuda_version(components)
    if not cuda:
        return None
    remote = engine_is_remote(environ)
    if remote:
        verdict = Verdict("warn", f"the Docker engine ({remote}) is not on this host: its NVIDIA driver is not "
                                  f"checked against CUDA {cuda} of {image}")
    else:
        verdict = assess((read or read_host_driver)(), cuda, image)
    if verdict.level == "error":
        raise DriverError(verdict.message, hint=verdict.hint)
    if verdict.level == "warn" and on_warning is not None:
        on_warning(verdict.message)
    return verdict
