"""JSON and a unix stream socket for the CLI, at a fraction of the import cost.

`import json` and `import socket` take a CLI command about 8 ms of its
20 (json.decoder compiles regular expressions, bringing in re and enum;
socket turns its constants into enums), more than all of lxpy's own modules.
Both packages are thin layers over C modules, `_json` and `_socket`, which
load in microseconds; this module uses those directly, and the packages
only where a C module is missing (another Python implementation).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - every CPython has it
    _json = None  # type: ignore[assignment]

try:
    import _socket as _sock
except ImportError:  # pragma: no cover
    import socket as _sock  # type: ignore[no-redef]

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _constant(name: str) -> float:
    return _CONSTANTS[name]


class _ScanContext:
    """What _json.make_scanner reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)


def _not_json(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_scan: Callable[[str, int], tuple[Any, int]] | None = None
_encode: Callable[[object, int], Any] | None = None
if _json is not None:
    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed
    # As json.dumps() with its defaults: ASCII, ", " and ": ", NaN allowed.
    _encode = _json.make_encoder(
        None, _not_json, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )


def loads(data: str | bytes) -> Any:
    """As json.loads() (UTF-8 for bytes).

    Raises:
        ValueError: when `data` is not one JSON value.
    """
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(data)
    s = data.decode() if isinstance(data, bytes) else data
    start = len(s) - len(s.lstrip(_WHITESPACE))
    try:
        value, end = _scan(s, start)
    except StopIteration as e:
        raise ValueError(f"Expecting value: char {e.value}") from None
    if s[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(value: object) -> str:
    """As json.dumps(value).

    Raises:
        TypeError: for a value that has no JSON form.
        ValueError: for a container that holds itself.
    """
    if _encode is None:  # pragma: no cover
        import json

        return json.dumps(value)
    try:
        return "".join(_encode(value, 0))
    except RecursionError:
        raise ValueError("Circular reference detected") from None


def unix_stream() -> Any:
    """A new unix stream socket (a `_socket.socket`: connect, settimeout,
    sendall, recv, close and fileno as on a socket.socket)."""
    return _sock.socket(_sock.AF_UNIX, _sock.SOCK_STREAM)
