"""TOML for lxpy's own files: a small writer (tomllib only reads), and
reading with an error that names the file.

The writer handles what lxpy writes: nested tables of str, int, float,
bool and lists of those. Keys that are not bare TOML keys are quoted.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from lxpy.errors import InvalidArgument

_BARE = re.compile(r"[A-Za-z0-9_-]+")


# What a TOML basic string may not hold as it is: the quote, the
# backslash and the control characters (U+007F too).
_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    """`text` as a TOML basic string: everything else as it is (UTF-8),
    so that a character outside the BMP is not split into the surrogate
    pair a JSON escape would make, which TOML refuses.

    Raises:
        ValueError: `text` holds a lone surrogate, which UTF-8 cannot hold.
    """
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise ValueError(f"cannot write {text!r} to TOML: it holds a lone surrogate")
    body = _ESCAPE.sub(lambda m: _SHORT.get(m[0]) or f"\\u{ord(m[0]):04X}", text)
    return f'"{body}"'


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(data: Mapping[str, object]) -> str:
    """Serialise a mapping to TOML text."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(data: Mapping[str, object], path: list[str], lines: list[str]) -> None:
    subtables = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        sub = [*path, key]
        lines.append("")
        lines.append("[" + ".".join(_key(k) for k in sub) + "]")
        _table(value, sub, lines)


def loads(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text read from `source`.

    Raises:
        InvalidArgument: "SOURCE: not valid TOML: ..." with the parser's reason.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{source}: not valid TOML: {e}") from None
