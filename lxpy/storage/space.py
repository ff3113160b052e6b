"""How much room a filesystem has left, said so that a user can act on it.

What a full pool's error names: the path, what statvfs() says is free (what
`df` shows), and on btrfs the parts behind it (lxpy.kernel.btrfs_space): a
btrfs can refuse a write with data chunks to spare when its metadata
chunks are full and nothing is left unallocated, and the other way round.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lxpy.kernel.btrfs_space import BtrfsSpace, btrfs_space
from lxpy.model.units import format_size


@dataclass(frozen=True)
class Space:
    """The room left on the filesystem holding `path`."""

    path: Path
    # statvfs: its size, and what an unprivileged writer may still use.
    size: int
    free: int
    # Which filesystem it is (statvfs's f_fsid), to tell two paths apart.
    fsid: int
    btrfs: BtrfsSpace | None = None

    def describe(self) -> str:
        """`/var/lib/lxpy/pool has 0B free of 5.0GiB (btrfs: ...)`."""
        text = f"{self.path} has {format_size(self.free)} free of {format_size(self.size)}"
        b = self.btrfs
        if b is not None:
            text += (
                f" (btrfs: {format_size(b.data_free)} free in its data chunks, "
                f"{format_size(b.metadata_free)} in its metadata chunks beyond a "
                f"{format_size(b.global_reserve)} reserve, "
                f"{format_size(b.unallocated)} unallocated)"
            )
        return text


def space_of(path: Path) -> Space:
    """The room left on the filesystem holding `path`, with the btrfs parts
    when it is a btrfs.

    Raises:
        OSError: `path` cannot be reached.
    """
    st = os.statvfs(path)
    try:
        parts: BtrfsSpace | None = btrfs_space(str(path))
    except OSError:
        # Not a btrfs (ENOTTY), or it would not say: statvfs's figures stand.
        parts = None
    return Space(
        path=path,
        size=st.f_blocks * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
        fsid=st.f_fsid,
        btrfs=parts,
    )
