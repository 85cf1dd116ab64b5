"""Project stacks without the engine: ./dlenv.yaml as the default stack, `files:` copied from the
stack's folder only (ignore list, no escape through `..` or symlinks, the hash follows the bytes
and the exec bit), and `dlenv init` taking over requirements files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.plan.plan import plan
from builder.cli.app import main
from builder.errors import SpecError

ENV = {"NO_COLOR": "1", "COLUMNS": "300", "DOCKER_HOST": "unix:///nonexistent.sock"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    write(tmp_path / "src" / "train.py", "print('train')\n")
    write(tmp_path / "src" / "scratch.tmp", "ignored\n")
    write(tmp_path / "data" / "big.bin", "ignored too\n")
    write(tmp_path / "run.sh", "#!/bin/sh\necho run\n").chmod(0o755)
    write(tmp_path / ".dlenvignore", "# not in the image\n*.tmp\ndata\n")
    write(tmp_path / "dlenv.yaml", "schema: 1\nname: proj\nextends: python\n"
                                   "files:\n  - src\n  - {src: run.sh, dest: /opt/tools/run.sh}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_default_stack_is_the_project_file(project):
    p = plan(".")
    assert p.resolved.name == "proj"
    assert sorted(p.context.files) == sorted([
        "dlenv-build/constraints.txt", "dlenv-runtime/profile.sh",
        "dlenv-files/0/train.py", "dlenv-files/1/run.sh"])
    assert p.context.modes["dlenv-files/1/run.sh"] == 0o755
    assert "COPY --chown=1000:1000 dlenv-files/0/ /workspace/src/" in p.context.dockerfile
    assert "COPY --chown=1000:1000 dlenv-files/1/run.sh /opt/tools/run.sh" in p.context.dockerfile
    result = CliRunner().invoke(main, ["show", "--json"], env=ENV)
    assert result.exit_code == 0 and json.loads(result.output)["stack"] == "proj"


def test_content_hash_follows_copied_bytes_and_modes_not_ignored_files(project):
    first = plan(".").content_hash
    (project / "src" / "scratch.tmp").write_text("changed, but ignored\n")
    (project / "data" / "big.bin").write_text("changed, but ignored\n")
    assert plan(".").content_hash == first
    (project / "src" / "train.py").write_text("print('train v2')\n")
    second = plan(".").content_hash
    assert second != first
    (project / "run.sh").chmod(0o644)
    assert plan(".").content_hash != second


def test_no_project_file_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["render"], env=ENV)
    assert result.exit_code == 1
    assert "no stack given and no dlenv.yaml in this folder" in result.stderr and "dlenv init" in result.stderr


@pytest.mark.parametrize("entry, message", [
    ("../outside.txt", "must be a path inside the stack's folder"),
    ("{src: missing.txt}", "does not exist"),
    ("{src: src, dest: relative/path}", "files[0]"),
    ("{src: src, dest: '/work/../etc'}", "plain absolute path"),
])
def test_files_that_escape_or_are_bad_are_refused(project, entry, message):
    write(project.parent / "outside.txt", "secret\n")
    write(project / "dlenv.yaml", f"schema: 1\nname: proj\nextends: python\nfiles:\n  - {entry}\n")
    with pytest.raises(SpecError) as exc_info:
        plan(".")
    assert message in exc_info.value.one_line() and "dlenv.yaml" in exc_info.value.one_line()


def test_a_symlink_out_of_the_folder_is_refused(project):
    write(project.parent / "secret.txt", "secret\n")
    os.symlink(project.parent / "secret.txt", project / "src" / "link.txt")
    with pytest.raises(SpecError) as exc_info:
        plan(".")
    assert "src/link.txt is a symlink out of the stack's folder" in exc_info.value.one_line()
    os.symlink(project.parent / "secret.txt", project / "direct.txt")
    write(project / "dlenv.yaml", "schema: 1\nname: proj\nextends: python\nfiles: [direct.txt]\n")
    with pytest.raises(SpecError) as exc_info:
        plan(".")
    assert "leaves the stack's folder" in exc_info.value.one_line()


def test_init_takes_over_requirements_and_says_what_it_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "requirements.txt", "numpy==1.26.4\nrequests>=2.31  # http\n-e .\n"
                                         "pandas; python_version > '3.8'\n")
    write(tmp_path / "environment.yml", "dependencies:\n  - python=3.11\n  - cudatoolkit\n"
                                        "  - pip:\n    - scikit-learn==1.5.2\n")
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\ndependencies = ['tqdm==4.66.5']\n")
    result = CliRunner().invoke(main, ["init", "--from", "python", "--name", "my-analysis"], env=ENV)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "dlenv.yaml").read_text()
    assert "name: my-analysis" in text and "extends: python" in text
    for pkg in ('"numpy==1.26.4"', '"requests>=2.31"', '"scikit-learn==1.5.2"', '"tqdm==4.66.5"'):
        assert pkg in text
    assert "-e ." in result.stderr and "environment markers" in result.stderr and "cudatoolkit" in result.stderr
    p = plan(".")  # the written file is a valid stack
    assert [t for t, _ in p.resolved.merged.python_packages] == [
        "numpy==1.26.4", "requests>=2.31", "scikit-learn==1.5.2", "tqdm==4.66.5"]
    again = CliRunner().invoke(main, ["init", "--from", "python"], env=ENV)
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_init_refuses_an_unknown_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init", "--from", "chainr"], env=ENV)
    assert result.exit_code == 1 and "did you mean 'chainer'" in result.stderr
    assert not (tmp_path / "dlenv.yaml").exists()
