"""What an image holds, as data: `Package` and `Inventory`, their package URLs, and the inventory
made from the collector's output and the image's inspect data (`inventory_from_output`).

The collector runs in a container of the image (`builder.engine.inventory`); everything here is
pure. Also the pieces the SBOM documents share: their UUID namespace, component references and
the JSON they are written as.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass

from packaging.utils import canonicalize_name

from builder.errors import DlenvError, EngineError
from builder.names import COMPONENT_LABEL, DLENV_LABELS, HASH_LABEL, RECIPE_LABEL, SOURCE_LABEL, STACK_LABEL
from builder.plan.catalog import Catalog
from builder.plan.pins import DEFAULT_EPOCH

ECOSYSTEMS = ("deb", "pypi", "generic")   # the order of components in every output
# The version a compiled component reports inside the image (section name in the collector output).
VERSION_PROBES = {"openmpi": "ompi_info"}
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dlenv:sbom")   # of SBOM serial numbers and namespaces

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
# The collector's output (pure).

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


# --------------------------------------------------------------------------------------------
# Shared by the SBOM documents (pure).

def bom_ref(pkg: Package, inv: Inventory) -> str:
    ref = purl(pkg, inv.os_id, inv.os_version)
    # One distribution can sit in several places (the venv and a --target prefix): refs stay unique.
    return f"{ref}#{pkg.location}" if pkg.ecosystem == "pypi" and pkg.location else ref


def debian_source(pkg: Package) -> tuple | None:
    text = pkg.prop("dlenv:debian-source")
    if not text:
        return None
    name, _, rest = text.partition(" ")
    version = rest.split(" ", 1)[0]
    return (name, version) if name and version else None


def render_json(doc: dict) -> str:
    """The bytes that are written: stable key order (as built), two-space indent, one final newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"

