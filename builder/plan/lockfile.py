"""Lock files: every exact input of a build, resolved for the image (never for the host).

Pure. A lock is made by `locker` (which runs the resolution inside a container of the stack's
base); this module owns what a lock holds, its file format, whether a lock still matches its
stack, and the texts the renderer installs from:

- `inputs`: what the lock was made from (the resolved component versions, the apt lists, the pip
  requirements and options of every install step, the Debian source packages, the base recipe).
  When the stack's inputs differ from the lock's, the lock is stale and `dlenv build` refuses it
  (unless `--relock`), saying which inputs changed.
- `base`: the bootstrapped base's suite, variant, SOURCE_DATE_EPOCH, rootfs checksum and its
  Debian packages (pinned when the base is bootstrapped again elsewhere).
- `apt`: every Debian package the build and runtime stages install or upgrade, with its version.
- `sources`: the Debian source packages compiled from, with the checksum of the upstream tarball.
- `python`: for every pip install step, each distribution with its version, file and sha256.
- `debs`: the bytes of every Debian pin (plan/debs.py): architecture, size, sha256 and pool file, as
  the archive's Packages index gave them; `resolved_at`, when the pins were resolved (a snapshot
  service serves the archive as it was then). Locks written before they existed still load.
- `refreshed`, only in a lock a build refreshed: the lock it was made from and the pins that moved
  because no source had their bytes any more.
- `images`, outside the pins and digests: the reproducible image id per engine/arch (plan/lockimages).

The file is YAML with sorted keys and one package per line, so a relock reads as a small diff.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder.errors import LockError, SpecError, printable, shown
from builder.plan.debs import entry_problem
from builder.plan.lockimages import parse_images
from builder.spec.yamlload import decode_yaml_bytes, is_blank, parse_yaml_text, read_limited

LOCK_FORMAT = 1
MAX_LOCK_BYTES = 8_000_000       # the all-in-one lock is 31 kB

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_DEB_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]+$")
_PY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PY_VERSION = re.compile(r"^[A-Za-z0-9.!+_-]+$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
_STAMP = re.compile(r"^\d{8}T\d{6}Z$")


def lock_path(stack_path: Path) -> Path:
    """The lock lives next to its stack file: stacks/chainermn.yaml -> stacks/chainermn.lock."""
    return Path(stack_path).with_suffix(".lock")


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- what a lock is made from ---------------------------------------------------------------


def explain_stale(old: dict, new: dict) -> str:
    """Which inputs differ, in a few words: 'components.numpy 2.1.3 -> 1.26.4; python_packages +requests'."""
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                x, y = a.get(sub), b.get(sub)
                if x == y:
                    continue
                where = f"{key}.{sub}"
                if isinstance(x, list) and isinstance(y, list):
                    added = [v for v in y if v not in x]
                    removed = [v for v in x if v not in y]
                    words = [f"+{v}" for v in added] + [f"-{v}" for v in removed]
                    parts.append(f"{where} {' '.join(words) or 'reordered'}")
                elif isinstance(x, dict) and isinstance(y, dict) and "requirements" in (x.keys() | y.keys()):
                    old_req, new_req = _listed(x.get("requirements")), _listed(y.get("requirements"))
                    added = [v for v in new_req if v not in old_req]
                    removed = [v for v in old_req if v not in new_req]
                    words = [f"+{v}" for v in added] + [f"-{v}" for v in removed]
                    parts.append(f"{where} {' '.join(words) or 'options changed'}")
                elif x is None:
                    parts.append(f"{where} added")
                elif y is None:
                    parts.append(f"{where} removed")
                elif isinstance(x, (str, int)) and isinstance(y, (str, int)):
                    parts.append(f"{where} {x} -> {y}")
                else:
                    parts.append(f"{where} changed")
        else:
            parts.append(f"{key} changed")
    text = printable("; ".join(parts))
    return text if len(text) <= 300 else text[:297] + "..."


def _listed(value) -> list:
    """A requirements list as recorded; anything else (damaged or hand-edited) counts as one value."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


# --- the lock itself ------------------------------------------------------------------------

