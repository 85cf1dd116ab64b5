"""Refresh every catalog lock (for the maintainers): `make relock`.

The archive drops superseded Debian versions within days, so the shipped locks are refreshed before
a release: each stack is locked again keeping every pin that is still obtainable (`dlenv lock`), the
golden Dockerfiles and exports are regenerated (the content hash is in their text), and, for the
stacks whose lock recorded a buildah image id, the stack is built with buildah without cache so the
new id is recorded and its image golden rewritten. Prints what moved.

    .venv/bin/python scripts/relock.py [--no-images] [STACK ...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.plan.lockfile import load as load_lock  # noqa: E402
from builder.plan.debs import moved_pins  # noqa: E402

DLENV = str(ROOT / ".venv" / "bin" / "dlenv")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv: list[str]) -> int:
    images = "--no-images" not in argv
    names = [a for a in argv if not a.startswith("--")] or sorted(
        p.stem for p in (ROOT / "stacks").glob("*.yaml") if p.with_suffix(".lock").is_file())
    summary = []
    rebuild = []
    for name in names:
        path = ROOT / "stacks" / f"{name}.lock"
        old = load_lock(path)
        run(DLENV, "lock", name)
        new = load_lock(path)
        moved = moved_pins(old, new)
        summary.append(f"{name}: {len(moved)} Debian pin(s) moved" + "".join(
            f"\n    {m['stage']:<7} {m['package']} {m['locked']} -> {m['used']}" for m in moved))
        if old.images and not new.images:
            rebuild.append(name)
    run("make", "golden")
    for name in rebuild if images else ():
        run(DLENV, "build", name, "--engine", "buildah", "--no-cache", "--no-pull")
        if (ROOT / "tests" / "golden" / "images" / f"{name}.buildah.json").is_file():
            run(PYTHON, "scripts/regen-image-golden.py", name)
    print("\n".join(["", "relock:", *summary]))
    if rebuild and not images:
        print(f"buildah image ids to record again: {', '.join(rebuild)} (run without --no-images)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
