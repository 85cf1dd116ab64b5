"""Files a stack copies into its image, gathered from the stack file's folder.

Owns what may be copied: only paths inside the folder (spec already refused `..` and absolute
paths), no symlink that points out of it, nothing the folder's `.dlenvignore` (or, if absent,
`.dockerignore`) excludes, never `.git`. Returns bytes and modes for the build context, so the
copied files are part of the content hash.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from builder.errors import SpecError

ALWAYS_IGNORED = (".git", ".hg", ".svn", "__pycache__", ".dlenvignore", ".dockerignore")
MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class CopyBlock:
    index: int
    dest: str
    is_dir: bool
    files: dict      # context-relative path -> (bytes, mode)


def ignore_patterns(root: Path) -> list:
    for name in (".dlenvignore", ".dockerignore"):
        path = root / name
        if path.is_file():
            lines = path.read_text("utf-8", errors="replace").splitlines()
            return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return []


def is_ignored(relative: str, patterns: list) -> bool:
    parts = relative.split("/")
    if any(p in ALWAYS_IGNORED for p in parts):
        return True
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.lstrip("/")
        # A pattern matches the path itself or any folder above it (like .dockerignore).
        hit = any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)) \
            or fnmatch.fnmatchcase(parts[-1], pat)
        if hit:
            ignored = not negate
    return ignored


def collect(copied: tuple, prefix: str = "dlenv-files") -> list:
    blocks, total = [], 0
    for index, item in enumerate(copied):
        root = item.root
        patterns = ignore_patterns(root)
        files: dict = {}
        sources = [item.source] if item.source.is_file() else sorted(_walk(item.source))
        for path in sources:
            rel_to_root = path.relative_to(root).as_posix() if path != root else ""
            if rel_to_root and is_ignored(rel_to_root, patterns):
                continue
            if path.is_symlink():
                target = path.resolve()
                if root not in target.parents:
                    raise SpecError(root / "dlenv.yaml" if (root / "dlenv.yaml").exists() else root,
                                    f"{rel_to_root} is a symlink out of the stack's folder", field="files")
            data = path.read_bytes()
            total += len(data)
            if total > MAX_BYTES:
                raise SpecError(root, f"files to copy exceed {MAX_BYTES // (1024 * 1024)} MB", field="files",
                                hint="list large data in .dlenvignore and mount it at run time instead")
            inner = path.name if item.source.is_file() else path.relative_to(item.source).as_posix()
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            files[f"{prefix}/{index}/{inner}"] = (data, mode)
        blocks.append(CopyBlock(index, item.dest, item.source.is_dir(), files))
    return blocks


def _walk(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in ALWAYS_IGNORED)
        for name in filenames:
            yield Path(dirpath) / name
