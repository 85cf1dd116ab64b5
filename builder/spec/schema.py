"""JSON-Schema validation of dlenv's YAML documents (stack files, component files) with messages a
user can act on: the file, the line and the field, the value shown briefly, a did-you-mean; and the
parsers of version specifiers and requirement strings that every loader shares.

Pure: takes loaded data and its line map, returns values or raises `SpecError`.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from referencing import Registry, Resource

from builder.errors import SpecError
from builder.spec.yamlload import FieldPath, LineMap, field_name

# Fields whose values are versions: an unquoted YAML number there is a silent corruption
# (`3.10` reads as 3.1), so it is refused with the fix.
_VERSION_FIELDS = ("components",)



@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    text = resources.files("builder").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(name: str):
    schema = load_schema(name)
    registry = Registry().with_resources(
        [(f"{n}.schema.json", Resource.from_contents(load_schema(n))) for n in ("stack", "component")]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def did_you_mean(word: str, choices) -> str | None:
    match = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def _source_token(path: Path, lines: LineMap, fpath: FieldPath) -> str | None:
    line = lines.get(fpath)
    if not line:
        return None
    try:
        text = path.read_text("utf-8").splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    _, _, value = text.partition(":")
    value = value.split("#", 1)[0].strip()
    return value or None


def validate_document(data: Any, lines: LineMap, path: Path, schema_name: str) -> None:
    """Validate against the JSON schema; turn the first error into a one-line SpecError."""
    if not isinstance(data, dict):
        raise SpecError(path, f"expected a mapping at the top level, got {_type_name(data)}", line=1)
    if schema_name == "stack":
        _refuse_unquoted_versions(data, lines, path)
    validator = _validator(schema_name)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = errors[0]
    raise _translate(err, lines, path, validator.schema)


def _refuse_unquoted_versions(data: dict, lines: LineMap, path: Path) -> None:
    for section in _VERSION_FIELDS:
        value = data.get(section)
        if not isinstance(value, dict):
            continue
        for key, version in value.items():
            if isinstance(version, (int, float)) and not isinstance(version, bool):
                fpath = (section, key)
                token = _source_token(path, lines, fpath) or str(version)
                raise SpecError(path, f"version {token} must be a quoted string: YAML reads an unquoted "
                                f"{token} as the number {version!r}", line=lines.get(fpath),
                                field=field_name(fpath), hint=f'write {key}: "{token}"')


def _type_name(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def line_for(lines: LineMap, fpath: tuple) -> int | None:
    while True:
        if fpath in lines:
            return lines[fpath]
        if not fpath:
            return None
        fpath = fpath[:-1]


def _translate(err: jsonschema.ValidationError, lines: LineMap, path: Path, schema: dict) -> SpecError:
    fpath = tuple(err.absolute_path)
    line = line_for(lines, fpath)
    where = field_name(fpath)
    v = err.validator
    if v == "oneOf" and err.context:
        # Explain the error of the alternative written (a string, or a mapping), not "no alternative matched".
        kind = "object" if isinstance(err.instance, dict) else "string" if isinstance(err.instance, str) else None
        branches = err.validator_value
        suited = [e for e in err.context
                  if kind and isinstance(branches[e.relative_schema_path[0]], dict)
                  and branches[e.relative_schema_path[0]].get("type", _ref_type(branches[e.relative_schema_path[0]], schema)) == kind]
        if suited:
            return _translate(sorted(suited, key=lambda e: -len(e.absolute_path))[0], lines, path, schema)
    if v == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - allowed)
        key = unknown[0] if unknown else "?"
        kpath = fpath + (key,)
        hint = did_you_mean(key, allowed) or (f"valid fields: {', '.join(sorted(allowed))}" if allowed else None)
        return SpecError(path, f"unknown field {key!r}", line=lines.get(kpath, line), field=field_name(kpath),
                         hint=hint)
    if v == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return SpecError(path, f"missing required field {missing[0]!r}", line=line, field=where)
    if v == "type":
        expected = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "a whole number",
                    "boolean": "true or false"}.get(err.validator_value, str(err.validator_value))
        return SpecError(path, f"expected {expected}, got {_type_name(err.instance)}", line=line, field=where)
    if v == "enum":
        choices = ", ".join(repr(c) for c in err.validator_value)
        hint = did_you_mean(err.instance, [str(c) for c in err.validator_value])
        return SpecError(path, f"{err.instance!r} is not allowed; choose one of {choices}", line=line,
                         field=where, hint=hint)
    if v == "pattern":
        return SpecError(path, f"{_shown(err.instance)} is not a valid value (allowed: {_pattern_words(err.validator_value)})",
                         line=line, field=where)
    if v == "propertyNames":
        bad = err.instance
        return SpecError(path, f"{_shown(bad)} is not a valid name", line=line, field=where)
    if v in ("minLength", "minProperties", "minItems"):
        return SpecError(path, "must not be empty" if v != "minProperties" or err.validator_value == 1
                         else f"needs at least {err.validator_value} entries", line=line, field=where)
    if v in ("maxLength", "maxItems", "maxProperties", "maximum", "minimum"):
        return SpecError(path, f"value out of range ({v} {err.validator_value})", line=line, field=where)
    return SpecError(path, " ".join(err.message.split())[:200], line=line, field=where)


def _ref_type(branch: dict, schema: dict) -> str | None:
    ref = branch.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {}).get("type")
    return None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def _pattern_words(pattern: str) -> str:
    known = {
        "^[a-z0-9][a-z0-9-]{0,62}$": "lower-case letters, digits and '-'",
        "^[a-z0-9][a-z0-9+.-]{1,100}$": "a Debian package name",
        "^[A-Za-z_][A-Za-z0-9_]{0,100}$": "letters, digits and '_', not starting with a digit",
        "^[a-z]{3,20}$": "a Debian suite name such as bookworm",
    }
    return known.get(pattern, f"pattern {pattern}")


_SAFE_SPEC = re.compile(r"^[A-Za-z0-9.*!=<>~,+ ]+$")


def parse_version_spec(text: str, path: Path, line: int | None, where: str) -> SpecifierSet:
    """`"7.8.1"` means `==7.8.1`; `"13.*"`, `">=12,<13"` are specifiers."""
    if not _SAFE_SPEC.match(text):
        raise SpecError(path, f"{_shown(text)} is not a version or version range", line=line, field=where,
                        hint='write an exact version such as "7.8.1" or a range such as ">=13,<14"')
    try:
        if text[0].isdigit():
            Version(text.replace(".*", ""))
            return SpecifierSet(f"=={text}")
        return SpecifierSet(text)
    except (InvalidVersion, InvalidSpecifier):
        raise SpecError(path, f"{_shown(text)} is not a version or version range", line=line, field=where,
                        hint='write an exact version such as "7.8.1" or a range such as ">=13,<14"') from None


def parse_requirement(text: str, path: Path, line: int | None, where: str) -> Requirement:
    try:
        req = Requirement(text)
    except InvalidRequirement:
        raise SpecError(path, f"{_shown(text)} is not a valid Python requirement", line=line, field=where,
                        hint='write it like "requests==2.32.3" or "scipy>=1.11"') from None
    if req.url:
        raise SpecError(path, f"{_shown(text)}: direct URL requirements are not allowed", line=line, field=where,
                        hint="name a package and version from the index")
    if req.marker is not None or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?[A-Za-z0-9.*!=<>~, ]*$", text):
        raise SpecError(path, f"{_shown(text)} contains characters not allowed in a requirement", line=line,
                        field=where, hint="environment markers and shell characters are not supported")
    return req
