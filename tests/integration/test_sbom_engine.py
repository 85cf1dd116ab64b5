"""Real engine: `dlenv sbom` of the catalog's python image (reproducible bytes, the image's content
hash, python3 from Debian and pip from PyPI) and `dlenv diff` against a small stack that adds six.

The python image is built with the real CLI when missing and then kept, like test_shell_run's
(CI's cleanup removes the dlenv/* tags a run created); `latest` is put back where it was. The small
stack is named `dlenv-itest-sbom`; its image and its build stage are removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# `sbom` and `diff` are registered in builder/cli.py; this runner adds them when they are not (yet).
_RUNNER = ("import sys; from builder.cli.app import main; from builder.cli.sbom import diff_cmd, sbom; "
           "'sbom' in main.commands or main.add_command(sbom); "
           "'diff' in main.commands or main.add_command(diff_cmd, 'diff'); "
           "sys.argv[0] = 'dlenv'; main()")


def _env(state: Path) -> dict:
    return dict(os.environ, NO_COLOR="1", COLUMNS="200", DLENV_STATE_DIR=str(state))


def dlenv(state: Path, *args, timeout=300, check=True):
    """The CLI in a subprocess, with `sbom` and `diff` available."""
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, args)], capture_output=True, text=True,
                          env=_env(state), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlenv {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _image_id(client, ref):
    try:
        return client.images.get(ref).id
    except Exception:  # noqa: BLE001
        return None


@pytest.fixture(scope="module")
def python_image(docker_client, tmp_path_factory, dlenv_path):
    """The promoted image of the catalog's `python` stack (built here when missing)."""
    state = tmp_path_factory.mktemp("sbom-state")
    show = json.loads(subprocess.run([dlenv_path, "show", "python", "--json"], capture_output=True, text=True,
                                     env=_env(state), check=True).stdout)
    tag, latest = show["image"], "dlenv/python:latest"
    had_latest = _image_id(docker_client, latest)
    build = subprocess.run([dlenv_path, "build", "python"], capture_output=True, text=True, env=_env(state),
                           timeout=1800)
    assert build.returncode == 0, build.stdout + build.stderr
    yield {"tag": tag, "content_hash": show["content_hash"], "state": state, "dlenv": dlenv_path}
    # `build` moves `latest`: put it back where it was.
    if had_latest and _image_id(docker_client, latest) != had_latest:
        docker_client.api.tag(had_latest, "dlenv/python", "latest", force=True)


def _remove_build_stage(client, before: set, marker: str) -> None:
    """The untagged build stage that this test's build left (its last step installs `marker`)."""
    import docker.errors
    for image in client.images.list(filters={"dangling": True}):
        if image.id in before:
            continue
        try:
            if marker in (client.api.history(image.id)[0].get("CreatedBy") or ""):
                client.images.remove(image.id, noprune=False)
        except docker.errors.APIError:
            pass            # in use (another build reuses it as cache): leave it


def _components(doc: dict) -> dict:
    return {(c["purl"].split("/")[0], c["name"]): c for c in doc["components"]}


def test_sbom_of_the_python_image_is_reproducible(docker_client, python_image, tmp_path):
    state = python_image["state"]
    first = dlenv(state, "sbom", "python").stdout
    second = dlenv(state, "sbom", python_image["tag"]).stdout     # by image reference: the same bytes
    assert first == second
    doc = json.loads(first)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert doc["metadata"]["component"]["name"] == "dlenv/python"
    assert doc["metadata"]["component"]["version"] == python_image["content_hash"]
    assert "timestamp" not in doc["metadata"]
    comps = _components(doc)
    python3 = comps[("pkg:deb", "python3")]
    assert python3["purl"].startswith("pkg:deb/debian/python3@") and "arch=" in python3["purl"]
    pip = comps[("pkg:pypi", "pip")]
    assert pip["purl"].startswith("pkg:pypi/pip@")
    assert {p["name"]: p["value"] for p in pip["properties"]}["dlenv:location"].startswith("/opt/venv/")
    assert not any(c["purl"].startswith("pkg:generic/") for c in doc["components"])   # nothing compiled
    image_id = docker_client.images.get(python_image["tag"]).id
    assert image_id not in first and image_id.split(":")[1][:12] not in first
    assert not docker_client.containers.list(all=True, filters={"label": "org.dlenv.role=sbom"})

    out_a, out_b = tmp_path / "a.spdx.json", tmp_path / "b.spdx.json"
    dlenv(state, "sbom", "python", "--format", "spdx", "-o", out_a)
    dlenv(state, "sbom", "python", "--format", "spdx", "-o", out_b)
    assert out_a.read_bytes() == out_b.read_bytes()
    spdx = json.loads(out_a.read_text())
    assert spdx["spdxVersion"] == "SPDX-2.3" and spdx["packages"][0]["versionInfo"] == python_image["content_hash"]
    assert "python3" in {p["name"] for p in spdx["packages"]}


