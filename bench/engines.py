"""The SDK engine (docker-py, classic builder) against the BuildKit engine (a Docker CLI), on a stack
extending `chainer` (CPU, small). Figures, not assertions.

For each engine:
  cold     `dlenv build --engine E --no-cache --no-verify` (BuildKit's --no-cache also starts its cache
           mounts empty, so both are really cold)
  leaf     the same stack plus one pip package (python_packages), built on that engine's own cache
  no-op    the other engine's build of the leaf stack afterwards (the same content hash: nothing to do)

    .venv/bin/python bench/engines.py [--package packaging==24.1]

Both stacks are locked once before timing (same pins for both engines). Prints a table, writes
bench/results/engines-<engines>.json, keeps the build logs in the printed work folder, removes the images it made (repository dlenv/dlenv-bench-engines*).
The BuildKit cache it leaves (layers and dlenv's cache mounts) is reported with `docker system df`.
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
NAME = "dlenv-bench-engines"


def run(args, cwd, env) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run([DLENV, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"dlenv {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def remove_images(repo: str) -> None:
    out = subprocess.run(["docker", "images", repo, "--format", "{{.Repository}}:{{.Tag}}"],
                         capture_output=True, text=True).stdout.split()
    if out:
        subprocess.run(["docker", "rmi", *out], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="packaging==24.1", help="the pip package the leaf rebuild adds")
    ap.add_argument("--engines", default="sdk,buildkit")
    args = ap.parse_args()
    engines = args.engines.split(",")
    work = Path(tempfile.mkdtemp(prefix="dlenv-bench-engines-"))
    env = dict(os.environ, NO_COLOR="1", DLENV_STATE_DIR=str(work / "state"))
    cold, leaf = work / "cold", work / "leaf"
    for folder, extra in ((cold, ""), (leaf, f'python_packages: ["{args.package}"]\n')):
        folder.mkdir()
        (folder / "dlenv.yaml").write_text(f"schema: 1\nname: {NAME}\nextends: chainer\n{extra}")
        run(["lock"], folder, env)   # not timed: both engines build the same pins
    results = {}
    for engine in engines:
        env = dict(env, DLENV_STATE_DIR=str(work / f"state-{engine}"))   # each engine's logs kept apart
        remove_images(f"dlenv/{NAME}")
        t_cold, _ = run(["build", "--engine", engine, "--no-cache", "--no-verify"], cold, env)
        t_leaf, proc = run(["build", "--engine", engine, "--no-verify"], leaf, env)
        results[engine] = {"cold_s": round(t_cold, 1), "leaf_rebuild_s": round(t_leaf, 1)}
        print(f"{engine}: cold {t_cold:.1f}s, leaf rebuild {t_leaf:.1f}s", file=sys.stderr)
        other = next((e for e in ("sdk", "buildkit") if e != engine), None)
        t_noop, proc = run(["build", "--engine", other, "--no-verify"], leaf, env)
        assert "up to date" in proc.stdout, proc.stdout
        results[engine][f"noop_with_{other}_s"] = round(t_noop, 2)
        show = json.loads(run(["show", "--json"], leaf, env)[1].stdout)
        attrs = json.loads(subprocess.run(["docker", "image", "inspect", show["image"]], capture_output=True,
                                          text=True).stdout)[0]
        results[engine]["content_hash"] = attrs["Config"]["Labels"]["org.dlenv.content-hash"]
        results[engine]["image_bytes"] = attrs["Size"]
    remove_images(f"dlenv/{NAME}")
    df = subprocess.run(["docker", "system", "df", "-v", "--format", "{{json .}}"], capture_output=True, text=True).stdout
    mounts = []
    try:
        for entry in json.loads(df).get("BuildCache") or []:
            if entry.get("CacheType") == "exec.cachemount":
                mounts.append({"id": entry.get("ID"), "size": entry.get("Size"), "description": entry.get("Description")})
    except (json.JSONDecodeError, AttributeError):
        pass
    doc = {"stack": f"{NAME} (extends chainer)", "leaf_package": args.package, "results": results,
           "buildkit_cache_mounts": mounts,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "docker": subprocess.run(["/usr/bin/docker", "version", "--format", "{{.Server.Version}}"],
                                                capture_output=True, text=True).stdout.strip()}}
    out = ROOT / "bench" / "results" / f"engines-{'-'.join(engines)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'engine':<10} {'cold (s)':>9} {'leaf rebuild (s)':>17} {'no-op other (s)':>16}  same hash")
    hashes = {r["content_hash"] for r in results.values()}
    for engine, r in results.items():
        noop = next(v for k, v in r.items() if k.startswith("noop_with_"))
        print(f"{engine:<10} {r['cold_s']:>9.1f} {r['leaf_rebuild_s']:>17.1f} {noop:>16.2f}  {len(hashes) == 1}")
    print(f"wrote {out.relative_to(ROOT)}; build logs under {work}")


if __name__ == "__main__":
    main()
