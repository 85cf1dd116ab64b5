"""Moving a promoted image with its lock data to a machine without a registry: `save_image`
writes a `dlenv save` archive from the engine, `load_image` streams one back into it.

The archive is one tar whose first member is `dlenv-manifest.json` (see
`builder.outputs.exports.manifest`) and whose other members are the engine's own `docker save`
archive of the image (saved by image id, so it carries no tag: loading it moves no tag by itself).
It is streamed both ways and never held in memory; `docker load` (or `dlenv load`) accepts it as
it is, gzip-compressed or not. `load_image` moves the promoted tags only after the loaded image's
id and content-hash label equal the manifest's.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import requests.exceptions

from builder.engine import dockerapi as engine
from builder.engine.images import require_promoted
from builder.errors import ArchiveError, EngineError, ExportError
from builder.names import HASH_LABEL, STACK_LABEL, hash_tag, latest_tag
from builder.outputs.exports.manifest import MANIFEST_NAME, manifest_for, read_manifest
from builder.plan.lockimages import refusal
from builder.plan.plan import Plan
from builder.statelock import stack_lock


@dataclass
class SaveResult:
    path: str
    image: str
    image_id: str
    bytes_written: int
    seconds: float


@dataclass
class LoadResult:
    stack: str
    content_hash: str
    image_id: str
    tags: list = field(default_factory=list)
    seconds: float = 0.0
    fresh: bool = True   # the image was not in the engine before


# ------------------------------------------------------------------------------------------ save

def save_image(client, plan: Plan, output, *, force: bool = False,
               on_progress: Callable[[int], None] | None = None) -> SaveResult:
    """Write the promoted image of `plan` and its manifest to OUTPUT (gzip when it ends in .gz)."""
    started = time.monotonic()
    output = Path(output)
    _check_output(output, force)
    image_id = require_promoted(client, plan)["Id"]
    manifest = json.dumps(manifest_for(plan, image_id), indent=2, sort_keys=True).encode() + b"\n"
    partial = _partial(output)
    try:
        with open(partial, "wb") as raw:
            _write_archive(client, plan, image_id, manifest, raw, gzipped=output.name.endswith(".gz"),
                           counted=_counter(on_progress))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return SaveResult(str(output), plan.hash_tag, image_id, output.stat().st_size, time.monotonic() - started)


def _check_output(output: Path, force: bool) -> None:
    if output.is_dir():
        raise ExportError(f"{output} is a directory", hint="give a file name, e.g. -o chainermn.tar")
    if output.exists() and not force:
        raise ExportError(f"{output} already exists", hint="pass --force to replace it")
    if not output.parent.is_dir():
        raise ExportError(f"folder {output.parent} does not exist")


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _counter(on_progress: Callable[[int], None] | None) -> Callable[[int], None]:
    """Adds up the bytes read from the engine and reports the running total."""
    written = {"n": 0}

    def counted(n: int) -> None:
        written["n"] += n
        if on_progress:
            on_progress(written["n"])

    return counted


def _write_archive(client, plan: Plan, image_id: str, manifest: bytes, raw, *, gzipped: bool,
                   counted: Callable[[int], None]) -> None:
    """The manifest, then every member of the engine's archive of the image, into RAW."""
    with contextlib.ExitStack() as stack:
        sink = raw
        if gzipped:
            sink = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0))
        out = stack.enter_context(tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT))
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode, info.mtime = len(manifest), 0o644, 0
        out.addfile(info, io.BytesIO(manifest))
        if not _copy_engine_archive(client, plan, image_id, out, counted):
            raise EngineError(f"the engine's archive of {plan.hash_tag} does not hold the image {image_id[:19]}")


def _copy_engine_archive(client, plan: Plan, image_id: str, out: tarfile.TarFile,
                         counted: Callable[[int], None]) -> bool:
    """Stream `docker save` of the image into OUT; whether it held the image's config."""
    config_names = {f"{image_id.split(':', 1)[1]}.json", f"blobs/sha256/{image_id.split(':', 1)[1]}"}
    seen_config = False
    chunks = None
    try:
        chunks = client.api.get_image(image_id, chunk_size=1 << 20)
        source = io.BufferedReader(_ChunkReader(chunks, counted), buffer_size=1 << 20)
        with tarfile.open(fileobj=source, mode="r|") as src:
            for member in src:
                if member.name == MANIFEST_NAME:
                    raise ArchiveError(f"the engine's archive of {plan.hash_tag} already has a {MANIFEST_NAME}")
                seen_config = seen_config or member.name in config_names
                out.addfile(member, src.extractfile(member) if member.isreg() else None)
    except docker.errors.APIError as exc:
        raise EngineError(f"docker save of {plan.hash_tag} failed: {exc.explanation or exc}") from None
    except requests.exceptions.RequestException as exc:
        raise EngineError(f"lost the connection to the engine while saving {plan.hash_tag}: "
                          f"{' '.join(str(exc).split())[:200]}") from None
    except tarfile.TarError as exc:
        raise EngineError(f"the engine's archive of {plan.hash_tag} is not a tar archive: {exc}") from None
    finally:
        if hasattr(chunks, "close"):
            chunks.close()   # ends the engine's stream early on an error or Ctrl-C
    return seen_config


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's `docker save` stream)."""

    def __init__(self, chunks, on_bytes: Callable[[int], None] | None = None):
        self._it = iter(chunks)
        self._buf = memoryview(b"")
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not len(self._buf):
            try:
                chunk = next(self._it)
            except StopIteration:
                return 0
            self._buf = memoryview(chunk)
            if self._on_bytes:
                self._on_bytes(len(chunk))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


