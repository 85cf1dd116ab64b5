"""Each component's rendered fragments equal tests/golden/components/<name>.txt (`make golden` regenerates)."""

import pytest

from component_golden import GOLDEN_DIR, component_text, representatives

REPS = representatives()


def test_every_component_has_a_golden_file():
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.txt")) == sorted(REPS)


@pytest.mark.parametrize("name", sorted(REPS))
def test_component_fragments_match_golden(name):
    expected = (GOLDEN_DIR / f"{name}.txt").read_text()
    assert component_text(name, REPS[name]) == expected, f"run `make golden` if the change to {name} is intended"
