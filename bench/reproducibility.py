"""How reproducible is a locked build? Figures, not assertions.

1. The base: bootstrap the stack's locked base twice (mmdebstrap, same suite, SOURCE_DATE_EPOCH and
   pinned packages) and compare the rootfs tarballs' sha256 (recorded as an image label).
2. The image: build the stack's lock twice with --no-cache and compare
   - the SBOMs (CycloneDX JSON, byte for byte),
   - a file-content manifest of the runtime image (path, type, mode, owner, size, sha256 of every
     regular file, symlink target), listing every path that differs and the rule that explains it,
   - the layers (diff IDs): which are identical, and where identity stops.

    .venv/bin/python bench/reproducibility.py chainermn [--skip-base] [--skip-images]

Prints a table and writes bench/results/reproducibility-<stack>.json. Two chainermn builds take
about 20 minutes on 2 cores; the first build's image is kept as <repo>:repro-a while the second runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Paths whose bytes may differ between two builds of one lock, and why. Anything that differs and
# matches no rule is reported as unexplained.
EXPLAINED = [
    ("*.pyc", "bytecode that pip writes at install time embeds the source file's mtime (the install time)"),
    ("etc/ld.so.cache", "ldconfig's cache: entry order follows directory reads"),
    ("var/cache/ldconfig/aux-cache", "ldconfig's auxiliary cache holds file inode data and ctimes"),
    ("var/log/*", "apt, dpkg and alternatives logs carry the time of the build"),
    ("var/cache/debconf/*", "debconf's databases keep templates in hash order"),
    ("var/lib/dpkg/*-old", "dpkg's backup of its own database, written at an install-time-dependent point"),
    ("etc/shadow*", "the last-password-change field is the day of the build"),
    ("etc/passwd-", "backup written by useradd"),
    ("etc/group-", "backup written by useradd"),
    ("etc/gshadow*", "backup written by useradd"),
    ("etc/subuid*", "written by useradd"),
    ("etc/subgid*", "written by useradd"),
    ("var/lib/apt/extended_states", "apt's auto-installed marks, ordered by resolution"),
]


def explain(path: str) -> str | None:
    for pattern, why in EXPLAINED:
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(os.path.basename(path), pattern):
            return why
    return None


MTIMES: dict = {}   # image -> path -> mtime: not part of the manifest, compared on its own


def manifest(client, image: str) -> dict:
    """path -> (type, mode, uid, gid, size, sha256 or link target), from `docker export` streamed."""
    container = client.containers.create(image, command=["true"])
    out: dict = {}
    try:
        stream = container.export(chunk_size=1 << 20)

        class Reader:
            def __init__(self, chunks):
                self.chunks, self.buf = iter(chunks), b""

            def read(self, n=-1):
                while n < 0 or len(self.buf) < n:
                    try:
                        self.buf += next(self.chunks)
                    except StopIteration:
                        break
                if n < 0:
                    data, self.buf = self.buf, b""
                else:
                    data, self.buf = self.buf[:n], self.buf[n:]
                return data

        with tarfile.open(fileobj=Reader(stream), mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name.startswith(("proc/", "sys/", "dev/")) or name in (".dockerenv", "etc/hostname", "etc/hosts",
                                                                            "etc/resolv.conf"):
                    continue  # made by the engine for every container, not part of the image
                entry = [member.type.decode() if isinstance(member.type, bytes) else str(member.type),
                         oct(member.mode), member.uid, member.gid, member.size]
                if member.isfile():
                    digest = hashlib.sha256()
                    handle = tar.extractfile(member)
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                    entry.append(digest.hexdigest())
                elif member.issym() or member.islnk():
                    entry.append(member.linkname)
                else:
                    entry.append("")
                out[name] = entry
                MTIMES.setdefault(image, {})[name] = member.mtime
    finally:
        container.remove(force=True)
    return out


def compare_manifests(a: dict, b: dict) -> dict:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    changed = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    explained: dict = {}
    unexplained = []
    for path in only_a + only_b + changed:
        why = explain(path)
        if why:
            explained.setdefault(why, []).append(path)
        else:
            unexplained.append(path)
    return {"paths": len(a), "identical": len(set(a) & set(b)) - len(changed), "only_in_first": only_a,
            "only_in_second": only_b, "changed": changed,
            "explained": {why: {"count": len(paths), "examples": paths[:5]} for why, paths in explained.items()},
            "unexplained": unexplained}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack")
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args()

    import docker

    from builder.engine import base as base_mod
    from builder.pipeline import build as build_mod
    from builder.plan.plan import plan as make_plan
    from builder.engine.inventory import collect
    from builder.outputs.sbom.cyclonedx import to_cyclonedx
    from builder.outputs.sbom.model import render_json

    client = docker.from_env(timeout=3600)
    p = make_plan(args.stack)
    if p.lock_state != "locked":
        raise SystemExit(f"{args.stack}: lock is {p.lock_state}; run `dlenv lock {args.stack}` first")
    figures: dict = {"stack": args.stack, "content_hash": p.content_hash, "lock": p.lock.digest,
                     "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}",
                     "date": time.strftime("%Y-%m-%d")}

    if not args.skip_base and "image" not in p.resolved.base:
        sums = []
        for i in range(2):
            # Imported under a scratch name: re-importing the real base would give it a new image id
            # (docker import stamps a creation time) and cold-start every build layered on it.
            ref = f"dlenv/base-repro:{i + 1}"
            start = time.monotonic()
            base_mod.bootstrap(client, p.resolved.base, pins=p.context.base_pins, ref=ref)
            sums.append(base_mod.rootfs_sha256(client, ref))
            client.images.remove(ref)
            print(f"bootstrap {i + 1}: rootfs sha256 {sums[-1]} ({time.monotonic() - start:.0f}s)")
        figures["base"] = {"rootfs_sha256": sums, "identical": sums[0] == sums[1],
                           "lock_rootfs_sha256": p.lock.base.get("rootfs_sha256", ""),
                           "matches_lock": sums[0] == p.lock.base.get("rootfs_sha256", "")}

    if not args.skip_images:
        runs = []
        for i in range(2):
            start = time.monotonic()
            result = build_mod.build(p, client, verify=False, nocache=True)
            seconds = time.monotonic() - start
            attrs = client.api.inspect_image(result.image_id)
            inv = collect(client, result.image_id)
            doc = render_json(to_cyclonedx(inv))
            runs.append({"image_id": result.image_id, "seconds": round(seconds, 1),
                         "layers": attrs["RootFS"]["Layers"], "sbom": doc,
                         "manifest": manifest(client, result.image_id)})
            client.api.tag(result.image_id, p.repo, f"repro-{'ab'[i]}")
            print(f"build {i + 1}: {result.image_id[:19]} in {seconds:.0f}s, {len(runs[-1]['layers'])} layers")
        a, b = runs
        same_layers = [x == y for x, y in zip(a["layers"], b["layers"])]
        first_diff = same_layers.index(False) if False in same_layers else None
        history = client.api.history(a["image_id"])[::-1]
        steps = [h.get("CreatedBy", "")[:100] for h in history if h.get("Size", 0) or "COPY" in h.get("CreatedBy", "")]
        figures["images"] = {
            "seconds": [a["seconds"], b["seconds"]],
            "image_ids": [a["image_id"], b["image_id"]], "identical_image": a["image_id"] == b["image_id"],
            "sbom_identical": a["sbom"] == b["sbom"],
            "sbom_sha256": [hashlib.sha256(r["sbom"].encode()).hexdigest() for r in runs],
            "layers": len(a["layers"]), "identical_layers": sum(same_layers),
            "first_differing_layer": first_diff,
            "first_differing_step": steps[first_diff] if first_diff is not None and first_diff < len(steps) else None,
            "manifest": compare_manifests(a["manifest"], b["manifest"]),
            # Layer tarballs carry each file's mtime: the classic builder keeps the time a step wrote it.
            "paths_with_different_mtime": sum(1 for path, t in MTIMES.get(a["image_id"], {}).items()
                                              if MTIMES.get(b["image_id"], {}).get(path, t) != t),
        }
        for suffix in ("repro-a", "repro-b"):
            try:
                client.images.remove(f"{p.repo}:{suffix}", noprune=True)
            except docker.errors.APIError:
                pass

    out = ROOT / "bench" / "results" / f"reproducibility-{args.stack}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print()
    print(f"reproducibility of {args.stack} (lock {p.lock.digest[:16]}) on {figures['machine']}")
    if "base" in figures:
        base = figures["base"]
        print(f"  base rootfs, two bootstraps: {'identical' if base['identical'] else 'DIFFERENT'}"
              f" ({base['rootfs_sha256'][0][:16]}); same as the lock's: {base['matches_lock']}")
    if "images" in figures:
        im = figures["images"]
        m = im["manifest"]
        print(f"  builds: {im['seconds'][0]:.0f}s and {im['seconds'][1]:.0f}s (--no-cache)")
        print(f"  SBOM (CycloneDX): {'identical' if im['sbom_identical'] else 'DIFFERENT'}")
        print(f"  image id identical: {im['identical_image']}; layers identical: {im['identical_layers']}/{im['layers']}"
              + (f", first differing: #{im['first_differing_layer']} {im['first_differing_step']}"
                 if im["first_differing_layer"] is not None else ""))
        print(f"  files: {m['paths']} paths, {m['identical']} identical, {len(m['changed'])} changed, "
              f"{len(m['only_in_first']) + len(m['only_in_second'])} in one build only")
        for why, info in m["explained"].items():
            print(f"    {info['count']:6d} explained: {why} (e.g. {info['examples'][0]})")
        print(f"    {len(m['unexplained']):6d} unexplained" + (f": {', '.join(m['unexplained'][:10])}"
                                                            if m["unexplained"] else ""))
        print(f"  paths whose mtime differs (what keeps layer digests apart): {im['paths_with_different_mtime']}")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
