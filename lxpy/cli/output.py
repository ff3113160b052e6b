"""How the `lxpy` command prints: JSON, aligned tables, config values."""

from __future__ import annotations

import sys

from lxpy.api import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


def print_json(data: object) -> None:
    """Indented on a terminal; one line (as Incus prints it) into a pipe or
    file, where a script reads it and the pure-Python indenting encoder
    would cost a `list --format json` of 100 containers ~12 ms."""
    if sys.stdout.isatty():
        import json  # only here: its import costs every other command ~6 ms

        print(json.dumps(data, indent=2))
    else:
        print(wire.dumps(data))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns aligned to their widest cell; the last column is not padded."""
    rows = [list(headers), *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)]
        print("  ".join([*cells, r[-1]]).rstrip())


def yes_no(value: object) -> str:
    return "yes" if value else "no"
