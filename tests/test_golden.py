"""Every catalog stack's rendered Dockerfile equals its checked-in golden file (`make golden` regenerates)."""

from pathlib import Path

import pytest

from builder import paths
from builder.plan.plan import plan
from builder.spec.stack import catalog_stack_names

ROOT = Path(__file__).resolve().parent.parent

STACKS = catalog_stack_names(paths.stacks_dir())


def test_every_stack_has_a_golden_file():
    golden = sorted(p.stem for p in (ROOT / "tests" / "golden").glob("*.Dockerfile"))
    assert golden == STACKS


@pytest.mark.parametrize("stack", STACKS)
def test_render_matches_golden(stack):
    expected = (ROOT / "tests" / "golden" / f"{stack}.Dockerfile").read_text()
    assert plan(stack).context.dockerfile == expected, f"run `make golden` if the change to {stack} is intended"
