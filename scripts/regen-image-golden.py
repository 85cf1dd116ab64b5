"""Write tests/golden/images/<stack>.buildah.json from the image dlenv's buildah storage holds for the
stack's content hash: its id (which must be the one the stack's lock records) and its layers with the
step that made each. The integration test compares a fresh machine's build with it and, when the id
differs, names the first layers (so the build steps) that differ.

    .venv/bin/python scripts/regen-image-golden.py chainer     (after `dlenv build chainer --engine buildah`)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.engine import buildah_store  # noqa: E402
from builder.pipeline.buildah_build import find  # noqa: E402
from builder.plan.plan import plan  # noqa: E402


def main(stack: str) -> int:
    bh = find()
    p = plan(stack)
    key = bh.key(p)
    want = (p.lock.images if p.lock else {}).get(key)
    got = buildah_store.image_id(bh.cli, p.hash_tag)
    if want is None or got != want:
        sys.exit(f"{p.hash_tag}: dlenv's buildah storage holds {got}, the lock records {want} ({key}); "
                 f"build it with `dlenv build {stack} --engine buildah --no-cache` first")
    doc = {"stack": stack, "content_hash": p.content_hash, "key": key, "id": got,
           "layers": buildah_store.layer_steps(bh.cli, p.hash_tag)}
    out = ROOT / "tests" / "golden" / "images" / f"{stack}.buildah.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)} ({got[:19]}, {len(doc['layers'])} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "chainer"))
