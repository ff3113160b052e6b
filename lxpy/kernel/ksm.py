"""Kernel same-page merging (KSM) for lxpy's own processes.

Every monitor is forked from the zygote and then runs the same code on the
same objects, so most pages it has written (reference counts, caches,
allocator state) end up byte for byte equal to the other monitors' copies.
ksmd, the kernel's same-page merging daemon, folds such pages into one
read-only copy. A monitor marks its own private writable mappings
mergeable once its container runs, and the zygote its own before it forks
(a page every monitor wrote often ends up equal to the zygote's again):
marks that apply to mappings, not to the process, so they end at exec and
never reach a container's processes, whose memory must not be shared with
anyone else's.

ksmd merges only what is marked, and only while it runs (`run` = 1); pages
it merged stay merged when it stops (`run` = 0) until one is written.
lxpyd runs it in bursts after starts (lxpy.daemon.ksm).
"""

from __future__ import annotations

import os

from lxpy.kernel import pages
from lxpy.kernel import syscalls as sc

# A str, not a pathlib.Path: monitors import this module, and pathlib (with
# urllib.parse and ipaddress, which it imports) would add ~0.7 MB to the
# zygote that every monitor maps.
KSM = "/sys/kernel/mm/ksm"


def _read(ksm: str | os.PathLike[str], name: str) -> str:
    with open(os.path.join(ksm, name)) as f:
        return f.read().strip()


def run_state(ksm: str | os.PathLike[str] = KSM) -> str | None:
    """What ksmd's `run` switch holds ("0", "1", "2"), or None without KSM."""
    try:
        return _read(ksm, "run")
    except FileNotFoundError:
        return None


def set_running(on: bool, ksm: str | os.PathLike[str] = KSM) -> None:
    """Start ksmd (`run` = 1) or stop it, keeping merged pages (`run` = 0).

    Raises:
        OSError: when the switch cannot be written.
    """
    sc.write_file(os.path.join(ksm, "run"), "1" if on else "0")


def progress(ksm: str | os.PathLike[str] = KSM) -> tuple[int, int]:
    """(full scans done, pages sharing a merged page) so far."""
    return int(_read(ksm, "full_scans")), int(_read(ksm, "pages_sharing"))


def mark_mergeable() -> int:
    """Mark every private writable mapping of the calling process mergeable
    (madvise MADV_MERGEABLE); returns how many took the mark.

    A mapping the kernel refuses (one of a kind KSM cannot merge) is
    skipped, and without KSM in the kernel nothing is marked: merging is a
    saving, never a condition.
    """
    marked = 0
    for start, end in pages.private_writable():
        try:
            sc.madvise(start, end - start, sc.MADV_MERGEABLE)
        except OSError:
            continue
        marked += 1
    return marked
