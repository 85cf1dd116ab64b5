"""The buildah engine on a real stack: same image id twice, and its cold time against the SDK engine's.
Figures, not assertions (issue #17).

For STACK (default chainermn), on this machine, one after the other (never side by side: the cores
are the measured resource):
  sdk      `dlenv build STACK --engine sdk --no-cache --no-pull` (cold layers; verification included)
  buildah  `dlenv build STACK --engine buildah --no-cache --no-pull` (records the id in the lock the
           first time, says "reproduced" afterwards), then
  check    `dlenv build STACK --engine buildah --check`: a second no-cache build that must give the
           same id (dlenv exits 1 listing the differing paths otherwise)
  verify   `dlenv verify STACK` and `dlenv verify STACK --nodes 2` on the buildah image

    .venv/bin/python bench/buildah_images.py [STACK] [--only sdk,buildah,check,verify]

Prints a table, writes bench/results/buildah-<stack>.json (phases of earlier runs are kept, each with
its date, so a long measurement can be done in parts). The buildah base (mmdebstrap, about 50 s) is
made by the first buildah phase when dlenv's buildah storage lacks it: the output says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DLENV = str(Path(sys.executable).parent / "dlenv")
PHASES = {
    "sdk": ["build", "{stack}", "--engine", "sdk", "--no-cache", "--no-pull"],
    "buildah": ["build", "{stack}", "--engine", "buildah", "--no-cache", "--no-pull"],
    "check": ["build", "{stack}", "--engine", "buildah", "--check", "--no-pull"],
    "verify": ["verify", "{stack}"],
    "verify_nodes_2": ["verify", "{stack}", "--nodes", "2"],
}
_ID = re.compile(r"sha256:[0-9a-f]{12,64}")


def run_phase(name: str, stack: str) -> dict:
    args = [a.format(stack=stack) for a in PHASES[name]]
    print(f"== {name}: dlenv {' '.join(args)}", flush=True)
    start = time.monotonic()
    proc = subprocess.run([DLENV, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    print(out[-1500:], flush=True)
    return {"seconds": round(seconds, 1), "exit": proc.returncode, "ids": sorted(set(_ID.findall(out))),
            "base_bootstrapped": "bootstrapping Debian" in out, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "last_lines": [ln for ln in out.splitlines() if ln.strip()][-6:]}


def docker_id(stack: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", f"dlenv/{stack}:latest"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stack", nargs="?", default="chainermn")
    ap.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: " + ",".join(PHASES))
    args = ap.parse_args()
    out = ROOT / "bench" / "results" / f"buildah-{args.stack}.json"
    doc = json.loads(out.read_text()) if out.is_file() else {"stack": args.stack, "phases": {}}
    for name in args.only.split(","):
        if name not in PHASES:
            ap.error(f"unknown phase {name!r}")
        doc["phases"][name] = result = run_phase(name, args.stack)
        result["docker_id_after"] = docker_id(args.stack)
    doc["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "load_avg_at_end": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'phase':<16}{'exit':>5}{'seconds':>9}  image id in Docker afterwards")
    for name, r in doc["phases"].items():
        print(f"{name:<16}{r['exit']:>5}{r['seconds']:>9}  {(r.get('docker_id_after') or '-')[:19]}")
    print(f"written: {out.relative_to(ROOT)}")
    return 0 if all(r["exit"] == 0 for r in doc["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
