"""Software bills of materials of built images, and the difference between two images.

`collect(client, image)` runs one short-lived container of the image (its own default user, no
network, nothing written) that lists what the image holds: Debian packages (dpkg's database),
Python distributions that the venv's interpreter sees (`importlib.metadata` over its `sys.path`)
and those of every `pip --target` prefix under /opt/nvidia, and the version that a compiled
component reports (`ompi_info --version`). With the image's labels (content hash, component
versions) and the catalog's data for those versions (Open MPI's Debian source package), it makes
an `Inventory`. Everything after that is pure: `to_cyclonedx`, `to_spdx` and `diff`.

Reproducible by construction: an SBOM holds no image id, no creation date of the image and no
wall-clock time (unless asked for), its serial number and namespace derive from the content hash,
and every list is sorted, so two builds of one lock give byte-identical SBOMs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass

from packaging.utils import canonicalize_name

from builder import __version__
from builder.errors import DlenvError, EngineError
from builder.names import COMPONENT_LABEL, DLENV_LABELS, HASH_LABEL, NVIDIA_PREFIXES, RECIPE_LABEL, SOURCE_LABEL, STACK_LABEL

ECOSYSTEMS = ("deb", "pypi", "generic")   # the order of components in every output
# The version a compiled component reports inside the image (section name in the collector output).
VERSION_PROBES = {"openmpi": "ompi_info"}
COLLECT_TIMEOUT = 180
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dlenv:sbom")


# --------------------------------------------------------------------------------------------
# The inventory: what an image holds.

@dataclass(frozen=True)
class Package:
    ecosystem: str          # deb | pypi | generic (compiled from source)
    name: str
    version: str
    arch: str = ""          # deb: dpkg's architecture
    location: str = ""      # pypi: the folder holding its metadata; generic: the install prefix
    properties: tuple = ()  # ((name, value), ...): where a compiled source came from

    @property
    def key(self) -> tuple:
        """Identity across images: ecosystem and normalized name."""
        name = canonicalize_name(self.name) if self.ecosystem == "pypi" else self.name.lower()
        return (self.ecosystem, name)

    @property
    def where(self) -> str:
        return self.arch if self.ecosystem == "deb" else self.location

    @property
    def sort_key(self) -> tuple:
        return (ECOSYSTEMS.index(self.ecosystem) if self.ecosystem in ECOSYSTEMS else len(ECOSYSTEMS),
                self.key[1], self.version, self.arch, self.location)

    def prop(self, name: str) -> str | None:
        return dict(self.properties).get(name)


@dataclass(frozen=True)
class Inventory:
    name: str                # dlenv/STACK (or the repository of an image dlenv did not build)
    content_hash: str        # org.dlenv.content-hash; the image id for images dlenv did not build
    labels: dict             # every label of the image
    packages: tuple          # Package, sorted
    os_id: str = ""          # /etc/os-release ID and VERSION_ID
    os_version: str = ""
    image: str = ""          # the reference collected from; never written into an SBOM
    image_id: str = ""       # differs between two builds of one lock: never written into an SBOM

    @property
    def dlenv_labels(self) -> dict:
        return {k: v for k, v in sorted(self.labels.items()) if k.startswith(DLENV_LABELS)}

    @property
    def source_date(self) -> str:
        """The fixed date of this lock: the SOURCE_DATE_EPOCH of the bootstrapped base (its recipe
        label), else dlenv's default epoch. Never the image's creation time (it changes per build)."""
        from builder.plan.pins import DEFAULT_EPOCH
        epoch = DEFAULT_EPOCH
        recipe = self.labels.get(RECIPE_LABEL, "")
        last = recipe.rsplit("/", 1)[-1]
        if recipe and last.isdigit():
            epoch = int(last)
        return format_time(epoch)


def format_time(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_inventory(*, name: str, content_hash: str, labels: dict, packages, os_id: str = "",
                   os_version: str = "", image: str = "", image_id: str = "") -> Inventory:
    unique = {(p.ecosystem, p.name, p.version, p.arch, p.location, p.properties): p for p in packages}
    ordered = tuple(sorted(unique.values(), key=lambda p: p.sort_key))
    return Inventory(name=name, content_hash=content_hash, labels=dict(sorted(labels.items())),
                     packages=ordered, os_id=os_id, os_version=os_version, image=image, image_id=image_id)


# --------------------------------------------------------------------------------------------
# Package URLs (https://github.com/package-url/purl-spec).

def _pct(text: str) -> str:
    # purl percent-encodes everything but unreserved characters; ':' stays as it is (Debian epochs).
    return urllib.parse.quote(text, safe=":")


def purl(pkg: Package, os_id: str = "", os_version: str = "") -> str:
    if pkg.ecosystem == "deb":
        namespace = (os_id or "debian").lower()
        qualifiers = {"arch": pkg.arch}
        if os_version:
            qualifiers["distro"] = f"{namespace}-{os_version}"
        return f"pkg:deb/{namespace}/{_pct(pkg.name)}@{_pct(pkg.version)}" + _qualifiers(qualifiers)
    if pkg.ecosystem == "pypi":
        return f"pkg:pypi/{_pct(pkg.name.lower().replace('_', '-'))}@{_pct(pkg.version)}"
    return f"pkg:generic/{_pct(pkg.name)}@{_pct(pkg.version)}"


def _qualifiers(values: dict) -> str:
    items = [f"{k}={_pct(v)}" for k, v in sorted(values.items()) if v]
    return ("?" + "&".join(items)) if items else ""


def debian_source_purl(source: str, version: str, os_id: str = "", os_version: str = "") -> str:
    return purl(Package("deb", source, version, arch="source"), os_id, os_version)


# --------------------------------------------------------------------------------------------
# Collection inside a container of the image (the only effects in this module).

# Runs as the image's default user with `sh -c SCRIPT dlenv-sbom PYTHON_SCRIPT`; reads only.
_SH = r"""cd / || exit 1
echo '### os'
cat /etc/os-release 2>/dev/null
echo '### dpkg'
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f '${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n' || echo '### failed dpkg-query'
fi
echo '### python'
if [ -x /opt/venv/bin/python ]; then PY=/opt/venv/bin/python; else PY=$(command -v python3 || true); fi
if [ -n "$PY" ]; then "$PY" -c "$1" || echo '### failed python'; fi
echo '### ompi_info'
if command -v ompi_info >/dev/null 2>&1; then ompi_info --version 2>/dev/null | head -n 1; fi
echo '### end'
"""

_PY = r"""
import glob, importlib.metadata as md, json, os, sys
def emit(paths):
    for d in md.distributions(path=paths):
        name = d.metadata["Name"]
        if not name:
            continue
        try:
            where = str(d.locate_file("")).rstrip("/")
        except Exception:
            where = ""
        print(json.dumps({"name": name, "version": d.version, "location": where}))