@dataclass(frozen=True)
class PythonPin:
    name: str
    version: str
    file: str
    sha256: str

    def requirement_line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class Lock:
    stack: str
    inputs: dict
    platform: dict                      # {"arch", "python"}
    base: dict                          # recipe + rootfs_sha256 + packages, or {"image", "id", "packages"}
    apt_build: dict                     # package -> version
    apt_runtime: dict
    sources: dict                       # component -> {"package", "version", "file", "sha256", "size"}
    python: dict                        # step -> tuple[PythonPin]
    dlenv_version: str = ""
    path: Path | None = field(default=None, compare=False)
    parent: dict = field(default_factory=dict)  # layered: {"stack", "content_hash", "lock"} of the parent image
    images: dict = field(default_factory=dict, compare=False)  # engine/arch -> image id: not in pins_document
    debs: dict = field(default_factory=dict)   # PACKAGE=VERSION -> {arch, size, sha256, file} (plan/debs.py)
    resolved_at: str = ""                      # UTC time of the resolution, YYYYMMDDTHHMMSSZ
    refreshed: dict = field(default_factory=dict, compare=False)  # {"from": lock digest, "moved": [...]}

    @property
    def inputs_digest(self) -> str:
        return digest(self.inputs)

    def pins_document(self) -> dict:
        """Everything that decides what gets installed (what the content hash covers)."""
        return {
            "inputs": self.inputs, "platform": self.platform, "base": self.base,
            "apt": {"build": self.apt_build, "runtime": self.apt_runtime}, "sources": self.sources,
            "python": {step: [p.__dict__ for p in pins] for step, pins in self.python.items()},
            **({"parent": self.parent} if self.parent else {}),
            **({"debs": self.debs} if self.debs else {}),
        }

    @property
    def digest(self) -> str:
        return digest(self.pins_document())

    @property
    def base_packages(self) -> dict:
        return dict(self.base.get("packages", {}))

    def python_pins(self) -> dict:
        """name -> version over every step (later steps win, as they would in the venv)."""
        out = {}
        for pins in self.python.values():
            for p in pins:
                out[p.name] = p.version
        return out

    def requirements_text(self, step: str) -> str:
        return "".join(f"{p.requirement_line()}\n" for p in self.python.get(step, ()))

    @staticmethod
    def apt_text(pins: dict) -> str:
        return "".join(f"{name}={version}\n" for name, version in sorted(pins.items()))

    def counts(self) -> dict:
        return {"debian": len(set(self.apt_build) | set(self.apt_runtime) | set(self.base_packages)),
                "python": sum(len(p) for p in self.python.values()), "sources": len(self.sources)}


class _OneLine(dict):
    """A mapping written on one line (each file of `debs`): a relock reads as one changed line per pin."""


class _LockDumper(yaml.SafeDumper):
    pass


_LockDumper.add_representer(
    _OneLine, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True))


def dump(lock: Lock) -> str:
    doc = {
        "lock": LOCK_FORMAT,
        "stack": lock.stack,
        "dlenv_version": lock.dlenv_version,
        "inputs_sha256": lock.inputs_digest,
        "inputs": lock.inputs,
        "platform": lock.platform,
        "base": lock.base,
        "apt": {"build": dict(sorted(lock.apt_build.items())), "runtime": dict(sorted(lock.apt_runtime.items()))},
        **({"parent": lock.parent} if lock.parent else {}),
        "sources": lock.sources,
        "python": {step: [{"name": p.name, "version": p.version, "file": p.file, "sha256": p.sha256} for p in pins]
                   for step, pins in lock.python.items()},
        **({"debs": {key: _OneLine(lock.debs[key]) for key in sorted(lock.debs)}} if lock.debs else {}),
        **({"resolved_at": lock.resolved_at} if lock.resolved_at else {}),
        **({"refreshed": lock.refreshed} if lock.refreshed else {}),
        **({"images": dict(sorted(lock.images.items()))} if lock.images else {}),
    }
    header = (f"# Written by `dlenv lock {lock.stack}`. Do not edit: change the stack file and lock again.\n"
              "# Commit it next to the stack: `dlenv build` installs exactly these versions and files.\n")
    return header + yaml.dump(doc, Dumper=_LockDumper, sort_keys=False, default_flow_style=False, width=200,
                              allow_unicode=False)


def _need(cond: bool, path: Path, fieldname: str, message: str):
    if not cond:
        raise LockError(f"{printable(path)}: {printable(fieldname)[:200]}: {message}",
                        hint="the lock file is damaged or was edited; run `dlenv lock` to write it again")


def _pins(value, path: Path, fieldname: str) -> dict:
    _need(isinstance(value, dict), path, fieldname, "must be a mapping of package to version")
    for name, version in value.items():
        _need(isinstance(name, str) and bool(_DEB_NAME.match(name)), path, f"{fieldname}.{name}", "not a Debian package name")
        _need(isinstance(version, str) and bool(_DEB_VERSION.match(version)), path, f"{fieldname}.{name}",
              f"{shown(version, 80)} is not a Debian version")
    return dict(value)


