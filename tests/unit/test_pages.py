"""lxpy.kernel.pages: the pages a forked process wrote, and copying pages
in ahead, checked against the kernel's own page map."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

from lxpy.kernel import pages
from tests.forking import in_child

PAGE = pages.PAGE
COUNT = 16


def _region() -> tuple[mmap.mmap, int]:
    # Private anonymous memory, every page present, as the zygote's heap is
    # when it forks.
    buf = mmap.mmap(-1, COUNT * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(COUNT):
        buf[i * PAGE] = i + 1
    view = memoryview(buf)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
    view.release()
    return buf, addr


def _ours(runs: list[tuple[int, int]], addr: int) -> list[int]:
    # Which pages of the region (by index) the runs name.
    end = addr + COUNT * PAGE
    return sorted(
        (a - addr) // PAGE + k for a, n in runs for k in range(n) if addr <= a + k * PAGE < end
    )


def test_a_forked_child_sees_just_the_pages_it_wrote() -> None:
    buf, addr = _region()

    def child() -> list[int]:
        for i in (3, 4, 5, 9):
            buf[i * PAGE + 1] = 7
        return _ours(pages.written(), addr)

    assert in_child(child) == [3, 4, 5, 9]
    buf.close()


def test_prefault_copies_the_pages_and_leaves_their_contents() -> None:
    buf, addr = _region()

    def child() -> tuple[list[int], list[int], int]:
        before = _ours(pages.written(), addr)
        asked = pages.prefault([(addr + 2 * PAGE, 3), (addr + 10 * PAGE, 1)])
        after = _ours(pages.written(), addr)
        assert [buf[i * PAGE] for i in range(COUNT)] == list(range(1, COUNT + 1))
        return before, after, asked

    assert in_child(child) == ([], [2, 3, 4, 10], 4)
    buf.close()


def test_prefault_skips_what_is_not_mapped_and_stops_at_the_limit() -> None:
    buf, addr = _region()

    def child() -> tuple[int, list[int]]:
        pages.LIMIT = 5
        # Page 0 of the address space is never mapped.
        asked = pages.prefault([(0, 4), (addr, COUNT)])
        return asked, _ours(pages.written(), addr)

    assert in_child(child) == (5, [0, 1, 2, 3, 4])
    buf.close()


def test_saved_runs_load_back_and_a_bad_file_gives_none(tmp_path: Path) -> None:
    path = str(tmp_path / "z.pages")
    assert pages.load(path) == []
    runs = [(0x7F0000001000, 3), (0x7F0000009000, 1)]
    pages.save(path, runs)
    assert pages.load(path) == runs
    assert list(tmp_path.iterdir()) == [tmp_path / "z.pages"]  # no temporary left
    Path(path).write_text("7f00 x\n")
    assert pages.load(path) == []
    assert pages.total(runs) == 4