# ------------------------------------------------------------------------------------------ load

def load_image(client, path, on_progress: Callable[[int], None] | None = None,
               recorded: Callable[[str, str], dict] | None = None) -> LoadResult:
    """Stream a `dlenv save` archive into the engine; move dlenv/STACK:<hash16> and :latest only
    when the loaded image's id and content-hash label equal the manifest's, and (`recorded`: the
    lock's images section of a stack and content hash) its id is the lock's reproducible one, if any."""
    started = time.monotonic()
    path = Path(path)
    manifest = read_manifest(path)
    stack, content_hash = manifest["stack"], manifest["content_hash"]
    tags = [hash_tag(stack, content_hash), latest_tag(stack)]
    try:
        before = set(client.api.images(all=True, quiet=True))
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot list the engine's images: {exc.explanation or exc}") from None
    image_id = _load_one(client, path, on_progress)
    labels = engine.image_labels(engine.image_attrs(client, image_id))
    problem = _mismatch(manifest, image_id, labels) or refusal(recorded(stack, content_hash) if recorded else {},
                                                                image_id, "the loaded image")
    if problem:
        _forget(client, image_id, before)
        raise ArchiveError(f"{path}: {problem}; no tag was moved")
    with stack_lock(stack):
        for tag in tags:
            engine.tag(client, image_id, tag)
    return LoadResult(stack, content_hash, image_id, tags, time.monotonic() - started, fresh=image_id not in before)


def _load_one(client, path: Path, on_progress: Callable[[int], None] | None) -> str:
    """Send the archive to the engine; the id of the one image it held."""
    loaded_ids, loaded_refs = [], []
    with open(path, "rb") as raw:
        body = _ProgressFile(raw, on_progress)
        try:
            for chunk in client.api.load_image(body):
                if chunk.get("error") or chunk.get("errorDetail"):
                    message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                    raise ArchiveError(f"the engine refused {path}: {' '.join(str(message).split())[:240]}")
                for line in str(chunk.get("stream", "")).splitlines():
                    if line.startswith("Loaded image ID: "):
                        loaded_ids.append(line.split(": ", 1)[1].strip())
                    elif line.startswith("Loaded image: "):
                        loaded_refs.append(line.split(": ", 1)[1].strip())
        except docker.errors.APIError as exc:
            raise ArchiveError(f"the engine refused {path}: {' '.join(str(exc.explanation or exc).split())[:240]}") \
                from None
        except requests.exceptions.RequestException as exc:
            raise EngineError(f"lost the connection to the engine while loading {path}: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    for ref in loaded_refs:
        attrs = engine.image_attrs(client, ref)
        if attrs:
            loaded_ids.append(attrs["Id"])
    loaded = sorted(set(loaded_ids))
    if len(loaded) != 1:
        raise ArchiveError(f"{path} held {len(loaded)} images, not one: {', '.join(i[:19] for i in loaded) or 'none'}; "
                           "no tag was moved")
    return loaded[0]


def _mismatch(manifest: dict, image_id: str, labels: dict) -> str | None:
    """Why the loaded image is not the one the manifest names, or None."""
    stack, content_hash, expected_id = manifest["stack"], manifest["content_hash"], manifest["image_id"]
    if image_id != expected_id:
        return f"the loaded image is {image_id[:19]}, the manifest says {expected_id[:19]}"
    if labels.get(HASH_LABEL) != content_hash:
        return (f"the loaded image's {HASH_LABEL} label is {str(labels.get(HASH_LABEL))[:16]!r}, "
                f"the manifest says {content_hash[:16]}")
    if labels.get(STACK_LABEL) != stack:
        return f"the loaded image's {STACK_LABEL} label is {labels.get(STACK_LABEL)!r}, the manifest says {stack!r}"
    return None


def _forget(client, image_id: str, before: set) -> None:
    """Remove an image this load brought in and that nothing names (a mismatched archive)."""
    if image_id in before:
        return
    try:
        if not (client.api.inspect_image(image_id).get("RepoTags") or []):
            client.api.remove_image(image_id, noprune=False)
    except docker.errors.APIError:
        pass


class _ProgressFile:
    """The archive as the request body: read in blocks by the HTTP client, its size known (fstat),
    each block counted for progress."""

    BLOCK = 1 << 20

    def __init__(self, raw, on_progress):
        self._raw, self._on_progress, self._n = raw, on_progress, 0

    def fileno(self) -> int:
        return self._raw.fileno()

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, *args) -> int:
        return self._raw.seek(*args)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        if data:
            self._n += len(data)
            if self._on_progress:
                self._on_progress(self._n)
        return data

    def __iter__(self):
        while True:
            block = self.read(self.BLOCK)
            if not block:
                return
            yield block


def save_tagged(client, ref: str, output: Path) -> int:
    """`docker save REF`: the engine's own archive of one image with its tag (what `podman load` and
    `docker load` take); written beside OUTPUT and renamed into place. Returns the bytes written."""
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise EngineError(f"image {ref} not found", hint="build it first with `dlenv build`") from None
    output = Path(output)
    partial = output.with_name(f".{output.name}.partial")
    written = 0
    try:
        with open(partial, "wb") as f:
            for chunk in image.save(named=ref):
                f.write(chunk)
                written += len(chunk)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written
