"""Real engine: a bundle written by `dlenv vendor` is the only source a build needs.

`dlenv vendor python -o B` (the catalog's smallest stack), then `dlenv build python --vendor B
--no-cache` with a dead Debian mirror, a dead pip index and an empty state folder: the base is
bootstrapped by mmdebstrap from dlenv's repository of the bundle's files (the test hides the base
image for the build and puts it back afterwards), the stack is built and verified.

The stack's tags and the base's are put back where they were, and the images the test made are removed.
"""

from __future__ import annotations

import json

import docker.errors
import pytest

DEAD = {"DLENV_DEBIAN_MIRROR": "http://127.0.0.1:9/debian", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "", "DLENV_DEBIAN_SNAPSHOT": "", "http_proxy": "", "https_proxy": ""}
BACKUP = "dlenv-itest/vendor-base-backup:latest"


def _image_id(client, ref: str):
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


class Restore:
    """Puts the tags the test moves (the stack's hash and latest tags, the base) back where they were and
    removes the images the test made: the new stack image, the base it bootstrapped and the untagged
    images built on that base (the build stage). Tags other processes set meanwhile are left alone."""

    def __init__(self, client):
        self.client = client
        self.before: dict = {}

    def watch(self, *refs: str) -> None:
        for ref in refs:
            self.before.setdefault(ref, _image_id(self.client, ref))

    def hide(self, ref: str) -> None:
        """Take `ref` away for the test (kept under a backup tag, put back afterwards)."""
        self.watch(ref)
        if self.before[ref]:
            self.client.api.tag(self.before[ref], *BACKUP.split(":"))
            self.client.images.remove(ref, noprune=True)

    def undo(self) -> None:
        made = set()
        for ref, old in self.before.items():
            now = _image_id(self.client, ref)
            if now != old and now is not None:
                made.add(now)
                self.client.images.remove(ref, noprune=True)
            if old and now != old:
                self.client.api.tag(old, *ref.rsplit(":", 1))
        if _image_id(self.client, BACKUP):
            self.client.images.remove(BACKUP, noprune=True)
        images = self.client.images.list(all=True)
        parent = {i.id: i.attrs.get("Parent") or None for i in images}

        def ours(image_id):
            while image_id:
                if image_id in made:
                    return True
                image_id = parent.get(image_id)
            return False
        for image in sorted(images, key=lambda i: i.attrs.get("Created", ""), reverse=True):   # children first
            if not image.tags and ours(image.id):
                try:
                    self.client.images.remove(image.id, noprune=True)
                except (docker.errors.APIError, docker.errors.ImageNotFound):
                    pass      # in use by another process's container or build: left alone


@pytest.fixture
def restore_images(docker_client):
    keeper = Restore(docker_client)
    yield keeper
    keeper.undo()


def test_a_bundle_alone_builds_the_stack_with_every_source_dead(docker_client, run_dlenv, tmp_path,
                                                                 restore_images):
    bundle = tmp_path / "B"
    vendored = run_dlenv("vendor", "python", "-o", str(bundle), "--json",
                         env={"DLENV_STATE_DIR": str(tmp_path / "vendor-state")})
    assert vendored.returncode == 0, vendored.stderr
    summary = json.loads(vendored.stdout)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert summary["counts"]["deb"] == len(manifest["files"]) > 100
    assert summary["counts"]["source"] == 0 and summary["counts"]["python"] == 0   # python has neither
    assert (bundle / "debian" / "Packages").is_file() and (bundle / "debian" / "Release").is_file()
    show = json.loads(run_dlenv("show", "python", "--json", check=True).stdout)
    assert manifest["content_hash"] == show["content_hash"]

    # No base image: the build bootstraps it, from the bundle too.
    dockerfile = run_dlenv("render", "python", check=True).stdout
    base_ref = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert base_ref.startswith("dlenv/base:")
    restore_images.watch(show["image"], "dlenv/python:latest")
    restore_images.hide(base_ref)

    built = run_dlenv("build", "python", "--vendor", str(bundle), "--no-cache", "--no-pull",
                      env={**DEAD, "DLENV_STATE_DIR": str(tmp_path / "empty-state"),
                           "DLENV_STORE_DIR": str(tmp_path / "empty-state" / "store")})
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"0 in the store, {len(manifest['files'])} from the bundle" in built.stderr
    assert "bootstrapping Debian bookworm" in built.stderr
    assert f"built {show['image']}" in built.stdout
    assert "refreshed the lock" not in built.stderr
