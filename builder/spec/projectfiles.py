"""Files a stack copies into its image, gathered from the stack file's folder.

Owns what may be copied: only regular files inside the folder (spec already refused `..` and
absolute paths), no symlink that points out of it or nowhere, no FIFO, socket or device (they
are refused by name, never opened), nothing the folder's `.dlenvignore` (or, if absent,
`.dockerignore`) excludes, never `.git`. Sizes are summed from `stat` before anything is read.
Returns bytes and modes for the build context, so the copied files are part of the content hash.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from builder.errors import SpecError, printable, shown

ALWAYS_IGNORED = (".git", ".hg", ".svn", "__pycache__", ".dlenvignore", ".dockerignore")
MAX_BYTES = 512 * 1024 * 1024
MAX_IGNORE_BYTES = 1_000_000     # an ignore file is a list of patterns, not data
MAX_PATTERNS = 50_000
_WILD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class CopyBlock:
    index: int
    dest: str
    is_dir: bool
    files: dict      # context-relative path -> (bytes, mode)


@dataclass(frozen=True)
class IgnoreRules:
    """Ignore patterns compiled once: runs of patterns with the same sign become one set of literal
    paths and one regex, tried last run first (the last matching pattern wins, as in
    .dockerignore), so a path costs a few lookups whatever the number of patterns."""
    groups: tuple = ()       # (negate, literal set, regex or None), in file order

    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        if any(p in ALWAYS_IGNORED for p in parts):
            return True
        # A pattern matches the path itself, any folder above it, or the file's own name.
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)] + [parts[-1]]
        for negate, literals, regex in reversed(self.groups):
            if any(c in literals for c in candidates) or (regex is not None and any(regex.match(c) for c in candidates)):
                return not negate
        return False


def compile_patterns(patterns: list) -> IgnoreRules:
    groups, run, sign = [], [], None
    for pattern in patterns + [None]:
        negate = pattern is not None and pattern.startswith("!")
        if run and (pattern is None or negate != sign):
            literals = {p for p in run if not _WILD.search(p)}
            wild = [fnmatch.translate(p) for p in run if _WILD.search(p)]
            groups.append((sign, frozenset(literals), re.compile("|".join(wild)) if wild else None))
            run = []
        if pattern is not None:
            sign = negate
            run.append((pattern[1:] if negate else pattern).lstrip("/"))
    return IgnoreRules(tuple(groups))


def ignore_patterns(root: Path) -> list:
    for name in (".dlenvignore", ".dockerignore"):
        path = root / name
        if not os.path.lexists(path):
            continue
        raw = _read_regular(path, MAX_IGNORE_BYTES, path, name, follow=True)
        lines = raw.decode("utf-8", errors="replace").splitlines()
        patterns = [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if len(patterns) > MAX_PATTERNS:
            raise SpecError(path, f"{len(patterns)} patterns; at most {MAX_PATTERNS} are read",
                            hint="ignore whole folders instead of single files")
        return patterns
    return []


def is_ignored(relative: str, patterns: list) -> bool:
    return compile_patterns(patterns).ignored(relative)


def _read_regular(path: Path, limit: int, stack: Path, rel: str, line=None, where=None, follow=False) -> bytes:
    """A regular file's bytes, at most `limit`: opened without following a symlink and without
    blocking (a FIFO swapped in after the walk cannot hang the read), checked again by fstat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else getattr(os, "O_NOFOLLOW", 0)))
    except OSError as exc:
        raise SpecError(stack, f"{printable(rel)} cannot be read: {exc.strerror}", line=line, field=where) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(stack, f"{printable(rel)} is {_kind(info.st_mode)}; only regular files are copied",
                            line=line, field=where, hint="remove it or list it in .dlenvignore")
        if info.st_size > limit:
            raise SpecError(stack, f"{printable(rel)} is larger than {limit} bytes", line=line, field=where,
                            hint="list large data in .dlenvignore and mount it at run time instead")
        return handle.read(limit + 1)[:limit]


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a regular file"


