"""What a failed build says: the progress of a build and the error, step and hint read from its log.

Shared by both engines (builder.engine.sdk, builder.engine.buildkit): BuildProgress, the length of
the log tail a BuildError carries, and the one-line error and the hint a user gets (missing or
mismatched pins, an unreachable base, an untrusted index). Pure: reads lines, runs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOG_TAIL = 30

_MISSING_APT = re.compile(r"Version '([^']+)' for '([^']+)' was not found")
_MISSING_PIP = re.compile(r"No matching distribution found for (\S+)")


@dataclass
class BuildProgress:
    step: int = 0
    total: int = 0
    instruction: str = ""


def _short_build_error(message: str, progress: BuildProgress) -> str:
    text = " ".join(message.split())
    if progress.step:
        return f"build failed at step {progress.step}/{progress.total}: {text[:300]}"
    return f"build failed: {text[:300]}"


def _pin_hint(lines: list) -> str | None:
    """A locked build whose pins are gone says which ones, and how to resolve them again."""
    missing = [f"{m[2]}={m[1]}" for ln in lines for m in [_MISSING_APT.search(ln)] if m]
    missing += [m[1] for ln in lines for m in [_MISSING_PIP.search(ln)] if m]
    fix = ("`dlenv lock STACK` resolves them again and lists what changes (or `dlenv build --relock`); "
           "a registry copy of the image keeps the old environment byte for byte")
    if missing:
        return f"pinned versions no longer available: {', '.join(missing[:8])}; {fix}"
    if any("DO NOT MATCH THE HASHES" in ln for ln in lines):
        return "a downloaded file does not match the sha256 in the lock: the index serves different bytes; " + fix
    if any(re.search(r"orig\.tar\.\w+: FAILED", ln) for ln in lines):
        return "a Debian source tarball does not match the sha256 in the lock; " + fix
    return None


def _build_hint(message: str, lines: list | None = None) -> str | None:
    pinned = _pin_hint((lines or []) + [message])
    if pinned:
        return pinned
    if "pull access denied" in message or "manifest unknown" in message or "no such host" in message \
            or "dial tcp" in message:
        return "the base image must exist locally or come from a reachable registry; run `dlenv base` for the default base"
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return "pip does not trust the index's certificate: pass --ca-bundle or set DLENV_CA_BUNDLE"
    return None
