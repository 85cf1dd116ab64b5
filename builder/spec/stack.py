"""Stack files: load, validate, follow `extends`, merge.

Owns the user-facing schema of `stacks/*.yaml` and project `dlenv.yaml` files. Everything
here is pure: it reads files and returns values (`StackSpec`, `MergedStack`) or raises
`SpecError` naming the file, the line and the field.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from builder.errors import SpecError, shown
from builder.names import PATH_REFERENCES, SYSTEM_PATHS, is_build_controlled, is_system_path
from builder.spec.projectfiles import ALWAYS_IGNORED, follow
from builder.spec.schema import (line_for, did_you_mean, parse_requirement, parse_version_spec,
                                 validate_document)
from builder.spec.yamlload import load_yaml

SCHEMA_VERSION = 1
DEFAULT_BASE = {"bootstrap": {"suite": "bookworm", "variant": "minbase"}}


# --- values that reach shell lines: validated here, quoted again at render time ---------------


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _check_env_value(value: str, path: Path, line: int | None, where: str) -> None:
    if any(ch in value for ch in "\n\r\x00"):
        raise SpecError(path, "environment values must be a single line", line=line, field=where)
    if _CONTROL.search(value):
        raise SpecError(path, f"{shown(value, 60)} holds a control character", line=line, field=where,
                        hint="write the text without escape sequences")


_PATH_VALUE = re.compile(r"[^$]*(?:" + "|".join(re.escape(r) for r in PATH_REFERENCES) + r")(?![A-Za-z0-9_])[^$]*")


def _check_env_name(name: str, value: str, path: Path, line: int | None) -> None:
    if is_build_controlled(name):
        raise SpecError(path, "is set by dlenv or Docker at build time; a stack cannot set it", line=line,
                        field=f"env.{name}", hint="pick another name")
    if name == "PATH" and not _PATH_VALUE.fullmatch(value):
        raise SpecError(path, f"{shown(value, 80)} must name the image's PATH once, as $PATH", line=line,
                        field="env.PATH", hint='write e.g. "/opt/tool/bin:$PATH" (prepend) or "$PATH:/opt/tool/bin" '
                        "(append); replacing PATH would drop the venv and the components")


# --- stack files -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # command | python | file | library | package | script
    target: str
    contains: str | None = None
    matches: str | None = None
    exit: int = 0
    timeout: int = 60
    login: bool = False
    ranks: int | None = None
    device: bool = False      # needs a GPU: runs only where the engine has the NVIDIA runtime
    as_root: bool = False     # inspects what only root may read (e.g. /etc/shadow)
    origin: str = ""          # the file that declared it
    base_dir: str = ""        # folder that `script:` paths are relative to

    @classmethod
    def from_dict(cls, raw: dict, origin: Path, base_dir: Path, *, line: int | None = None,
                  field: str = "checks") -> "Check":
        kinds = [k for k in ("command", "python", "file", "library", "package", "script") if k in raw]
        if len(kinds) != 1:
            raise SpecError(origin, f"check {raw.get('name')!r} must have exactly one of command, python, file, "
                            "library, package, script", line=line, field=field)
        kind = kinds[0]
        if kind == "script":
            _inside(origin, raw["script"], line, f"{field}.script")
        return cls(name=raw["name"], kind=kind, target=raw[kind], contains=raw.get("contains"),
                   matches=raw.get("matches"), exit=raw.get("exit", 0), timeout=raw.get("timeout", 60),
                   login=raw.get("login", False), ranks=raw.get("ranks"), device=raw.get("device", False),
                   as_root=raw.get("as_root", False),
                   origin=str(origin),
                   base_dir=str(base_dir))


@dataclass(frozen=True)
class RunCommand:
    """A build-time command of a stack (`run:`), run in the runtime stage after its files are copied."""
    command: str
    as_root: bool = False
    origin: str = ""


@dataclass(frozen=True)
class StackSpec:
    path: Path
    name: str
    description: str
    extends: str | None
    base: dict | None
    components: dict            # name -> version spec string, as written
    python_packages: tuple
    apt_packages: tuple
    env: dict
    checks: tuple
    testinfra: Path | None = None
    files: tuple = ()           # CopiedFile, from this file's folder
    run: tuple = ()             # RunCommand, in order
    lines: dict = field(repr=False, compare=False, default_factory=dict)

    def line(self, *fpath) -> int | None:
        return line_for(self.lines, tuple(fpath))


def load_stack_file(path: Path) -> StackSpec:
    path = Path(path)
    data, lines = load_yaml(path)
    validate_document(data, lines, path, "stack")
    for key, spec in data.get("components", {}).items():
        parse_version_spec(spec, path, lines.get(("components", key)), f"components.{key}")
    for i, text in enumerate(data.get("python_packages", [])):
        parse_requirement(text, path, lines.get(("python_packages", i)), f"python_packages[{i}]")
    for key, value in data.get("env", {}).items():
        _check_env_value(value, path, lines.get(("env", key)), f"env.{key}")
        _check_env_name(key, value, path, lines.get(("env", key)))
    if "description" in data:
        _check_env_value(data["description"], path, lines.get(("description",)), "description")
    checks = tuple(Check.from_dict(c, path, path.parent, line=lines.get(("checks", i)), field=f"checks[{i}]")
                   for i, c in enumerate(data.get("checks", [])))
    files = tuple(_copied_file(path, entry, lines.get(("files", i)), f"files[{i}]")
                  for i, entry in enumerate(data.get("files", [])))
    run = tuple(RunCommand(e, False, f"{path}:{lines.get(('run', i)) or ''}") if isinstance(e, str)
                else RunCommand(e["command"], bool(e.get("as_root", False)), f"{path}:{lines.get(('run', i)) or ''}")
                for i, e in enumerate(data.get("run", [])))
    testinfra_file = None
    if "testinfra" in data:
        testinfra_file = _inside(path, data["testinfra"], lines.get(("testinfra",)), "testinfra")
    return StackSpec(
        path=path, name=data["name"], description=data.get("description", ""), extends=data.get("extends"),
        base=data.get("base"), components=dict(data.get("components", {})),
        python_packages=tuple(data.get("python_packages", [])), apt_packages=tuple(data.get("apt_packages", [])),
        env=dict(data.get("env", {})), checks=checks, testinfra=testinfra_file, files=files, run=run, lines=lines,
    )


def _inside(stack_path: Path, relative: str, line: int | None, where: str, allow_dir: bool = False) -> Path:
    """A file named by a stack must lie inside the stack file's folder (no `..`, no symlink out)."""
    folder = stack_path.parent.resolve()
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise SpecError(stack_path, f"{relative!r} must be a path inside the stack's folder", line=line, field=where)
    # Followed link by link (Path.resolve raises RuntimeError on a loop): loops, dangling links and
    # links out are refused naming `relative`; the ignore rules are applied when the files are gathered.
    resolved, _ = follow(folder, folder / candidate, None, stack=stack_path, name=shown(relative), line=line,
                         where=where, entry=True)
    if resolved == folder and not allow_dir:
        raise SpecError(stack_path, f"{shown(relative)} is the stack's folder, not a file", line=line, field=where)
    if not (resolved.is_file() or (allow_dir and resolved.is_dir())) or not _regular_or_dir(resolved):
        raise SpecError(stack_path, f"{shown(relative)} is not a regular file", line=line, field=where,
                        hint="name a regular file (not a FIFO, socket or device)")
    return resolved


