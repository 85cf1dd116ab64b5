"""Secret scanning of a built image: is a byte string (a CA bundle, a certificate, a token)
anywhere in its layers, history, environment or labels?

Streams `docker save` (images of several GB never sit in memory) and searches every file of
every layer in chunks, so a secret appended to another file or split over a chunk border is
still found. Used by the tests on every stack they build, and by `bench/`.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass

CHUNK = 8 << 20


@dataclass(frozen=True)
class Finding:
    needle: int         # index of the needle that matched
    where: str          # "layer <id>: <path>", "history", "env", "labels"


class _GeneratorReader(io.RawIOBase):
    """A file object over docker-py's chunk generator, for tarfile's stream mode."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _search_stream(fileobj, needles: list, where: str, found: list) -> None:
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    while True:
        block = fileobj.read(CHUNK)
        if not block:
            return
        window = tail + block
        for i, needle in enumerate(needles):
            if needle in window and Finding(i, where) not in found:
                found.append(Finding(i, where))
        tail = window[-overlap:] if overlap > 0 else b""


def scan_metadata(attrs: dict, history: list, needles: list) -> list:
    found = []
    config = attrs.get("Config") or {}
    parts = {"env": json.dumps(config.get("Env") or []), "labels": json.dumps(config.get("Labels") or {}),
             "history": json.dumps(history)}
    for where, text in parts.items():
        data = text.encode()
        for i, needle in enumerate(needles):
            # JSON escapes newlines: look for the needle both raw and as it would be escaped.
            escaped = json.dumps(needle.decode("utf-8", "replace"))[1:-1].encode()
            if needle in data or escaped in data:
                found.append(Finding(i, where))
    return found


def scan_image(client, ref: str, needles: list) -> tuple[list, int]:
    """Return (findings, number of layers scanned)."""
    needles = [n for n in needles if n]
    if not needles:
        raise ValueError("nothing to scan for")
    found = scan_metadata(client.api.inspect_image(ref), client.api.history(ref), needles)
    layers = 0
    raw = _GeneratorReader(client.api.get_image(ref, chunk_size=CHUNK))
    with tarfile.open(fileobj=io.BufferedReader(raw, CHUNK), mode="r|") as outer:
        for member in outer:
            if not member.isfile():
                continue
            handle = outer.extractfile(member)
            if member.name.endswith("layer.tar"):
                layers += 1
                with tarfile.open(fileobj=handle, mode="r|") as layer:
                    for entry in layer:
                        if entry.isfile():
                            _search_stream(layer.extractfile(entry), needles,
                                           f"layer {member.name.split('/')[0][:12]}: /{entry.name}", found)
            else:
                _search_stream(handle, needles, member.name, found)
    return found, layers


def private_certificates(bundle: bytes, public_bundle: bytes) -> list:
    """The PEM certificates of `bundle` that are not in `public_bundle` (e.g. Debian's
    ca-certificates): the ones whose presence in an image would be a leak."""
    def certs(data: bytes) -> list:
        out, current = [], []
        for line in data.splitlines(keepends=True):
            if line.startswith(b"-----BEGIN CERTIFICATE-----"):
                current = [line]
            elif current:
                current.append(line)
                if line.startswith(b"-----END CERTIFICATE-----"):
                    out.append(b"".join(current))
                    current = []
        return out

    public = {b"".join(c.split()) for c in certs(public_bundle)}
    return [c for c in certs(bundle) if b"".join(c.split()) not in public]
