"""The command line through click's CliRunner: version, help, list, show, render (no engine)."""

from __future__ import annotations

import json
import re

import pytest

from builder import __version__, paths
from builder.plan.plan import plan

from dlenv_unit import BAD, CATALOG_NAMES, GOOD, SHIPPED_STACKS


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def test_version(cli):
    result = ok(cli("--version"))
    assert result.stdout.strip() == f"dlenv, version {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(cli, flag):
    out = ok(cli(flag)).stdout
    assert "Usage: " in out and "dlenv" in out
    for command in ("build", "list", "render", "show", "verify"):
        assert re.search(rf"^\s+{command}\b", out, flags=re.M), command


@pytest.mark.parametrize("command", ["render", "show", "list", "build", "verify"])
def test_subcommand_help(cli, command):
    out = ok(cli(command, "--help")).stdout
    first = out.splitlines()[0]
    assert first.startswith("Usage: ") and f" {command} [OPTIONS]" in first, first
    assert "Show this message and exit." in out


def test_unknown_command_is_a_usage_error(cli):
    result = cli("rendr")
    assert result.exit_code == 2
    assert "No such command 'rendr'" in result.stderr
    assert "Did you mean" in result.stderr and "'render'" in result.stderr.split("Did you mean", 1)[1]
    assert result.stdout == "" and "Traceback" not in result.output


def test_list_json_lists_the_catalog_stacks(cli):
    rows = json.loads(ok(cli("list", "--json")).stdout)
    assert [r["stack"] for r in rows] == CATALOG_NAMES
    assert set(SHIPPED_STACKS) <= set(CATALOG_NAMES)
    by_name = {r["stack"]: r for r in rows}
    assert by_name["python"]["extends"] == ""
    assert by_name["chainer"]["extends"] == "python"
    assert by_name["chainer-gpu"]["extends"] == "chainer"
    assert by_name["chainermn"]["extends"] == "chainer-gpu"
    assert by_name["chainermn"]["versions"]["numpy"] == "1.26.4"
    assert by_name["python"]["versions"] == {"python": "3.11"}
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{16}", r["hash"]), r
        assert r["hash"] == plan(r["stack"]).content_hash[:16]
        assert r["description"]
    assert len({r["hash"] for r in rows}) == len(rows)


def test_list_table(cli):
    out = ok(cli("list", env={"COLUMNS": "200"})).stdout
    for name in CATALOG_NAMES:
        assert name in out


def test_show_chainermn_json(cli):
    data = json.loads(ok(cli("show", "chainermn", "--json")).stdout)
    p = plan("chainermn")
    assert data["stack"] == "chainermn"
    assert [c.rsplit("/", 1)[-1] for c in data["chain"]] == \
           ["python.yaml", "chainer.yaml", "chainer-gpu.yaml", "chainermn.yaml"]
    assert data["chain"][-1] == str(paths.stacks_dir() / "chainermn.yaml")
    assert data["content_hash"] == p.content_hash and re.fullmatch(r"[0-9a-f]{64}", data["content_hash"])
    assert data["image"] == f"dlenv/chainermn:{p.content_hash[:16]}"
    components = {c["name"]: c for c in data["components"]}
    assert [c["name"] for c in data["components"]] == [c.name for c in p.resolved.components]
    assert components["numpy"] == {"name": "numpy", "version": "1.26.4", "group": "python",
                                   "reason": "required by chainer 7.8.1"}
    assert re.search(r"/chainer\.yaml:\d+$", components["chainer"]["reason"])
    assert components["openmpi"]["group"] == "compile"
    assert components["cupy"]["version"] == "13.6.0"
    assert data["python_packages"] == []
    assert "openssh-client" in data["apt_runtime"] and data["apt_runtime"] == sorted(data["apt_runtime"])


def test_show_table(cli):
    out = ok(cli("show", "chainer", env={"COLUMNS": "200"})).stdout
    assert "chainer" in out and "numpy" in out and "1.26.4" in out
    assert plan("chainer").content_hash in out


def test_show_hash_matches_list(cli):
    shown = json.loads(ok(cli("show", "chainer-gpu", "--json")).stdout)
    listed = {r["stack"]: r for r in json.loads(ok(cli("list", "--json")).stdout)}
    assert shown["content_hash"][:16] == listed["chainer-gpu"]["hash"]


def test_render_python_is_deterministic(cli):
    first = ok(cli("render", "python"))
    second = ok(cli("render", "python"))
    assert first.stdout == second.stdout
    assert first.stdout == plan("python").context.dockerfile
    assert first.stderr == ""
    assert first.stdout.startswith("# Rendered by dlenv")


def test_render_by_path_equals_render_by_name(cli):
    by_name = ok(cli("render", "chainer")).stdout
    by_path = ok(cli("render", paths.stacks_dir() / "chainer.yaml")).stdout
    assert by_name == by_path


def test_render_quiet_prints_the_dockerfile_too(cli):
    assert ok(cli("-q", "render", "python")).stdout == ok(cli("render", "python")).stdout


@pytest.mark.parametrize("fixture", sorted(p.name for p in GOOD.glob("*.yaml")))
def test_good_fixtures_render(cli, fixture):
    out = ok(cli("render", GOOD / fixture)).stdout
    assert "FROM " in out and "AS runtime" in out


def test_render_unknown_stack_name_suggests(cli):
    result = cli("render", "chainr")
    assert result.exit_code == 1
    assert result.stderr == "dlenv: error: chainr: unknown stack (did you mean 'chainer'?)\n"


def test_render_without_a_stack_wants_a_project_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dlenv.yaml here: the default stack is missing, said in one line
    result = cli("render")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "no stack given and no dlenv.yaml in this folder" in result.stderr


def test_show_of_a_bad_stack_is_one_line_too(cli):
    result = cli("show", BAD / "comp_unquoted_python.yaml", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("dlenv: error: ")


def test_catalog_override_by_environment(cli, tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "tiny.yaml").write_text((paths.stacks_dir() / "python.yaml").read_text().replace("name: python",
                                                                                             "name: tiny"))
    rows = json.loads(ok(cli("list", "--json", env={"DLENV_STACKS_DIR": str(stacks)})).stdout)
    assert [r["stack"] for r in rows] == ["tiny"]
