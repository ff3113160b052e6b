"""Kernel same-page merging (KSM) for lxpy's own processes.

Every monitor is forked from the zygote and then runs the same code on the
same objects, so most pages it has written (reference counts, caches,
allocator state) end up byte for byte equal to the other monitors' copies.
ksmd, the kernel's same-page merging daemon, folds such pages into one
read-only copy. A monitor marks its own private writable mappings
mergeable once its container runs: marks that apply to mappings, not to
the process, so they end at exec and never reach a container's processes,
whose memory must not be shared with anyone else's.

ksmd merges only what is marked, and only while it runs (`run` = 1); pages
it merged stay merged when it stops (`run` = 0) until one is written.
lxpyd runs it in bursts after starts (lxpy.daemon.merging).
"""

from __future__ import annotations

from pathlib import Path

from lxpy.kernel import syscalls as sc

KSM = Path("/sys/kernel/mm/ksm")


def run_state(ksm: Path = KSM) -> str | None:
    """What ksmd's `run` switch holds ("0", "1", "2"), or None without KSM."""
    try:
        return (ksm / "run").read_text().strip()
    except FileNotFoundError:
        return None


def set_running(on: bool, ksm: Path = KSM) -> None:
    """Start ksmd (`run` = 1) or stop it, keeping merged pages (`run` = 0).

    Raises:
        OSError: when the switch cannot be written.
    """
    sc.write_file(str(ksm / "run"), "1" if on else "0")


def progress(ksm: Path = KSM) -> tuple[int, int]:
    """(full scans done, pages sharing a merged page) so far."""
    return int((ksm / "full_scans").read_text()), int((ksm / "pages_sharing").read_text())


def mark_mergeable() -> int:
    """Mark every private writable mapping of the calling process mergeable
    (madvise MADV_MERGEABLE); returns how many took the mark.

    A mapping the kernel refuses (one of a kind KSM cannot merge) is
    skipped, and without KSM in the kernel nothing is marked: merging is a
    saving, never a condition.
    """
    marked = 0
    with open("/proc/self/maps") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split(maxsplit=2)
        if len(fields) < 2 or fields[1] != "rw-p":
            continue
        lo, _, hi = fields[0].partition("-")
        start, end = int(lo, 16), int(hi, 16)
        try:
            sc.madvise(start, end - start, sc.MADV_MERGEABLE)
        except OSError:
            continue
        marked += 1
    return marked
