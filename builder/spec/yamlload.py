"""Safe, line-aware YAML loading for stack and component files.

Owns turning bytes into plain Python data (dict/list/str/int/float/bool/None) while keeping
the line of every key and item, so that validation errors can name file, line and field.
Rejects what `yaml.safe_load` would silently accept or mishandle: duplicate keys, non-standard
tags, merge keys, binary or non-UTF-8 input and alias bombs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from builder.errors import SpecError

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
MAX_NODES = 20_000
MAX_BYTES = 1_000_000

FieldPath = tuple
LineMap = dict  # FieldPath -> line number (1-based)


def field_name(path: FieldPath) -> str:
    """`('components', 'chainer')` -> `components.chainer`, list items as `[i]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def load_yaml(path: Path) -> tuple[Any, LineMap]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(path, "file not found") from None
    except IsADirectoryError:
        raise SpecError(path, "is a directory, expected a YAML file") from None
    except OSError as exc:
        raise SpecError(path, f"cannot read file: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise SpecError(path, f"file is larger than {MAX_BYTES} bytes; a stack file is a short YAML document")
    if b"\x00" in raw:
        raise SpecError(path, "file is binary (contains NUL bytes), expected UTF-8 YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(path, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", line=line,
                        hint="save the file as UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise SpecError(path, "file is empty", hint="a stack needs at least `schema: 1` and `name:`")

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: LineMap = {}
        counter = [0]
        data = _construct(node, loader, path, (), lines, counter)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(path, f"invalid YAML: {problem}", line=(mark.line + 1) if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(path, f"invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    return data, lines


def _construct(node, loader, path, fpath, lines, counter):
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise SpecError(path, f"document expands to more than {MAX_NODES} nodes (alias bomb?)",
                        line=node.start_mark.line + 1)
    line = node.start_mark.line + 1
    lines.setdefault(fpath, line)
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            raise SpecError(path, f"unsupported YAML tag {node.tag!r}", line=line, field=field_name(fpath))
        out: dict = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge" or (isinstance(knode, yaml.ScalarNode) and knode.value == "<<"):
                raise SpecError(path, "YAML merge keys (<<) are not supported", line=knode.start_mark.line + 1,
                                field=field_name(fpath))
            if not isinstance(knode, yaml.ScalarNode) or knode.tag not in _SCALAR_TAGS:
                raise SpecError(path, "mapping keys must be plain strings", line=knode.start_mark.line + 1,
                                field=field_name(fpath))
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                key = str(knode.value)
            kline = knode.start_mark.line + 1
            if key in out:
                raise SpecError(path, f"duplicate key {key!r} (first on line {lines[fpath + (key,)]})",
                                line=kline, field=field_name(fpath + (key,)))
            lines[fpath + (key,)] = kline
            out[key] = _construct(vnode, loader, path, fpath + (key,), lines, counter)
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise SpecError(path, f"unsupported YAML tag {node.tag!r}", line=line, field=field_name(fpath))
        return [_construct(item, loader, path, fpath + (i,), lines, counter) for i, item in enumerate(node.value)]
    if node.tag not in _SCALAR_TAGS:
        raise SpecError(path, f"unsupported YAML tag {node.tag!r}; only plain YAML values are allowed",
                        line=line, field=field_name(fpath))
    return loader.construct_object(node, deep=True)
