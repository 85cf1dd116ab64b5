"""builder.settings.settings: default < user file < project file < environment < command line, each value with its
source; bad files give one-line errors naming the file, the line and the key; `dlenv config` shows it all."""

from __future__ import annotations

import json

import pytest

from builder.cli.app import main
from builder.cli.doctor import config_cmd
from builder.errors import DlenvError
from builder.settings.settings import KEYS, load_settings, project_config_path, user_config_path

if "config" not in main.commands:  # until builder/cli.py registers it
    main.add_command(config_cmd, "config")


@pytest.fixture
def env(tmp_path):
    """A clean environment: a fake HOME and XDG_CONFIG_HOME, none of the DLENV_* variables."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def write_user(env, text: str):
    path = user_config_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_project(project, text: str):
    path = project_config_path(project)
    path.write_text(text)
    return path


def test_defaults_only(env, project):
    s = load_settings(environ=env, cwd=project)
    assert s.get("shm_size") == "8g" and s.source("shm_size") == "default"
    for key in ("registry", "debian_mirror", "ca_bundle", "base"):
        assert s.get(key) is None and s.source(key) == "default"


def test_each_layer_overrides_the_one_below_and_says_so(env, project):
    user = write_user(env, "registry: user.example:5000\n")
    s = load_settings(environ=env, cwd=project)
    assert (s.get("registry"), s.source("registry")) == ("user.example:5000", str(user))

    proj = write_project(project, "registry: project.example:5000\n")
    s = load_settings(environ=env, cwd=project)
    assert (s.get("registry"), s.source("registry")) == ("project.example:5000", str(proj))

    env["DLENV_REGISTRY"] = "env.example:5000"
    s = load_settings(environ=env, cwd=project)
    assert (s.get("registry"), s.source("registry")) == ("env.example:5000", "$DLENV_REGISTRY")

    s = load_settings({"registry": "flag.example:5000"}, environ=env, cwd=project)
    assert (s.get("registry"), s.source("registry")) == ("flag.example:5000", "--registry")


def test_layers_mix_key_by_key(env, project, tmp_path):
    user = write_user(env, "shm_size: 2g\nregistry: user.example\n")
    proj = write_project(project, "registry: project.example/team\n")
    env["DLENV_DEBIAN_MIRROR"] = "http://mirror.example/debian"
    s = load_settings({"ca_bundle": str(tmp_path / "ca.pem"), "base": None}, environ=env, cwd=project)
    assert {k: (s.get(k), s.source(k)) for k in KEYS} == {
        "registry": ("project.example/team", str(proj)),
        "debian_mirror": ("http://mirror.example/debian", "$DLENV_DEBIAN_MIRROR"),
        "debian_snapshot": (None, "default"),
        "ca_bundle": (str(tmp_path / "ca.pem"), "--ca-bundle"),
        "shm_size": ("2g", str(user)),
        "engine": ("sdk", "default"),
        "base": (None, "default"),   # an override of None means "flag not given"
    }


def test_an_empty_environment_variable_is_ignored(env, project):
    write_user(env, "shm_size: 2g\n")
    env["DLENV_SHM_SIZE"] = ""
    assert load_settings(environ=env, cwd=project).get("shm_size") == "2g"


def test_xdg_config_home_is_honoured(env, project, tmp_path):
    assert user_config_path(env) == tmp_path / "xdg" / "dlenv" / "config.yaml"
    write_user(env, "shm_size: 1g\n")
    assert load_settings(environ=env, cwd=project).source("shm_size") == str(tmp_path / "xdg/dlenv/config.yaml")
    # without XDG_CONFIG_HOME the file under $HOME/.config is read, not the XDG one
    no_xdg = {"HOME": env["HOME"]}
    assert user_config_path(no_xdg) == tmp_path / "home" / ".config" / "dlenv" / "config.yaml"
    assert load_settings(environ=no_xdg, cwd=project).source("shm_size") == "default"


def one_line_error(exc_info) -> str:
    text = exc_info.value.one_line()
    assert "\n" not in text and "Traceback" not in text
    return text


def test_unknown_key_names_file_line_and_suggests(env, project):
    path = write_project(project, "shm_size: 1g\nregisty: example.org\n")
    with pytest.raises(DlenvError) as exc_info:
        load_settings(environ=env, cwd=project)
    text = one_line_error(exc_info)
    assert text.startswith(f"{path}:2: registy: unknown setting 'registy'")
    assert "did you mean 'registry'?" in text


def test_unknown_key_far_from_any_lists_the_valid_ones(env, project):
    path = write_user(env, "colour: blue\n")
    with pytest.raises(DlenvError) as exc_info:
        load_settings(environ=env, cwd=project)
    text = one_line_error(exc_info)
    assert str(path) in text and "colour" in text
    assert all(key in text for key in KEYS)


@pytest.mark.parametrize("line, key", [
    ("shm_size: lots", "shm_size"),
    ("shm_size: 8", "shm_size"),                       # an int, not the string "8g"
    ("debian_mirror: ftp://mirror.example/debian", "debian_mirror"),
    ("registry: 'not a host'", "registry"),
    ("base: UPPER/Case", "base"),
    ("registry: [a, b]", "registry"),
])
def test_a_wrong_value_names_file_line_and_key(env, project, line, key):
    path = write_user(env, f"# dlenv settings\n{line}\n")
    with pytest.raises(DlenvError) as exc_info:
        load_settings(environ=env, cwd=project)
    text = one_line_error(exc_info)
    assert text.startswith(f"{path}:2: {key}: ")
    # A non-string (YAML number or list) is told to quote; a string that fails its pattern is invalid.
    assert "is not a valid value" in text or "must be a quoted string" in text


def test_a_file_that_is_not_a_mapping_is_refused(env, project):
    path = write_project(project, "- registry\n- shm_size\n")
    with pytest.raises(DlenvError) as exc_info:
        load_settings(environ=env, cwd=project)
    assert str(path) in one_line_error(exc_info)


def test_invalid_yaml_names_the_file(env, project):
    path = write_project(project, "registry: [unclosed\n")
    with pytest.raises(DlenvError) as exc_info:
        load_settings(environ=env, cwd=project)
    assert one_line_error(exc_info).startswith(str(path))


def test_an_empty_or_comment_only_file_sets_nothing(env, project):
    write_user(env, "")
    write_project(project, "# nothing yet\n")
    assert load_settings(environ=env, cwd=project).source("shm_size") == "default"


@pytest.mark.parametrize("where, expected", [
    ("env", "DLENV_SHM_SIZE"),
    ("flag", "--shm-size"),
])
def test_a_wrong_value_from_env_or_flag_names_its_source(env, project, where, expected):
    overrides = None
    if where == "env":
        env["DLENV_SHM_SIZE"] = "huge"
    else:
        overrides = {"shm_size": "huge"}
    with pytest.raises(DlenvError) as exc_info:
        load_settings(overrides, environ=env, cwd=project)
    text = one_line_error(exc_info)
    assert text.startswith(f"{expected}: shm_size: 'huge' is not a valid value")


# --- dlenv config -----------------------------------------------------------------------------------

@pytest.fixture
def config_cli(cli, env, project, monkeypatch):
    monkeypatch.chdir(project)
    clean = {var: None for var, *_ in KEYS.values()}

    def invoke(*args, extra=None):
        return cli("config", *args, env={**clean, **env, **(extra or {})})

    return invoke


def test_config_json_shows_every_key_value_and_source(config_cli, env, project):
    user = write_user(env, "shm_size: 2g\n")
    write_project(project, "registry: project.example:5000\n")
    result = config_cli("--json", extra={"DLENV_BASE": "nvidia/cuda:12.4.1-runtime-ubuntu22.04"})
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.stdout)}
    assert list(rows) == list(KEYS)
    assert (rows["shm_size"]["value"], rows["shm_size"]["source"]) == ("2g", str(user))
    assert (rows["registry"]["value"], rows["registry"]["source"]) == ("project.example:5000",
                                                                       str(project / ".dlenv.yaml"))
    assert (rows["base"]["value"], rows["base"]["source"]) == ("nvidia/cuda:12.4.1-runtime-ubuntu22.04", "$DLENV_BASE")
    assert (rows["ca_bundle"]["value"], rows["ca_bundle"]["source"]) == (None, "default")
    assert rows["registry"]["env"] == "DLENV_REGISTRY" and rows["registry"]["help"]


def test_config_table_lists_every_key(config_cli, env):
    write_user(env, "shm_size: 2g\n")
    result = config_cli(extra={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for key in KEYS:
        assert key in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if "shm_size" in ln)
    assert "2g" in line and "config.yaml" in line


def test_config_with_a_bad_file_is_one_red_line_and_exit_1(config_cli, project):
    write_project(project, "shm_sise: 2g\n")
    result = config_cli()
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "shm_sise" in result.stderr and "did you mean 'shm_size'?" in result.stderr
    assert "Traceback" not in result.output


def test_config_path(config_cli, env, project):
    write_user(env, "shm_size: 2g\n")
    result = config_cli("path", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "user": {"path": str(user_config_path(env)), "exists": True},
        "project": {"path": str(project / ".dlenv.yaml"), "exists": False},
    }
    text = config_cli("path").stdout.splitlines()
    assert text[0].split()[:2] == ["user", str(user_config_path(env))]
    assert text[1].split()[:2] == ["project", str(project / ".dlenv.yaml")]