def _regular_or_dir(path: Path) -> bool:
    mode = path.stat().st_mode
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


@dataclass(frozen=True)
class CopiedFile:
    """A file or folder from the stack's folder, copied into the image (owned by the image user)."""
    source: Path        # resolved, inside `root`
    root: Path          # the stack file's folder: ignore patterns and symlink checks are relative to it
    dest: str           # absolute path in the image
    stack: Path = Path()        # the stack file that names it, its line and field: for messages
    line: int | None = None
    where: str = "files"
    named: str = ""     # the entry as written (relative to `root`): its links are checked again against .dlenvignore


_DEST_RE = re.compile(r"^/[A-Za-z0-9._+@-][A-Za-z0-9._/+@-]*$")


def _copied_file(stack_path: Path, entry, line: int | None, where: str) -> CopiedFile:
    src, dest = (entry, None) if isinstance(entry, str) else (entry["src"], entry.get("dest"))
    never = [p for p in Path(src).parts if p in ALWAYS_IGNORED]
    if never:
        raise SpecError(stack_path, f"{shown(src)}: {never[0]} is never copied into an image", line=line,
                        field=where, hint=f"dlenv always leaves out {', '.join(ALWAYS_IGNORED)}; drop the entry")
    source = _inside(stack_path, src, line, where, allow_dir=True)
    if dest is None:
        dest = "/workspace/" + Path(src).as_posix().strip("/")
    if not _DEST_RE.match(dest) or "/../" in dest + "/" or "//" in dest or "/./" in dest + "/":
        raise SpecError(stack_path, f"destination {shown(dest)} must be a plain absolute path", line=line,
                        field=where)
    if is_system_path(dest):
        raise SpecError(stack_path, f"destination {shown(dest)} is a system path", line=line, field=where,
                        hint=f"copy into /workspace, /home/dlenv or /opt/<name>; never under {', '.join(SYSTEM_PATHS[1:8])}, ...")
    return CopiedFile(source=source, root=stack_path.parent.resolve(), dest=dest, stack=stack_path, line=line,
                      where=where, named=Path(src).as_posix())


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml")) or ref.startswith(".")


PROJECT_FILE = "dlenv.yaml"


