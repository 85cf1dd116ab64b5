"""The lock's `images` section (issue #17): round trip, outside every digest, one-line validation
errors, and the refusal of an image whose id is not the recorded one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from builder import paths
from builder.errors import ImageIdError, LockError
from builder.plan import lockfile as L
from builder.plan.lockimages import check_recorded, image_key, refusal, reproducible_status, reproducible_summary
from builder.plan.plan import plan

ID = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
KEY = "buildah-1.28/linux-amd64"


def _chainer_lock():
    return L.load(paths.stacks_dir() / "chainer.lock")


def test_key_is_engine_major_minor_and_arch():
    assert image_key("buildah", "1.28.2", "amd64") == KEY


def test_round_trip_and_not_in_any_digest(tmp_path):
    lock = dataclasses.replace(_chainer_lock(), images={})
    with_images = dataclasses.replace(lock, images={KEY: ID})
    text = L.dump(with_images)
    assert f"images:\n  {KEY}: {ID}\n" in text
    (tmp_path / "x.lock").write_text(text)
    back = L.load(tmp_path / "x.lock")
    assert back.images == {KEY: ID}
    assert back.digest == lock.digest and back.inputs_digest == lock.inputs_digest
    assert "images" not in back.pins_document()
    assert L.dump(dataclasses.replace(back, images={})) == L.dump(lock)


def test_catalog_content_hash_unchanged_by_images(tmp_path):
    p = plan("chainer")
    assert p.lock.images.get(KEY), "stacks/chainer.lock records the golden image id (CI reproduces it)"
    bare = tmp_path / "chainer.lock"
    bare.write_text(L.dump(dataclasses.replace(p.lock, images={})))
    assert L.load(bare).digest == p.lock.digest and L.load(bare).inputs_digest == p.lock.inputs_digest


@pytest.mark.parametrize("images, needle", [
    ([ID], "images: must be a mapping"),
    ({"buildah": ID}, "not an engine-version/os-arch key"),
    ({KEY: "sha256:xyz"}, "is not a sha256: image id"),
    ({KEY: 5}, "is not a sha256: image id"),
])
def test_bad_images_are_one_line(tmp_path, images, needle):
    text = L.dump(_chainer_lock()) + "images: " + repr(images).replace("'", '"') + "\n"
    (tmp_path / "x.lock").write_text(text)
    with pytest.raises(LockError) as err:
        L.load(tmp_path / "x.lock")
    line = err.value.one_line()
    assert needle in line and "\n" not in line and str(tmp_path / "x.lock") in line


def test_refusal_only_when_recorded_and_different():
    assert check_recorded({}, KEY, ID, "the image") == "unrecorded"
    assert check_recorded({KEY: ID}, KEY, ID, "the image") == "reproduced"
    assert check_recorded({"buildah-1.29/linux-amd64": OTHER}, KEY, ID, "the image") == "unrecorded"
    with pytest.raises(ImageIdError) as err:
        check_recorded({KEY: OTHER}, KEY, ID, "the pulled image")
    line = err.value.one_line()
    assert "\n" not in line and "not the lock's reproducible image" in line and KEY in line


def test_reproducible_status():
    assert reproducible_status({}, ID) == ("unrecorded", "")
    assert reproducible_status({KEY: ID}, ID) == ("reproduced", KEY)
    assert reproducible_status({KEY: OTHER}, ID) == ("differs", "")


def test_refusal_of_images_from_elsewhere():

    assert refusal({}, ID, "the image") is None
    assert refusal({KEY: ID}, ID, "the image") is None
    line = refusal({KEY: OTHER}, ID, "the image under r/x:1")
    assert line.startswith("the image under r/x:1 is sha256:abababab") and KEY in line and "\n" not in line


def test_verify_summary_is_one_line_per_status():

    yes = reproducible_summary({KEY: ID}, ID)
    no = reproducible_summary({KEY: OTHER}, ID)
    unknown = reproducible_summary({}, ID)
    assert (yes["status"], no["status"], unknown["status"]) == ("reproduced", "differs", "unrecorded")
    assert yes["line"].startswith("reproducible: yes") and no["line"].startswith("reproducible: no")
    assert all("\n" not in s["line"] for s in (yes, no, unknown))


def test_image_goldens_match_the_ids_their_locks_record():
    """tests/golden/images/<stack>.buildah.json (the layers of the golden image, for the integration
    test's diagnosis) and the stack's lock name the same image: regenerate both together."""
    root = Path(__file__).resolve().parents[2]
    goldens = sorted((root / "tests" / "golden" / "images").glob("*.buildah.json"))
    assert goldens, "no image golden: stacks/chainer.lock's id must have one"
    for golden in goldens:
        doc = json.loads(golden.read_text())
        lock = yaml.safe_load((root / "stacks" / f"{doc['stack']}.lock").read_text())
        assert lock.get("images", {}).get(doc["key"]) == doc["id"], golden.name
        assert doc["layers"] and all(layer["diff_id"].startswith("sha256:") for layer in doc["layers"])
