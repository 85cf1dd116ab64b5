"""Regenerate tests/golden/<stack>.Dockerfile for every catalog stack and tests/golden/components/<name>.txt
for every component (run on purpose: `make golden`)."""

import sys
from pathlib import Path

from builder import paths
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tests"))
from component_golden import GOLDEN_DIR, component_text, representatives  # noqa: E402


def write(target: Path, text: str) -> None:
    changed = not target.exists() or target.read_text() != text
    target.write_text(text)
    print(f"{'updated' if changed else 'unchanged'} {target.relative_to(ROOT)}")


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in catalog_stack_names(paths.stacks_dir()):
        write(GOLDEN / f"{name}.Dockerfile", plan(name).context.dockerfile)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, p in representatives().items():
        write(GOLDEN_DIR / f"{name}.txt", component_text(name, p))


if __name__ == "__main__":
    main()
