"""The btrfs backend: every volume is a subvolume, every copy a snapshot.

Templates and snapshots are read-only subvolumes; containers are writable
snapshots of a template, so create, clone and snapshot cost one ioctl each
whatever the rootfs size. Ordering, rollback and error messages are shared
with the dir backend in lxpy.storage.tree.

Nested subvolumes (systemd and docker make them inside a rootfs) are not
part of a snapshot: btrfs snapshots stop at subvolume boundaries and leave
an empty directory there. They are deleted with their container.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import btrfsutil

from lxpy.storage.base import Capabilities
from lxpy.storage.tree import TreeBackend


class BtrfsBackend(TreeBackend):
    """A pool on a btrfs filesystem (a real disk or a loop file)."""

    name = "btrfs"
    caps = Capabilities(instant_snapshot=True, readonly_snapshots=True)

    def _is_volume(self, path: Path) -> bool:
        try:
            return bool(btrfsutil.is_subvolume(path))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise

    def _new_volume(self, path: Path) -> None:
        btrfsutil.create_subvolume(path)

    def _copy(self, src: Path, dst: Path, *, read_only: bool) -> None:
        # One ioctl, atomic: the snapshot appears whole or not at all.
        btrfsutil.create_snapshot(src, dst, read_only=read_only)

    def _seal(self, staging: Path, dst: Path) -> None:
        # A read-only snapshot rather than flipping the staging volume's
        # flag: the template appears under its name already read-only.
        btrfsutil.create_snapshot(staging, dst, read_only=True)

    def _destroy(self, path: Path) -> None:
        if not self._is_volume(path):
            if os.path.lexists(path):
                shutil.rmtree(path)
            return
        # A read-only subvolume cannot lose the entries of subvolumes nested
        # in it (EROFS), so every flag in the tree is cleared first; the
        # flags of volumes about to vanish do not matter to anyone.
        self._make_writable(path)
        for rel, _id in btrfsutil.SubvolumeIterator(path):
            self._make_writable(path / rel)
        btrfsutil.delete_subvolume(path, recursive=True)

    @staticmethod
    def _make_writable(path: Path) -> None:
        if btrfsutil.get_subvolume_read_only(path):
            btrfsutil.set_subvolume_read_only(path, False)

    def _identity(self, path: Path) -> str:
        # Every subvolume's root is inode 256: its UUID tells them apart.
        return bytes(btrfsutil.subvolume_info(path).uuid).hex()

    def _created_at(self, path: Path) -> float:
        return float(btrfsutil.subvolume_info(path).otime)
