"""Reading the YAML files people write (signalbox.yaml, personalities), within bounds.

These files are small and shallow. One that is not, by mistake or on purpose (an alias
"billion laughs", lists nested thousands deep, a 50 MB file, a directory), must fail at once
with one line naming the key, never exhaust the recursion limit, memory or patience:
- the file must be a regular file of at most MAX_BYTES, in UTF-8;
- values nested deeper than MAX_DEPTH levels, and documents of more than MAX_VALUES values
  counting every use of an alias in full, are refused while composing, before any Python
  object is built (so an alias bomb costs what its text costs);
- an integer longer than MAX_INT_CHARS is kept as text: no setting wants one, int() would
  refuse it past 4,300 digits with a traceback, and as text the validator of its key names it.
Dates stay text too, so validation can name the key of a bad one.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

MAX_BYTES = 256 << 10
MAX_DEPTH = 20
MAX_VALUES = 10_000
MAX_INT_CHARS = 100


class YamlFileError(ValueError):
    """A file that cannot be read as bounded YAML: one line, the caller prefixes the file."""


class _Refused(Exception):
    def __init__(self, key: str, what: str, mark: Any) -> None:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        super().__init__(f"{key}: {what}{where}" if key else f"{what}{where}")


class _Loader(yaml.SafeLoader):
    """SafeLoader with budgets checked in compose_node, the one place every value passes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []  # keys / indexes from the document to the current value
        self._values = 0  # values composed, an alias counting as everything it stands for
        self._reach = 0  # deepest level composed (an alias reaching as deep as its anchor)
        self._sizes: dict[int, tuple[int, int]] = {}  # anchored node -> (values, levels)

    def _refuse(self, what: str, mark: Any) -> _Refused:
        return _Refused(key_path(self._path[1:]), what, mark)

    def _spend(self, values: int, level: int, mark: Any, alias: str | None = None) -> None:
        self._values += values
        self._reach = max(self._reach, level)
        via = f" (counting each use of *{alias} in full)" if alias else ""
        if self._values > MAX_VALUES:
            raise self._refuse(f"the file holds more than {MAX_VALUES:,} values{via}", mark)
        if level > MAX_DEPTH:
            raise self._refuse(f"values nest deeper than {MAX_DEPTH} levels{via}", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._path.append(_label(parent, index))
        level = len(self._path)
        try:
            event = self.peek_event()
            if isinstance(event, AliasEvent):
                node = self.anchors.get(event.anchor)  # type: ignore[arg-type]
                if node is not None:
                    size = self._sizes.get(id(node))
                    if size is None:
                        what = f"*{event.anchor} is used inside itself"
                        raise self._refuse(what, event.start_mark)
                    self._spend(size[0], level + size[1] - 1, event.start_mark, event.anchor)
                return super().compose_node(parent, index)
            self._spend(1, level, event.start_mark)
            if event.anchor is None:  # type: ignore[attr-defined]
                return super().compose_node(parent, index)
            before, outer, self._reach = self._values, self._reach, level
            node = super().compose_node(parent, index)
            self._sizes[id(node)] = (self._values - before + 1, self._reach - level + 1)
            self._reach = max(outer, self._reach)
            return node
        finally:
            self._path.pop()

    def construct_yaml_int(self, node: ScalarNode) -> Any:  # type: ignore[override]
        text = self.construct_scalar(node)
        return text if len(text) > MAX_INT_CHARS else super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _label(parent: Node | None, index: Any) -> str:
    if isinstance(parent, MappingNode):
        if index is None:
            return "(a key)"
        return quote(index.value, 30, bare=True) if isinstance(index, ScalarNode) else "(a key)"
    return str(index)


def key_path(parts: list[str]) -> str:
    """`replay.port`, `symbols.0.0.0.…` (a long path keeps its first levels)."""
    shown = ".".join(parts[:6])
    return shown + (f".… ({len(parts)} levels)" if len(parts) > 6 else "")


_REPR = reprlib.Repr()  # bounded work whatever the value: a few items of a few levels
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 20, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def quote(value: Any, limit: int = 40, *, bare: bool = False) -> str:
    """A value for an error message: its repr (a string's text if `bare`) cut to `limit`
    characters, then its size, so a 5,000-digit number or a list of lists stays short."""
    if isinstance(value, str):
        text = value[:limit] if bare else repr(value[:limit])
        return text if len(value) <= limit else f"{text}… ({len(value):,} characters)"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past Python's 4,300-digit conversion limit
        return f"<a {value.bit_length():,}-bit integer>"
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} items)" if isinstance(value, list | tuple | dict) else ""
    return f"{text[:limit]}…{size}"


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        byte = data[err.start : err.start + 1].hex()
        raise YamlFileError(
            f"is not UTF-8 text (byte 0x{byte} at line {line}, column {column}): save it as UTF-8"
        ) from None


def _read(path: Path) -> str:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise YamlFileError(f"is {kind}: give the path of a YAML file")
        if st.st_size > MAX_BYTES:
            raise YamlFileError(f"is {st.st_size:,} bytes, over the limit of {MAX_BYTES:,}")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise YamlFileError(f"cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:  # grew since stat
        raise YamlFileError(f"is over the limit of {MAX_BYTES:,} bytes")
    return _decode(data)


def _yaml_message(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(p for p in (err.problem, err.context) if p)
        return f"not valid YAML{where}: {what}"
    return "not valid YAML: " + " ".join(str(err).split())[:200]


def load_yaml(path: str | Path) -> Any:
    """The document in `path`, or YamlFileError saying in one line what is wrong and where."""
    text = _read(Path(path))
    try:
        loader = _Loader(text)  # the reader checks every character here
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as err:
        raise YamlFileError(str(err)) from None
    except yaml.YAMLError as err:
        raise YamlFileError(_yaml_message(err)) from None


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "YamlFileError",
    "key_path",
    "load_yaml",
    "quote",
]