emit([p for p in sys.path if p and os.path.abspath(p) != os.getcwd() and os.path.exists(p)])
prefixes = set(glob.glob("%(nvidia)s/*/")) | {os.path.dirname(p) + "/" for p in glob.glob("/opt/*/*.dist-info")}
for prefix in sorted(prefixes):
    emit([prefix.rstrip("/")])
""" % {"nvidia": NVIDIA_PREFIXES}


def parse_sections(text: str) -> dict:
    sections: dict = {}
    current = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append(line)
    return sections


def parse_os_release(lines) -> dict:
    out = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def parse_dpkg(lines) -> list:
    """`Package\\tVersion\\tArchitecture\\tStatus-Abbrev` lines; packages whose files are on disk only
    (dpkg also lists removed packages that left configuration files, and ones it never installed)."""
    out = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0] or not parts[1]:
            continue
        status = parts[3] if len(parts) > 3 else "ii "
        if len(status) >= 2 and status[1] in "nc":     # not-installed, config-files
            continue
        out.append(Package("deb", parts[0], parts[1], arch=parts[2]))
    return out


def parse_python(lines) -> list:
    out = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        item = json.loads(line)
        if item.get("name") and item.get("version"):
            out.append(Package("pypi", item["name"], item["version"], location=item.get("location") or ""))
    return out


def upstream_version(debian_version: str) -> str:
    """`1:4.1.4-3` -> `4.1.4`: without the epoch and the Debian revision."""
    text = debian_version.split(":", 1)[-1]
    return text.rsplit("-", 1)[0] if "-" in text else text


def compiled_sources(labels: dict, catalog, reported: dict) -> list:
    """Components that dlenv compiles from a Debian source package (their version has a
    `debian_source` var): the component version comes from the image's label, the source package
    version from the catalog's data for that version, and `reported` holds what the image's own
    tool says (`ompi_info --version`). A locked image names the source package, its tarball and
    the tarball's sha256 in a label (`org.dlenv.source.<component>`); without it no checksum is invented."""
    out = []
    for label, version in sorted(labels.items()):
        if not label.startswith(COMPONENT_LABEL):
            continue
        name = label[len(COMPONENT_LABEL):]
        try:
            comp = catalog.get(name)
            cv = comp.version(version)
        except DlenvError:
            continue
        locked = re.match(r"^([a-z0-9][a-z0-9+.-]*)=(\S+) (\S+) sha256:([0-9a-f]{64})$",
                          labels.get(f"{SOURCE_LABEL}{name}", ""))
        if locked:
            package, source, tarball, sha = locked.groups()
            origin = f"image label {SOURCE_LABEL}{name}, from the lock"
            checksum = f"sha256:{sha}"
        else:
            package, source = name, cv.vars.get("debian_source")
            if not source:
                continue
            tarball = f"{name}_{upstream_version(str(source))}.orig.tar.xz"
            origin = f"catalog data for {name} {version}"
            checksum = (f"not recorded in the image (built without a lock): apt-get source checks {tarball} "
                        f"against the signed .dsc of {name} {source} at build time")
        props = [
            ("dlenv:component", f"{name}={version} (image label {label})"),
            ("dlenv:debian-source", f"{package} {source} ({origin})"),
            ("dlenv:upstream-tarball", tarball),
            ("dlenv:upstream-tarball-checksum", checksum),
            ("dlenv:reported-version", reported.get(name) or "not reported by the image"),
        ]
        out.append(Package("generic", name, version, location=comp.prefix or "", properties=tuple(props)))
    return out