def _parent(value, path: Path) -> dict:
    """The parent image a layered lock was written on: its stack, content hash and lock digest."""
    if value is None:
        return {}
    _need(isinstance(value, dict), path, "parent", "must be a mapping with stack, content_hash and lock")
    for key in ("content_hash", "lock"):
        _need(isinstance(value.get(key), str) and bool(_SHA256.match(value[key])), path, f"parent.{key}", "not a sha256")
    _need(isinstance(value.get("stack"), str), path, "parent.stack", "must be a stack name")
    return {"stack": value["stack"], "content_hash": value["content_hash"], "lock": value["lock"]}


_PLAIN = (str, int, float, bool, type(None))


def _plain_problem(value, where: str = "", depth: int = 0) -> tuple[str, str] | None:
    """Where the document holds something a lock never does (a date, bytes, a set, a non-string key,
    nesting deeper than any lock), or None: a lock is JSON-shaped data, hashed as JSON."""
    if depth > 32:
        return where, "nested deeper than a lock ever is"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return where or "(top)", f"key {shown(key, 40)} is not a string"
            problem = _plain_problem(item, f"{where}.{key}" if where else key, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = _plain_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, _PLAIN):
        return None
    return where or "(top)", f"{type(value).__name__} values are not allowed in a lock"


def _read(path: Path):
    """The lock's data. Locks are machine-written: libyaml reads them ten times faster than the
    line-aware loader, which takes anything unusual (anchors or aliases, which a lock never has, a
    parse error) and names the line. Size and file type are checked before anything is read."""
    try:
        text = decode_yaml_bytes(read_limited(path, MAX_LOCK_BYTES, "a lock"), path)
        if is_blank(text):
            raise SpecError(path, "file is empty")
        if "&" not in text and "*" not in text and hasattr(yaml, "CSafeLoader"):
            try:
                data = yaml.load(text, Loader=yaml.CSafeLoader)  # noqa: S506 - the C *safe* loader
            except (yaml.YAMLError, RecursionError, ValueError, OverflowError, MemoryError):
                data, _ = parse_yaml_text(text, path)
        else:
            data, _ = parse_yaml_text(text, path)
    except SpecError as exc:
        raise LockError(exc.message, hint="run `dlenv lock` to write it again") from None
    problem = _plain_problem(data)
    _need(problem is None, path, *(problem or ("", "")))
    return data


def load(path: Path) -> Lock:
    """Read and validate a lock file; every problem is one line naming the file and the field."""
    path = Path(path)
    data = _read(path)
    _need(isinstance(data, dict), path, "(top)", "must be a mapping")
    _need(data.get("lock") == LOCK_FORMAT, path, "lock", f"format {data.get('lock')!r} is not {LOCK_FORMAT}")
    for key in ("stack", "inputs", "platform", "base", "apt", "sources", "python"):
        _need(key in data, path, key, "missing")
    _need(isinstance(data["inputs"], dict), path, "inputs", "must be a mapping")
    _need(data.get("inputs_sha256") == digest(data["inputs"]), path, "inputs_sha256",
          "does not match the inputs recorded in the file")
    base = data["base"]
    _need(isinstance(base, dict), path, "base", "must be a mapping")
    base = dict(base)
    base["packages"] = _pins(base.get("packages", {}), path, "base.packages")
    if "rootfs_sha256" in base:
        _need(isinstance(base["rootfs_sha256"], str) and bool(_SHA256.match(base["rootfs_sha256"])), path,
              "base.rootfs_sha256", "not a sha256")
    apt = data["apt"]
    _need(isinstance(apt, dict), path, "apt", "must be a mapping with build and runtime")
    sources = data["sources"]
    _need(isinstance(sources, dict), path, "sources", "must be a mapping")
    for comp, src in sources.items():
        _need(isinstance(src, dict) and all(k in src for k in ("package", "version", "file", "sha256")), path,
              f"sources.{comp}", "needs package, version, file and sha256")
        _need(bool(_SHA256.match(str(src["sha256"]))), path, f"sources.{comp}.sha256", "not a sha256")
        _need(bool(_FILE.match(str(src["file"]))), path, f"sources.{comp}.file", "not a file name")
        _need(bool(_DEB_VERSION.match(str(src["version"]))), path, f"sources.{comp}.version", "not a Debian version")
    python = {}
    _need(isinstance(data["python"], dict), path, "python", "must be a mapping of install step to packages")
    for step, pins in data["python"].items():
        _need(isinstance(pins, list), path, f"python.{step}", "must be a list")
        out = []
        for i, pin in enumerate(pins):
            where = f"python.{step}[{i}]"
            _need(isinstance(pin, dict) and all(k in pin for k in ("name", "version", "file", "sha256")), path,
                  where, "needs name, version, file and sha256")
            _need(bool(_PY_NAME.match(str(pin["name"]))), path, f"{where}.name", "not a package name")
            _need(bool(_PY_VERSION.match(str(pin["version"]))), path, f"{where}.version", "not a version")
            _need(bool(_FILE.match(str(pin["file"]))), path, f"{where}.file", "not a file name")
            _need(bool(_SHA256.match(str(pin["sha256"]))), path, f"{where}.sha256", "not a sha256")
            out.append(PythonPin(str(pin["name"]), str(pin["version"]), str(pin["file"]), str(pin["sha256"])))
        python[str(step)] = tuple(out)
    platform = data["platform"]
    _need(isinstance(platform, dict), path, "platform", "must be a mapping")
    debs = data.get("debs") or {}
    _need(isinstance(debs, dict), path, "debs", "must be a mapping of PACKAGE=VERSION to its file")
    for key, entry in debs.items():
        problem = entry_problem(key, entry)
        _need(problem is None, path, f"debs.{key}", problem or "")
    resolved_at = data.get("resolved_at") or ""
    _need(isinstance(resolved_at, str) and (not resolved_at or bool(_STAMP.match(resolved_at))), path, "resolved_at",
          "not a YYYYMMDDTHHMMSSZ time")
    refreshed = data.get("refreshed") or {}
    _need(isinstance(refreshed, dict) and (not refreshed or bool(_SHA256.match(str(refreshed.get("from", ""))))),
          path, "refreshed", "must name the lock it was refreshed from (from: sha256) and the pins that moved")
    return Lock(stack=str(data["stack"]), inputs=data["inputs"], platform=dict(platform), base=base,
                apt_build=_pins(apt.get("build", {}), path, "apt.build"),
                apt_runtime=_pins(apt.get("runtime", {}), path, "apt.runtime"),
                sources={k: dict(v) for k, v in sources.items()}, python=python,
                dlenv_version=str(data.get("dlenv_version", "")), path=path, parent=_parent(data.get("parent"), path),
                images=parse_images(data.get("images"), path), debs={k: dict(v) for k, v in debs.items()},
                resolved_at=resolved_at, refreshed=dict(refreshed))


