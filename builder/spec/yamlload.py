"""Safe, line-aware YAML loading for stack and component files.

Owns turning bytes into plain Python data (dict/list/str/int/float/bool/None) while keeping
the line of every key and item, so that validation errors can name file, line and field.
Rejects what `yaml.safe_load` would silently accept or mishandle: duplicate keys, non-standard
tags, merge keys, binary or non-UTF-8 input and alias bombs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from builder.errors import SpecError, shown

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
MAX_DEPTH = 64          # nesting levels; a stack is a handful deep, recursion in the parser is not free
MAX_INT_DIGITS = 100    # int() of a 5000-digit scalar raises ValueError (and costs quadratic time)

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


def read_limited(path: Path, limit: int = MAX_BYTES, what: str = "a stack file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes: stat first, so a directory, a FIFO, a
    device or a 3 GB file is refused without being opened or read."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(path, "file not found") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise SpecError(path, f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(path, "is a directory, expected a YAML file", hint="name the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(path, "is not a regular file (a FIFO, socket or device)", hint="name a regular file")
    if info.st_size > limit:
        raise SpecError(path, f"file is larger than {limit} bytes; {what} is a short YAML document",
                        hint="check that this is the file you meant")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise SpecError(path, f"cannot read file: {exc.strerror}") from None
    if len(raw) > limit:
        raise SpecError(path, f"file is larger than {limit} bytes; {what} is a short YAML document")
    return raw


def decode_yaml_bytes(raw: bytes, path: Path) -> str:
    if b"\x00" in raw:
        raise SpecError(path, "file is binary (contains NUL bytes), expected UTF-8 YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(path, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", line=line,
                        hint="save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def is_blank(text: str) -> bool:
    """Empty or only comments."""
    return all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines())


def load_yaml(path: Path, *, limit: int = MAX_BYTES, what: str = "a stack file") -> tuple[Any, LineMap]:
    path = Path(path)
    text = decode_yaml_bytes(read_limited(path, limit, what), path)
    if is_blank(text):
        raise SpecError(path, "file is empty", hint="a stack needs at least `schema: 1` and `name:`")
    return parse_yaml_text(text, path)


def parse_yaml_text(text: str, path) -> tuple[Any, LineMap]:
    """Plain data and the line of every field, from YAML text, within the limits above: anything
    the parser can raise becomes one SpecError naming `path`."""
    loader = None
    try:
        loader = _Loader(text, path)      # the reader already refuses some characters here
        node = loader.get_single_node()
        lines: LineMap = {}
        data = _construct(node, loader, path, (), lines, [0])
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(path, f"invalid YAML: {problem}", line=(mark.line + 1) if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(path, f"invalid YAML: {' '.join(str(exc).split())}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError, UnicodeError) as exc:
        raise SpecError(path, f"cannot be read as YAML ({type(exc).__name__})",
                        hint="a stack file is a short, plain YAML document") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with a depth limit in the (recursive) composer."""

    def __init__(self, text: str, path):
        super().__init__(text)
        self._depth = 0
        self._path = path

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecError(self._path, f"nested deeper than {MAX_DEPTH} levels", line=mark.line + 1,
                                hint="a stack file is a short, plain YAML document")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct(node, loader, path, fpath, lines, counter):
    counter[0] += 1
    line = node.start_mark.line + 1
    if counter[0] > MAX_NODES:
        raise SpecError(path, f"document expands to more than {MAX_NODES} nodes (alias bomb?)", line=line)
    if len(fpath) > MAX_DEPTH:
        raise SpecError(path, f"nested deeper than {MAX_DEPTH} levels (an alias that contains itself?)",
                        line=line, hint="a stack file is a short, plain YAML document")
    lines.setdefault(fpath, line)
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            raise SpecError(path, f"unsupported YAML tag {shown(node.tag)}", line=line, field=field_name(fpath))
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
                raise SpecError(path, f"duplicate key {shown(key)} (first on line {lines[fpath + (key,)]})",
                                line=kline, field=field_name(fpath + (key,)))
            lines[fpath + (key,)] = kline
            out[key] = _construct(vnode, loader, path, fpath + (key,), lines, counter)
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise SpecError(path, f"unsupported YAML tag {shown(node.tag)}", line=line, field=field_name(fpath))
        return [_construct(item, loader, path, fpath + (i,), lines, counter) for i, item in enumerate(node.value)]
    if node.tag not in _SCALAR_TAGS:
        raise SpecError(path, f"unsupported YAML tag {shown(node.tag)}; only plain YAML values are allowed",
                        line=line, field=field_name(fpath))
    if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
        raise SpecError(path, f"integer with {len(node.value)} digits", line=line, field=field_name(fpath),
                        hint="quote it if it is meant as text")
    return loader.construct_object(node, deep=True)
