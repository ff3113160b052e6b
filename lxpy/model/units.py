"""Sizes and signals as users write them."""

from __future__ import annotations

import re
import signal

from lxpy.errors import InvalidArgument

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: object, key: str = "size") -> int:
    """Parse `512MiB`, `20G`, `1.5GB` or a plain byte count into bytes.

    Raises:
        InvalidArgument: naming `key` and the bad value.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{key}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{key}: size must not be negative, got {value}")
        return value
    m = _SIZE.fullmatch(str(value))
    if not m:
        raise InvalidArgument(
            f"{key}: invalid size {value!r}", hint="write it like 512MiB, 20GiB or 1000000"
        )
    unit = m.group(2).upper()
    if unit not in _UNITS:
        raise InvalidArgument(
            f"{key}: unknown unit {m.group(2)!r} in {value!r}",
            hint="use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)",
        )
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """`1536` -> `1.5KiB`, `0` -> `0B`: what parse_size reads back."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_signal(value: object, key: str = "signal") -> int:
    """Parse a signal as LXC's lxc.signal.halt takes it: SIGPWR, PWR, RTMIN+3, 30.

    Raises:
        InvalidArgument: naming `key` and the bad value.
    """
    text = str(value).strip().upper()
    if text.isdigit():
        num = int(text)
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        m = re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name)
        if m:
            base = signal.SIGRTMIN if m.group(1) == "IN" else signal.SIGRTMAX
            num = int(base) + int(m.group(2) or 0)
        else:
            try:
                num = int(signal.Signals[name])
            except KeyError:
                raise InvalidArgument(f"{key}: unknown signal {value!r}") from None
    if not 1 <= num <= int(signal.SIGRTMAX):
        raise InvalidArgument(f"{key}: signal number {num} is out of range")
    return num


def signal_name(num: int) -> str:
    """The name a user would write for signal `num` (SIGRTMIN+3 for 37)."""
    if int(signal.SIGRTMIN) <= num <= int(signal.SIGRTMAX):
        return f"SIGRTMIN+{num - int(signal.SIGRTMIN)}"
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)
