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


@dataclass
class Detected:
    source: str                              # the file it came from
    packages: list = field(default_factory=list)
    skipped: list = field(default_factory=list)   # (entry, why)


def _take(entry: str, where: Path, det: Detected) -> None:
    text = entry.strip()
    if not text:
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


def detect(folder: Path) -> list:
    found = []
    req = folder / "requirements.txt"
    if req.is_file():
        det = Detected("requirements.txt")
        for line in req.read_text("utf-8", errors="replace").splitlines():
            _take(line.split(" #", 1)[0] if not line.lstrip().startswith("#") else "", req, det)
        found.append(det)
    for name in ("environment.yml", "environment.yaml"):
        env = folder / name
        if env.is_file():
            det = Detected(name)
            try:
                data = yaml.safe_load(env.read_text("utf-8", errors="replace")) or {}
            except yaml.YAMLError:
                det.skipped.append((name, "not valid YAML"))
                data = {}
            for dep in (data.get("dependencies") or []) if isinstance(data, dict) else []:
                if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
                    for item in dep["pip"]:
                        _take(str(item), env, det)
                elif isinstance(dep, str) and not dep.startswith(("python", "pip")):
                    det.skipped.append((dep, "a conda package: add its pip or Debian equivalent by hand"))
            found.append(det)
            break
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        det = Detected("pyproject.toml")
        try:
            data = tomllib.loads(pyproject.read_text("utf-8", errors="replace"))
            for dep in data.get("project", {}).get("dependencies", []) or []:
                _take(str(dep), pyproject, det)
        except tomllib.TOMLDecodeError:
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
        f"name: {name}",
        f"extends: {parent}           # a catalog stack (dlenv list) or a path to another stack file",
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
