"""A project against the Python pins of the parent image it builds on (issue #24), without the engine:
the early check from the parent's lock (specifier sets compared with `packaging`, names normalised),
the one-line error and its ways out, and pip's ResolutionImpossible read into the same error."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

from builder.errors import LockCommandError, ParentPinConflict
from builder.pipeline import layered_lock
from builder.pipeline.locker import LockReport
from builder.plan.conflicts import ImagePin, accepts, check_parent_pins, from_pip, read_pip_conflict
from builder.plan.plan import image_pins, plan, shared_catalog
from dlenv_unit import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "projects" / "parent-pins"


def project(tmp_path: Path, *requirements: str, extends: str = "chainermn") -> Path:
    path = tmp_path / "dlenv.yaml"
    listed = ", ".join(f'"{r}"' for r in requirements)
    path.write_text(f"schema: 1\nname: proj\nextends: {extends}\npython_packages: [{listed}]\n")
    return path


def test_a_pin_the_parent_pins_otherwise_fails_in_one_line_before_any_container():
    with pytest.raises(ParentPinConflict) as err:
        plan(str(FIXTURES / "six-pin.yaml"))
    e = err.value
    line = e.one_line()
    # the project file, its line and field; the requirement; the parent's pin, its stack and lock
    assert line.startswith(f"{FIXTURES / 'six-pin.yaml'}:7: python_packages[1]: six==1.16.0 conflicts with six==1.17.0 ")
    assert "in the image of its parent chainermn (pinned by chainermn.lock, pip step chainer)" in line
    # the ways out: the parent's version, and why a whole build (components:) would not move six
    assert "drop the pin to use chainermn's six 1.17.0" in e.hint
    assert "`components:` in six-pin.yaml" in e.hint and "would not help" in e.hint
    assert "no catalog component pins six" in e.hint and "\n" not in line


def test_the_cli_says_it_in_one_line_with_exit_status_1(cli):
    result = cli("render", FIXTURES / "six-pin.yaml")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "six==1.16.0 conflicts with six==1.17.0" in result.stderr


@pytest.mark.parametrize("requirement", ["six", "six>=1.16", "six==1.17.0", "six~=1.17", "six!=1.16.0",
                                         "six>1.16,<2", "Six>=1.16", "six[extra]>=1.16", "six==1.17.*"])
def test_requirements_the_parents_pin_satisfies_plan(tmp_path, requirement):
    p = plan(str(project(tmp_path, requirement)))
    assert p.parent is not None and p.parent.resolved.name == "chainermn"


@pytest.mark.parametrize("requirement", ["six==1.16.0", "six<1.17", "six~=1.16.0", "six!=1.17.0", "six>=1.18",
                                         "Six==1.16.0", "SIX<1.17", "six[extra]==1.16.0", "six==1.16.*"])
def test_requirements_the_parents_pin_does_not_satisfy_are_refused(tmp_path, requirement):
    with pytest.raises(ParentPinConflict) as err:
        plan(str(project(tmp_path, "tqdm==4.66.5", requirement)))
    assert f"python_packages[1]: {requirement} conflicts with six==1.17.0" in err.value.one_line()


def test_names_are_compared_normalised(tmp_path):
    # chainermn's lock spells it typing_extensions
    assert plan(str(project(tmp_path, "Typing.Extensions>=4"))).parent is not None
    with pytest.raises(ParentPinConflict) as err:
        plan(str(project(tmp_path, "typing-extensions<4")))
    assert "typing-extensions<4 conflicts with typing_extensions==4.16.0" in err.value.message
    # a lock that spells it ruamel.yaml against ruamel-yaml / ruamel_yaml
    pins = {"ruamel-yaml": ImagePin("ruamel.yaml", "0.18.6", "tools", "tools", "tools.lock")}
    fits = plan(str(project(tmp_path, "ruamel_yaml>=0.17", extends="python"))).resolved
    check_parent_pins(fits, "tools", pins, shared_catalog())
    refused = plan(str(project(tmp_path, "ruamel-yaml<0.18", extends="python"))).resolved
    with pytest.raises(ParentPinConflict) as err:
        check_parent_pins(refused, "tools", pins, shared_catalog())
    assert "ruamel-yaml<0.18 conflicts with ruamel.yaml==0.18.6 in the image of its parent tools" in err.value.message
    assert "drop it" in err.value.hint


def test_the_first_conflict_is_named_and_the_others_counted(tmp_path):
    with pytest.raises(ParentPinConflict) as err:
        plan(str(project(tmp_path, "six==1.16.0", "tqdm", "numpy<1.26")))
    assert "six==1.16.0 conflicts with six==1.17.0" in err.value.message
    assert err.value.message.endswith("; so does numpy<1.26")


def test_pre_releases_and_unreadable_versions():
    assert accepts(Requirement("torch>=2"), "2.5.0rc1")
    assert not accepts(Requirement("torch<2"), "2.5.0rc1")
    assert accepts(Requirement("x==1"), "not-a-version")     # pip judges it in the lock container


def test_a_component_that_pins_the_package_is_the_second_way_out(tmp_path):
    with pytest.raises(ParentPinConflict) as err:
        plan(str(FIXTURES / "protobuf-pin.yaml"))
    e = err.value
    assert "protobuf==5.29.6 conflicts with protobuf==7.36.2 in the image of its parent chainermn" in e.message
    assert e.hint.startswith("drop the pin to use chainermn's protobuf 7.36.2, or add "
                             '`components: {protobuf: "5.29.6"}` to protobuf-pin.yaml, which builds the project whole')
    # and that way out plans: a whole build, the component's pin constraining every Python step
    whole = tmp_path / "dlenv.yaml"
    whole.write_text('schema: 1\nname: proj\nextends: chainermn\ncomponents: {protobuf: "5.29.6"}\n'
                     'python_packages: ["protobuf==5.29.6"]\n')
    p = plan(str(whole))
    assert p.parent is None and "protobuf==5.29.6" in p.context.files["dlenv-build/constraints.txt"].decode()


def test_a_component_version_the_stack_cannot_resolve_is_not_offered(tmp_path):
    with pytest.raises(ParentPinConflict) as err:     # numpy 2.1.3 exists, but chainer needs numpy<2
        plan(str(project(tmp_path, "numpy>=2")))
    assert "widen the requirement to accept chainermn's numpy 1.26.4" in err.value.hint
    assert "would not help: numpy 2.1.3 does not go with the stack's other components" in err.value.hint
    with pytest.raises(ParentPinConflict) as err:     # no protobuf component offers 3.x
        plan(str(project(tmp_path, "protobuf<4")))
    assert "offer no version it accepts (protobuf: 5.29.6, 4.25.9)" in err.value.hint


# pip 23.0.1 (the pip of Debian bookworm's venv, which the lock container runs), as the layered lock runs it
# (--dry-run --ignore-installed --progress-bar off, not --quiet), with PIP_CONSTRAINT naming six==1.17.0:
# stderr, then stdout. The documentation address pip names at the end is left out.
PIP_DIRECT = """\
ERROR: Cannot install six==1.16.0 because these package versions have conflicting dependencies.
ERROR: ResolutionImpossible: for help visit (pip's documentation)

The conflict is caused by:
    The user requested six==1.16.0
    The user requested (constraint) six==1.17.0

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip attempt to solve the dependency conflict
"""
PIP_TRANSITIVE = """\
ERROR: Cannot install foo==1.0 because these package versions have conflicting dependencies.
ERROR: ResolutionImpossible: for help visit (pip's documentation)

Processing ./wheels/foo-1.0-py3-none-any.whl

The conflict is caused by:
    foo 1.0 depends on six<1.17
    The user requested (constraint) six==1.17.0

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip attempt to solve the dependency conflict
"""
PIP_DEEP = PIP_TRANSITIVE.replace("Cannot install foo==1.0", "Cannot install bar")
PIP_QUIET = """\
ERROR: Cannot install six==1.16.0 because these package versions have conflicting dependencies.
ERROR: ResolutionImpossible: for help visit (pip's documentation)
"""


def test_pips_explanation_is_read():
    direct = read_pip_conflict(PIP_DIRECT)
    assert direct.triggers == ("six==1.16.0",) and direct.causes == (("", "six==1.16.0"),)
    assert direct.constraints == ("six==1.17.0",)
    assert read_pip_conflict(PIP_TRANSITIVE).causes == (("foo 1.0", "six<1.17"),)
    assert read_pip_conflict(PIP_QUIET).causes == ()
    multi = read_pip_conflict("ERROR: Cannot install a==1, b==2 and c because these package versions have "
                              "conflicting dependencies.\nERROR: ResolutionImpossible")
    assert multi.triggers == ("a==1", "b==2", "c")
    assert read_pip_conflict("ERROR: No matching distribution found for nothere") is None


def _project_plan(tmp_path, *requirements):
    p = plan(str(project(tmp_path, *requirements)))
    return p, image_pins(p.parent)


def test_a_conflict_through_a_dependency_is_translated(tmp_path):
    p, pins = _project_plan(tmp_path, "tqdm==4.66.5", "foo==1.0")
    e = from_pip(PIP_TRANSITIVE, p.resolved, "chainermn", pins, shared_catalog())
    assert isinstance(e, ParentPinConflict)
    assert e.one_line().startswith(f"{p.resolved.merged.path}:4: python_packages[1]: foo==1.0 needs six<1.17 "
                                   "(foo 1.0 depends on it), which conflicts with six==1.17.0 in the image of its "
                                   "parent chainermn (pinned by chainermn.lock, pip step chainer)")
    assert "use a version of foo that accepts chainermn's six 1.17.0, or drop foo==1.0" in e.hint
    # deeper: pip names the entry it could not install (bar), the dependency that asks (foo 1.0)
    p, pins = _project_plan(tmp_path, "bar==2.0")
    e = from_pip(PIP_DEEP, p.resolved, "chainermn", pins, shared_catalog())
    assert "python_packages[0]: bar==2.0 needs six<1.17 (foo 1.0 depends on it)" in e.one_line()
    # pip --quiet names only what it could not install; an entry the stack does not list points at the field
    p, pins = _project_plan(tmp_path, "tqdm")
    e = from_pip(PIP_QUIET, p.resolved, "chainermn", pins, shared_catalog())
    assert e.one_line().startswith(f"{p.resolved.merged.path}: python_packages: six==1.16.0 conflicts with six==1.17.0")


def test_what_is_no_pin_of_the_parent_stays_pips_own_error(tmp_path):
    p, pins = _project_plan(tmp_path, "foo==1.0")
    other = PIP_TRANSITIVE.replace("six", "attrs")          # chainermn's image has no attrs
    assert from_pip(other, p.resolved, "chainermn", pins, shared_catalog()) is None
    accepted = PIP_TRANSITIVE.replace("six<1.17", "six<1.18")    # pip's cause is not the pin
    assert from_pip(accepted, p.resolved, "chainermn", pins, shared_catalog()) is None
    assert from_pip("ERROR: No matching distribution found for foo==1.0", p.resolved, "chainermn", pins,
                    shared_catalog()) is None


def test_the_layered_lock_raises_the_translated_conflict(tmp_path, monkeypatch):
    p, _ = _project_plan(tmp_path, "foo==1.0")

    def dry_run(box, step, constraints, venv, previous, report, output=PIP_TRANSITIVE):
        raise LockCommandError("resolving pip step python_packages failed: ERROR: Cannot install foo==1.0", output=output)

    monkeypatch.setattr(layered_lock, "_dry_run", dry_run)
    with pytest.raises(ParentPinConflict) as err:
        layered_lock._resolve_leaf(None, p, None, set(), LockReport(), lambda msg: None)
    assert "foo==1.0 needs six<1.17" in err.value.message
    monkeypatch.setattr(layered_lock, "_dry_run",
                        lambda *a: dry_run(*a, output="ERROR: No matching distribution found for foo==1.0"))
    with pytest.raises(LockCommandError) as err:      # anything else stays pip's own error
        layered_lock._resolve_leaf(None, p, None, set(), LockReport(), lambda msg: None)
    assert not isinstance(err.value, ParentPinConflict)
