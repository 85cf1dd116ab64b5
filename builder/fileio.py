"""Writing files the user asked for: atomically (a temporary file renamed into place), so an
error or Ctrl-C never leaves a half-written file where a good one was expected."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from builder.errors import DlenvError


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=str(path.parent))
    except OSError as exc:
        raise DlenvError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
