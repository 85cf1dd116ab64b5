"""SBOMs and image diffs without an engine: hand-made inventories through the pure functions
(package URLs, CycloneDX and SPDX required fields, determinism, diff), the collector's output
parsers, and the `sbom` / `diff` commands with the collection replaced."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from builder import __version__
from builder.cli.app import main
from builder.cli.sbom import diff_cmd, sbom
from builder.engine import inventory as engine_inventory
from builder.errors import EngineError
from builder.outputs.sbom.cyclonedx import to_cyclonedx
from builder.outputs.sbom.diff import diff
from builder.outputs.sbom.model import (
    NAMESPACE,
    Package,
    debian_source_purl,
    format_time,
    inventory_from_output,
    make_inventory,
    purl,
    render_json,
    upstream_version,
)
from builder.outputs.sbom.spdx import to_spdx

# The commands are registered in cli.py; until then (or if that changes) the tests add them here.
if "sbom" not in main.commands:
    main.add_command(sbom)
if "diff" not in main.commands:
    main.add_command(diff_cmd, "diff")

HASH_A = "a" * 64
HASH_B = "b" * 64
VENV_SITE = "/opt/venv/lib/python3.11/site-packages"
OMPI_PROPS = (("dlenv:component", "openmpi=4.1.4 (image label org.dlenv.component.openmpi)"),
              ("dlenv:debian-source", "openmpi 4.1.4-3 (catalog data for openmpi 4.1.4)"),
              ("dlenv:upstream-tarball", "openmpi_4.1.4.orig.tar.xz"))


def labels(content_hash=HASH_A, stack="demo", **components):
    out = {"org.dlenv.content-hash": content_hash, "org.dlenv.stack": stack,
           "org.dlenv.base-recipe": "bookworm/minbase/1735689600",
           "org.opencontainers.image.title": f"dlenv/{stack}"}
    out.update({f"org.dlenv.component.{k.replace('_', '-')}": v for k, v in components.items()})
    out["org.dlenv.components"] = ",".join(f"{k}={v}" for k, v in components.items())
    return out


def packages():
    return [
        Package("pypi", "six", "1.16.0", location=VENV_SITE),
        Package("deb", "python3", "3.11.2-1+b1", arch="amd64"),
        Package("deb", "openssh-client", "1:9.2p1-2+deb12u3", arch="amd64"),
        Package("pypi", "typing_extensions", "4.12.2", location=VENV_SITE),
        Package("pypi", "nvidia-cublas-cu12", "12.6.4.1", location="/opt/nvidia/cuda"),
        Package("generic", "openmpi", "4.1.4", location="/opt/openmpi", properties=OMPI_PROPS),
        Package("deb", "libc6", "2.36-9+deb12u9", arch="amd64"),
        Package("pypi", "pip", "23.0.1", location=VENV_SITE),
    ]


def inventory(pkgs=None, content_hash=HASH_A, stack="demo", **kw):
    lab = kw.pop("labels", None) or labels(content_hash, stack, python="3.11", openmpi="4.1.4")
    return make_inventory(name=f"dlenv/{stack}", content_hash=content_hash, labels=lab,
                            packages=packages() if pkgs is None else pkgs, os_id="debian", os_version="12",
                            image=f"dlenv/{stack}:{content_hash[:16]}", image_id="sha256:" + "f" * 64, **kw)


# -- package URLs ---------------------------------------------------------------------------

def test_deb_purl_keeps_the_epoch_colon_and_encodes_plus():
    pkg = Package("deb", "openssh-client", "1:9.2p1-2+deb12u3", arch="amd64")
    assert purl(pkg, "debian", "12") == "pkg:deb/debian/openssh-client@1:9.2p1-2%2Bdeb12u3?arch=amd64&distro=debian-12"
    assert purl(pkg) == "pkg:deb/debian/openssh-client@1:9.2p1-2%2Bdeb12u3?arch=amd64"


def test_deb_purl_namespace_follows_os_release():
    pkg = Package("deb", "bash", "5.2.21-2ubuntu4", arch="arm64")
    assert purl(pkg, "ubuntu", "24.04") == "pkg:deb/ubuntu/bash@5.2.21-2ubuntu4?arch=arm64&distro=ubuntu-24.04"


def test_pypi_purl_is_lowercase_with_dashes_and_encodes_local_versions():
    assert purl(Package("pypi", "Typing_Extensions", "4.12.2")) == "pkg:pypi/typing-extensions@4.12.2"
    assert purl(Package("pypi", "torch", "2.4.0+cu121")) == "pkg:pypi/torch@2.4.0%2Bcu121"


def test_generic_and_debian_source_purls():
    assert purl(Package("generic", "openmpi", "4.1.4")) == "pkg:generic/openmpi@4.1.4"
    assert debian_source_purl("openmpi", "4.1.4-3") == "pkg:deb/debian/openmpi@4.1.4-3?arch=source"


def test_upstream_version_drops_epoch_and_revision():
    assert upstream_version("4.1.4-3") == "4.1.4"
    assert upstream_version("1:9.2p1-2+deb12u3") == "9.2p1"
    assert upstream_version("2.15.2") == "2.15.2"


# -- CycloneDX ------------------------------------------------------------------------------

def test_cyclonedx_required_fields_and_image_identity():
    doc = to_cyclonedx(inventory())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5" and doc["version"] == 1
    assert doc["serialNumber"] == f"urn:uuid:{uuid.uuid5(NAMESPACE, HASH_A)}"
    assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        doc["serialNumber"])
    image = doc["metadata"]["component"]
    assert image["type"] == "container" and image["name"] == "dlenv/demo" and image["version"] == HASH_A
    props = {p["name"]: p["value"] for p in image["properties"]}
    assert props["org.dlenv.content-hash"] == HASH_A and props["org.dlenv.component.openmpi"] == "4.1.4"
    assert doc["metadata"]["tools"]["components"] == [{"type": "application", "name": "dlenv", "version": __version__}]
    for comp in doc["components"]:
        assert {"type", "bom-ref", "name", "version", "purl"} <= comp.keys()


def test_cyclonedx_has_no_time_and_no_image_id_unless_asked():
    inv = inventory()
    text = render_json(to_cyclonedx(inv))
    assert "timestamp" not in json.loads(text)["metadata"]
    assert inv.image_id not in text and inv.image not in text
    stamped = to_cyclonedx(inv, timestamp="2030-01-02T03:04:05Z")
    assert stamped["metadata"]["timestamp"] == "2030-01-02T03:04:05Z"
    assert list(stamped["metadata"])[0] == "timestamp"


def test_cyclonedx_components_sorted_by_ecosystem_then_name_with_unique_refs():
    doc = to_cyclonedx(inventory())
    purls = [c["purl"] for c in doc["components"]]
    assert purls == [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64&distro=debian-12",
        "pkg:deb/debian/openssh-client@1:9.2p1-2%2Bdeb12u3?arch=amd64&distro=debian-12",
        "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64&distro=debian-12",
        "pkg:pypi/nvidia-cublas-cu12@12.6.4.1",
        "pkg:pypi/pip@23.0.1",
        "pkg:pypi/six@1.16.0",
        "pkg:pypi/typing-extensions@4.12.2",
        "pkg:generic/openmpi@4.1.4",
    ]
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(set(refs)) == len(refs)
    image_deps = doc["dependencies"][0]
    assert image_deps["ref"] == "image" and set(image_deps["dependsOn"]) == set(refs)


def test_cyclonedx_python_location_and_compiled_source_pedigree():
    doc = to_cyclonedx(inventory())
    by_name = {c["name"]: c for c in doc["components"]}
    cublas = {p["name"]: p["value"] for p in by_name["nvidia-cublas-cu12"]["properties"]}
    assert cublas["dlenv:location"] == "/opt/nvidia/cuda"
    ompi = by_name["openmpi"]
    assert ompi["pedigree"]["ancestors"][0]["purl"] == "pkg:deb/debian/openmpi@4.1.4-3?arch=source&distro=debian-12"
    props = {p["name"]: p["value"] for p in ompi["properties"]}
    assert props["dlenv:upstream-tarball"] == "openmpi_4.1.4.orig.tar.xz"
    assert "hashes" not in ompi          # no checksum is invented


def test_one_distribution_in_two_places_gets_two_components():
    pkgs = [Package("pypi", "nvidia-cuda-runtime-cu12", "12.6.77", location="/opt/nvidia/cuda"),
            Package("pypi", "nvidia-cuda-runtime-cu12", "12.6.77", location=VENV_SITE)]
    doc = to_cyclonedx(inventory(pkgs))
    assert len(doc["components"]) == 2
    assert len({c["bom-ref"] for c in doc["components"]}) == 2


def test_sboms_are_deterministic_whatever_the_collection_order():
    a = inventory(packages())
    b = inventory(list(reversed(packages())) + packages()[:2])   # other order, duplicates
    assert render_json(to_cyclonedx(a)) == render_json(to_cyclonedx(b))
    assert render_json(to_spdx(a)) == render_json(to_spdx(b))
    # The image reference and image id (which differ between builds of one lock) change nothing.
    c = make_inventory(name=a.name, content_hash=a.content_hash, labels=a.labels, packages=a.packages,
                         os_id="debian", os_version="12", image="elsewhere:tag", image_id="sha256:" + "0" * 64)
    assert render_json(to_cyclonedx(a)) == render_json(to_cyclonedx(c))
    assert render_json(to_spdx(a)) == render_json(to_spdx(c))


def test_serial_and_namespace_follow_the_content_hash():
    a, b = inventory(), inventory(content_hash=HASH_B)
    assert to_cyclonedx(a)["serialNumber"] != to_cyclonedx(b)["serialNumber"]
    assert to_spdx(a)["documentNamespace"] != to_spdx(b)["documentNamespace"]


# -- SPDX -----------------------------------------------------------------------------------

def test_spdx_required_fields():
    doc = to_spdx(inventory())
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["dataLicense"] == "CC0-1.0"
    assert doc["SPDXID"] == "SPDXRef-DOCUMENT"
    assert doc["name"] == f"dlenv/demo@{HASH_A[:16]}"
    assert re.fullmatch(r"https://\S+-[0-9a-f-]{36}", doc["documentNamespace"]) and "#" not in doc["documentNamespace"]
    assert doc["creationInfo"]["creators"] == [f"Tool: dlenv-{__version__}"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["creationInfo"]["created"])
    ids = [p["SPDXID"] for p in doc["packages"]]
    assert len(set(ids)) == len(ids)
    for pkg in doc["packages"]:
        assert re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", pkg["SPDXID"]), pkg["SPDXID"]
        assert pkg["name"] and pkg["downloadLocation"] == "NOASSERTION" and pkg["filesAnalyzed"] is False
    for rel in doc["relationships"]:
        assert rel["spdxElementId"] in ids + ["SPDXRef-DOCUMENT"] and rel["relatedSpdxElement"] in ids


def test_spdx_packages_carry_purls_and_the_image_is_described():
    doc = to_spdx(inventory())
    image = doc["packages"][0]
    assert image["SPDXID"] == "SPDXRef-Image" and image["versionInfo"] == HASH_A
    assert image["primaryPackagePurpose"] == "CONTAINER"
    assert doc["relationships"][0] == {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                                       "relatedSpdxElement": "SPDXRef-Image"}
    locators = {ref["referenceLocator"] for p in doc["packages"] for ref in p.get("externalRefs", [])
                if ref["referenceType"] == "purl" and ref["referenceCategory"] == "PACKAGE-MANAGER"}
    assert "pkg:pypi/six@1.16.0" in locators and "pkg:generic/openmpi@4.1.4" in locators
    contains = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == len(packages())
    generated = [r for r in doc["relationships"] if r["relationshipType"] == "GENERATED_FROM"]
    assert len(generated) == 1


def test_spdx_created_is_the_lock_date_not_the_clock():
    inv = inventory()
    assert to_spdx(inv)["creationInfo"]["created"] == "2025-01-01T00:00:00Z"   # base recipe epoch 1735689600
    recipe = dict(inv.labels, **{"org.dlenv.base-recipe": "trixie/minbase/1767225600"})
    assert to_spdx(inventory(labels=recipe))["creationInfo"]["created"] == "2026-01-01T00:00:00Z"
    bare = {k: v for k, v in inv.labels.items() if k != "org.dlenv.base-recipe"}
    from builder.plan.pins import DEFAULT_EPOCH
    assert to_spdx(inventory(labels=bare))["creationInfo"]["created"] == format_time(DEFAULT_EPOCH)
    assert to_spdx(inv, created="2031-05-06T07:08:09Z")["creationInfo"]["created"] == "2031-05-06T07:08:09Z"


# -- diff -----------------------------------------------------------------------------------

def test_diff_added_removed_changed_and_labels():
    a = inventory(packages(), HASH_A, "demo")
    b_pkgs = [p for p in packages() if p.name != "pip"]                         # pip removed
    b_pkgs = [Package("pypi", "six", "1.17.0", location=VENV_SITE) if p.name == "six" else p for p in b_pkgs]
    b_pkgs.append(Package("pypi", "numpy", "1.26.4", location=VENV_SITE))     # numpy added
    b = inventory(b_pkgs, HASH_B, "demo2")
    d = diff(a, b)
    assert [(c.ecosystem, c.name, c.after) for c in d.added] == [("pypi", "numpy", (("1.26.4", VENV_SITE),))]
    assert [(c.name, c.before) for c in d.removed] == [("pip", (("23.0.1", VENV_SITE),))]
    assert [(c.name, c.before[0][0], c.after[0][0]) for c in d.changed] == [("six", "1.16.0", "1.17.0")]
    assert {lc.label: (lc.a, lc.b) for lc in d.labels} == {
        "org.dlenv.content-hash": (HASH_A, HASH_B), "org.dlenv.stack": ("demo", "demo2")}
    assert not d.identical and d.summary() == "1 added, 1 removed, 1 changed, 2 label(s) differ"
    data = d.to_json()
    assert data["identical"] is False and data["added"][0]["b"] == [{"version": "1.26.4", "where": VENV_SITE}]
    assert json.loads(json.dumps(data)) == data


def test_diff_of_an_inventory_with_itself_is_empty():
    d = diff(inventory(), inventory())
    assert d.identical and not (d.added or d.removed or d.changed or d.labels)
    assert d.summary() == "no differences"


def test_diff_keys_python_names_canonically_and_sees_moves():
    a = inventory([Package("pypi", "Cython", "3.0.12", location=VENV_SITE)])
    b = inventory([Package("pypi", "cython", "3.0.12", location="/opt/nvidia/cuda")])
    d = diff(a, b)
    assert not d.added and not d.removed
    assert [(c.before, c.after) for c in d.changed] == [((("3.0.12", VENV_SITE),), (("3.0.12", "/opt/nvidia/cuda"),))]


def test_diff_sees_debian_architecture_and_ignores_non_dlenv_labels():
    a = inventory([Package("deb", "libc6", "2.36-9", arch="amd64")])
    lab = dict(a.labels, **{"org.opencontainers.image.title": "other"})
    b = inventory([Package("deb", "libc6", "2.36-9", arch="arm64")], labels=lab)
    d = diff(a, b)
    assert [c.name for c in d.changed] == ["libc6"] and d.labels == ()


# -- the collector's output -----------------------------------------------------------------

COLLECTED = """\
### os
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
ID=debian
VERSION_ID="12"
### dpkg
python3\t3.11.2-1+b1\tamd64\tii 
oldpkg\t1.0\tamd64\trc 
libc6\t2.36-9+deb12u9\tamd64\tii 
### python
{"name": "pip", "version": "23.0.1", "location": "/opt/venv/lib/python3.11/site-packages"}
{"name": "nvidia-nccl-cu12", "version": "2.21.5", "location": "/opt/nvidia/nccl"}
{"name": "nvidia-nccl-cu12", "version": "2.21.5", "location": "/opt/nvidia/nccl"}
### ompi_info
Open MPI v4.1.4
### end
"""


def attrs(lab):
    return {"Id": "sha256:" + "e" * 64, "RepoTags": ["dlenv/demo:latest"], "Config": {"Labels": lab}}


def test_inventory_from_output(fake):
    fake.component("openmpi", group="compile", versions={"4.1.4": {"vars": {"debian_source": "4.1.4-3"}}},
                   default="4.1.4", prefix="/opt/openmpi")
    fake.component("python", group="system", versions={"3.11": {}}, default="3.11")
    inv = inventory_from_output(COLLECTED, attrs(labels(HASH_A, "demo", python="3.11", openmpi="4.1.4")),
                                  image="dlenv/demo:latest", catalog=fake.catalog)
    assert inv.name == "dlenv/demo" and inv.content_hash == HASH_A
    assert (inv.os_id, inv.os_version) == ("debian", "12")
    assert [(p.ecosystem, p.name) for p in inv.packages] == [
        ("deb", "libc6"), ("deb", "python3"), ("pypi", "nvidia-nccl-cu12"), ("pypi", "pip"), ("generic", "openmpi")]
    ompi = inv.packages[-1]
    assert (ompi.version, ompi.location) == ("4.1.4", "/opt/openmpi")
    assert ompi.prop("dlenv:reported-version") == "Open MPI v4.1.4"
    assert ompi.prop("dlenv:debian-source").startswith("openmpi 4.1.4-3 ")
    assert ompi.prop("dlenv:upstream-tarball") == "openmpi_4.1.4.orig.tar.xz"
    assert "not recorded in the image" in ompi.prop("dlenv:upstream-tarball-checksum")


def test_components_unknown_to_the_catalog_or_without_a_debian_source_are_not_sources(fake):
    fake.component("openmpi", group="compile", versions={"4.1.5": {"vars": {"debian_source": "4.1.5-1"}}},
                   default="4.1.5")
    fake.component("python", group="system", versions={"3.11": {}}, default="3.11")
    inv = inventory_from_output(COLLECTED, attrs(labels(HASH_A, "demo", python="3.11", openmpi="4.1.4",
                                                          mystery="1.0")), catalog=fake.catalog)
    assert not [p for p in inv.packages if p.ecosystem == "generic"]


def test_an_image_dlenv_did_not_build_is_named_by_its_repository_and_id(fake):
    foreign = {"Id": "sha256:" + "e" * 64, "RepoTags": ["debian:bookworm"], "Config": {"Labels": None}}
    inv = inventory_from_output(COLLECTED, foreign, image="debian:bookworm", catalog=fake.catalog)
    assert inv.name == "debian"
    assert inv.content_hash == "sha256:" + "e" * 64
    assert to_spdx(inv)["packages"][0]["comment"] == "not built by dlenv"


@pytest.mark.parametrize("broken", [COLLECTED.replace("### end\n", ""),
                                    COLLECTED.replace("### ompi_info", "### failed python\n### ompi_info"),
                                    COLLECTED.replace("### python", "### failed dpkg-query\n### python")])
def test_an_incomplete_collection_is_an_error_not_a_short_sbom(broken, fake):
    with pytest.raises(EngineError):
        inventory_from_output(broken, attrs({}), image="x:y", catalog=fake.catalog)


# -- the commands, with the collection replaced ----------------------------------------------

@pytest.fixture
def fake_engine(monkeypatch):
    """`engine.connect` and `image_for` stubbed; `collect` returns the inventory named by the ref."""
    from builder.cli import sbom as cli_sbom
    from builder.engine import dockerapi as engine
    images = {"demo:a": inventory(), "demo:b": inventory(
        [p for p in packages() if p.name != "pip"] + [Package("pypi", "six", "1.17.0", location=VENV_SITE)],
        HASH_B, "demo")}
    monkeypatch.setattr(engine, "connect", lambda *a, **k: object())
    monkeypatch.setattr(cli_sbom, "image_for", lambda client, target: target)
    monkeypatch.setattr(engine_inventory, "collect", lambda client, image, **kw: images[image])
    return images


def test_sbom_command_prints_the_deterministic_document(cli, fake_engine):
    result = cli("sbom", "demo:a")
    assert result.exit_code == 0, result.output
    assert result.stdout == render_json(to_cyclonedx(fake_engine["demo:a"]))
    spdx = cli("sbom", "demo:a", "--format", "spdx")
    assert spdx.exit_code == 0 and json.loads(spdx.stdout)["spdxVersion"] == "SPDX-2.3"


def test_sbom_command_writes_a_file_and_stamps_time_only_when_asked(cli, fake_engine, tmp_path):
    out = tmp_path / "bom.json"
    result = cli("sbom", "demo:a", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == render_json(to_cyclonedx(fake_engine["demo:a"]))
    assert result.stdout.startswith(f"wrote {out}: CycloneDX 1.5 SBOM of dlenv/demo {HASH_A[:16]}")
    stamped = cli("sbom", "demo:a", "--timestamp", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert json.loads(stamped.stdout)["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    spdx = cli("sbom", "demo:a", "--format", "spdx", "--timestamp", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert json.loads(spdx.stdout)["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    bad = cli("sbom", "demo:a", "--timestamp", env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert bad.exit_code == 1 and "SOURCE_DATE_EPOCH" in bad.stderr


def test_diff_command_table_json_and_exit_code(cli, fake_engine):
    table = cli("diff", "demo:a", "demo:b")
    assert table.exit_code == 0, table.output
    assert "removed" in table.stdout and "pip" in table.stdout and "1.16.0" in table.stdout
    assert "0 added, 1 removed, 1 changed, 1 label(s) differ" in table.stdout
    data = json.loads(cli("diff", "demo:a", "demo:b", "--json").stdout)
    assert [c["name"] for c in data["removed"]] == ["pip"]
    assert [c["name"] for c in data["changed"]] == ["six"]
    assert data["labels"] == [{"label": "org.dlenv.content-hash", "a": HASH_A, "b": HASH_B}]
    assert cli("diff", "demo:a", "demo:b", "--exit-code").exit_code == 1
    same = cli("diff", "demo:a", "demo:a", "--exit-code")
    assert same.exit_code == 0 and "no differences" in same.stdout


@pytest.mark.parametrize("command", ["sbom", "diff"])
def test_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and f" {command} [OPTIONS]" in result.stdout.splitlines()[0]


def test_image_for_tells_images_from_stacks(monkeypatch):
    from builder.engine import dockerapi as engine
    from builder.engine import images
    from builder.errors import DlenvError

    class Plan:
        hash_tag = "dlenv/python:0123456789abcdef"

    known = {"dlenv/other:latest", "9ccd54bad4af"}
    planned = []
    monkeypatch.setattr(engine, "image_attrs", lambda client, ref: {"Id": ref} if ref in known else None)
    monkeypatch.setattr(images, "promoted_image", lambda client, p: {"Id": "x"})

    def fake_plan(ref):
        planned.append(ref)
        if ref == "nosuch":
            raise DlenvError("unknown stack 'nosuch'")
        return Plan()

    monkeypatch.setattr(images, "plan", fake_plan)
    assert images.image_for(None, "dlenv/other:latest") == "dlenv/other:latest"
    assert images.image_for(None, "9ccd54bad4af") == "9ccd54bad4af"          # an image id, not a stack
    assert images.image_for(None, "python") == Plan.hash_tag                 # a catalog stack
    with pytest.raises(DlenvError, match="unknown stack"):
        images.image_for(None, "nosuch")                                      # neither: the stack's error
    assert planned == ["python", "nosuch"]
    with pytest.raises(EngineError, match="image dlenv/gone:1 not found"):
        images.image_for(None, "dlenv/gone:1")
    monkeypatch.setattr(images, "promoted_image", lambda client, p: None)
    with pytest.raises(EngineError, match="does not exist"):
        images.image_for(None, "python")


def test_sbom_into_a_missing_folder_is_one_line(cli, fake_engine, tmp_path):
    result = cli("sbom", "demo:a", "-o", tmp_path / "no" / "such" / "bom.json")
    assert result.exit_code == 1 and "cannot write" in result.stderr and "Traceback" not in result.output


def test_a_locked_image_names_its_source_tarball_and_checksum(fake):
    fake.component("openmpi", group="compile", versions={"4.1.4": {"vars": {"debian_source": "4.1.4-3"}}},
                   default="4.1.4", prefix="/opt/openmpi")
    fake.component("python", group="system", versions={"3.11": {}}, default="3.11")
    lab = labels(HASH_A, "demo", python="3.11", openmpi="4.1.4")
    lab["org.dlenv.source.openmpi"] = f"openmpi=4.1.4-3 openmpi_4.1.4.orig.tar.xz sha256:{'d' * 64}"
    inv = inventory_from_output(COLLECTED, attrs(lab), image="dlenv/demo:latest", catalog=fake.catalog)
    ompi = inv.packages[-1]
    assert ompi.prop("dlenv:upstream-tarball-checksum") == f"sha256:{'d' * 64}"
    assert ompi.prop("dlenv:debian-source").startswith("openmpi 4.1.4-3 (image label org.dlenv.source.openmpi")
    entry = next(c for c in to_cyclonedx(inv)["components"] if c["name"] == "openmpi")
    assert entry["hashes"] == [{"alg": "SHA-256", "content": "d" * 64}]
    assert entry["pedigree"]["ancestors"][0]["version"] == "4.1.4-3"
    spdx = to_spdx(inv)
    src = next(p for p in spdx["packages"] if p.get("primaryPackagePurpose") == "SOURCE")
    assert src["checksums"] == [{"algorithm": "SHA256", "checksumValue": "d" * 64}]
    assert src["packageFileName"] == "openmpi_4.1.4.orig.tar.xz"
