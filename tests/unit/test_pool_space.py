"""How the room left on a filesystem is said (a full pool's error)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxpy.errors import PoolFull, from_json, pool_full
from lxpy.kernel.btrfs_space import BtrfsSpace
from lxpy.model.units import format_size, parse_size
from lxpy.storage.space import Space, space_of


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (5 << 30, "5.0GiB"), (3 << 40, "3.0TiB")],
)
def test_format_size_reads_back(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text) == n


def test_a_btrfs_space_says_each_part() -> None:
    parts = BtrfsSpace(
        data_total=200 << 20,
        data_used=200 << 20,
        metadata_total=32 << 20,
        metadata_used=20 << 20,
        global_reserve=8 << 20,
        unallocated=1 << 20,
    )
    space = Space(Path("/p"), size=300 << 20, free=0, fsid=1, btrfs=parts)
    assert space.describe() == (
        "/p has 0B free of 300.0MiB (btrfs: 0B free in its data chunks, 4.0MiB in its "
        "metadata chunks beyond a 8.0MiB reserve, 1.0MiB unallocated)"
    )
    # The reserve is not free for anything else, even when it is all that is left.
    assert BtrfsSpace(1, 1, 10, 5, 8, 0).metadata_free == 0


def test_space_of_a_directory(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    space = space_of(tmp_path)
    assert space.size == st.f_blocks * st.f_frsize and space.fsid == st.f_fsid
    assert space.describe().startswith(
        f"{tmp_path} has {format_size(space.free)} free of {format_size(space.size)}"
    )


def test_pool_full_names_where_and_round_trips() -> None:
    e = pool_full("container 'c1'", "/p has 0B free of 1.0GiB")
    assert e.message == "storage pool is full (container 'c1'): /p has 0B free of 1.0GiB"
    back = from_json(e.to_json())
    assert isinstance(back, PoolFull) and back.message == e.message
    assert pool_full().message == "storage pool is full"
