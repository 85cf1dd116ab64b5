"""Every deliberately bad stack file is refused by `dlenv render FILE` with exit status 1 and one
line `dlenv: error: ...` that names the file, the line and the field (tests/fixtures/stacks/bad/)."""

from __future__ import annotations

import re

import pytest
import yaml

from dlenv_unit import BAD

CASES = yaml.safe_load((BAD / "cases.yaml").read_text())
ANSI = re.compile(r"\x1b\[")


def _params(with_bugs: bool):
    out = []
    for name, case in sorted(CASES.items()):
        marks = []
        if with_bugs and case.get("bug"):
            marks.append(pytest.mark.xfail(strict=True, reason=case["bug"]))
        out.append(pytest.param(name, case, id=name, marks=marks))
    return out


def assert_one_line_error(result) -> str:
    """Exit 1, nothing on stdout, exactly one `dlenv: error:` line on stderr, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("dlenv: error: "), line
    assert "Traceback" not in result.output
    assert not ANSI.search(result.output), repr(result.output)
    return line


def test_the_fixture_folder_and_the_case_list_agree():
    files = sorted(p.name for p in BAD.iterdir() if p.name != "cases.yaml")
    assert files == sorted(CASES)
    assert len(CASES) >= 40
    for name, case in CASES.items():
        assert case["expect"], f"{name} has no expected substring"


@pytest.mark.parametrize("name,case", _params(with_bugs=False))
def test_bad_stack_is_one_error_line(cli, name, case):
    assert_one_line_error(cli("render", BAD / name))


@pytest.mark.parametrize("name,case", _params(with_bugs=True))
def test_bad_stack_message_names_file_line_and_field(cli, name, case):
    line = assert_one_line_error(cli("render", BAD / name))
    named = case.get("file", name)
    if "line" in case:
        assert f"{named}:{case['line']}: " in line, line
    else:
        assert named in line, line
    for expected in case["expect"]:
        assert expected in line, f"{expected!r} not in {line!r}"


def test_bad_stack_refused_when_named_relative_to_the_working_directory(cli, monkeypatch):
    monkeypatch.chdir(BAD)
    line = assert_one_line_error(cli("render", "comp_unquoted_python.yaml"))
    assert line.startswith("dlenv: error: comp_unquoted_python.yaml:5: components.python: ")


def test_unquoted_python_version_says_to_quote_it(cli):
    line = assert_one_line_error(cli("render", BAD / "comp_unquoted_python.yaml"))
    assert "3.10" in line and "quoted" in line and 'python: "3.10"' in line
    assert "3.1 " in line  # and says what YAML made of it


# --- files that are better written by the test than committed -----------------------------------

def test_binary_file(cli, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"schema: 1\nname: bin\n\x00\x01\x02\xff\xfe")
    line = assert_one_line_error(cli("render", path))
    assert "binary.yaml" in line and "binary" in line.split("binary.yaml", 1)[1]


def test_elf_like_file(cli, tmp_path):
    path = tmp_path / "program.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    line = assert_one_line_error(cli("render", path))
    assert "program.yaml" in line and "NUL" in line


def test_non_utf8_file(cli, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("schema: 1\nname: latin\ndescription: caf\u00e9 au lait\n".encode("latin-1"))
    line = assert_one_line_error(cli("render", path))
    assert "latin1.yaml:3: " in line and "UTF-8" in line and "0xe9" in line


def test_utf16_file(cli, tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_bytes("schema: 1\nname: wide\n".encode("utf-16"))
    line = assert_one_line_error(cli("render", path))
    assert "utf16.yaml" in line


def test_oversized_file(cli, tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("schema: 1\nname: huge\ndescription: x\n" + "# padding\n" * 120_000)
    line = assert_one_line_error(cli("render", path))
    assert "huge.yaml" in line and "larger than" in line


def test_directory_instead_of_file(cli, tmp_path):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    line = assert_one_line_error(cli("render", folder))
    assert "folder.yaml" in line


def test_missing_file(cli, tmp_path):
    line = assert_one_line_error(cli("render", tmp_path / "nowhere.yaml"))
    assert "nowhere.yaml" in line and "not found" in line


def test_alias_bomb_is_refused_quickly(cli):
    import time
    start = time.monotonic()
    line = assert_one_line_error(cli("render", BAD / "alias_bomb.yaml"))
    assert time.monotonic() - start < 5
    assert "alias bomb" in line


def test_error_stays_on_one_line_on_a_narrow_terminal(cli, tmp_path):
    deep = tmp_path.joinpath(*[f"folder-{i:02d}" for i in range(12)])
    deep.mkdir(parents=True)
    path = deep / "narrow.yaml"
    path.write_text((BAD / "comp_unquoted_python.yaml").read_text())
    result = cli("render", path, env={"COLUMNS": "20"})
    line = assert_one_line_error(result)
    assert str(path) in line and len(line) > 200


def test_debug_flag_shows_the_exception_instead(cli):
    from builder.errors import SpecError
    result = cli("--debug", "render", BAD / "comp_unquoted_python.yaml")
    assert result.exit_code == 1
    assert isinstance(result.exception, SpecError)
    assert result.exception.field == "components.python" and result.exception.line == 5