def inventory_from_output(text: str, attrs: dict, image: str = "", catalog=None) -> Inventory:
    """Pure: the collector's output and the image's inspect data make the inventory."""
    sections = parse_sections(text)
    if "end" not in sections:
        raise EngineError(f"collecting the SBOM of {image or 'the image'} stopped early: "
                          f"{' '.join(text.split())[-300:]}")
    for what in ("dpkg-query", "python"):
        if f"failed {what}" in sections:
            raise EngineError(f"{what} failed inside {image or 'the image'}; the SBOM would be incomplete")
    labels = dict((attrs.get("Config") or {}).get("Labels") or {})
    osr = parse_os_release(sections.get("os", []))
    packages = parse_dpkg(sections.get("dpkg", [])) + parse_python(sections.get("python", []))
    reported = {}
    for name, section in VERSION_PROBES.items():
        line = next((ln.strip() for ln in sections.get(section, []) if ln.strip()), "")
        if line:
            reported[name] = line
    if catalog is None:
        from builder.plan.catalog import Catalog
        catalog = Catalog()
    packages += compiled_sources(labels, catalog, reported)
    image_id = attrs.get("Id", "")
    stack = labels.get(STACK_LABEL)
    if stack:
        name = f"dlenv/{stack}"
    else:
        tags = attrs.get("RepoTags") or []
        name = (tags[0].rpartition(":")[0] if tags else "") or image.rpartition(":")[0] or image or image_id
    return make_inventory(name=name, content_hash=labels.get(HASH_LABEL) or image_id, labels=labels,
                          packages=packages, os_id=osr.get("ID", ""), os_version=osr.get("VERSION_ID", ""),
                          image=image, image_id=image_id)


