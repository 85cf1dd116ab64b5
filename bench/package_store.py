"""Figures for the package store (issue #22): a build fed by the mirror and the index vs one fed by the
store, the size and time of a vendored bundle, and the time a refresh of one vanished pin adds.

Each run uses a private state folder and store (the machine's store is untouched) and a private
catalog copy for the refresh, so the figures are cold for the store (the engine's layer cache is not:
`--no-cache` builds every layer; the base image is the engine's). The two builds of STACK move its
promoted tags to the new image (same content hash). Prints a table; figures, not assertions.

    .venv/bin/python bench/package_store.py [--stack python] [--vendor chainer chainermn]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DLENV = str(Path(sys.executable).parent / "dlenv")
sys.path.insert(0, str(ROOT))

from builder.plan import lockfile as L  # noqa: E402


def dlenv(*args: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([DLENV, *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", **env})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dlenv {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return elapsed, proc.stderr + proc.stdout


def fetch_line(text: str) -> str:
    return next((ln.split("lock files: ", 1)[1] for ln in text.splitlines() if "lock files: " in ln), "?")


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", default="python")
    parser.add_argument("--vendor", nargs="*", default=["chainer"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        tmp = Path(tmp)
        env = {"DLENV_STATE_DIR": str(tmp / "state"), "DLENV_STORE_DIR": str(tmp / "store")}
        seconds, out = dlenv("build", args.stack, "--no-cache", "--no-verify", "--no-pull", env=env)
        rows.append((f"{args.stack}: --no-cache build, empty store (mirror + index)", f"{seconds:.1f} s", fetch_line(out)))
        seconds, out = dlenv("build", args.stack, "--no-cache", "--no-verify", "--no-pull", env=env)
        rows.append((f"{args.stack}: --no-cache build, files in the store", f"{seconds:.1f} s", fetch_line(out)))
        for stack in args.vendor:
            venv = {**env, "DLENV_STORE_DIR": str(tmp / f"store-{stack}")}
            seconds, out = dlenv("vendor", stack, "-o", str(tmp / f"bundle-{stack}"), env=venv)
            rows.append((f"dlenv vendor {stack} (empty store)", f"{seconds:.1f} s",
                         f"{du(tmp / f'bundle-{stack}') / 1e6:.1f} MB: {out.strip().splitlines()[-1]}"))
            shutil.rmtree(tmp / f"bundle-{stack}")
            shutil.rmtree(tmp / f"store-{stack}")
        # A refresh: a private catalog whose shipped lock pins a version no source has.
        catalog = tmp / "catalog"
        catalog.mkdir()
        name = "bench-refresh"
        text = (ROOT / "stacks" / f"{args.stack}.yaml").read_text()
        (catalog / f"{name}.yaml").write_text(re.sub(r"(?m)^name: .*$", f"name: {name}", text))
        lock = L.load(ROOT / "stacks" / f"{args.stack}.lock")
        pin = "python3"
        fake = "0.0.0-gone"
        lock = L.Lock(**{**lock.__dict__, "stack": name, "path": None, "images": {},
                         "apt_runtime": {**lock.apt_runtime, pin: fake},
                         "debs": {**lock.debs, f"{pin}={fake}": {"arch": "amd64", "size": 1, "sha256": "0" * 64,
                                                                 "file": f"pool/main/p/{pin}/{pin}_{fake}_amd64.deb"}}})
        (catalog / f"{name}.lock").write_text(L.dump(lock))
        renv = {**env, "DLENV_STACKS_DIR": str(catalog)}
        seconds, out = dlenv("build", name, "--no-verify", "--no-pull", env=renv)
        moved = next((ln for ln in out.splitlines() if ln.startswith("refreshed the lock")), "?")
        rows.append((f"{name}: build refreshing 1 vanished pin (files in the store)", f"{seconds:.1f} s", moved[:90]))
        show = json.loads(subprocess.run([DLENV, "show", name, "--json"], capture_output=True, text=True,
                                         env={**os.environ, **renv}).stdout)
        subprocess.run(["docker", "rmi", show["image"], f"dlenv/{name}:latest"], capture_output=True)
    width = max(len(r[0]) for r in rows)
    for what, took, note in rows:
        print(f"{what.ljust(width)}  {took:>8}  {note}")


if __name__ == "__main__":
    main()