# --- parsing what the lock container reports (pure, so it is unit-tested) -------------------

_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")


def parse_apt_simulation(text: str) -> dict:
    """`apt-get install -s` output -> {package: version} of what it would install or upgrade."""
    out = {}
    for line in text.splitlines():
        m = _INST.match(line)
        if m:
            name = m.group(1).split(":")[0]       # strip an ":amd64" qualifier
            out[name] = m.group(2)
    return out


def parse_dpkg_list(text: str) -> dict:
    """`dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'` -> installed {package: version}."""
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] and parts[1] and (len(parts) < 3 or parts[2].startswith("ii")):
            out[parts[0].split(":")[0]] = parts[1]
    return out


_URI = re.compile(r"^'[^']+' (\S+) (\d+) SHA256:([0-9a-f]{64})\s*$")


def parse_source_uris(text: str) -> dict:
    """`apt-get source --print-uris` -> {file: (size, sha256)}."""
    out = {}
    for line in text.splitlines():
        m = _URI.match(line.strip())
        if m:
            out[m.group(1)] = (int(m.group(2)), m.group(3))
    return out


def parse_pip_report(report: dict) -> list[PythonPin]:
    """A `pip install --dry-run --report` document -> pins, in the order pip would install them."""
    pins = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        info = item.get("download_info", {})
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        sha = hashes.get("sha256")
        if not sha:
            legacy = (info.get("archive_info") or {}).get("hash", "")
            sha = legacy.split("=", 1)[1] if legacy.startswith("sha256=") else None
        url = info.get("url", "")
        name = meta.get("name", "?")
        if not sha or not url or url.startswith("file:") or "vcs_info" in info or "dir_info" in info:
            raise LockError(f"{name} {meta.get('version', '')} comes from {url.split('://')[0] or 'somewhere'} "
                            "without a sha256 from the index; only index archives can be locked",
                            hint="name the package by version from a package index")
        filename = url.rsplit("/", 1)[-1].split("#", 1)[0]
        pins.append(PythonPin(name, str(meta.get("version")), filename, sha))
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_changes(old: Lock | None, new: Lock) -> list[str]:
    """Pins that differ between two locks, as 'name old -> new' lines."""
    if old is None:
        return []

    def table(lock):
        rows = {f"deb {k}": v for k, v in {**lock.base_packages, **lock.apt_build, **lock.apt_runtime}.items()}
        rows.update({f"py {k}": v for k, v in lock.python_pins().items()})
        rows.update({f"src {k}": f"{v['version']} {v['sha256'][:12]}" for k, v in lock.sources.items()})
        return rows
    a, b = table(old), table(new)
    return [f"{key} {a.get(key, '(none)')} -> {b.get(key, '(none)')}" for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)]
