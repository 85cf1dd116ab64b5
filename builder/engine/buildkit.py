"""The optional BuildKit engine: the same build through a Docker CLI that builds with BuildKit.

Why a CLI: docker-py drives only the classic builder. BuildKit adds cache mounts (apt's archives and
lists, pip's cache survive between builds without reaching a layer) and secret mounts (the CA bundle
reaches the steps that talk to the package index and no layer at all, not even the build stage's).

Identity: the image is still named by the content hash of the canonical (SDK) rendering. The BuildKit
Dockerfile is a variant derived from that text here, in Python, by a pure function (`variant`): it only
adds `--mount` flags to RUN instructions, drops the two CA bundle lines and PIP_NO_CACHE_DIR, and keeps
apt's lists in their cache mount. The templates stay dumb and every quoted word stays as rendered. Both
engines label the image with the same hash, so either engine's build is a no-op after the other's.

Only this module runs the Docker CLI.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from builder.engine.dockerapi import LOG_TAIL, BuildProgress, _build_hint, _short_build_error
from builder.errors import BuildError, EngineError, RenderError
from builder.names import CA_BUNDLE_TARGET, SYSTEM_CA

CA_SECRET_ID = "dlenv-ca"
CLI_ENV_VAR = "DLENV_BUILDKIT_CLI"             # one CLI to use instead of probing the candidates
CLI_CANDIDATES = ("/usr/bin/docker", "docker")  # Debian's docker.io client first: the first `docker` on
#                                                  PATH may be a newer client without buildx

_CA_COPY = re.compile(r"^COPY \S+/ca\.crt " + re.escape(CA_BUNDLE_TARGET) + r"\s*$")
_CA_FALLBACK = re.compile(r"^RUN \[ -s " + re.escape(CA_BUNDLE_TARGET) + r" \] \|\| cp ")
_CA_COMMENT = "# The CA bundle lets pip reach the package index; it exists in this stage only."
_FROM = re.compile(r"^FROM \S+ AS (\S+)\s*$")
_APT = re.compile(r"\bapt-get (update|install|source)\b")
_PIP = re.compile(r"(^|[\s/])pip3? install\b")
_APT_LISTS_RM = " && rm -rf /var/lib/apt/lists/*"
_APT_CLEAN = " && apt-get clean"


def cache_key(base: dict) -> str:
    """Apt caches are shared by the builds of one base family (a Debian suite, or one registry image)."""
    if "image" in base:
        name = base["image"].split("@")[0]
        return "img-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return re.sub(r"[^a-z0-9-]", "-", str(base["bootstrap"]["suite"]).lower())


def _instructions(text: str) -> list[list[str]]:
    """The Dockerfile as a list of blocks: an instruction with its `\\`-continued lines, or one
    comment/blank line (kept as they are)."""
    blocks, cur = [], None
    for line in text.splitlines():
        if cur is not None:
            cur.append(line)
            if not line.endswith("\\"):
                blocks.append(cur)
                cur = None
            continue
        if line.strip() and not line.lstrip().startswith("#") and line.endswith("\\"):
            cur = [line]
        else:
            blocks.append([line])
    if cur is not None:
        blocks.append(cur)
    return blocks


def _drop_apt_lists_rm(lines: list[str]) -> list[str]:
    """apt's lists and downloaded .debs live in cache mounts (outside every layer): deleting them, or
    `apt-get clean`, would only throw the cache away."""
    out = []
    for line in lines:
        bare = line.rstrip("\\").rstrip()
        if bare in (_APT_LISTS_RM, _APT_CLEAN):
            if not line.endswith("\\") and out:   # it ended the instruction: the line before now does
                out[-1] = out[-1].rstrip("\\").rstrip()
            continue
        out.append(line.replace(_APT_LISTS_RM + " ", " && rm -rf ", 1))
    return out


def variant(dockerfile: str, *, base: dict, ca_secret: bool = True) -> str:
    """The BuildKit Dockerfile derived from the canonical (SDK) rendering `dockerfile`.

    ca_secret: the CA bundle comes as the secret `dlenv-ca`, mounted at /etc/dlenv-build/ca.crt on the
    steps that run pip; without one, pip trusts the image's own Debian CA certificates (as the SDK
    rendering's fallback does). Raises RenderError when the text is not shaped as the templates render
    it, so that a template change cannot silently produce a weaker variant.
    """
    key = cache_key(base)
    apt_mounts = (f"--mount=type=cache,id=dlenv-apt-archives-{key},target=/var/cache/apt,sharing=locked "
                  f"--mount=type=cache,id=dlenv-apt-lists-{key},target=/var/lib/apt/lists,sharing=locked")
    pip_mounts = "--mount=type=cache,id=dlenv-pip,target=/root/.cache/pip"
    secret_mount = f"--mount=type=secret,id={CA_SECRET_ID},target={CA_BUNDLE_TARGET}"
    registry_base = "image" in base
    out: list[str] = []
    stage = None
    found = {"ca_copy": 0, "ca_fallback": 0, "no_cache_env": 0}
    for block in _instructions(dockerfile):
        first = block[0]
        m = _FROM.match(first)
        if m:
            stage = m.group(1)
            out.extend(block)
            continue
        if stage == "build" and first == _CA_COMMENT:
            out.append(f"# The CA bundle reaches the pip steps as the BuildKit secret {CA_SECRET_ID}: it is in no layer.")
            continue
        if stage == "build" and _CA_COPY.match(first):
            found["ca_copy"] += 1
            continue
        if stage == "build" and _CA_FALLBACK.match(first):
            found["ca_fallback"] += 1
            continue
        if stage == "build" and first.startswith("ENV PIP_CERT="):
            if " PIP_NO_CACHE_DIR=1" in first:
                found["no_cache_env"] += 1
            first = first.replace(" PIP_NO_CACHE_DIR=1", "")   # pip's cache is a cache mount now
            if not ca_secret:
                first = first.replace(f"PIP_CERT={CA_BUNDLE_TARGET}", f"PIP_CERT={SYSTEM_CA}")
            out.append(first)
            out.extend(block[1:])
            continue
        if stage == "build" and first.startswith("SHELL ") and registry_base:
            # Debian's and Ubuntu's registry images delete every downloaded .deb (docker-clean): the
            # apt cache mount would stay empty. Only in the build stage: the runtime image keeps it.
            # (The bootstrapped minbase has no docker-clean.)
            out.extend(block)
            out.append("RUN rm -f /etc/apt/apt.conf.d/docker-clean")
            continue
        if not first.startswith("RUN "):
            out.extend(block)
            continue
        text = "\n".join(block)
        mounts = []
        if _APT.search(text):
            mounts.append(apt_mounts)
            block = _drop_apt_lists_rm(block)
        if stage == "build" and _PIP.search(text):
            mounts.append(pip_mounts)
            if ca_secret:
                mounts.append(secret_mount)
        if mounts:
            block = [f"RUN {' '.join(mounts)} {block[0][4:]}", *block[1:]]
        out.extend(block)
    if found != {"ca_copy": 1, "ca_fallback": 1, "no_cache_env": 1}:
        raise RenderError(f"the BuildKit variant did not find the CA bundle and pip cache lines it replaces ({found})",
                          hint="the Dockerfile template changed: update builder/buildkit.py with it")
    return "\n".join(out) + ("\n" if dockerfile.endswith("\n") else "")


# --- the CLI ---------------------------------------------------------------------------------------

def _probe(path: str) -> tuple[bool, str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    try:
        proc = subprocess.run([path, "build", "--help"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    # With BuildKit on, `build --help` lists --secret; a client without buildx refuses with status 1.
    if proc.returncode == 0 and "--secret" in proc.stdout:
        return True, ""
    why = (proc.stderr or proc.stdout).strip().splitlines()
    return False, why[0] if why else f"exit status {proc.returncode}"


def find_cli(environ=os.environ) -> str:
    """The first Docker CLI that builds with BuildKit: $DLENV_BUILDKIT_CLI alone when set, else
    /usr/bin/docker, then `docker` on PATH."""
    explicit = environ.get(CLI_ENV_VAR)
    candidates = [explicit] if explicit else list(CLI_CANDIDATES)
    tried, seen = [], set()
    for cand in candidates:
        path = cand if os.path.isabs(cand) else shutil.which(cand, path=environ.get("PATH"))
        if not path or not os.access(path, os.X_OK):
            tried.append(f"{cand}: not found")
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        ok, why = _probe(path)
        if ok:
            return path
        tried.append(f"{path}: {why}")
    raise EngineError(f"no Docker CLI that builds with BuildKit ({'; '.join(tried)})",
                      hint=f"install Debian's docker.io (its /usr/bin/docker does) or the buildx plugin, set {CLI_ENV_VAR} "
                           "to such a client, or build with --engine sdk")


_VERTEX = re.compile(r"^#(\d+) \[(?:([^\]\s]+) )?(\d+)/(\d+)\] (.*)$")
_VERTEX_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
_VERTEX_OUT = re.compile(r"^#\d+ \d+\.\d+ ?")


def _stop(proc: subprocess.Popen) -> None:
    """End the CLI: SIGINT as a user's Ctrl-C would, then harder. It leads its own process group
    (start_new_session), so the group is it and whatever it started, nothing else."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    try:   # whatever the CLI left behind in its group (it has exited: nothing to wait for)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def build(cli: str, context_dir: Path, tag_ref: str, buildargs: dict, log_path: Path, *,
          secret_file: Path | None = None, on_progress: Callable[[BuildProgress, str], None] | None = None,
          nocache: bool = False) -> str:
    """`docker build` with BuildKit of `context_dir` (its Dockerfile is the variant), tagged `tag_ref`;
    returns the image id. The full log goes to `log_path`; a failure raises BuildError like the SDK's."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    iid_dir = Path(tempfile.mkdtemp(prefix="iid-"))
    iid_file = iid_dir / "iid"
    cmd = [cli, "build", "--progress=plain", "--iidfile", str(iid_file), "-t", tag_ref]
    if nocache:
        cmd.append("--no-cache")
    # Values travel in the environment (`--build-arg NAME`), so proxy credentials stay out of `ps`.
    for name in sorted(buildargs):
        cmd += ["--build-arg", name]
    if secret_file is not None:
        cmd += ["--secret", f"id={CA_SECRET_ID},src={secret_file}"]
    cmd.append(str(context_dir))
    env = {**os.environ, **{k: str(v) for k, v in buildargs.items()}, "DOCKER_BUILDKIT": "1",
           "BUILDKIT_PROGRESS": "plain", "NO_COLOR": "1"}
    progress = BuildProgress()
    tail: collections.deque = collections.deque(maxlen=LOG_TAIL)
    vertices: dict[str, tuple] = {}
    failed = None
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                        start_new_session=True)
            except OSError as exc:
                raise EngineError(f"cannot run {cli}: {exc}") from None
            try:
                for raw in proc.stdout:
                    line = raw.rstrip("\n")
                    log.write(line + "\n")
                    tail.append(line)
                    m = _VERTEX.match(line)
                    if m:
                        stage = m[2] or "stage"
                        vertices[m[1]] = (int(m[3]), int(m[4]), f"[{stage}] {m[5]}")
                        progress.step, progress.total, progress.instruction = vertices[m[1]]
                    e = _VERTEX_ERROR.match(line)
                    if e and failed is None:
                        failed = (vertices.get(e[1]), e[2])
                    if on_progress:
                        on_progress(progress, _VERTEX_OUT.sub("", line))
                code = proc.wait()
            finally:
                _stop(proc)   # Ctrl-C or any error here: the CLI must not build on without us
        if code != 0:
            lines = list(tail)
            message = next((ln.split("error: ", 1)[-1] if ln.startswith("error: ") else ln
                            for ln in reversed(lines) if ln.startswith(("error: ", "failed to solve", "ERROR:"))),
                           failed[1] if failed else f"{cli} build exited with status {code}")
            vertex = failed[0] if failed else None
            where = BuildProgress(*vertex) if vertex else BuildProgress()
            step = f"step {where.step}/{where.total}: {where.instruction}" if vertex else None
            raise BuildError(_short_build_error(message, where), step=step, log_tail=lines,
                             log_path=str(log_path), hint=_build_hint(message, lines))
        if not iid_file.is_file() or not iid_file.read_text().strip():
            raise BuildError("the BuildKit build finished without an image id", log_tail=list(tail),
                             log_path=str(log_path))
        return iid_file.read_text().strip()
    finally:
        shutil.rmtree(iid_dir, ignore_errors=True)
