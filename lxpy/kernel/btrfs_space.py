"""How full a btrfs filesystem is, as `btrfs filesystem usage` tells it.

statvfs() alone cannot say why a btrfs refuses a write: btrfs hands out its
devices in chunks, some for data and some for metadata, and a write fails
when the chunks of its kind are full and no unallocated space is left to
make another, even while the other kind has room to spare. Three ioctls
give the parts (they need no privilege): SPACE_INFO for the size and use
of each kind's chunks, FS_INFO and DEV_INFO for what every device has not
yet handed out.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

# asm-generic ioctl numbers (x86, arm, riscv, s390), as <linux/btrfs.h>
# defines them: _IOWR(0x94, 20, btrfs_ioctl_space_args), _IOR(0x94, 31,
# btrfs_ioctl_fs_info_args) and _IOWR(0x94, 30, btrfs_ioctl_dev_info_args).
_MAGIC = 0x94
_READ, _WRITE = 2, 1


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


_SPACE_ARGS = struct.Struct("=QQ")  # space_slots, total_spaces
_SPACE_INFO = struct.Struct("=QQQ")  # flags, total_bytes, used_bytes
_FS_INFO_SIZE = 1024
_DEV_INFO_SIZE = 4096
_DEV_INFO_HEAD = struct.Struct("=Q16sQQ")  # devid, uuid, bytes_used, total_bytes
IOC_SPACE_INFO = _ioc(_READ | _WRITE, 20, _SPACE_ARGS.size)
IOC_FS_INFO = _ioc(_READ, 31, _FS_INFO_SIZE)
IOC_DEV_INFO = _ioc(_READ | _WRITE, 30, _DEV_INFO_SIZE)

# Block group kinds (BTRFS_BLOCK_GROUP_*) and the global reserve, which
# SPACE_INFO lists beside them.
DATA, SYSTEM, METADATA = 1, 2, 4
_GLOBAL_RSV = 1 << 49


@dataclass(frozen=True)
class BtrfsSpace:
    """Bytes of a btrfs filesystem: each kind's chunks (their size and what
    is used of it) and the space on its devices no chunk holds yet."""

    data_total: int
    data_used: int
    metadata_total: int
    metadata_used: int
    # Metadata kept back for the writes that free space (deletes): free in
    # the chunks, but not to be had for anything else.
    global_reserve: int
    unallocated: int

    @property
    def data_free(self) -> int:
        """Free bytes inside the data chunks already made."""
        return self.data_total - self.data_used

    @property
    def metadata_free(self) -> int:
        """Free bytes inside the metadata chunks already made, beyond the
        global reserve."""
        return max(self.metadata_total - self.metadata_used - self.global_reserve, 0)


def _space_infos(fd: int) -> list[tuple[int, int, int]]:
    # First ask how many kinds there are, then for all of them.
    head = bytearray(_SPACE_ARGS.pack(0, 0))
    fcntl.ioctl(fd, IOC_SPACE_INFO, head)
    count = _SPACE_ARGS.unpack(head)[1]
    buf = bytearray(_SPACE_ARGS.pack(count, 0) + bytes(_SPACE_INFO.size * count))
    fcntl.ioctl(fd, IOC_SPACE_INFO, buf)
    got = _SPACE_ARGS.unpack_from(buf)[1]
    return [
        _SPACE_INFO.unpack_from(buf, _SPACE_ARGS.size + i * _SPACE_INFO.size)
        for i in range(min(got, count))
    ]


def _unallocated(fd: int) -> int:
    fs_info = bytearray(_FS_INFO_SIZE)
    fcntl.ioctl(fd, IOC_FS_INFO, fs_info)
    max_id = struct.unpack_from("=Q", fs_info)[0]
    free = 0
    # Device ids may have gaps (a removed device): those answer ENODEV.
    for devid in range(1, max_id + 1):
        dev = bytearray(_DEV_INFO_SIZE)
        struct.pack_into("=Q", dev, 0, devid)
        try:
            fcntl.ioctl(fd, IOC_DEV_INFO, dev)
        except OSError as e:
            if e.errno == errno.ENODEV:
                continue
            raise
        _devid, _uuid, used, total = _DEV_INFO_HEAD.unpack_from(dev)
        free += max(total - used, 0)
    return free


def btrfs_space(path: str) -> BtrfsSpace:
    """The space of the btrfs filesystem holding `path`.

    Raises:
        OSError: `path` cannot be opened, or is not on btrfs (ENOTTY).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        totals = {DATA: [0, 0], METADATA: [0, 0]}
        reserve = 0
        for flags, total, used in _space_infos(fd):
            if flags & _GLOBAL_RSV:
                reserve = total
                continue
            # A mixed block group (small filesystems) counts as both.
            for kind in (DATA, METADATA):
                if flags & kind:
                    totals[kind][0] += total
                    totals[kind][1] += used
        return BtrfsSpace(
            data_total=totals[DATA][0],
            data_used=totals[DATA][1],
            metadata_total=totals[METADATA][0],
            metadata_used=totals[METADATA][1],
            global_reserve=reserve,
            unallocated=_unallocated(fd),
        )
    finally:
        os.close(fd)
