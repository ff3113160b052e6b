"""The mount table of this mount namespace, read from /proc/self/mountinfo."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts() -> list[Mount]:
    """Every mount, in the kernel's order (a later one can hide an earlier)."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def mount_of(path: Path) -> Mount:
    """The mount `path` lives on: the longest mount point that contains it,
    the last one mounted when several sit on the same point."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for m in read_mounts():
        mp = m.mount_point
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    if best is None:  # "/" is always mounted; this is for a broken /proc
        raise OSError(f"no mount found for {path}")
    return best


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`."""
    target = os.path.realpath(path)
    prefix = target.rstrip("/") + "/"
    return [
        m.mount_point
        for m in read_mounts()
        if m.mount_point == target or m.mount_point.startswith(prefix)
    ]


def is_mount_point(path: Path) -> bool:
    """Whether something is mounted exactly at `path`."""
    target = os.path.realpath(path)
    return any(m.mount_point == target for m in read_mounts())
