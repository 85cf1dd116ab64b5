"""The one error tree. Every message says what went wrong and what to do next.

The CLI turns any `DlenvError` into a single red line and exit status 1; nothing below
the CLI prints or exits.
"""

from __future__ import annotations

import re

# What must never reach a terminal raw: C0 controls, DEL, C1 (U+009B is a one-character CSI), the
# Unicode line/paragraph separators, bidi and zero-width format characters, BOM, lone surrogates
# (undecodable bytes of a file name).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                     "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")
_SPACE = re.compile(r"[ \t\n]+")
MAX_LINE = 1800


def _escape_char(match) -> str:
    c = match.group()
    special = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in special:
        return special[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text) -> str:
    """`text` with every control or format character written as its escape (ESC -> `\\x1b`, a
    newline -> `\\n`): user text shown this way can neither move the cursor nor start a line."""
    return _UNSAFE.sub(_escape_char, str(text))


def shown(value, limit: int = 120) -> str:
    """A user value for a message: quoted like repr, escaped, cut to `limit` characters."""
    text = printable(value if isinstance(value, str) else repr(value))
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"'{text}'" if isinstance(value, str) else text


def one_line(text: str) -> str:
    """dlenv's own multi-line wording joined into one line, then anything left escaped and capped."""
    text = printable(_SPACE.sub(" ", str(text)).strip())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


class DlenvError(Exception):
    """Base of every error a user can cause or fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message + (f" ({self.hint})" if self.hint else "")
        return one_line(text)


class SpecError(DlenvError):
    """A stack or component file is invalid. Names the file, the line and the field."""

    def __init__(self, path, message: str, *, line: int | None = None, field: str | None = None,
                 hint: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = printable(self.path) + (f":{line}" if line else "")
        what = f"{printable(field)}: " if field else ""
        super().__init__(f"{where}: {what}{message}", hint=hint)


class ParentPinConflict(SpecError):
    """A stack built on its parent's image asks for a Python package (in python_packages, or through what
    they require) at a version the parent's lock pins otherwise. Names the entry, both requirements, the
    parent and the ways out."""


class CatalogError(DlenvError):
    """A component is unknown or its data/template is missing."""


class ResolveError(DlenvError):
    """No set of versions satisfies every constraint; the message names both sides."""


class RenderError(DlenvError):
    """A template could not be rendered (a catalog bug, not a user error, but still explained)."""


class EngineError(DlenvError):
    """The Docker engine is unreachable, refuses us, or reported an error."""


class BaseImageError(DlenvError):
    """The base image could not be bootstrapped or found."""


class BuildError(DlenvError):
    """A Dockerfile step failed. Carries the step, the last log lines and the full log path."""

    def __init__(self, message: str, *, step: str | None = None, log_tail: list[str] | None = None,
                 log_path: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.step = step
        self.log_tail = list(log_tail or [])
        self.log_path = log_path


class DiskError(DlenvError):
    """Before a build: a disk it writes to has less free space than the build needs (builder.plan.disk)."""


class DiskFullError(BuildError):
    """A build ran out of disk space (ENOSPC): which storage, how much is free now, and its log."""


class LockError(DlenvError):
    """A lock file is missing, damaged or stale, or a pin can no longer be installed."""


class LockCommandError(LockError):
    """A command in the lock container failed. `output` keeps all it printed: pip explains a conflict
    there, on lines the one-line message leaves out."""

    def __init__(self, message: str, *, output: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.output = output


class VerifyError(DlenvError):
    """At least one check failed; carries the report."""

    def __init__(self, message: str, report=None, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.report = report


class RegistryError(DlenvError):
    """A push or pull failed. `kind` says why: unauthorized, unreachable, not_found, mismatch,
    broken (the transfer broke off), tls (HTTP/HTTPS or certificate trouble), config (unusable
    registry name or credentials) or other."""

    def __init__(self, message: str, *, kind: str = "other", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.kind = kind


class ImageIdError(DlenvError):
    """An image's id is not the one its lock records as the reproducible build (lock `images`)."""


class ConfigError(DlenvError):
    """A configuration value (CA bundle, mirror, index) is unusable."""


class ExportError(DlenvError):
    """An export cannot be made as asked: an option out of range, a missing registry, an output
    file that would be overwritten."""


class ArchiveError(DlenvError):
    """A `dlenv save` archive is unusable or does not hold what its manifest says."""


class UsageError(DlenvError):
    """A command-line value (-e, -p, -v) that cannot be used."""


class DriverError(DlenvError):
    """The host's NVIDIA driver is too old for the CUDA version of the image about to start."""


class SlurmError(DlenvError):
    """A local Slurm cluster cannot be started, used or found, or a job could not be submitted."""
