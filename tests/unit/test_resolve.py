"""The resolver, on small fake catalogs whose right answers are not the defaults, and on the real catalog."""

from __future__ import annotations

import re

import pytest

from builder import paths
from builder.plan.catalog import Catalog
from builder.errors import CatalogError, ResolveError, SpecError
from builder.plan.resolve import resolve
from builder.spec.stack import load_stack

ROOT_STACK = "schema: 1\nname: root\ncomponents:\n  base: \"1.0\"\n"


def stack(name: str, components: dict, extends: str = "root") -> str:
    lines = [f"schema: 1\nname: {name}\nextends: {extends}\ncomponents:"]
    lines += [f'  {k}: "{v}"' for k, v in components.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def cat(fake):
    """lib offers four versions and its default (1.5) is neither the oldest nor the newest."""
    fake.component("base", group="system", versions={"1.0": None}, default="1.0")
    fake.component("lib", versions={"1.0": None, "1.5": None, "2.0": None, "3.0": None}, default="1.5")
    fake.stack("root", ROOT_STACK)
    return fake


def versions(resolved) -> dict:
    return resolved.versions()


# --- choosing versions ----------------------------------------------------------------------

def test_exact_version(cat):
    cat.stack("s", stack("s", {"lib": "1.0"}))
    assert versions(cat.resolve("s"))["lib"] == "1.0"


@pytest.mark.parametrize("spec,expected", [
    (">=1,<3", "2.0"),      # the newest match, not the default 1.5 and not the newest 3.0
    ("1.*", "1.5"),
    ("<1.5", "1.0"),
    (">1.5", "3.0"),
    ("~=1.0", "1.5"),
    ("!=3.0", "2.0"),
])
def test_a_range_takes_the_newest_match(cat, spec, expected):
    cat.stack("s", stack("s", {"lib": spec}))
    assert versions(cat.resolve("s"))["lib"] == expected


def test_an_unconstrained_requirement_takes_the_catalog_default(cat):
    cat.component("app", versions={"1.0": {"requires": {"lib": ">=1"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0"}))
    resolved = cat.resolve("s")
    assert versions(resolved)["lib"] == "1.5"
    assert resolved.get("lib").reason == "required by app 1.0"


def test_a_constraint_from_another_component_forces_a_non_default(cat):
    cat.component("app", versions={"1.0": {"requires": {"lib": ">=2,<3"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0"}))
    resolved = cat.resolve("s")
    assert versions(resolved)["lib"] == "2.0"
    assert resolved.get("lib").reason == "required by app 1.0"
    assert resolved.get("app").reason.endswith("s.yaml:5")


def test_component_wide_and_per_version_requirements_both_apply(cat):
    cat.component("app", versions={"1.0": {"requires": {"lib": "<3"}}}, default="1.0", requires={"lib": ">1.5"})
    cat.stack("s", stack("s", {"app": "1.0"}))
    assert versions(cat.resolve("s"))["lib"] == "2.0"


def test_a_stack_range_and_a_component_constraint_intersect(cat):
    cat.component("app", versions={"1.0": {"requires": {"lib": "<2"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0", "lib": ">=1.0"}))
    assert versions(cat.resolve("s"))["lib"] == "1.5"


@pytest.fixture
def backtracking(cat):
    """a 2.0 (first choice) needs b>=2, which c refuses; only a 1.0 (needs b<2) fits with c."""
    cat.component("a", versions={"2.0": {"requires": {"b": ">=2"}}, "1.0": {"requires": {"b": "<2"}}}, default="2.0")
    cat.component("b", versions={"2.0": None, "1.0": None}, default="2.0")
    cat.component("c", versions={"1.0": {"requires": {"b": "<2"}}}, default="1.0")
    cat.stack("s", stack("s", {"a": ">=1", "c": "1.0"}))
    return cat


def test_backtracking_takes_an_older_version_of_the_first_choice(backtracking):
    assert versions(backtracking.resolve("s")) == {"base": "1.0", "b": "1.0", "a": "1.0", "c": "1.0"}


def test_without_the_conflicting_component_the_first_choice_stays(backtracking):
    backtracking.stack("t", stack("t", {"a": ">=1"}))
    assert versions(backtracking.resolve("t"))["a"] == "2.0"
    assert versions(backtracking.resolve("t"))["b"] == "2.0"


def test_backtracking_reports_the_reason_of_the_final_choice(backtracking):
    assert backtracking.resolve("s").get("b").reason == "required by a 1.0"


def test_backtracking_across_three_levels(cat):
    # x's newest needs y 2 which needs lib 3; z refuses lib 3 -> x must drop to 1.0 (y 1 -> lib < 2)
    cat.component("x", versions={"2.0": {"requires": {"y": "==2.0"}}, "1.0": {"requires": {"y": "==1.0"}}},
                  default="2.0")
    cat.component("y", versions={"2.0": {"requires": {"lib": "==3.0"}}, "1.0": {"requires": {"lib": "<2"}}},
                  default="2.0")
    cat.component("z", versions={"1.0": {"requires": {"lib": "<3"}}}, default="1.0")
    cat.stack("s", stack("s", {"x": ">=1", "z": "1.0"}))
    assert versions(cat.resolve("s")) == {"base": "1.0", "lib": "1.5", "y": "1.0", "x": "1.0", "z": "1.0"}


def test_transitive_requirements_are_added_with_their_reason(cat):
    cat.component("top", versions={"1.0": {"requires": {"mid": ">=1"}}}, default="1.0")
    cat.component("mid", versions={"1.0": {"requires": {"lib": "==2.0"}}}, default="1.0")
    cat.stack("s", stack("s", {"top": "1.0"}))
    resolved = cat.resolve("s")
    assert versions(resolved) == {"base": "1.0", "lib": "2.0", "mid": "1.0", "top": "1.0"}
    assert resolved.get("mid").reason == "required by top 1.0"
    assert resolved.get("lib").reason == "required by mid 1.0"
    assert resolved.get("top").reason == f"{cat.stacks / 's.yaml'}:5"
    assert resolved.get("base").reason == f"{cat.stacks / 'root.yaml'}:4"


def test_resolution_is_deterministic(backtracking):
    first = backtracking.resolve("s")
    for _ in range(3):
        again = backtracking.resolve("s")
        assert [(c.name, c.version.text, c.reason) for c in again.components] == \
               [(c.name, c.version.text, c.reason) for c in first.components]


def test_constrains_never_adds_the_component(cat):
    cat.component("app", versions={"1.0": {"constrains": {"lib": ">=2"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0"}))
    assert "lib" not in versions(cat.resolve("s"))


def test_constrains_applies_when_the_stack_has_the_component(cat):
    # app 2.0 constrains lib>=3; the stack has lib 2.0 for its own reasons -> app drops to 1.0
    cat.component("app", versions={"2.0": {"constrains": {"lib": ">=3"}}, "1.0": {"constrains": {"lib": "<3"}}},
                  default="2.0")
    cat.stack("s", stack("s", {"app": ">=1", "lib": "2.0"}))
    assert versions(cat.resolve("s"))["app"] == "1.0"
    cat.stack("t", stack("t", {"app": "2.0", "lib": "2.0"}))
    with pytest.raises(ResolveError) as info:
        cat.resolve("t")
    assert "app 2.0 needs lib>=3" in info.value.one_line()


def test_constrains_applies_to_a_component_another_one_requires(cat):
    # lib is not in the stack file, but other 1.0 requires it; app's constrains then narrows it
    cat.component("other", versions={"1.0": {"requires": {"lib": ">=1"}}}, default="1.0")
    cat.component("app", versions={"1.0": {"constrains": {"lib": ">=2,<3"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0", "other": "1.0"}))
    assert versions(cat.resolve("s"))["lib"] == "2.0"


# --- build order ----------------------------------------------------------------------------

def test_build_order_is_group_order_then_dependencies_first(cat):
    cat.component("aa", versions={"1.0": {"requires": {"zz": ">=1", "mpi": ">=1"}}}, default="1.0")
    cat.component("zz", versions={"1.0": {"requires": {"mm": ">=1"}}}, default="1.0")
    cat.component("mm", versions={"1.0": None}, default="1.0")
    cat.component("mpi", group="compile", versions={"1.0": {"requires": {"headers": ">=1"}}}, default="1.0")
    cat.component("headers", group="compile", versions={"1.0": None}, default="1.0")
    cat.component("gpu", group="cuda", versions={"1.0": None}, default="1.0")
    cat.stack("s", stack("s", {"aa": "1.0", "gpu": "1.0"}))
    resolved = cat.resolve("s")
    assert [c.name for c in resolved.components] == ["base", "headers", "mpi", "gpu", "mm", "zz", "aa"]
    assert [c.component.group for c in resolved.components] == \
           ["system", "compile", "compile", "cuda", "python", "python", "python"]


def test_after_orders_an_optional_component_first_only_when_the_stack_has_it(cat):
    # "zmpi" sorts after "aucx" by name; `after` must put "zucx" first although nothing requires it
    cat.component("zucx", group="compile", versions={"1.0": None}, default="1.0")
    cat.component("mpi", group="compile", versions={"1.0": None}, default="1.0", after=["zucx"])
    cat.stack("with", stack("with", {"mpi": "1.0", "zucx": "1.0"}))
    cat.stack("without", stack("without", {"mpi": "1.0"}))
    assert [c.name for c in cat.resolve("with").components] == ["base", "zucx", "mpi"]
    # `after` never pulls a component in: the extras stay off unless a stack lists them
    assert [c.name for c in cat.resolve("without").components] == ["base", "mpi"]


def test_after_naming_an_unknown_component_is_refused(cat):
    cat.component("ucx", group="compile", versions={"1.0": None}, default="1.0")
    cat.component("mpi", group="compile", versions={"1.0": None}, default="1.0", after=["uxc"])
    cat.stack("s", stack("s", {"mpi": "1.0"}))
    with pytest.raises(SpecError) as info:
        cat.resolve("s")
    assert "after[0]: unknown component 'uxc'" in info.value.one_line()
    assert "did you mean 'ucx'?" in info.value.one_line()


# --- failures -------------------------------------------------------------------------------

def test_a_range_that_matches_nothing_names_the_stack_line_and_the_choices(cat):
    path = cat.stack("s", stack("s", {"lib": "9.*"}))
    with pytest.raises(ResolveError) as info:
        cat.resolve("s")
    msg = info.value.one_line()
    assert f"{path}:5: components.lib: lib 9.* matches no version" in msg
    assert "available: 3.0, 2.0, 1.5, 1.0" in msg


def test_a_conflict_names_both_sides_and_the_stack_file(cat):
    # the stack asks lib 3.0; zapp 1.0 needs lib<3 (resolved after lib: the stack demand is named)
    cat.component("zapp", versions={"1.0": {"requires": {"lib": "<3"}}}, default="1.0")
    path = cat.stack("s", stack("s", {"zapp": "1.0", "lib": "3.0"}))
    with pytest.raises(ResolveError) as info:
        cat.resolve("s")
    msg = info.value.one_line()
    assert "zapp 1.0 needs lib<3" in msg
    assert "stack asks lib 3.0" in msg
    assert f"{path}:6" in msg
    assert "\n" not in str(info.value)


def test_a_conflict_names_the_stack_file_whatever_the_resolution_order(cat):
    # same conflict as above, but 'app' sorts before 'lib'
    cat.component("app", versions={"1.0": {"requires": {"lib": "<3"}}}, default="1.0")
    path = cat.stack("s", stack("s", {"app": "1.0", "lib": "3.0"}))
    with pytest.raises(ResolveError) as info:
        cat.resolve("s")
    msg = info.value.one_line()
    assert "app 1.0 needs lib<3" in msg
    assert "lib 3.0" in msg and f"{path}:6" in msg


def test_a_conflict_between_catalog_constraints_names_the_component(cat):
    cat.component("app", versions={"1.0": {"requires": {"lib": ">=4"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0"}))
    with pytest.raises(ResolveError) as info:
        cat.resolve("s")
    msg = info.value.one_line()
    assert "lib" in msg and "app 1.0 needs lib>=4" in msg


def test_an_unknown_component_suggests_the_closest_name(cat):
    cat.stack("s", stack("s", {"lbi": "1.0"}))
    with pytest.raises((CatalogError, SpecError)) as info:
        cat.resolve("s")
    assert "unknown component 'lbi'" in info.value.one_line()
    assert "did you mean 'lib'?" in info.value.one_line()


def test_an_unknown_component_names_the_stack_file_and_line(cat):
    path = cat.stack("s", stack("s", {"lbi": "1.0"}))
    with pytest.raises((CatalogError, SpecError)) as info:
        cat.resolve("s")
    assert f"{path}:5" in info.value.one_line()


def test_a_requirement_on_an_unknown_component_is_explained(cat):
    cat.component("app", versions={"1.0": {"requires": {"ghost": ">=1"}}}, default="1.0")
    cat.stack("s", stack("s", {"app": "1.0"}))
    with pytest.raises(CatalogError) as info:
        cat.resolve("s")
    assert "ghost" in info.value.one_line()


# --- the catalog's components ---------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog():
    return Catalog()


def real(ref):
    return load_stack(ref, paths.stacks_dir())


def test_chainermn_gets_numpy_1_although_the_default_is_2(catalog):
    assert catalog.get("numpy").default == "2.1.3"
    resolved = resolve(real("chainermn"), catalog)
    assert resolved.versions()["numpy"] == "1.26.4"
    assert resolved.get("numpy").reason == "required by chainer 7.8.1"


def test_chainermn_resolution(catalog):
    resolved = resolve(real("chainermn"), catalog)
    got = resolved.versions()
    expected = {"python": "3.11", "cuda-headers": "12.6", "openmpi": "4.1.4", "cuda": "12.6",
                "cudnn": "8.9.7.29", "nccl": "2.21.5", "numpy": "1.26.4", "setuptools": "69.5.1",
                "chainer": "7.8.1", "cupy": "13.6.0", "cython": "3.0.12", "mpi4py": "3.1.6"}
    assert {k: got.get(k) for k in expected} == expected
    assert resolved.get("cuda-headers").reason == "required by openmpi 4.1.4"
    assert resolved.get("setuptools").reason == "required by chainer 7.8.1"
    assert re.search(r"/chainermn\.yaml:\d+$", resolved.get("mpi4py").reason)


def test_chainermn_build_order_follows_groups_then_dependencies(catalog):
    from builder.plan.catalog import GROUPS
    from builder.plan.resolve import _constraints
    comps = resolve(real("chainermn"), catalog).components
    groups = [GROUPS.index(c.component.group) for c in comps]
    assert groups == sorted(groups)
    position = {c.name: i for i, c in enumerate(comps)}
    for c in comps:
        for dep in _constraints(c.component, c.version):
            if dep in position and catalog.get(dep).group == c.component.group:
                assert position[dep] < position[c.name], f"{dep} must come before {c.name}"
    names = [c.name for c in comps]
    assert names.index("numpy") < names.index("chainer") and names.index("numpy") < names.index("cupy")
    assert names.index("cuda-headers") < names.index("openmpi")


def test_python_stack_is_just_python(catalog):
    assert resolve(real("python"), catalog).versions() == {"python": "3.11"}


def _child(tmp_path, components: dict, extends="chainer") -> str:
    path = tmp_path / "child.yaml"
    path.write_text(stack("child", components, extends=extends))
    return str(path)


def test_cupy_14_with_chainer_conflicts_on_numpy(catalog, tmp_path):
    merged = load_stack(_child(tmp_path, {"cupy": "14.*"}), paths.stacks_dir())
    with pytest.raises(ResolveError) as info:
        resolve(merged, catalog)
    assert "numpy" in info.value.one_line()


def test_cupy_14_with_chainer_names_both_sides(catalog, tmp_path):
    path = _child(tmp_path, {"cupy": "14.*"})
    with pytest.raises(ResolveError) as info:
        resolve(load_stack(path, paths.stacks_dir()), catalog)
    msg = info.value.one_line()
    assert "chainer" in msg and "cupy" in msg and "child.yaml" in msg


def test_numpy_2_with_chainer_names_both(catalog, tmp_path):
    merged = load_stack(_child(tmp_path, {"numpy": "2.1.3"}), paths.stacks_dir())
    with pytest.raises(ResolveError) as info:
        resolve(merged, catalog)
    msg = info.value.one_line()
    assert "numpy" in msg and "chainer 7.8.1 needs numpy<2" in msg


def test_cudnn_9_is_refused_by_cupy_13(catalog, tmp_path):
    merged = load_stack(_child(tmp_path, {"cudnn": "9.1.0.70"}, extends="chainer-gpu"), paths.stacks_dir())
    with pytest.raises(ResolveError) as info:
        resolve(merged, catalog)
    assert "cudnn" in info.value.one_line()


def test_cupy_14_alone_takes_numpy_2_and_cudnn_9(catalog, tmp_path):
    merged = load_stack(_child(tmp_path, {"cupy": "14.*"}, extends="python"), paths.stacks_dir())
    got = resolve(merged, catalog).versions()
    assert (got["cupy"], got["numpy"], got["cudnn"]) == ("14.0.1", "2.1.3", "9.1.0.70")


# --- all-in-one: Chainer, PyTorch and TensorFlow must agree on NumPy ------------------------

def test_all_in_one_gets_numpy_1_26_although_the_default_is_2(catalog):
    assert catalog.get("numpy").default == "2.1.3"
    resolved = resolve(real("all-in-one"), catalog)
    got = resolved.versions()
    assert got["numpy"].startswith("1.26.")
    assert (got["chainer"], got["torch"], got["tensorflow"]) == ("7.8.1", "2.5.1", "2.18.0")
    assert got["protobuf"] == "5.29.6"      # TensorFlow's cap (<6), shared with Chainer's step
    # every framework's own constraint accepts the chosen NumPy
    from builder.plan.resolve import _constraints
    for name in ("chainer", "torch", "tensorflow"):
        rc = resolved.get(name)
        assert _constraints(rc.component, rc.version)["numpy"].contains(got["numpy"]), name
    # the CPU variant does not get the CUDA components: torch brings its own wheels
    assert not {"cuda", "cudnn", "nccl", "cupy"} & set(got)


def test_tensorflow_alone_refuses_the_numpy_default(catalog, tmp_path):
    # without Chainer, TensorFlow 2.18 (numpy<2.1) still keeps the default 2.1.3 out
    got = resolve(load_stack(_child(tmp_path, {"tensorflow": "2.18.0"}, extends="python"), paths.stacks_dir()),
                  catalog).versions()
    assert got["numpy"] == "1.26.4"


def test_all_in_one_forcing_numpy_2_is_an_explained_conflict(catalog, tmp_path):
    path = _child(tmp_path, {"numpy": "2.1.3"}, extends="all-in-one")
    with pytest.raises(ResolveError) as info:
        resolve(load_stack(path, paths.stacks_dir()), catalog)
    msg = info.value.one_line()
    assert "chainer 7.8.1 needs numpy<2" in msg and "stack asks numpy 2.1.3" in msg and "child.yaml" in msg
    assert "\n" not in str(info.value)


def test_numpy_2_without_chainer_is_refused_by_tensorflow(catalog, tmp_path):
    path = _child(tmp_path, {"numpy": "2.1.3", "tensorflow": ">=2.16", "torch": "2.*"}, extends="python")
    with pytest.raises(ResolveError) as info:
        resolve(load_stack(path, paths.stacks_dir()), catalog)
    assert re.search(r"tensorflow 2\.\d+\.\d+ needs numpy<2", info.value.one_line())


def test_all_in_one_gpu_keeps_cudnn_8_for_cupy_so_tensorflow_drops_to_2_17(catalog):
    resolved = resolve(real("all-in-one-gpu"), catalog)
    got = resolved.versions()
    assert (got["cupy"], got["cudnn"], got["numpy"]) == ("13.6.0", "8.9.7.29", "1.26.4")
    assert got["tensorflow"] == "2.17.1"     # 2.18 is built for cuDNN 9.3 (its `constrains`)
    assert got["protobuf"] == "4.25.9"       # and 2.17 asks protobuf<5
    assert got["torch"] == "2.5.1"           # brings its own cuDNN 9 wheel (libcudnn.so.9)


def test_tensorflow_2_18_with_cudnn_8_names_both(catalog, tmp_path):
    path = _child(tmp_path, {"tensorflow": "2.18.0"}, extends="all-in-one-gpu")
    with pytest.raises(ResolveError) as info:
        resolve(load_stack(path, paths.stacks_dir()), catalog)
    msg = info.value.one_line()
    assert "cudnn" in msg and "tensorflow 2.18.0" in msg
