"""The buildah variant of a rendered Dockerfile, derived by a pure text rewrite.

Identity: as for BuildKit (plan/buildkit_variant.py), the image is named by the content hash of the
canonical (SDK) rendering; this variant only changes how buildah runs the same steps, so that two
`--no-cache` builds of one lock give one image id (measured with the prototype of issue #17):

- buildah's deterministic output needs `--format oci`, and in the OCI format buildah 1.28 ignores
  SHELL, also for the build's own RUN steps: every shell-form RUN becomes an exec-form RUN of the
  SHELL in force (Docker's continuation rule: the backslash and the newline go, nothing else), its
  `--mount` flags kept; exec-form RUNs stay; the SHELL lines become comments.
- (the files that differ between two builds of one lock are fixed in the templates, for every engine:
  ldconfig's aux-cache, /etc/shadow's date, Open MPI's build host, pip --target bytecode, mpi4py's
  debug info.)
- the Debian sources (the mirror: the one machine-dependent text of a build) are not in the buildah
  base; every RUN that runs apt gets them as a read-only bind mount of a context file, so no layer holds them and
  two machines with different mirrors build the same image (the image has no apt sources).
- the CA bundle is a build secret (`buildah build --secret`), never in a layer: the two CA lines go
  and the pip steps mount the secret, as in the BuildKit variant.
- no two stages begin alike. A project on its parent's image has both stages `FROM parent` then
  `USER 0:0`: built at once (`--jobs 2`), both commit that same intermediate image, and while buildah
  commits one it carries a temporary name (`<random>-tmp`), which the other stage may read as the image
  it continues from and write into the history of its next step (issue #24, measured: 4 ids in 15
  no-cache builds of a small two-stage Dockerfile, one id with the label). So a stage (never
  the last, the image's own) whose FROM and first instruction repeat another stage's begins with
  `LABEL org.dlenv.buildah-stage=NAME`; the build stage's history is not the image's.

Raises RenderError when the text is not shaped as the templates render it. Runs nothing.
"""

from __future__ import annotations

import json
import re

from builder.errors import RenderError
from builder.names import (APT_SOURCES_CONTEXT, APT_SOURCES_MOUNT, BUILDAH_STAGE_LABEL, CA_BUNDLE_TARGET,
                           CA_SECRET_ID, SYSTEM_CA)
from builder.plan.buildkit_variant import _instructions
from builder.plan.pins import DEFAULT_EPOCH, base_recipe

_SHELL = re.compile(r"^SHELL\s+(\[.*\])\s*$")
_FROM = re.compile(r"^FROM \S+(?: AS (\S+))?\s*$")
_RUN = re.compile(r"^RUN\s+((?:--\S+\s+)*)(.*)$", re.S)
_CA_COPY = re.compile(r"^COPY \S+/ca\.crt " + re.escape(CA_BUNDLE_TARGET) + r"\s*$")
_CA_FALLBACK = re.compile(r"^RUN \[ -s " + re.escape(CA_BUNDLE_TARGET) + r" \] \|\| cp ")
_APT = re.compile(r"(^|[\s/;&|(])apt(-get|-cache)?\s")
_PIP = re.compile(r"(^|[\s/])pip3? install\b")
APT_MOUNT = f"--mount=type=bind,source={APT_SOURCES_CONTEXT},target={APT_SOURCES_MOUNT} "
_HINT = "the Dockerfile template changed: update builder/plan/buildah_variant.py with it"


def _shell_of(block: list[str]) -> list[str]:
    m = _SHELL.match(block[0])
    try:
        shell = json.loads(m.group(1)) if m else None
    except ValueError:
        shell = None
    if not (isinstance(shell, list) and shell and all(isinstance(w, str) for w in shell)):
        raise RenderError(f"the buildah variant cannot read the SHELL instruction {block[0][:80]!r}", hint=_HINT)
    return shell


def _exec_form(block: list[str], shell: list[str], extra_flags: str = "") -> list[str]:
    """A shell-form RUN as the exec form of `shell`; an exec-form RUN as it is."""
    text = "".join(line[:-1] if line.endswith("\\") else line for line in block)
    m = _RUN.match(text)
    flags, command = m.group(1), m.group(2)
    if command.lstrip().startswith("["):
        return block if not extra_flags else [f"RUN {extra_flags}{block[0][4:]}", *block[1:]]
    return [f"RUN {flags}{extra_flags}{json.dumps(shell + [command])}"]