def collect(client, image: str, catalog=None, timeout: int = COLLECT_TIMEOUT) -> Inventory:
    """Run one container of `image` (default user, no network) that lists its packages."""
    import docker.errors

    from builder.engine import dockerapi as engine
    from builder.run.cluster import ContainerOptions, start_container
    attrs = engine.image_attrs(client, image)
    if attrs is None:
        raise EngineError(f"image {image} not found", hint="build it first with `dlenv build`")
    opts = ContainerOptions(shm_size=None, init=False, network_name="none")
    container = start_container(client, image, opts, "sbom", command=["/bin/sh", "-c", _SH, "dlenv-sbom", _PY])
    try:
        try:
            status = container.wait(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - requests' read timeout, or the engine went away
            raise EngineError(f"collecting the SBOM of {image} did not finish in {timeout}s: {exc}") from None
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        if status.get("StatusCode", 0) != 0:
            err = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
            raise EngineError(f"collecting the SBOM of {image} failed (exit status {status.get('StatusCode')}): "
                              f"{' '.join(err.split())[-300:]}",
                              hint="the image needs /bin/sh; dpkg-query and python are used when present")
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
    return inventory_from_output(out, attrs, image=image, catalog=catalog)


# --------------------------------------------------------------------------------------------
# CycloneDX 1.5 and SPDX 2.3 (pure).

def _bom_ref(pkg: Package, inv: Inventory) -> str:
    ref = purl(pkg, inv.os_id, inv.os_version)
    # One distribution can sit in several places (the venv and a --target prefix): refs stay unique.
    return f"{ref}#{pkg.location}" if pkg.ecosystem == "pypi" and pkg.location else ref


def serial_number(inv: Inventory) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, inv.content_hash)}"


def _properties(pairs) -> list:
    return [{"name": k, "value": v} for k, v in pairs]


def to_cyclonedx(inv: Inventory, timestamp: str | None = None) -> dict:
    """CycloneDX 1.5 JSON. `timestamp` (ISO 8601, UTC) is left out unless given."""
    metadata: dict = {}
    if timestamp:
        metadata["timestamp"] = timestamp
    metadata["tools"] = {"components": [{"type": "application", "name": "dlenv", "version": __version__}]}
    metadata["component"] = {
        "type": "container", "bom-ref": "image", "name": inv.name, "version": inv.content_hash,
        "properties": _properties(sorted(inv.labels.items())),
    }
    components, refs = [], []
    for pkg in inv.packages:
        ref = _bom_ref(pkg, inv)
        refs.append(ref)
        entry: dict = {"type": "library", "bom-ref": ref, "name": pkg.name, "version": pkg.version,
                       "purl": purl(pkg, inv.os_id, inv.os_version)}
        props = []
        if pkg.ecosystem == "pypi":
            props.append(("dlenv:location", pkg.location))
        elif pkg.ecosystem != "deb":
            props += [("dlenv:location", pkg.location), *pkg.properties]
            checksum = pkg.prop("dlenv:upstream-tarball-checksum") or ""
            if checksum.startswith("sha256:"):
                entry["hashes"] = [{"alg": "SHA-256", "content": checksum.split(":", 1)[1]}]
            source = _debian_source(pkg)
            if source:
                entry["pedigree"] = {"ancestors": [{
                    "type": "library", "bom-ref": f"{ref}#debian-source", "name": source[0], "version": source[1],
                    "purl": debian_source_purl(source[0], source[1], inv.os_id, inv.os_version)}]}
        if any(value for _, value in props):
            entry["properties"] = _properties(p for p in props if p[1])
        components.append(entry)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial_number(inv),
        "version": 1,
        "metadata": metadata,
        "components": components,
        # What the image holds; the packages' own dependencies are not claimed (none are collected).
        "dependencies": [{"ref": "image", "dependsOn": sorted(refs)}],
    }


