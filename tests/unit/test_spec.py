"""Stack files: line-aware YAML loading, validation messages, `extends` chains and their merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import paths
from builder.errors import SpecError
from builder.spec.schema import parse_requirement, parse_version_spec
from builder.spec.stack import DEFAULT_BASE, Check, find_stack, load_chain, load_stack, load_stack_file, looks_like_path
from builder.spec.yamlload import MAX_NODES, field_name, load_yaml


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- yamlload -------------------------------------------------------------------------------

def test_load_yaml_keeps_the_line_of_every_key_and_item(tmp_path):
    path = write(tmp_path / "s.yaml", "# comment\nschema: 1\nname: x\n\ncomponents:\n  python: \"3.11\"\n"
                 "python_packages:\n  - a==1\n  - b==2\n")
    data, lines = load_yaml(path)
    assert data == {"schema": 1, "name": "x", "components": {"python": "3.11"}, "python_packages": ["a==1", "b==2"]}
    assert lines[("schema",)] == 2
    assert lines[("components",)] == 5
    assert lines[("components", "python")] == 6
    assert lines[("python_packages", 0)] == 8
    assert lines[("python_packages", 1)] == 9


def test_crlf_and_byte_order_mark_are_accepted(tmp_path):
    path = tmp_path / "win.yaml"
    path.write_bytes(b"\xef\xbb\xbfschema: 1\r\nname: win\r\ncomponents:\r\n  python: \"3.11\"\r\n")
    data, lines = load_yaml(path)
    assert data["name"] == "win" and data["components"] == {"python": "3.11"}
    assert lines[("components", "python")] == 4


def test_yaml_1_1_boolean_words_stay_keys(tmp_path):
    # "NO" and "ON" are booleans in YAML 1.1; as env names they must stay the words written
    path = write(tmp_path / "s.yaml", "schema: 1\nname: x\nenv:\n  NO: \"1\"\n  ON: \"2\"\n")
    assert load_stack_file(path).env == {"NO": "1", "ON": "2"}


def test_field_name():
    assert field_name(("components", "chainer")) == "components.chainer"
    assert field_name(("checks", 0, "script")) == "checks[0].script"
    assert field_name(()) == "(document)"


def test_node_limit_counts_aliases(tmp_path):
    # 30 aliases of a 1000-item list: small file, but more nodes than allowed once expanded
    items = ", ".join(["x"] * 1000)
    text = f"big: &big [{items}]\n" + "".join(f"k{i}: *big\n" for i in range(MAX_NODES // 1000 + 10))
    path = write(tmp_path / "s.yaml", text)
    assert path.stat().st_size < 10_000
    with pytest.raises(SpecError, match="alias bomb"):
        load_yaml(path)


def test_a_few_aliases_are_fine(tmp_path):
    path = write(tmp_path / "s.yaml", "a: &v \"1\"\nb: *v\n")
    assert load_yaml(path)[0] == {"a": "1", "b": "1"}


@pytest.mark.parametrize("text,line", [
    ("schema: 1\nname: x\ncomponents:\n  python: \"3.11\n", 5),      # unterminated string: found at the end
    ("schema: 1\nname: x\nenv: {A: b\n", 4),
    ("schema: 1\nname: [x\nextends: y\n", 3),
])
def test_yaml_syntax_errors_carry_a_line(tmp_path, text, line):
    path = write(tmp_path / "s.yaml", text)
    with pytest.raises(SpecError) as info:
        load_yaml(path)
    assert info.value.line == line, info.value.one_line()
    assert info.value.one_line().startswith(f"{path}:{info.value.line}: invalid YAML")


# --- validation messages: file, line, field ---------------------------------------------------

@pytest.mark.parametrize("body,line,field,words", [
    ("components:\n  chainer: 7\n", 5, "components.chainer", 'chainer: "7"'),
    ("env:\n  A: \"1\"\n  B: 2\n", 6, "env.B", "expected a string"),
    ("python_packages:\n  - ok==1\n  - \"bad pkg\"\n", 6, "python_packages[1]", "'bad pkg'"),
    ("checks:\n  - name: c\n    command: id\n    timeout: 0\n", 7, "checks[0].timeout", "out of range"),
    ("descripton: x\n", 4, "descripton", "did you mean 'description'"),
])
def test_errors_name_file_line_and_field(tmp_path, body, line, field, words):
    path = write(tmp_path / "s.yaml", "schema: 1\nname: s\nextends: python\n" + body)
    with pytest.raises(SpecError) as info:
        load_stack_file(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert err.one_line().startswith(f"{path}:{line}: {field}: ")
    assert words in err.one_line()


def test_check_errors_carry_the_line_of_the_check(tmp_path):
    path = write(tmp_path / "s.yaml", "schema: 1\nname: s\nchecks:\n  - name: ok\n    command: id\n"
                 "  - name: two\n    command: id\n    python: 'import os'\n")
    with pytest.raises(SpecError) as info:
        load_stack_file(path)
    assert info.value.line == 6 and info.value.field == "checks[1]"


def test_check_with_two_kinds_is_refused():
    with pytest.raises(SpecError, match="exactly one of"):
        Check.from_dict({"name": "x", "command": "id", "file": "/etc/passwd"}, Path("s.yaml"), Path("."))


@pytest.mark.parametrize("script", ["../up.py", "checks/../../up.py", "/etc/passwd"])
def test_check_script_must_stay_inside_the_stack_folder(tmp_path, script):
    with pytest.raises(SpecError, match="inside"):
        Check.from_dict({"name": "x", "script": script}, tmp_path / "s.yaml", tmp_path)


def test_check_script_may_not_leave_through_a_symlink(tmp_path):
    outside = write(tmp_path / "outside" / "evil.py", "print(1)\n")
    stack_dir = tmp_path / "stack"
    (stack_dir / "checks").mkdir(parents=True)
    (stack_dir / "checks" / "evil.py").symlink_to(outside)
    path = write(stack_dir / "s.yaml", "schema: 1\nname: s\nchecks:\n  - name: x\n    script: checks/evil.py\n")
    with pytest.raises(SpecError):
        load_stack_file(path)


# --- value parsing --------------------------------------------------------------------------

@pytest.mark.parametrize("text,inside,outside", [
    ("7.8.1", ["7.8.1"], ["7.8.2", "7.8"]),
    ("13.*", ["13.0", "13.6.0"], ["14.0.1", "12.9"]),
    (">=12,<13", ["12.0", "12.6"], ["13.0", "11.8"]),
    ("3.10", ["3.10"], ["3.1"]),
])
def test_parse_version_spec(text, inside, outside):
    spec = parse_version_spec(text, Path("s.yaml"), 1, "components.x")
    assert all(spec.contains(v) for v in inside)
    assert not any(spec.contains(v) for v in outside)


@pytest.mark.parametrize("text", ["$(id)", "1;2", "1 && 2", "`1`", "1|2", "1\n2", "", "latest", "==", "1.0'"])
def test_parse_version_spec_refuses(text):
    with pytest.raises(SpecError):
        parse_version_spec(text, Path("s.yaml"), 1, "components.x")


@pytest.mark.parametrize("text", ["requests==2.32.3", "scipy>=1.11", "pkg[extra,other]~=1.0", "a-b_c.d!=1.0,<2",
                                  "numpy"])
def test_parse_requirement_accepts(text):
    assert parse_requirement(text, Path("s.yaml"), 1, "python_packages[0]").name


@pytest.mark.parametrize("text,words", [
    ("pkg @ https://x.invalid/p.whl", "direct URL"),
    ("pkg; sys_platform == 'linux'", "marker"),
    ("pkg==1 ; os_name=='posix'", "marker"),
    ("pkg$(id)", "not a valid"),
    ("-r other.txt", "not a valid"),
])
def test_parse_requirement_refuses(text, words):
    with pytest.raises(SpecError) as info:
        parse_requirement(text, Path("s.yaml"), 3, "python_packages[0]")
    assert words in info.value.one_line() and "s.yaml:3: python_packages[0]" in info.value.one_line()


# --- find_stack -----------------------------------------------------------------------------

def test_find_stack_by_name_and_by_path(tmp_path):
    stacks = tmp_path / "stacks"
    write(stacks / "alpha.yaml", "schema: 1\nname: alpha\n")
    elsewhere = write(tmp_path / "project" / "dlenv.yaml", "schema: 1\nname: proj\n")
    assert find_stack("alpha", stacks) == stacks / "alpha.yaml"
    assert find_stack(str(elsewhere), stacks) == elsewhere
    assert find_stack("./dlenv.yaml", stacks, relative_to=elsewhere.parent) == elsewhere
    assert find_stack("dlenv.yaml", stacks, relative_to=elsewhere.parent) == elsewhere


def test_a_bare_name_is_a_catalog_name_even_beside_a_file_of_that_name(tmp_path):
    stacks = tmp_path / "stacks"
    write(stacks / "alpha.yaml", "schema: 1\nname: alpha\n")
    project = tmp_path / "project"
    write(project / "alpha.yaml", "schema: 1\nname: local\n")
    assert find_stack("alpha", stacks, relative_to=project) == stacks / "alpha.yaml"
    assert find_stack("./alpha.yaml", stacks, relative_to=project) == project / "alpha.yaml"


def test_find_stack_unknown_name_suggests(tmp_path):
    write(tmp_path / "chainer.yaml", "schema: 1\nname: chainer\n")
    with pytest.raises(SpecError) as info:
        find_stack("chainr", tmp_path)
    assert info.value.one_line() == "chainr: unknown stack (did you mean 'chainer'?)"
    with pytest.raises(SpecError) as info:
        find_stack("zzzzzz", tmp_path)
    assert info.value.one_line() == "zzzzzz: unknown stack (known stacks: chainer)"


@pytest.mark.parametrize("ref", ["Bad Name", "a;b", "$(id)"])
def test_find_stack_refuses_what_is_neither_name_nor_path(tmp_path, ref):
    with pytest.raises(SpecError, match="not a stack name"):
        find_stack(ref, tmp_path)


def test_find_stack_missing_path(tmp_path):
    with pytest.raises(SpecError, match="stack file not found"):
        find_stack(str(tmp_path / "nope.yaml"), tmp_path)


@pytest.mark.parametrize("ref,is_path", [("chainermn", False), ("a/b", True), ("x.yaml", True), ("x.yml", True),
                                         ("./x", True), ("chainer-gpu", False)])
def test_looks_like_path(ref, is_path):
    assert looks_like_path(ref) is is_path


# --- extends: chain and merge ---------------------------------------------------------------

@pytest.fixture
def chain_dir(tmp_path):
    stacks = tmp_path / "stacks"
    write(stacks / "root.yaml", """\
