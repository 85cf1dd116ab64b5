"""The manifest of a `dlenv save` archive: what it says (`manifest_for`), and reading and checking
it back (`read_manifest`, `validate_manifest`).

A save archive is one tar whose first member is `dlenv-manifest.json` and whose other members are
the engine's own `docker save` archive of the image; `builder.engine.archive` writes and loads it.
Reading the manifest needs the file only, never the engine.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from builder import __version__
from builder.errors import ArchiveError
from builder.outputs.exports.common import local_ref
from builder.plan.plan import Plan

MANIFEST_NAME = "dlenv-manifest.json"
MANIFEST_FORMAT = 1

_STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def manifest_for(plan: Plan, image_id: str) -> dict:
    return {"format": MANIFEST_FORMAT, "stack": plan.resolved.name, "content_hash": plan.content_hash,
            "image_id": image_id, "image": local_ref(plan), "dlenv_version": __version__,
            "versions": plan.resolved.versions(),
            "python_packages": [text for text, _ in plan.resolved.merged.python_packages]}


def read_manifest(path) -> dict:
    """The manifest of a `dlenv save` archive (its first member), validated."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist or is not a file")
    try:
        with tarfile.open(path, mode="r|*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isreg() or first.size > 1 << 20:
                raise ArchiveError(f"{path} is not a dlenv save archive (its first member is not {MANIFEST_NAME})",
                                   hint="make it with `dlenv save STACK -o FILE`")
            data = tar.extractfile(first).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path} is not a readable tar archive: {' '.join(str(exc).split())[:160]}") from None
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{path}: {MANIFEST_NAME} is not JSON: {exc}") from None
    return validate_manifest(manifest, path)


def validate_manifest(manifest, where) -> dict:
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{where}: {MANIFEST_NAME} is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ArchiveError(f"{where}: {MANIFEST_NAME} has format {manifest.get('format')!r}; this dlenv reads "
                           f"format {MANIFEST_FORMAT}", hint="load it with the dlenv version that saved it")
    checks = {"stack": _STACK_NAME, "content_hash": _HASH, "image_id": _IMAGE_ID}
    for key, pattern in checks.items():
        value = manifest.get(key)
        if not isinstance(value, str) or not pattern.match(value):
            raise ArchiveError(f"{where}: {MANIFEST_NAME}: {key} is missing or invalid ({str(value)[:80]!r})")
    return manifest