def _check(found: dict, has_build: bool) -> None:
    want = {"shell": found["shell"] >= 1,
            "ca": (found["ca_copy"], found["ca_fallback"]) == ((1, 1) if has_build else (0, 0))}
    if not all(want.values()):
        raise RenderError(f"the buildah variant did not find the lines it rewrites ({found})", hint=_HINT)


def _rewrite_block(block: list[str], stage, shell, ca_secret: bool, found: dict):
    """The blocks one block becomes, and the SHELL in force after it."""
    first = block[0]
    if first.startswith("SHELL "):
        found["shell"] += 1
        shell = _shell_of(block)
        note = f"# SHELL {json.dumps(shell)} applies to each RUN below as its exec form (buildah's OCI format ignores SHELL)"
        return [note], shell
    if stage == "build" and _CA_COPY.match(first):
        found["ca_copy"] += 1
        return [], shell
    if stage == "build" and _CA_FALLBACK.match(first):
        found["ca_fallback"] += 1
        return [], shell
    if stage == "build" and first.startswith("ENV PIP_CERT=") and not ca_secret:
        return [first.replace(f"PIP_CERT={CA_BUNDLE_TARGET}", f"PIP_CERT={SYSTEM_CA}"), *block[1:]], shell
    if not first.startswith("RUN "):
        return block, shell
    flags = APT_MOUNT if _APT.search("\n".join(block)) else ""
    if stage == "build" and ca_secret and _PIP.search("\n".join(block)):
        flags += f"--mount=type=secret,id={CA_SECRET_ID},target={CA_BUNDLE_TARGET} "
    if shell is None:                    # before the stage's SHELL: /bin/sh runs it as it is
        return [f"RUN {flags}{block[0][4:]}", *block[1:]], shell
    return _exec_form(block, shell, flags), shell


def variant(dockerfile: str, *, ca_secret: bool = True) -> str:
    """The buildah Dockerfile derived from the canonical (SDK) rendering `dockerfile`.

    ca_secret: the CA bundle comes as the secret `dlenv-ca` on the pip steps; without one pip trusts
    the image's own CA certificates.
    """
    out: list[str] = []
    stage, shell = None, None
    found = dict.fromkeys(("shell", "ca_copy", "ca_fallback"), 0)
    has_build = False
    for block in _instructions(dockerfile):
        m = _FROM.match(block[0])
        if m:
            stage, shell = m.group(1), None      # SHELL is per stage
            has_build = has_build or stage == "build"
            out.extend(block)
            continue
        replaced, shell = _rewrite_block(block, stage, shell, ca_secret, found)
        out.extend(replaced)
    _check(found, has_build)
    return "\n".join(_distinct_stages(out)) + ("\n" if dockerfile.endswith("\n") else "")


def _distinct_stages(lines: list[str]) -> list[str]:
    """`lines` with a stage label first in each stage but the last whose FROM and first instruction are
    another stage's: stages built at once must not commit the same intermediate image (module docstring)."""
    stages = []                          # [line index of the FROM, FROM image, stage name, first instruction]
    for i, line in enumerate(lines):
        m = _FROM.match(line)
        if m:
            stages.append([i, line.split()[1], m.group(1) or str(len(stages)), None])
        elif stages and stages[-1][3] is None and line.strip() and not line.lstrip().startswith("#"):
            stages[-1][3] = line
    begins = [(image, first) for _, image, _, first in stages]
    twins = {i for i, begin in enumerate(begins) if begins.count(begin) > 1}
    out = list(lines)
    for i in sorted(twins - {len(stages) - 1}, reverse=True):
        out.insert(stages[i][0] + 1, f'LABEL {BUILDAH_STAGE_LABEL}="{stages[i][2]}"')
    return out


def stack_epoch(base: dict) -> int:
    """The SOURCE_DATE_EPOCH a stack's images are dated by: its bootstrap recipe's, or the default."""
    return base_recipe(base)["epoch"] if "image" not in base else DEFAULT_EPOCH