@dataclass(frozen=True)
class _Found:
    rel: str          # relative to the stack's folder: how messages name it
    real: Path        # the regular file to read (a symlink's target, inside the folder)
    size: int


def collect(copied: tuple, prefix: str = "dlenv-files") -> list:
    """The copy blocks of a stack's `files:`; every refusal names the stack file, the entry and the
    offending file (relative to the stack's folder)."""
    blocks, total = [], 0
    for index, item in enumerate(copied):
        rules = compile_patterns(ignore_patterns(item.root))
        single = not item.source.is_dir()
        found = _entries(item, rules)
        total += sum(f.size for f in found)
        if total > MAX_BYTES:
            raise SpecError(item.stack, f"files to copy exceed {MAX_BYTES // (1024 * 1024)} MB", line=item.line,
                            field=item.where, hint="list large data in .dlenvignore and mount it at run time instead")
        files: dict = {}
        for f in found:
            data = _read_regular(f.real, f.size, item.stack, f.rel, item.line, item.where)
            inner = item.source.name if single else Path(f.rel).relative_to(item.source.relative_to(item.root)).as_posix()
            files[f"{prefix}/{index}/{inner}"] = (data, 0o755 if os.access(f.real, os.X_OK) else 0o644)
        blocks.append(CopyBlock(index, item.dest, not single, files))
    return blocks


def _entries(item, rules: IgnoreRules) -> list:
    """Every regular file an entry copies, checked before anything is read."""
    start = item.source.relative_to(item.root).as_posix() if item.source != item.root else ""
    if not item.source.is_dir():
        if rules.ignored(start):
            raise SpecError(item.stack, f"{shown(start)} is excluded by the ignore file (or is never copied)",
                            line=item.line, field=item.where, hint="drop the entry or the ignore pattern")
        return [_check(item, item.source, start)]
    out, skipped, stack = [], 0, [item.source]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SpecError(item.stack, f"{shown(_rel(item, folder))} cannot be listed: {exc.strerror}",
                            line=item.line, field=item.where) from None
        for entry in entries:
            rel = _rel(item, Path(entry.path))
            if rules.ignored(rel):
                skipped += 1
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                out.append(_check(item, Path(entry.path), rel))
    if not out and skipped:
        raise SpecError(item.stack, f"everything in {shown(start or '.')} is ignored ({skipped} entries)",
                        line=item.line, field=item.where, hint="check .dlenvignore, or drop the entry")
    return sorted(out, key=lambda f: f.rel.split("/"))


def _rel(item, path: Path) -> str:
    return path.relative_to(item.root).as_posix()


def _check(item, path: Path, rel: str) -> _Found:
    """A walked entry: a regular file, or a symlink to one inside the stack's folder."""
    where = {"line": item.line, "field": item.where}
    real = path
    if path.is_symlink():
        try:
            real = Path(os.path.realpath(path, strict=True))
        except (OSError, RuntimeError, ValueError) as exc:
            what = "a symlink loop" if getattr(exc, "errno", None) == errno.ELOOP or isinstance(exc, RuntimeError) \
                else "a dangling symlink"
            raise SpecError(item.stack, f"{printable(rel)} is {what}", hint="remove it or list it in .dlenvignore",
                            **where) from None
        if item.root not in real.parents:
            raise SpecError(item.stack, f"{printable(rel)} is a symlink out of the stack's folder",
                            hint="copy the file into the folder instead", **where)
    try:
        info = os.stat(real)
    except OSError as exc:
        raise SpecError(item.stack, f"{printable(rel)} cannot be read: {exc.strerror}", **where) from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(item.stack, f"{printable(rel)} is a symlink to a folder; folders are copied only by name",
                        hint="list the folder it points to in files: instead", **where)
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(item.stack, f"{printable(rel)} is {_kind(info.st_mode)}; only regular files are copied",
                        hint="remove it or list it in .dlenvignore", **where)
    return _Found(rel, real, info.st_size)
