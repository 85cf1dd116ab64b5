"""Regenerate tests/golden/<stack>.Dockerfile for every catalog stack (run on purpose: `make golden`)."""

from pathlib import Path

from builder import paths
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in catalog_stack_names(paths.stacks_dir()):
        target = GOLDEN / f"{name}.Dockerfile"
        text = plan(name).context.dockerfile
        changed = not target.exists() or target.read_text() != text
        target.write_text(text)
        print(f"{'updated' if changed else 'unchanged'} {target.relative_to(GOLDEN.parent.parent)}")


if __name__ == "__main__":
    main()
