"""CycloneDX 1.5 JSON of an inventory (pure): the image as the metadata component, every package
a library with its package URL; compiled sources carry their Debian source package as pedigree.
"""

from __future__ import annotations

import uuid

from builder import __version__
from builder.outputs.sbom.model import NAMESPACE, Inventory, bom_ref, debian_source, debian_source_purl, purl


def serial_number(inv: Inventory) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, inv.content_hash)}"


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
        ref = bom_ref(pkg, inv)
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
            source = debian_source(pkg)
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
