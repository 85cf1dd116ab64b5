"""dlenv's own configuration: defaults < user file < project file < environment < command line.

User file: $XDG_CONFIG_HOME/dlenv/config.yaml (~/.config/dlenv/config.yaml). Project file:
.dlenv.yaml in the current directory. Both are flat YAML mappings of the keys below. Every
value remembers where it came from, for `dlenv config` and `dlenv doctor`. Pure apart from
reading those two files and the environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import ConfigError, SpecError, printable, shown
from builder.spec.schema import did_you_mean
from builder.spec.yamlload import decode_yaml_bytes, is_blank, parse_yaml_text, read_limited

MAX_CONFIG_BYTES = 100_000
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")   # no setting holds a control character

# key -> (environment variable, default, validator pattern, help)
KEYS = {
    "registry": ("DLENV_REGISTRY", None, r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$",
                 "registry HOST[:PORT][/PREFIX] for push, pull and pull-before-build"),
    "debian_mirror": ("DLENV_DEBIAN_MIRROR", None, r"^https?://\S+$",
                      "Debian mirror URL for the bootstrapped base (default: the host's apt sources)"),
    "debian_snapshot": ("DLENV_DEBIAN_SNAPSHOT", None, r"^https?://\S*\{timestamp\}\S*( https?://\S*\{timestamp\}\S*)*$",
                        "Debian snapshot service URL(s) with {timestamp}, e.g. .../archive/debian/{timestamp}: "
                        "where a build finds pins the mirror dropped, at the lock's resolution time"),
    "ca_bundle": ("DLENV_CA_BUNDLE", None, r"^[^\n\x00]+$", "extra CA bundle for pip in the build stage"),
    "shm_size": ("DLENV_SHM_SIZE", "8g", r"^[0-9]+[bkmg]?$", "/dev/shm size for shell, run and verify"),
    "engine": ("DLENV_ENGINE", "sdk", r"^(sdk|buildkit|buildah)$",
               "build engine: sdk (docker-py, classic builder), buildkit (a Docker CLI with BuildKit) or buildah "
               "(reproducible image ids)"),
    "base": ("DLENV_BASE", None, r"^[a-z0-9][a-z0-9._/:-]{0,254}(@sha256:[a-f0-9]{64})?$",
             "default base image for stacks that name none (default: bootstrapped Debian bookworm)"),
}


def user_config_path(environ=os.environ) -> Path:
    root = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", str(Path.home())), ".config")
    return Path(root) / "dlenv" / "config.yaml"


def project_config_path(cwd: Path | None = None) -> Path:
    return Path(cwd or Path.cwd()) / ".dlenv.yaml"


@dataclass
class Settings:
    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def get(self, key: str):
        return self.values.get(key)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")


def _read_file(path: Path) -> dict:
    if not os.path.lexists(path):
        return {}
    text = decode_yaml_bytes(read_limited(path, MAX_CONFIG_BYTES, "a settings file"), path)
    if is_blank(text):
        return {}  # an empty or commented-out config file sets nothing
    data, lines = parse_yaml_text(text, path)
    if not isinstance(data, dict):
        raise SpecError(path, "expected a mapping of settings", line=1)
    for key, value in data.items():
        if key not in KEYS:
            raise SpecError(path, f"unknown setting {shown(key, 60)}", line=lines.get((key,)), field=key[:60],
                            hint=did_you_mean(key, KEYS) or f"valid settings: {', '.join(KEYS)}")
        _validate(key, value, f"{path}:{lines.get((key,))}")
    return data


def _validate(key: str, value, where: str) -> None:
    pattern = KEYS[key][2]
    if not isinstance(value, str):
        raise ConfigError(f"{printable(where)}: {key}: {shown(value, 80)} must be a quoted string", hint=KEYS[key][3])
    if not re.match(pattern, value) or CONTROL.search(value):
        raise ConfigError(f"{printable(where)}: {key}: {shown(value, 80)} is not a valid value", hint=KEYS[key][3])


def load_settings(overrides: dict | None = None, environ=os.environ, cwd: Path | None = None) -> Settings:
    settings = Settings()
    for key, (_, default, _, _) in KEYS.items():
        if default is not None:
            settings.values[key] = default
            settings.sources[key] = "default"
    for path in (user_config_path(environ), project_config_path(cwd)):
        for key, value in _read_file(path).items():
            settings.values[key] = value
            settings.sources[key] = str(path)
    for key, (var, _, _, _) in KEYS.items():
        if environ.get(var):
            _validate(key, environ[var], var)
            settings.values[key] = environ[var]
            settings.sources[key] = f"${var}"
    for key, value in (overrides or {}).items():
        if value is not None:
            _validate(key, value, f"--{key.replace('_', '-')}")
            settings.values[key] = value
            settings.sources[key] = f"--{key.replace('_', '-')}"
    return settings
