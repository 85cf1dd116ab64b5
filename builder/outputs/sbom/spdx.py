"""SPDX 2.3 JSON of an inventory (pure): the image as the described package that CONTAINS every
package; compiled sources are GENERATED_FROM their Debian source package.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from builder import __version__
from builder.outputs.sbom.model import NAMESPACE, Inventory, Package, bom_ref, debian_source, debian_source_purl, purl

_IMAGE_ID = "SPDXRef-Image"


def _spdx_id(kind: str, name: str, unique: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "x"
    return f"SPDXRef-{kind}-{safe}-{hashlib.sha256(unique.encode()).hexdigest()[:10]}"


def to_spdx(inv: Inventory, created: str | None = None) -> dict:
    """SPDX 2.3 JSON. SPDX requires `creationInfo.created`: without `created` it is the lock's fixed
    date (`Inventory.source_date`), so the document stays reproducible."""
    stack = inv.name.split("/", 1)[-1]
    doc_uuid = uuid.uuid5(NAMESPACE, f"spdx:{inv.content_hash}")
    contained, extra, generated = [], [], []
    for pkg in inv.packages:
        ref = bom_ref(pkg, inv)
        sid = _spdx_id(pkg.ecosystem, pkg.name, ref)
        contained.append((sid, _package(pkg, inv, sid)))
        source = debian_source(pkg) if pkg.ecosystem == "generic" else None
        if source:
            src_id, src_entry = _source_package(pkg, inv, ref, source)
            extra.append((src_id, src_entry))
            generated.append({"spdxElementId": sid, "relationshipType": "GENERATED_FROM",
                              "relatedSpdxElement": src_id})
    packages = [_image_package(inv)] + [e for _, e in contained] + [e for _, e in sorted(extra, key=lambda x: x[0])]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{inv.name}@{inv.content_hash[:16]}",
        "documentNamespace": f"https://spdx.org/spdxdocs/dlenv-{stack}-{doc_uuid}",
        "creationInfo": {"created": created or inv.source_date, "creators": [f"Tool: dlenv-{__version__}"]},
        "packages": packages,
        "relationships": _relationships(contained, generated),
    }


def _image_package(inv: Inventory) -> dict:
    return {
        "name": inv.name, "SPDXID": _IMAGE_ID, "versionInfo": inv.content_hash,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
        "comment": "; ".join(f"{k}={v}" for k, v in inv.dlenv_labels.items()) or "not built by dlenv",
    }


def _package(pkg: Package, inv: Inventory, sid: str) -> dict:
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
    return entry


def _source_package(pkg: Package, inv: Inventory, ref: str, source: tuple) -> tuple:
    """(SPDX id, package) of the Debian source package a compiled component was built from."""
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
    return src_id, src_entry


def _relationships(contained: list, generated: list) -> list:
    """DESCRIBES first, then GENERATED_FROM and CONTAINS in a fixed order."""
    rest = generated + [{"spdxElementId": _IMAGE_ID, "relationshipType": "CONTAINS", "relatedSpdxElement": sid}
                        for sid, _ in contained]
    return [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": _IMAGE_ID}] \
        + sorted(rest, key=lambda r: (r["relationshipType"], r["spdxElementId"], r["relatedSpdxElement"]))