def _debian_source(pkg: Package) -> tuple | None:
    text = pkg.prop("dlenv:debian-source")
    if not text:
        return None
    name, _, rest = text.partition(" ")
    version = rest.split(" ", 1)[0]
    return (name, version) if name and version else None


def _spdx_id(kind: str, name: str, unique: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "x"
    return f"SPDXRef-{kind}-{safe}-{hashlib.sha256(unique.encode()).hexdigest()[:10]}"


def to_spdx(inv: Inventory, created: str | None = None) -> dict:
    """SPDX 2.3 JSON. SPDX requires `creationInfo.created`: without `created` it is the lock's fixed
    date (`Inventory.source_date`), so the document stays reproducible."""
    stack = inv.name.split("/", 1)[-1]
    doc_uuid = uuid.uuid5(_NAMESPACE, f"spdx:{inv.content_hash}")
    image_id = "SPDXRef-Image"
    packages = [{
        "name": inv.name, "SPDXID": image_id, "versionInfo": inv.content_hash,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "comment": "; ".join(f"{k}={v}" for k, v in inv.dlenv_labels.items()) or "not built by dlenv",
    }]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    contained, extra = [], []
    for pkg in inv.packages:
        ref = _bom_ref(pkg, inv)
        sid = _spdx_id(pkg.ecosystem, pkg.name, ref)
        entry: dict = {
            "name": pkg.name, "SPDXID": sid, "versionInfo": pkg.version, "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl(pkg, inv.os_id, inv.os_version)}],
        }
        notes = []
        if pkg.ecosystem == "deb":
            notes.append(f"Debian package, architecture {pkg.arch}")
        elif pkg.ecosystem == "pypi":
            notes.append(f"Python distribution in {pkg.location}")
        else:
            notes.append(f"compiled from source, installed in {pkg.location}")
            notes += [f"{k}: {v}" for k, v in pkg.properties]
        entry["comment"] = "; ".join(notes)
        contained.append((sid, entry))
        source = _debian_source(pkg) if pkg.ecosystem == "generic" else None
        if source:
            src_id = _spdx_id("debsrc", source[0], f"{ref}#debian-source")
            checksum = pkg.prop("dlenv:upstream-tarball-checksum") or ""
            tarball = pkg.prop("dlenv:upstream-tarball")
            src_entry = {
                "name": source[0], "SPDXID": src_id, "versionInfo": source[1], "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False, "primaryPackagePurpose": "SOURCE",
                "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                  "referenceLocator": debian_source_purl(source[0], source[1], inv.os_id,
                                                                         inv.os_version)}],
                "comment": (f"Debian source package; its upstream tarball {tarball} has sha256 {checksum[7:]} (locked)"
                            if checksum.startswith("sha256:") else
                            f"Debian source package; its upstream tarball {tarball} has no checksum recorded in the image"),
            }
            if checksum.startswith("sha256:"):
                src_entry["packageFileName"] = tarball
                src_entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": checksum[7:]}]
            extra.append((src_id, src_entry))
            relationships.append({"spdxElementId": sid, "relationshipType": "GENERATED_FROM",
                                  "relatedSpdxElement": src_id})
    packages += [e for _, e in contained] + [e for _, e in sorted(extra, key=lambda x: x[0])]
    relationships += [{"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": sid}
                      for sid, _ in contained]
    relationships = relationships[:1] + sorted(relationships[1:], key=lambda r: (r["relationshipType"],
                                                                                  r["spdxElementId"],
                                                                                  r["relatedSpdxElement"]))
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{inv.name}@{inv.content_hash[:16]}",
        "documentNamespace": f"https://spdx.org/spdxdocs/dlenv-{stack}-{doc_uuid}",
        "creationInfo": {"created": created or inv.source_date, "creators": [f"Tool: dlenv-{__version__}"]},
        "packages": packages,
        "relationships": relationships,
    }