schema: 1
name: root
description: the root
base:
  bootstrap: {suite: trixie}
components:
  python: "3.11"
  numpy: "2.1.3"
python_packages:
  - requests==2.31.0
  - scipy>=1.11
  - typing_extensions==4.0.0
apt_packages: [curl, git]
env:
  A: root
  B: root
checks:
  - name: root check
    command: "true"
""")
    write(tmp_path / "project" / "mid.yaml", """\
schema: 1
name: mid
extends: root
components:
  numpy: "1.26.4"
python_packages:
  - Requests==2.32.3
  - typing-extensions==4.12.2
apt_packages: [git, less]
env:
  B: mid
  C: mid
checks:
  - name: mid check
    command: "true"
""")
    write(tmp_path / "project" / "leaf.yaml", """\
schema: 1
name: leaf
extends: ./mid.yaml
components:
  chainer: "7.8.1"
python_packages:
  - tqdm==4.66.0
env:
  C: leaf
""")
    return tmp_path


def test_chain_is_root_first_and_follows_relative_paths(chain_dir, monkeypatch):
    monkeypatch.chdir("/")
    chain = load_chain(str(chain_dir / "project" / "leaf.yaml"), chain_dir / "stacks")
    assert [s.name for s in chain] == ["root", "mid", "leaf"]
    assert chain[0].path == chain_dir / "stacks" / "root.yaml"


def test_merge_child_overrides_versions_and_env(chain_dir):
    merged = load_stack(str(chain_dir / "project" / "leaf.yaml"), chain_dir / "stacks")
    assert merged.name == "leaf"
    assert {k: text for k, (_, text, _) in merged.components.items()} == \
           {"python": "3.11", "numpy": "1.26.4", "chainer": "7.8.1"}
    _, _, origin = merged.components["numpy"]
    assert (Path(origin.path).name, origin.line, origin.field) == ("mid.yaml", 5, "components.numpy")
    assert merged.env == {"A": "root", "B": "mid", "C": "leaf"}
    assert merged.apt_packages == ("curl", "git", "less")
    assert merged.base == {"bootstrap": {"suite": "trixie"}}
    assert merged.description == "the root"
    assert [c.name for c in merged.checks] == ["root check", "mid check"]


def test_merge_python_packages_later_wins_per_package_name(chain_dir):
    merged = load_stack(str(chain_dir / "project" / "leaf.yaml"), chain_dir / "stacks")
    texts = [t for t, _ in merged.python_packages]
    assert texts == ["Requests==2.32.3", "scipy>=1.11", "typing-extensions==4.12.2", "tqdm==4.66.0"]
    origin = dict(merged.python_packages)["Requests==2.32.3"]
    assert Path(origin.path).name == "mid.yaml" and origin.line == 7


def test_merge_python_packages_uses_normalised_names(tmp_path):
    write(tmp_path / "root.yaml", "schema: 1\nname: root\npython_packages: [zope.interface==6.0]\n")
    leaf = write(tmp_path / "leaf.yaml", "schema: 1\nname: leaf\nextends: root\npython_packages: [Zope-Interface==7.0]\n")
    assert [t for t, _ in load_stack(str(leaf), tmp_path).python_packages] == ["Zope-Interface==7.0"]


def test_default_base_when_no_stack_names_one(tmp_path):
    leaf = write(tmp_path / "only.yaml", "schema: 1\nname: only\n")
    assert load_stack(str(leaf), tmp_path).base == DEFAULT_BASE


def test_extends_chain_deeper_than_32_is_refused(tmp_path):
    write(tmp_path / "s0.yaml", "schema: 1\nname: s0\n")
    for i in range(1, 40):
        write(tmp_path / f"s{i}.yaml", f"schema: 1\nname: s{i}\nextends: s{i - 1}\n")
    with pytest.raises(SpecError, match="deeper than 32"):
        load_chain("s39", tmp_path)
    assert len(load_chain("s20", tmp_path)) == 21


def test_cycle_through_catalog_names(tmp_path):
    write(tmp_path / "a.yaml", "schema: 1\nname: a\nextends: b\n")
    write(tmp_path / "b.yaml", "schema: 1\nname: b\nextends: a\n")
    with pytest.raises(SpecError) as info:
        load_chain("a", tmp_path)
    assert "cycle" in info.value.one_line() and info.value.field == "extends"


def test_catalog_chain():
    chain = load_chain("chainermn", paths.stacks_dir())
    assert [s.name for s in chain] == ["python", "chainer", "chainer-gpu", "chainermn"]