def test_diff_against_a_stack_that_adds_six(docker_client, python_image, tmp_path):
    state = python_image["state"]
    stack = tmp_path / "itest-sbom.yaml"
    stack.write_text(textwrap.dedent("""\
        schema: 1
        name: dlenv-itest-sbom
        extends: python
        python_packages: ["six==1.16.0"]
    """))
    repo = "dlenv/dlenv-itest-sbom"
    dangling = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    try:
        build = subprocess.run([python_image["dlenv"], "build", str(stack)], capture_output=True, text=True,
                               env=_env(state), timeout=1800)
        assert build.returncode == 0, build.stdout + build.stderr
        child = json.loads(subprocess.run([python_image["dlenv"], "show", str(stack), "--json"], capture_output=True,
                                          text=True, env=_env(state), check=True).stdout)

        data = json.loads(dlenv(state, "diff", "python", child["image"], "--json").stdout)
        assert [(c["ecosystem"], c["name"], c["b"][0]["version"]) for c in data["added"]] == [("pypi", "six", "1.16.0")]
        assert data["removed"] == [] and data["changed"] == []
        labels = {c["label"]: (c["a"], c["b"]) for c in data["labels"]}
        assert labels["org.dlenv.content-hash"] == (python_image["content_hash"], child["content_hash"])
        assert labels["org.dlenv.stack"] == ("python", "dlenv-itest-sbom")
        assert data["identical"] is False

        table = dlenv(state, "diff", "python", str(stack))     # a stack file: its promoted image
        assert "six" in table.stdout and "1 added, 0 removed, 0 changed" in table.stdout
        assert dlenv(state, "diff", "python", child["image"], "--exit-code", check=False).returncode == 1
        same = dlenv(state, "diff", "python", python_image["tag"], "--exit-code", check=False)
        assert same.returncode == 0 and "no differences" in same.stdout
    finally:
        for image in docker_client.images.list(name=repo):
            for tag in image.tags:
                docker_client.images.remove(tag, noprune=False)
        _remove_build_stage(docker_client, dangling, "six==1.16.0")
    assert not docker_client.containers.list(all=True, filters={"label": "org.dlenv.role=sbom"})


def test_sbom_of_a_missing_stack_image_says_how_to_build_it(docker_client, python_image, tmp_path):
    stack = tmp_path / "never-built.yaml"
    stack.write_text("schema: 1\nname: dlenv-itest-sbom-never\nextends: python\nenv: {NEVER: \"1\"}\n")
    result = dlenv(python_image["state"], "sbom", str(stack), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr and "dlenv build" in result.stderr


def test_sbom_of_the_chainermn_image_lists_cuda_prefixes_and_open_mpi(docker_client, python_image):
    """Only where a chainermn image is present (the e2e tier builds it): no build here."""
    ref = "dlenv/chainermn:latest"
    if _image_id(docker_client, ref) is None:
        pytest.skip(f"{ref} is not built on this machine")
    doc = json.loads(dlenv(python_image["state"], "sbom", ref).stdout)
    comps = _components(doc)
    cublas = comps[("pkg:pypi", "nvidia-cublas-cu12")]
    assert {p["name"]: p["value"] for p in cublas["properties"]}["dlenv:location"] == "/opt/nvidia/cuda"
    ompi = comps[("pkg:generic", "openmpi")]
    assert ompi["purl"].startswith("pkg:generic/openmpi@")
    props = {p["name"]: p["value"] for p in ompi["properties"]}
    assert ompi["version"] in props["dlenv:reported-version"]          # ompi_info in the image agrees
    assert ompi["pedigree"]["ancestors"][0]["purl"].startswith("pkg:deb/debian/openmpi@")
