"""Files a stack copies into its image, gathered from the stack file's folder.

Owns what may be copied: only regular files inside the folder (spec already refused `..` and
absolute paths), no symlink that points out of it, nowhere, in a loop or to what the ignore rules
exclude (see `follow`), no FIFO, socket or device (they are refused by name, never opened), nothing
the folder's `.dlenvignore` (or, if absent, `.dockerignore`) excludes, never `.git`. Sizes are
summed from `stat` before anything is read. Returns bytes and modes for the build context, so the
copied files are part of the content hash.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import SpecError, printable, shown

ALWAYS_IGNORED = (".git", ".hg", ".svn", "__pycache__", ".dlenvignore", ".dockerignore")
MAX_BYTES = 512 * 1024 * 1024
MAX_IGNORE_BYTES = 1_000_000     # an ignore file is a list of patterns, not data
MAX_PATTERNS = 50_000
CHUNK = 128                      # wildcard patterns tried through one regex
_WILD = re.compile(r"[*?\[]")
_STARS = re.compile(r"[*?]+")


@dataclass(frozen=True)
class CopyBlock:
    index: int
    dest: str
    is_dir: bool
    files: dict      # context-relative path -> (bytes, mode)


@dataclass(frozen=True)
class IgnoreRules:
    """Ignore patterns indexed once. A path is tested against its candidates (the path, every folder
    above it, its own name); the last pattern that matches one of them wins (as in .dockerignore), and
    `!` turns that verdict around.

    Compiling all patterns into one regex of 40,000 alternatives took seconds (#24), so: literal
    patterns sit in a dict; a wildcard pattern is filed under the longest text every string it matches
    contains (`generated-` for `generated-*.tmp`), found by sliding over a candidate, so a candidate
    looks up and compiles only the patterns that can match it; the few with no such text (`*`, `d?`,
    `[ab]*`) are filed together. A candidate's verdict is kept: a folder's is shared by its files."""
    literals: dict = field(default_factory=dict)    # text -> (index, negate) of its last occurrence
    runs: dict = field(default_factory=dict)        # literal text -> ((index, negate, pattern), ...), highest first
    sizes: tuple = ()                               # the lengths of the keys of `runs`, shortest first
    loose: tuple = ()                               # (index, negate, pattern) of the rest, highest first
    _memo: dict = field(default_factory=dict, compare=False, repr=False)     # candidate -> (index, ignores)
    _compiled: dict = field(default_factory=dict, compare=False, repr=False)  # pattern or chunk -> regex

    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        if any(p in ALWAYS_IGNORED for p in parts):
            return True
        candidates = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)} | {parts[-1]}
        return max(self._last_match(c) for c in candidates)[1]

    def _last_match(self, candidate: str) -> tuple:
        """(index, ignores) of the last pattern that matches `candidate`; (-1, False) if none does."""
        known = self._memo.get(candidate)
        if known is not None:
            return known
        best = (-1, False)
        hit = self.literals.get(candidate)
        if hit is not None:
            best = (hit[0], not hit[1])
        keys = set()
        for size in self.sizes:
            if size > len(candidate):
                break
            keys.update(candidate[start:start + size] for start in range(len(candidate) - size + 1))
        groups = [(key, self.runs[key]) for key in keys if key in self.runs] + [(None, self.loose)]
        for key, entries in groups:
            best = self._first_match(key, entries, candidate, best)
        self._memo[candidate] = best
        return best

    def _first_match(self, key, entries: tuple, candidate: str, best: tuple) -> tuple:
        """`best`, or (index, ignores) of the first of `entries` (highest index first) that matches
        `candidate` and comes after it. Entries are tried CHUNK at a time through one regex (without
        capture groups, which make `re` many times slower), and one by one in the chunk that matches."""
        for lo in range(0, len(entries), CHUNK):
            if entries[lo][0] <= best[0]:
                break
            chunk = entries[lo:lo + CHUNK]
            if len(chunk) > 1 and not self._regex((key, lo), chunk).match(candidate):
                continue
            for index, negate, pattern in chunk:
                if index <= best[0]:
                    break
                if self._regex(pattern).match(candidate):
                    return (index, not negate)
        return best

    def _regex(self, name, chunk: tuple = ()):
        regex = self._compiled.get(name)
        if regex is None:
            text = "|".join(fnmatch.translate(p) for _, _, p in chunk) if chunk else fnmatch.translate(name)
            regex = self._compiled[name] = re.compile(text)
        return regex


def _literal_run(pattern: str) -> str:
    """The longest text that every string `pattern` matches contains as is: fnmatch takes every
    character literally but `*`, `?` and a bracket expression, which ends as fnmatch.translate ends
    it (a `!` and a `]` right after the `[` belong to it; without a closing `]` the `[` is literal)."""
    if "[" not in pattern:
        return max(_STARS.split(pattern), key=len)
    runs, run, i, n = [], "", 0, len(pattern)
    while i < n:
        c, i = pattern[i], i + 1
        if c == "[":
            j = i + 1 if i < n and pattern[i] == "!" else i
            j = j + 1 if j < n and pattern[j] == "]" else j
            j = pattern.find("]", j)
            if j < 0:
                run += c
                continue
            i = j + 1
        if c in "*?[":
            runs.append(run)
            run = ""
        else:
            run += c
    return max(runs + [run], key=len)


def compile_patterns(patterns: list) -> IgnoreRules:
    # Only the last occurrence of a pattern can decide: a later copy matches wherever an earlier one does.
    last = {}
    for index, raw in enumerate(patterns):
        negate = raw.startswith("!")
        last[(raw[1:] if negate else raw).lstrip("/")] = (index, negate)
    literals, runs, loose = {}, {}, []
    for pattern, (index, negate) in last.items():
        if not _WILD.search(pattern):
            literals[pattern] = (index, negate)
        elif run := _literal_run(pattern):
            runs.setdefault(run, []).append((index, negate, pattern))
        else:
            loose.append((index, negate, pattern))
    return IgnoreRules(literals=literals, runs={k: tuple(sorted(v, reverse=True)) for k, v in runs.items()},
                       sizes=tuple(sorted({len(k) for k in runs})), loose=tuple(sorted(loose, reverse=True)))


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


MAX_LINKS = 40      # symlinks followed for one path, as the kernel's limit before ELOOP


def follow(root: Path, path: Path, rules: IgnoreRules | None, *, stack, name: str, line=None, where=None,
           entry: bool = False) -> tuple:
    """(real path, whether a symlink was followed) of `path`, a path under the real folder `root`,
    for the file called `name` in messages (the stack names `stack`, its `line` and field `where`).

    Symlinks are followed one path component at a time, as the kernel does, so every link on the way
    is seen. Refused, each in one line naming the file: a link that leads out of `root` (at the step
    that leaves: nothing outside is even looked at, a path may only pass through the folders above
    `root`), a loop (one link reached twice with the same path left to resolve, or more than MAX_LINKS
    links: a loop that grows each turn), a link to nothing, and, given `rules`, a link to or through
    a path they exclude: a link must not copy what the ignore file keeps out.

    A link to a link inside the folder is followed to its end and the file's bytes are copied, as a
    single link always was: the bytes come from a file inside the folder that could be named directly,
    every hop is checked like the first, and git checkouts hold such chains (`latest -> v2 -> v2.0`);
    refusing them would break projects for nothing. Only `entry` (a `files:` entry, a check script)
    words a link out as "leaves" (its name may run through a linked folder)."""
    ctx = {"line": line, "field": where}
    base = str(root).rstrip("/") + "/"
    pending = list(reversed(path.relative_to(root).parts))
    resolved, hops, seen = str(root), [], set()
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        step = os.path.dirname(resolved) if part == ".." else os.path.join(resolved, part)
        if not (step + "/").startswith(base) and not base.startswith(step.rstrip("/") + "/"):
            raise _out(stack, name, hops, entry, ctx)
        if part == "..":
            resolved = step
            continue
        try:
            info = os.lstat(step)
        except (FileNotFoundError, NotADirectoryError):
            if not hops:
                raise SpecError(stack, f"{name} does not exist", **ctx) from None
            raise SpecError(stack, f"{name} is a dangling symlink ({_hop(hops[-1])})",
                            hint="remove it or list it in .dlenvignore", **ctx) from None
        except OSError as exc:
            raise SpecError(stack, f"{name} cannot be read: {exc.strerror}", **ctx) from None
        if not stat.S_ISLNK(info.st_mode):
            resolved = step
            continue
        rel = step[len(base):] if step.startswith(base) else step
        state = (step, tuple(pending))
        if state in seen or len(hops) >= MAX_LINKS:
            chain = [shown(h) for h, _ in hops] + [shown(rel)]
            chain = " -> ".join(chain if len(chain) <= 6 else chain[:3] + ["..."] + chain[-2:])
            raise SpecError(stack, f"{name} is a symlink loop ({chain})" if state in seen else
                            f"{name} is a symlink loop or a chain of more than {MAX_LINKS} symlinks ({chain})",
                            hint="remove it or list it in .dlenvignore", **ctx)
        seen.add(state)
        if rules is not None and rules.ignored(rel):
            raise _excluded(stack, name, rel if hops else None, ctx)
        try:
            target = os.readlink(step)
        except OSError as exc:
            raise SpecError(stack, f"{name} cannot be read: {exc.strerror}", **ctx) from None
        hops.append((rel, target))
        if target.startswith("/"):
            resolved = "/"
        pending.extend(reversed(target.split("/")))
    if not (resolved + "/").startswith(base):
        raise _out(stack, name, hops, entry, ctx)
    if hops and rules is not None and resolved.startswith(base) and rules.ignored(resolved[len(base):]):
        raise _excluded(stack, name, resolved[len(base):], ctx)
    return Path(resolved), bool(hops)


def _hop(hop: tuple) -> str:
    return f"{shown(hop[0])} -> {shown(hop[1])}"


def _out(stack, name: str, hops: list, entry: bool, ctx: dict) -> SpecError:
    through = _hop(hops[-1]) if hops else "a symlink"
    if entry:
        return SpecError(stack, f"{name} leaves the stack's folder (through a symlink: {through})",
                         hint="copy the file into the folder instead", **ctx)
    return SpecError(stack, f"{name} is a symlink out of the stack's folder ({through})",
                     hint="copy the file into the folder instead", **ctx)


def _excluded(stack, name: str, rel, ctx: dict) -> SpecError:
    if rel is None:     # the path named itself
        return SpecError(stack, f"{name} is excluded by the ignore file (or is never copied)",
                         hint="drop the entry or the ignore pattern", **ctx)
    return SpecError(stack, f"{name} is a symlink to {shown(rel)}, which is excluded by the ignore file "
                     "(or is never copied)", hint="copy the file itself, or stop ignoring what it points to", **ctx)


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
    if item.named:     # checked at load without the ignore rules: again, so a link cannot reach what they exclude
        follow(item.root, item.root / item.named, rules, stack=item.stack, name=shown(item.named), line=item.line,
               where=item.where, entry=True)
    start = item.source.relative_to(item.root).as_posix() if item.source != item.root else ""
    if not item.source.is_dir():
        if rules.ignored(start):
            raise SpecError(item.stack, f"{shown(start)} is excluded by the ignore file (or is never copied)",
                            line=item.line, field=item.where, hint="drop the entry or the ignore pattern")
        return [_check(item, item.source, start, rules)]
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
                out.append(_check(item, Path(entry.path), rel, rules))
    if not out and skipped:
        raise SpecError(item.stack, f"everything in {shown(start or '.')} is ignored ({skipped} entries)",
                        line=item.line, field=item.where, hint="check .dlenvignore, or drop the entry")
    return sorted(out, key=lambda f: f.rel.split("/"))


def _rel(item, path: Path) -> str:
    return path.relative_to(item.root).as_posix()


def _check(item, path: Path, rel: str, rules: IgnoreRules) -> _Found:
    """A walked entry: a regular file, or a symlink (to a symlink ...) to one inside the stack's folder."""
    where = {"line": item.line, "field": item.where}
    real = path
    if path.is_symlink():
        real, _ = follow(item.root, path, rules, stack=item.stack, name=printable(rel), line=item.line,
                         where=item.where)
    try:
        info = os.stat(real)
    except OSError as exc:
        raise SpecError(item.stack, f"{printable(rel)} cannot be read: {exc.strerror}", **where) from None
    if stat.S_ISDIR(info.st_mode):
        if real == item.root or real in path.parents:
            inner = real.relative_to(item.root).as_posix()
            raise SpecError(item.stack, f"{printable(rel)} is a symlink loop: it points to {shown(inner)}, a folder "
                            "that holds it", hint="remove it or list it in .dlenvignore", **where)
        raise SpecError(item.stack, f"{printable(rel)} is a symlink to a folder; folders are copied only by name",
                        hint="list the folder it points to in files: instead", **where)
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(item.stack, f"{printable(rel)} is {_kind(info.st_mode)}; only regular files are copied",
                        hint="remove it or list it in .dlenvignore", **where)
    return _Found(rel, real, info.st_size)
