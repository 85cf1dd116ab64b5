"""The component catalog: one folder per component under templates/components/.

A component is data (`component.yaml`: versions, constraints, apt packages, pip requirements,
paths, checks) plus Jinja fragments (`build.j2` for the build stage, optional `runtime.j2`)
plus optional check scripts. Adding one needs no Python edits. This module only reads and
validates; it refuses a component whose data or template is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from builder import paths
from builder.errors import CatalogError, SpecError
from builder.spec.schema import did_you_mean, validate_document
from builder.spec.stack import Check
from builder.spec.yamlload import load_yaml

GROUPS = ("system", "compile", "cuda", "python")


@dataclass(frozen=True)
class ComponentVersion:
    version: Version
    text: str
    requires: dict      # component -> SpecifierSet
    vars: dict
    constrains: dict = field(default_factory=dict)  # component -> SpecifierSet, only if it is in the stack


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    group: str
    folder: Path
    versions: tuple     # ComponentVersion, newest first
    default: str
    requires: dict      # component -> SpecifierSet, for every version
    after: tuple        # built after these when the stack has them; never pulls them in
    apt_build: tuple
    apt_runtime: tuple
    pip: tuple          # requirement templates with {version} / {vars}
    pip_options: tuple
    pip_build_only: bool    # the pip files serve the build step only (headers to compile against)
    prefix: str | None
    source: dict | None     # Debian source package {package, version, file} templates
    env: dict
    path: tuple
    ld_paths: tuple
    checks: tuple
    has_runtime_fragment: bool
    constrains: dict = field(default_factory=dict)  # like requires, but never adds the component

    def version(self, text: str) -> ComponentVersion:
        for v in self.versions:
            if v.text == text:
                return v
        raise CatalogError(f"component {self.name!r} has no version {text!r}",
                           hint=f"available: {', '.join(v.text for v in self.versions)}")


def _spec(text: str, where: Path, field: str) -> SpecifierSet:
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise SpecError(where, f"{text!r} is not a version specifier", field=field) from None


def load_component(folder: Path) -> Component:
    data_path = folder / "component.yaml"
    if not data_path.is_file():
        raise CatalogError(f"component {folder.name!r} has no component.yaml in {folder}")
    if not (folder / "build.j2").is_file():
        raise CatalogError(f"component {folder.name!r} has no build.j2 template in {folder}")
    data, lines = load_yaml(data_path)
    validate_document(data, lines, data_path, "component")
    if data["name"] != folder.name:
        raise SpecError(data_path, f"name {data['name']!r} differs from its folder {folder.name!r}", field="name")
    versions = []
    for text, entry in data["versions"].items():
        try:
            parsed = Version(text)
        except InvalidVersion:
            raise SpecError(data_path, f"{text!r} is not a version", field=f"versions.{text}") from None
        requires = {k: _spec(s, data_path, f"versions.{text}.requires.{k}") for k, s in (entry or {}).get("requires", {}).items()}
        constrains = {k: _spec(s, data_path, f"versions.{text}.constrains.{k}")
                      for k, s in (entry or {}).get("constrains", {}).items()}
        versions.append(ComponentVersion(parsed, text, requires, dict((entry or {}).get("vars", {})), constrains))
    versions.sort(key=lambda v: v.version, reverse=True)
    if data["default"] not in data["versions"]:
        raise SpecError(data_path, f"default {data['default']!r} is not one of the versions", field="default")
    siblings = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
    for i, other in enumerate(data.get("after", [])):
        if other not in siblings:
            raise SpecError(data_path, f"unknown component {other!r} (a component to build after)", field=f"after[{i}]",
                            hint=did_you_mean(other, siblings))
    checks = tuple(Check.from_dict(c, data_path, folder, line=lines.get(("checks", i)), field=f"checks[{i}]")
                   for i, c in enumerate(data.get("checks", [])))
    return Component(
        name=data["name"], description=data.get("description", ""), group=data["group"], folder=folder,
        versions=tuple(versions), default=data["default"],
        requires={k: _spec(s, data_path, f"requires.{k}") for k, s in data.get("requires", {}).items()},
        after=tuple(data.get("after", [])),
        apt_build=tuple(data.get("apt", {}).get("build", [])), apt_runtime=tuple(data.get("apt", {}).get("runtime", [])),
        pip=tuple(data.get("pip", [])), pip_options=tuple(data.get("pip_options", [])),
        pip_build_only=bool(data.get("pip_build_only", False)), prefix=data.get("prefix"),
        source=dict(data["source"]) if data.get("source") else None, env=dict(data.get("env", {})), path=tuple(data.get("path", [])), ld_paths=tuple(data.get("ld_paths", [])),
        checks=checks, has_runtime_fragment=(folder / "runtime.j2").is_file(),
        constrains={k: _spec(s, data_path, f"constrains.{k}") for k, s in data.get("constrains", {}).items()},
    )


class Catalog:
    """All components, loaded lazily by name."""

    def __init__(self, components_dir: Path | None = None):
        self.dir = Path(components_dir or paths.components_dir())
        self._cache: dict[str, Component] = {}

    def names(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def get(self, name: str) -> Component:
        if name not in self._cache:
            folder = self.dir / name
            if not folder.is_dir():
                names = self.names()
                raise CatalogError(f"unknown component {name!r}",
                                   hint=did_you_mean(name, names) or f"known components: {', '.join(names)}")
            self._cache[name] = load_component(folder)
        return self._cache[name]
