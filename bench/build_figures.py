"""Figures for a stack's build: no-op build, verify, render of all stacks, --help, and sizes
(runtime image, build stage, payload by prefix). With --cold the stack's images are removed
and the build runs with --no-cache first (about 10 minutes for chainermn on 2 cores).

Prints a table and writes JSON (bench/results/<stack>.json). Figures, not assertions: the
targets live in the issues and BENCHMARKS.md.

    .venv/bin/python bench/build_figures.py chainermn [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DLENV = str(Path(sys.executable).parent / "dlenv")


def timed(args: list, repeat: int = 1, **kwargs) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack")
    parser.add_argument("--cold", action="store_true", help="remove the stack's images and build with --no-cache")
    args = parser.parse_args()

    import docker

    from builder.engine.context import write_context
    from builder.plan.plan import plan
    from builder.settings.host import find_ca_bundle, pip_build_args

    client = docker.from_env(timeout=3600)
    p = plan(args.stack)
    figures: dict = {"stack": args.stack, "content_hash": p.content_hash,
                     "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}"}

    if args.cold:
        for ref in (p.hash_tag, p.latest_tag):
            try:
                client.images.remove(ref)
            except docker.errors.ImageNotFound:
                pass
        figures["cold_build_s"] = timed([DLENV, "build", args.stack, "--no-cache"])
    else:
        timed([DLENV, "build", args.stack])  # make sure it exists
    figures["noop_build_s"] = timed([DLENV, "build", args.stack], repeat=5)
    figures["verify_s"] = timed([DLENV, "verify", args.stack], repeat=1)
    names = json.loads(subprocess.run([DLENV, "list", "--json"], capture_output=True, text=True, check=True).stdout)
    render_cmd = [sys.executable, "-c",
                  "from builder.pipeline.build import plan\n"
                  f"for n in {[n['stack'] for n in names]!r}: plan(n).context.dockerfile"]
    figures["render_all_stacks_s"] = timed(render_cmd, repeat=5)
    figures["help_s"] = timed([DLENV, "--help"], repeat=5)

    runtime = client.images.get(p.hash_tag)
    figures["runtime_image_bytes"] = runtime.attrs["Size"]
    # The build stage, tagged from the layer cache (no rebuild when the cache is warm).
    with tempfile.TemporaryDirectory() as tmp:
        # The same CA bundle as the build, or the cache misses from that step on.
        write_context(p.context, Path(tmp), find_ca_bundle().read())
        build_tag = f"dlenv-bench/{args.stack}-build:{p.content_hash[:16]}"
        for chunk in client.api.build(path=tmp, tag=build_tag, target="build", decode=True, rm=True,
                                      buildargs={"DLENV_CONTENT_HASH": p.content_hash, **pip_build_args()}):
            if "error" in chunk:
                raise SystemExit(f"build stage: {chunk['error']}")
        figures["build_stage_bytes"] = client.images.get(build_tag).attrs["Size"]
        client.images.remove(build_tag, noprune=True)  # untag only: keep the layer cache
    du = client.containers.run(p.hash_tag, ["bash", "-c", "du -sb /opt/* 2>/dev/null"], remove=True).decode()
    figures["payload_bytes"] = {line.split("\t")[1]: int(line.split("\t")[0]) for line in du.splitlines() if "\t" in line}
    base = client.images.get(p.context.dockerfile.split("FROM ", 1)[1].split()[0])
    figures["base_bytes"] = base.attrs["Size"]

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stack}.json").write_text(json.dumps(figures, indent=2) + "\n")
    gb = 1e9
    rows = [(k, f"{v:.2f} s") for k, v in figures.items() if k.endswith("_s")]
    rows += [("runtime image", f"{figures['runtime_image_bytes'] / gb:.2f} GB"),
             ("build stage", f"{figures['build_stage_bytes'] / gb:.2f} GB"),
             ("base image", f"{figures['base_bytes'] / gb:.3f} GB")]
    rows += [(f"payload {k}", f"{v / gb:.3f} GB") for k, v in sorted(figures["payload_bytes"].items())]
    width = max(len(r[0]) for r in rows)
    print(f"{args.stack} on {figures['machine']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
