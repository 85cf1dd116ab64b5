"""The lock's `images` section: the image id a reproducing engine gave for the lock, per engine
version and architecture, e.g. `images: {"buildah-1.28/linux-amd64": "sha256:…"}`.

Outside the hashed pins on purpose: the image carries the lock digest and the content hash as labels,
so its id cannot be part of what they cover (Lock.pins_document, digest, inputs). Written by the
first build of an engine that reproduces (buildah), compared by `dlenv pull`, `load` and `verify`.
Pure.
"""

from __future__ import annotations

import re
from pathlib import Path

from builder.errors import ImageIdError, LockError, printable, shown

_KEY = re.compile(r"^[a-z][a-z0-9]*-[0-9]+\.[0-9]+/[a-z0-9]+-[a-z0-9_]+$")
_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_key(engine: str, version: str, arch: str) -> str:
    """'buildah', '1.28.2', 'amd64' -> 'buildah-1.28/linux-amd64' (the patch release is left out)."""
    major_minor = ".".join(str(version).split(".")[:2])
    return f"{engine}-{major_minor}/linux-{arch}"


def parse_images(value, path: Path) -> dict:
    """The validated section (absent: {}); a problem is one LockError naming the file and the key."""
    if value is None:
        return {}
    hint = "the lock file is damaged or was edited; delete its images section and build with --engine buildah again"
    if not isinstance(value, dict):
        raise LockError(f"{printable(path)}: images: must be a mapping of engine/arch to image id", hint=hint)
    for key, image_id in value.items():
        if not (isinstance(key, str) and _KEY.match(key)):
            raise LockError(f"{printable(path)}: images.{shown(key, 60)}: not an engine-version/os-arch key "
                            "(like buildah-1.28/linux-amd64)", hint=hint)
        if not (isinstance(image_id, str) and _ID.match(image_id)):
            raise LockError(f"{printable(path)}: images.{key}: {shown(image_id, 80)} is not a sha256: image id", hint=hint)
    return dict(sorted(value.items()))


def check_recorded(images: dict, key: str, image_id: str, what: str) -> str:
    """'reproduced' when `image_id` is the lock's for `key`, 'unrecorded' when the lock has none;
    raises ImageIdError (one line) when it differs."""
    want = images.get(key)
    if want is None:
        return "unrecorded"
    if want != image_id:
        raise ImageIdError(f"{what} is {image_id[:19]}, not the lock's reproducible image {want[:19]} ({key})",
                           hint="rebuild it with `dlenv build --engine buildah --check`, or pull from a registry "
                                "that holds the lock's image")
    return "reproduced"


def reproducible_status(images: dict, image_id: str) -> tuple[str, str]:
    """(status, key) of an image: 'reproduced' with the key that records its id, 'differs' when the
    lock records ids and none is this one, 'unrecorded' when it records none."""
    for key, want in images.items():
        if want == image_id:
            return "reproduced", key
    return ("differs" if images else "unrecorded"), ""


def refusal(images: dict, image_id: str, what: str) -> str | None:
    """Why an image from elsewhere (a registry, an archive) is refused: the lock records reproducible
    ids and `image_id` is none of them. None when it is one, or when the lock records none."""
    status, _ = reproducible_status(images, image_id)
    if status != "differs":
        return None
    return f"{what} is {image_id[:19]}, not the lock's {_recorded(images)}"


def _recorded(images: dict) -> str:
    return "reproducible image " + ", ".join(f"{want[:19]} ({key})" for key, want in images.items())


def reproducible_summary(images: dict, image_id: str) -> dict:
    """What `dlenv verify` says of an image's id against its lock: status, key and one line."""
    status, key = reproducible_status(images, image_id)
    line = {"reproduced": f"reproducible: yes, {image_id[:19]} is the lock's {key} image",
            "differs": f"reproducible: no, {image_id[:19]} is not the lock's " + _recorded(images),
            "unrecorded": "reproducible: unknown, the lock records no image id "
                          "(`dlenv build --engine buildah` records one)"}[status]
    return {"status": status, "key": key, "image_id": image_id, "line": line}
