"""The bytes behind a lock's Debian pins: which .deb file (and source tarball) each pin names.

Pure. A lock names every Debian package of the base, build and runtime stages by version; its
`debs` section adds what the archive's Packages index says of that version (architecture, size,
SHA256, pool file name), so the bytes can be fetched from any source and checked, also after the
archive dropped the version. This module owns:

- `DebFile`, one pinned file, and its lock form;
- reading Packages stanzas (an index, `apt-cache show`) into `DebFile`s;
- which files a lock needs (`needed_files`, `python_files`) and which pins have no known bytes yet;
- the texts of dlenv's package repository: its deb822 sources entry and its Release file;
- the refresh record: which pins moved when the bytes of some could no longer be had.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from builder.names import PACKAGE_REPO_URL

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~%/-]*$")
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_PRIORITY = re.compile(r"^[a-z]{1,20}$")
_DEB_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]+$")


@dataclass(frozen=True)
class DebFile:
    """One file a lock pins: a binary package (`kind` "deb"), a Debian source tarball ("source") or a
    Python distribution ("python": `filename` is its file name on the index, `size` unknown: 0)."""
    name: str
    version: str
    arch: str
    size: int
    sha256: str
    filename: str          # the archive's pool path, e.g. pool/main/a/acl/libacl1_2.3.1-3_amd64.deb
    kind: str = "deb"
    # The archive's Priority (its override, not always the control file's): mmdebstrap's minbase picks
    # Priority:required packages by it, so dlenv's repository must say the same to give the same rootfs.
    priority: str = ""

    @property
    def key(self) -> str:
        return pin_key(self.name, self.version)

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    def lock_entry(self) -> dict:
        entry = {"arch": self.arch, "size": self.size, "sha256": self.sha256, "file": self.filename}
        return {**entry, "priority": self.priority} if self.priority else entry


def pin_key(name: str, version: str) -> str:
    return f"{name}={version}"


def from_lock_entry(key: str, entry: dict) -> DebFile:
    name, _, version = key.partition("=")
    return DebFile(name, version, str(entry["arch"]), int(entry["size"]), str(entry["sha256"]), str(entry["file"]),
                   priority=str(entry.get("priority", "")))


def entry_problem(key: str, entry) -> str | None:
    """Why a lock's `debs` entry is malformed, or None."""
    name, sep, version = str(key).partition("=")
    if not (sep and _DEB_NAME.match(name) and _DEB_VERSION.match(version)):
        return "the key must be PACKAGE=VERSION (a Debian package name and version)"
    if not isinstance(entry, dict):
        return "must be a mapping with arch, size, sha256 and file"
    if not all(k in entry for k in ("arch", "size", "sha256", "file")):
        return "needs arch, size, sha256 and file"
    if not _SHA256.match(str(entry["sha256"])):
        return "sha256 is not a sha256"
    if isinstance(entry["size"], bool) or not isinstance(entry["size"], int) or entry["size"] < 0:
        return "size is not a byte count"
    if "priority" in entry and not (isinstance(entry["priority"], str) and _PRIORITY.match(entry["priority"])):
        return "priority is not a Debian priority"
    file = str(entry["file"])
    if not _FILENAME.match(file) or ".." in file.split("/") or not file.endswith(".deb"):
        return "file is not an archive path of a .deb"
    return None


# --- Packages stanzas ---------------------------------------------------------------------------

def stanzas(text: str):
    """The fields of each paragraph of a Packages (or `apt-cache show`) text; continuation lines skipped."""
    fields: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields = {}
            continue
        if line[0] in " \t" or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    if fields:
        yield fields


def deb_files(text: str) -> dict:
    """{PACKAGE=VERSION: DebFile} of every stanza with a file (the same version in two pockets is one
    file: the first stanza with an archive pool path wins, else the first)."""
    out: dict = {}
    for f in stanzas(text):
        try:
            deb = DebFile(f["Package"], f["Version"], f.get("Architecture", ""), int(f["Size"]), f["SHA256"],
                          f["Filename"].removeprefix("./"), priority=f.get("Priority", ""))
        except (KeyError, ValueError):
            continue
        if deb.key not in out or (deb.filename.startswith("pool/") and not out[deb.key].filename.startswith("pool/")):
            out[deb.key] = deb
    return out


