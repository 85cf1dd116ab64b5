"""`dlenv init`: a commented starter dlenv.yaml for the user's repository.

Detects the Python requirements a repository already declares (requirements.txt, the pip
section of environment.yml, [project].dependencies of pyproject.toml), like repo2docker does,
and says what it could not take over. Pure: reads the folder, returns text and a report.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder.errors import SpecError
from builder.spec.schema import parse_requirement
from builder.spec.stack import PROJECT_FILE
from builder.spec.yamlload import decode_yaml_bytes, parse_yaml_text, read_limited

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")    # the stack schema's name pattern
MAX_INPUT_BYTES = 1_000_000       # a requirements file, environment.yml or pyproject.toml
MAX_PACKAGES = 500                # the stack schema's maxItems of python_packages
MAX_REQUIREMENT = 200             # ... and maxLength of one entry
_PLAIN_REF = re.compile(r"^[A-Za-z0-9._/-]+$")


@dataclass
class Detected:
    source: str                              # the file it came from
    packages: list = field(default_factory=list)
    skipped: list = field(default_factory=list)   # (entry, why)


def _take(entry, where: Path, det: Detected) -> None:
    if not isinstance(entry, str):
        det.skipped.append((type(entry).__name__, "not a requirement string"))
        return
    text = entry.strip()
    if not text:
        return
    if len(text) > MAX_REQUIREMENT:
        det.skipped.append((text, f"longer than {MAX_REQUIREMENT} characters"))
        return
    if len(det.packages) >= MAX_PACKAGES:
        det.skipped.append((text, f"a stack takes at most {MAX_PACKAGES} packages"))
        return
    if text.startswith(("-e ", "--editable", "-r ", "-c ", "--", "-")):
        det.skipped.append((text, "pip options and nested requirement files are not taken over"))
        return
    if ";" in text:
        det.skipped.append((text, "environment markers are not supported in a stack"))
        return
    try:
        parse_requirement(text, where, None, "requirements")
    except SpecError as exc:
        det.skipped.append((text, exc.message.split(": ", 1)[-1].split(" (")[0]))
        return
    det.packages.append(re.sub(r"\s+", "", text))


def _read(path: Path, det: Detected) -> str | None:
    """The text of an input file within the size limit, or None with a note in `det.skipped`."""
    try:
        return decode_yaml_bytes(read_limited(path, MAX_INPUT_BYTES, f"{path.name}"), path)
    except SpecError as exc:
        det.skipped.append((path.name, exc.message.split(": ", 1)[-1]))
        return None


def _environment_packages(env: Path, det: Detected) -> None:
    text = _read(env, det)
    try:
        data = parse_yaml_text(text, env)[0] if text and text.strip() else {}
    except SpecError as exc:
        det.skipped.append((env.name, exc.message.split(": ", 1)[-1]))
        data = {}
    for dep in (data.get("dependencies") or []) if isinstance(data, dict) else []:
        if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
            for item in dep["pip"]:
                _take(item, env, det)
        elif isinstance(dep, str) and not dep.startswith(("python", "pip")):
            det.skipped.append((dep, "a conda package: add its pip or Debian equivalent by hand"))


def detect(folder: Path) -> list:
    found = []
    req = folder / "requirements.txt"
    if req.is_file():
        det = Detected("requirements.txt")
        for line in (_read(req, det) or "").splitlines():
            _take(line.split(" #", 1)[0] if not line.lstrip().startswith("#") else "", req, det)
        found.append(det)
    for name in ("environment.yml", "environment.yaml"):
        env = folder / name
        if env.is_file():
            det = Detected(name)
            _environment_packages(env, det)
            found.append(det)
            break
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        det = Detected("pyproject.toml")
        try:
            data = tomllib.loads(_read(pyproject, det) or "")
            for dep in data.get("project", {}).get("dependencies", []) or []:
                _take(dep, pyproject, det)
        except (tomllib.TOMLDecodeError, AttributeError, RecursionError, ValueError):
            det.skipped.append(("pyproject.toml", "not valid TOML"))
        if det.packages or det.skipped:
            found.append(det)
    return found


def project_name(folder: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    return (name or "project")[:63] if name[:1].isalnum() else f"p-{name}"[:63]


def render_project(name: str, parent: str, packages: list, sources: list) -> str:
    lines = [
        "# dlenv project stack: the environment of this repository. Commit it next to your code.",
        "# Build: dlenv build    Shell: dlenv shell .    Run: dlenv run . -n 2 -- python train.py",
        "schema: 1",
        f"name: {_yaml_str(name) if not NAME.match(name) else name}",
        f"extends: {parent if _PLAIN_REF.match(parent) else _yaml_str(parent)}           # a catalog stack (dlenv list) or a path to another stack file",
        "",
    ]
    if packages:
        lines.append(f"# Taken over from {', '.join(sources)}.")
        lines.append("python_packages:")
        lines += [f"  - {_yaml_str(p)}" for p in sorted(set(packages), key=str.lower)]
    else:
        lines += ["# python_packages:", '#   - "scikit-learn==1.5.2"']
    lines += [
        "",
        "# apt_packages: [libsndfile1]        # Debian packages for the image",
        "# env:",
        '#   OMP_NUM_THREADS: "1"',
        "# files:                             # copied from this folder into the image (.dlenvignore applies)",
        "#   - src",
        "# checks:                            # run by `dlenv verify` and before every promotion",
        "#   - name: my package imports",
        '#     python: "import mypackage"',
        "",
    ]
    return "\n".join(lines)


def _yaml_str(value: str) -> str:
    return yaml.safe_dump(value, default_style='"').strip()


def init_text(folder: Path, parent: str, take_over: bool = True, name: str | None = None):
    """Returns (text, detected list)."""
    found = detect(folder) if take_over else []
    packages = [p for d in found for p in d.packages]
    sources = [d.source for d in found if d.packages]
    return render_project(name or project_name(folder), parent, packages, sources), found


def target_path(folder: Path) -> Path:
    return folder / PROJECT_FILE