def find_stack(ref: str | None, stacks_dir: Path, relative_to: Path | None = None) -> Path:
    """A stack reference is a catalog name (`chainermn`), a path to a YAML file, or nothing / `.`:
    the project file ./dlenv.yaml."""
    if ref in (None, "", "."):
        candidate = Path.cwd() / PROJECT_FILE
        if not candidate.is_file():
            raise SpecError(candidate, "no stack given and no dlenv.yaml in this folder",
                            hint="name a stack (see `dlenv list`) or write one with `dlenv init`")
        return candidate
    if looks_like_path(ref):
        candidate = Path(ref)
        if relative_to is not None and not candidate.is_absolute():
            candidate = relative_to / candidate
        if not candidate.is_file():
            raise SpecError(candidate, "stack file not found")
        return candidate
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", ref):
        raise SpecError(ref, "not a stack name or a path to a stack file")
    candidate = stacks_dir / f"{ref}.yaml"
    if candidate.is_file():
        return candidate
    names = catalog_stack_names(stacks_dir)
    hint = did_you_mean(ref, names) or f"known stacks: {', '.join(names)}"
    raise SpecError(ref, "unknown stack", hint=hint)


def catalog_stack_names(stacks_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(stacks_dir).glob("*.yaml"))


def _refuse_catalog_name(spec: StackSpec, stacks_dir: Path) -> None:
    """A stack outside the catalog named like a catalog stack would build over its images."""
    if spec.path.resolve().parent == Path(stacks_dir).resolve():
        return
    if spec.name in catalog_stack_names(stacks_dir):
        raise SpecError(spec.path, f"{spec.name!r} is a catalog stack; give the project its own name",
                        line=spec.line("name"), field="name", hint=f"e.g. name: my-{spec.name}")


def load_chain(ref: str, stacks_dir: Path) -> list[StackSpec]:
    """The stack and its parents, root first. Detects cycles and missing parents."""
    chain: list[StackSpec] = []
    seen: dict[Path, str] = {}
    path = find_stack(ref, stacks_dir)
    while True:
        real = path.resolve()
        if real in seen:
            cycle = " -> ".join([s.name for s in chain] + [seen[real]])
            raise SpecError(chain[-1].path, f"extends cycle: {cycle}", line=chain[-1].line("extends"),
                            field="extends")
        spec = load_stack_file(path)
        if not chain:
            _refuse_catalog_name(spec, stacks_dir)
        seen[real] = spec.name
        chain.append(spec)
        if len(chain) > 32:
            raise SpecError(path, "extends chain is deeper than 32 stacks", field="extends")
        if not spec.extends:
            break
        try:
            path = find_stack(spec.extends, stacks_dir, relative_to=spec.path.parent)
        except SpecError as exc:
            raise SpecError(spec.path, f"parent {spec.extends!r}: {exc.message.split(': ', 1)[-1]}",
                            line=spec.line("extends"), field="extends", hint=exc.hint) from None
    chain.reverse()
    return chain


@dataclass(frozen=True)
class Origin:
    """Where a merged value came from, for messages."""
    path: str
    line: int | None
    field: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class MergedStack:
    name: str
    description: str
    chain: tuple                # StackSpec, root first
    base: dict
    components: dict            # name -> (SpecifierSet, spec text, Origin)
    python_packages: tuple      # (Requirement text, Origin), in order
    apt_packages: tuple         # sorted names
    env: dict                   # name -> value
    checks: tuple
    testinfra: tuple = ()       # pytest-testinfra files named by the chain
    files: tuple = ()           # CopiedFile from every stack of the chain, root first
    run: tuple = ()             # RunCommand from every stack of the chain, root first

    @property
    def path(self) -> Path:
        return self.chain[-1].path


def merge_chain(chain: list[StackSpec]) -> MergedStack:
    base = None
    components: dict = {}
    python_packages: dict = {}
    apt: set = set()
    env: dict = {}
    checks: list = []
    for spec in chain:
        if spec.base is not None:
            base = spec.base
        for key, text in spec.components.items():
            origin = Origin(str(spec.path), spec.line("components", key), f"components.{key}")
            components[key] = (parse_version_spec(text, spec.path, origin.line, origin.field), text, origin)
        for i, text in enumerate(spec.python_packages):
            origin = Origin(str(spec.path), spec.line("python_packages", i), f"python_packages[{i}]")
            req = Requirement(text)
            python_packages[canonicalize_name(req.name)] = (text, origin)
        apt.update(spec.apt_packages)
        env.update(spec.env)
        checks.extend(spec.checks)
    leaf = chain[-1]
    return MergedStack(
        name=leaf.name, description=leaf.description or next((s.description for s in reversed(chain) if s.description), ""),
        chain=tuple(chain), base=base or DEFAULT_BASE, components=components,
        python_packages=tuple(python_packages.values()), apt_packages=tuple(sorted(apt)), env=env,
        checks=tuple(checks), testinfra=tuple(s.testinfra for s in chain if s.testinfra),
        files=tuple(f for s in chain for f in s.files),
        run=tuple(r for s in chain for r in s.run),
    )


def load_stack(ref: str, stacks_dir: Path) -> MergedStack:
    return merge_chain(load_chain(ref, stacks_dir))