# --- what a lock needs ----------------------------------------------------------------------------

def lock_pins(lock) -> dict:
    """{PACKAGE=VERSION: (name, version)} of every Debian package the lock pins (base, build, runtime)."""
    out = {}
    for pins in (lock.base_packages if "image" not in lock.base else {}, lock.apt_build, lock.apt_runtime):
        for name, version in pins.items():
            out[pin_key(name, version)] = (name, version)
    return out


def needed_files(lock) -> tuple[list, list]:
    """(files with known bytes, PACKAGE=VERSION keys the lock names without bytes) of a lock: every
    .deb of the base, build and runtime stages, and the source tarballs it compiles from."""
    known, unknown = [], []
    for key in sorted(lock_pins(lock)):
        entry = lock.debs.get(key)
        if entry is None:
            unknown.append(key)
        else:
            known.append(from_lock_entry(key, entry))
    for src in sorted(lock.sources.values(), key=lambda s: s["file"]):
        known.append(source_file(src))
    return known, unknown


def python_files(lock) -> list:
    """Every Python file the lock pins (all pip steps), once each, as store files (kind "python")."""
    seen = {}
    for pins in lock.python.values():
        for pin in pins:
            seen.setdefault(pin.sha256, DebFile(pin.name, pin.version, "", 0, pin.sha256, pin.file, "python"))
    return [seen[k] for k in sorted(seen, key=lambda k: seen[k].filename)]


def source_file(src: dict) -> DebFile:
    """A locked source tarball as a file: its pool path is recorded, or Debian's pool layout gives it."""
    filename = src.get("filename") or pool_path(src["package"], src["file"])
    return DebFile(src["package"], src["version"], "source", int(src.get("size", 0)), src["sha256"], filename, "source")


def pool_path(source_package: str, file: str, component: str = "main") -> str:
    """Debian's pool layout: pool/main/o/openmpi/FILE, pool/main/libf/libfoo/FILE."""
    prefix = source_package[:4] if source_package.startswith("lib") else source_package[:1]
    return f"pool/{component}/{prefix}/{source_package}/{file}"


# --- dlenv's package repository --------------------------------------------------------------------

def repository_sources() -> str:
    """The deb822 entry of dlenv's package repository: a flat repository, trusted because every file in
    it was checked against the lock's sha256 before it was served."""
    return (f"Types: deb deb-src\nURIs: {PACKAGE_REPO_URL}\nSuites: ./\nTrusted: yes\n")


def with_priorities(packages: str, files: list) -> str:
    """A Packages index with each stanza's Priority set to the one the lock records for that file (the
    archive's), where it records one."""
    wanted = {f.key: f.priority for f in files if f.kind == "deb" and f.priority}
    out = []
    for block in packages.split("\n\n"):
        fields = next(stanzas(block), None)
        priority = wanted.get(pin_key(fields["Package"], fields["Version"])) if fields and "Package" in fields else None
        if priority:
            lines = [ln for ln in block.split("\n") if not ln.startswith("Priority:")]
            at = next((i for i, ln in enumerate(lines) if ln.startswith("Filename:")), len(lines))
            lines.insert(at, f"Priority: {priority}")
            block = "\n".join(lines)
        out.append(block)
    return "\n\n".join(out)


def release_text(suite: str, indexes: dict) -> str:
    """A flat repository's Release file: the suite (mmdebstrap finds the essential set by it) and the
    sha256 of each index. Dated at the epoch: the text is the same on every machine."""
    lines = ["Origin: dlenv", "Label: dlenv", f"Suite: {suite}", f"Codename: {suite}",
             "Date: Thu, 01 Jan 1970 00:00:00 UTC", "SHA256:"]
    for name, data in sorted(indexes.items()):
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    return "\n".join(lines) + "\n"


# --- refreshed pins -------------------------------------------------------------------------------

def moved_pins(old, new) -> list[dict]:
    """[{package, stage, locked, used}] of the Debian pins that differ between two locks."""
    rows = []
    for stage, a, b in (("base", old.base_packages, new.base_packages), ("build", old.apt_build, new.apt_build),
                        ("runtime", old.apt_runtime, new.apt_runtime)):
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                rows.append({"package": name, "stage": stage, "locked": a.get(name, "(none)"),
                             "used": b.get(name, "(none)")})
    return rows
