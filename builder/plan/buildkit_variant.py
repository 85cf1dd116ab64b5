"""The BuildKit variant of a rendered Dockerfile, derived by a pure text rewrite.

Identity: the image is still named by the content hash of the canonical (SDK) rendering. The BuildKit
Dockerfile is a variant derived from that text here, in Python, by a pure function (`variant`): it only
adds `--mount` flags to RUN instructions, drops the two CA bundle lines and PIP_NO_CACHE_DIR, and keeps
apt's lists in their cache mount. The templates stay dumb and every quoted word stays as rendered. Both
engines label the image with the same hash, so either engine's build is a no-op after the other's.

Owns the rewrite, the apt cache key of a base family and the id of the CA bundle secret (which
builder.engine.buildkit hands to the CLI). Runs nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from builder.errors import RenderError
from builder.names import CA_BUNDLE_TARGET, CA_SECRET_ID, SYSTEM_CA


_CA_COPY = re.compile(r"^COPY \S+/ca\.crt " + re.escape(CA_BUNDLE_TARGET) + r"\s*$")
_CA_FALLBACK = re.compile(r"^RUN \[ -s " + re.escape(CA_BUNDLE_TARGET) + r" \] \|\| cp ")
_CA_COMMENT = "# The CA bundle lets pip reach the package index; it exists in this stage only."
_FROM = re.compile(r"^FROM \S+ AS (\S+)\s*$")
_APT = re.compile(r"\bapt-get (update|install|source)\b")
_PIP = re.compile(r"(^|[\s/])pip3? install\b")
_APT_LISTS_RM = " && rm -rf /var/lib/apt/lists/*"
_APT_CLEAN = " && apt-get clean"
_EXPECTED = {"ca_copy": 1, "ca_fallback": 1, "no_cache_env": 1}   # lines the rewrite must find once


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


@dataclass(frozen=True)
class _Rewrite:
    """What the variant adds for one base and one choice of CA bundle."""
    apt_mounts: str
    pip_mounts: str
    secret_mount: str
    ca_secret: bool
    registry_base: bool


def _rewrite_for(base: dict, ca_secret: bool) -> _Rewrite:
    key = cache_key(base)
    return _Rewrite(
        apt_mounts=(f"--mount=type=cache,id=dlenv-apt-archives-{key},target=/var/cache/apt,sharing=locked "
                    f"--mount=type=cache,id=dlenv-apt-lists-{key},target=/var/lib/apt/lists,sharing=locked"),
        pip_mounts="--mount=type=cache,id=dlenv-pip,target=/root/.cache/pip",
        secret_mount=f"--mount=type=secret,id={CA_SECRET_ID},target={CA_BUNDLE_TARGET}",
        ca_secret=ca_secret,
        registry_base="image" in base)


def _pip_env(block: list[str], rw: _Rewrite, found: dict) -> list[str]:
    """The build stage's `ENV PIP_CERT=...`: no PIP_NO_CACHE_DIR (pip's cache is a cache mount now),
    and the image's own CA certificates when no bundle comes as a secret."""
    first = block[0]
    if " PIP_NO_CACHE_DIR=1" in first:
        found["no_cache_env"] += 1
    first = first.replace(" PIP_NO_CACHE_DIR=1", "")
    if not rw.ca_secret:
        first = first.replace(f"PIP_CERT={CA_BUNDLE_TARGET}", f"PIP_CERT={SYSTEM_CA}")
    return [first, *block[1:]]


def _build_stage_block(block: list[str], rw: _Rewrite, found: dict) -> list[str] | None:
    """The build stage's blocks the variant replaces (CA bundle lines, pip's ENV, apt's docker-clean),
    or None for every other block. Counts what it found in `found`."""
    first = block[0]
    if first == _CA_COMMENT:
        return [f"# The CA bundle reaches the pip steps as the BuildKit secret {CA_SECRET_ID}: it is in no layer."]
    if _CA_COPY.match(first):
        found["ca_copy"] += 1
        return []
    if _CA_FALLBACK.match(first):
        found["ca_fallback"] += 1
        return []
    if first.startswith("ENV PIP_CERT="):
        return _pip_env(block, rw, found)
    if first.startswith("SHELL ") and rw.registry_base:
        # Debian's and Ubuntu's registry images delete every downloaded .deb (docker-clean): the
        # apt cache mount would stay empty. Only in the build stage: the runtime image keeps it.
        # (The bootstrapped minbase has no docker-clean.)
        return [*block, "RUN rm -f /etc/apt/apt.conf.d/docker-clean"]
    return None


def _run_block(block: list[str], stage: str | None, rw: _Rewrite) -> list[str]:
    """A RUN instruction with the cache mounts (and the CA secret) of what it runs: apt anywhere,
    pip in the build stage."""
    text = "\n".join(block)
    mounts = []
    if _APT.search(text):
        mounts.append(rw.apt_mounts)
        block = _drop_apt_lists_rm(block)
    if stage == "build" and _PIP.search(text):
        mounts.append(rw.pip_mounts)
        if rw.ca_secret:
            mounts.append(rw.secret_mount)
    if mounts:
        block = [f"RUN {' '.join(mounts)} {block[0][4:]}", *block[1:]]
    return block


def variant(dockerfile: str, *, base: dict, ca_secret: bool = True) -> str:
    """The BuildKit Dockerfile derived from the canonical (SDK) rendering `dockerfile`.

    ca_secret: the CA bundle comes as the secret `dlenv-ca`, mounted at /etc/dlenv-build/ca.crt on the
    steps that run pip; without one, pip trusts the image's own Debian CA certificates (as the SDK
    rendering's fallback does). Raises RenderError when the text is not shaped as the templates render
    it, so that a template change cannot silently produce a weaker variant.
    """
    rw = _rewrite_for(base, ca_secret)
    out: list[str] = []
    stage = None
    found = {"ca_copy": 0, "ca_fallback": 0, "no_cache_env": 0}
    for block in _instructions(dockerfile):
        m = _FROM.match(block[0])
        if m:
            stage = m.group(1)
            out.extend(block)
            continue
        replaced = _build_stage_block(block, rw, found) if stage == "build" else None
        if replaced is not None:
            out.extend(replaced)
        elif block[0].startswith("RUN "):
            out.extend(_run_block(block, stage, rw))
        else:
            out.extend(block)
    has_build_stage = any(_FROM.match(block[0]) and _FROM.match(block[0]).group(1) == "build"
                          for block in _instructions(dockerfile))
    # A stack built on its parent's image with no Python packages of its own has no build stage at all.
    if found != _EXPECTED and (has_build_stage or any(found.values())):
        raise RenderError(f"the BuildKit variant did not find the CA bundle and pip cache lines it replaces ({found})",
                          hint="the Dockerfile template changed: update builder/plan/buildkit_variant.py with it")
    return "\n".join(out) + ("\n" if dockerfile.endswith("\n") else "")
