"""Which pages a process has written since it was forked, and copying such
pages ahead of need.

A monitor is forked from the zygote and shares its memory copy-on-write:
the first write to each shared page costs a page fault that copies it
(about 4 µs here), and a monitor's start writes several hundred of them.
A spare monitor forked ahead of a start (lxpy.runtime.zygote) takes those
faults while it waits, on the pages monitors before it were seen to write:
`written` reads them from /proc/self/pagemap once a start is done, and
`prefault` copies them in (MADV_POPULATE_WRITE, which breaks the sharing
as a write would, and leaves the contents as they are).

Only stdlib and syscalls: monitors import this module.
"""

from __future__ import annotations

import os

from lxpy.kernel import syscalls as sc

PAGE = os.sysconf("SC_PAGE_SIZE")

# The most pages a learnt set may name: a bound on what a spare copies,
# whatever the file says (a monitor's start writes under 1500).
LIMIT = 4096

# pagemap's top byte per page (bits 56-63): bit 63 "present", bit 56
# "mapped by this process only", which a copied page is and a page still
# shared with the zygote is not.
_PRESENT = 0x80
_EXCLUSIVE = 0x01
# Top byte -> b"1" for a present, exclusive page, else b"0".
_TABLE = bytes(
    0x31 if b & (_PRESENT | _EXCLUSIVE) == _PRESENT | _EXCLUSIVE else 0x30 for b in range(256)
)


def private_writable() -> list[tuple[int, int]]:
    """The calling process's private writable mappings: (start, end)."""
    with open("/proc/self/maps") as f:
        lines = f.read().splitlines()
    spans = []
    for line in lines:
        fields = line.split(maxsplit=2)
        if len(fields) < 2 or fields[1] != "rw-p":
            continue
        lo, _, hi = fields[0].partition("-")
        spans.append((int(lo, 16), int(hi, 16)))
    return spans


def written() -> list[tuple[int, int]]:
    """The calling process's private writable pages that are present and
    its own (written since the fork, or new): (address, pages) runs in
    address order."""
    runs: list[tuple[int, int]] = []
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, end in private_writable():
            count = (end - start) // PAGE
            # Little-endian 8-byte entries: byte 7 of each is the top byte.
            flags = os.pread(fd, count * 8, start // PAGE * 8)[7::8].translate(_TABLE)
            i = flags.find(b"1")
            while i >= 0:
                j = flags.find(b"0", i)
                if j < 0:
                    j = len(flags)
                runs.append((start + i * PAGE, j - i))
                i = flags.find(b"1", j)
    finally:
        os.close(fd)
    return runs


def total(runs: list[tuple[int, int]]) -> int:
    """How many pages `runs` name."""
    return sum(n for _, n in runs)


def prefault(runs: list[tuple[int, int]]) -> int:
    """Copy in, as a write would, the pages of `runs` that the calling
    process has mapped writable (others are skipped), up to LIMIT pages;
    returns how many pages were asked for."""
    asked = 0
    for addr, n in runs:
        n = min(n, LIMIT - asked)
        if n <= 0:
            break
        try:
            sc.madvise(addr, n * PAGE, sc.MADV_POPULATE_WRITE)
        except OSError:
            continue  # unmapped here, or not writable: nothing to copy
        asked += n
    return asked


def save(path: str, runs: list[tuple[int, int]]) -> None:
    """Write `runs` to `path` whole (a reader sees the old or the new set)."""
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, "".join(f"{addr:x} {n}\n" for addr, n in runs).encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def load(path: str) -> list[tuple[int, int]]:
    """The runs saved at `path`; none when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        runs = []
        for line in data.splitlines():
            addr, n = line.split()
            runs.append((int(addr, 16), int(n)))
        return runs
    except (OSError, ValueError):
        return []