def render_json(doc: dict) -> str:
    """The bytes that are written: stable key order (as built), two-space indent, one final newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------
# Differences between two images (pure).

@dataclass(frozen=True)
class Change:
    ecosystem: str
    name: str
    before: tuple = ()      # ((version, where), ...): empty when added
    after: tuple = ()       # empty when removed

    def to_json(self) -> dict:
        def side(items):
            return [{"version": v, "where": w} for v, w in items]
        return {"ecosystem": self.ecosystem, "name": self.name, "a": side(self.before), "b": side(self.after)}


@dataclass(frozen=True)
class LabelChange:
    label: str
    a: str | None
    b: str | None


@dataclass(frozen=True)
class Diff:
    a: Inventory
    b: Inventory
    added: tuple = ()
    removed: tuple = ()
    changed: tuple = ()
    labels: tuple = ()

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed or self.labels)

    def summary(self) -> str:
        if self.identical:
            return "no differences"
        parts = [f"{len(self.added)} added", f"{len(self.removed)} removed", f"{len(self.changed)} changed"]
        if self.labels:
            parts.append(f"{len(self.labels)} label(s) differ")
        return ", ".join(parts)

    def to_json(self) -> dict:
        def who(inv: Inventory) -> dict:
            return {"image": inv.image, "name": inv.name, "content_hash": inv.content_hash}
        return {
            "a": who(self.a), "b": who(self.b), "identical": self.identical,
            "added": [c.to_json() for c in self.added], "removed": [c.to_json() for c in self.removed],
            "changed": [c.to_json() for c in self.changed],
            "labels": [{"label": c.label, "a": c.a, "b": c.b} for c in self.labels],
        }


def _grouped(inv: Inventory) -> dict:
    groups: dict = {}
    for pkg in inv.packages:
        groups.setdefault(pkg.key, {"name": pkg.name, "items": set()})["items"].add((pkg.version, pkg.where))
    return {k: (g["name"], tuple(sorted(g["items"]))) for k, g in groups.items()}


def _order(key: tuple) -> tuple:
    return (ECOSYSTEMS.index(key[0]) if key[0] in ECOSYSTEMS else len(ECOSYSTEMS), key[1])


def diff(a: Inventory, b: Inventory) -> Diff:
    """Packages keyed by ecosystem and normalized name: added (only in b), removed (only in a),
    changed (version, architecture or location differ); and the org.dlenv.* labels that differ."""
    ga, gb = _grouped(a), _grouped(b)
    added = tuple(Change(k[0], gb[k][0], (), gb[k][1]) for k in sorted(gb.keys() - ga.keys(), key=_order))
    removed = tuple(Change(k[0], ga[k][0], ga[k][1], ()) for k in sorted(ga.keys() - gb.keys(), key=_order))
    changed = tuple(Change(k[0], gb[k][0], ga[k][1], gb[k][1])
                    for k in sorted(ga.keys() & gb.keys(), key=_order) if ga[k][1] != gb[k][1])
    la, lb = a.dlenv_labels, b.dlenv_labels
    labels = tuple(LabelChange(k, la.get(k), lb.get(k)) for k in sorted(la.keys() | lb.keys())
                   if la.get(k) != lb.get(k))
    return Diff(a, b, added, removed, changed, labels)


def describe(items: tuple, show_where: bool = True) -> str:
    """`1.16.0`, or `1.16.0 (/opt/venv/...)` where the location/arch matters."""
    if not items:
        return ""
    return ", ".join(f"{v} ({w})" if show_where and w else v for v, w in items)
