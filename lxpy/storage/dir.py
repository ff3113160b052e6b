"""The dir backend: volumes are plain directories, copies are `cp -a`.

For hosts without btrfs. `cp -a --reflink=auto` keeps owners, modes,
xattrs, device nodes and hard links, and shares extents where the
filesystem can (XFS with reflink, a btrfs the pool is not laid out for);
elsewhere it is a full copy, so create, clone and snapshot cost the size of
the rootfs. Nothing is read-only at the filesystem level.

A copy goes to a hidden `.tmp-` name first and is renamed into place, so an
interrupted copy never leaves a half volume under a real name.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from lxpy.errors import LxpyError
from lxpy.model.paths import TMP
from lxpy.revert import Revert
from lxpy.storage.base import Capabilities
from lxpy.storage.tree import TreeBackend


class DirBackend(TreeBackend):
    """A pool of plain directories on any filesystem."""

    name = "dir"
    caps = Capabilities(instant_snapshot=False, readonly_snapshots=False)

    def _is_volume(self, path: Path) -> bool:
        return path.is_dir() and not path.is_symlink()

    def _new_volume(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def _copy(self, src: Path, dst: Path, *, read_only: bool) -> None:
        tmp = self._scratch(dst, TMP)
        with Revert(f"copy of {src} to {dst}") as rv:
            # cp makes it: whatever part of it is there goes.
            rv.undo(lambda: shutil.rmtree(tmp, ignore_errors=True), f"remove {tmp}")
            res = subprocess.run(
                ["cp", "-a", "--reflink=auto", "--", str(src), str(tmp)],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                detail = res.stderr.strip().splitlines()
                reason = detail[-1] if detail else f"cp exited {res.returncode}"
                if "No space left" in reason:
                    raise OSError(errno.ENOSPC, reason)
                raise LxpyError(f"copying {src} to {dst} failed: {reason}")
            if read_only:
                # Read-only copies are snapshots: record when it was taken
                # before it becomes visible. A side file, because cp -a
                # carries the source's mtime over to the copy, and writing
                # into the copy would change the rootfs a restore gives back.
                stamp = self._stamp(dst)
                rv.undo(lambda: stamp.unlink(missing_ok=True), f"remove {stamp}")
                stamp.write_text(f"{time.time()}\n")
            os.rename(tmp, dst)

    def _seal(self, staging: Path, dst: Path) -> None:
        # Nothing to freeze in a plain directory: the staging tree becomes
        # the template as it is.
        os.rename(staging, dst)

    def _destroy(self, path: Path) -> None:
        shutil.rmtree(path)

    @staticmethod
    def _stamp(snapshot: Path) -> Path:
        return snapshot.with_name(f".{snapshot.name}.created")

    def _created_at(self, path: Path) -> float:
        try:
            return float(self._stamp(path).read_text())
        except (OSError, ValueError):
            # A pool written by hand or a lost side file: the best guess.
            return path.stat().st_mtime

    def _adopt(self, src: Path, dst: Path, created: str | None) -> None:
        # The scratch tree is the pool's to take: one rename, no copy.
        if created is not None:
            try:
                when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                stamp = when.timestamp()
            except ValueError:
                stamp = time.time()
            self._stamp(dst).write_text(f"{stamp}\n")
        os.rename(src, dst)

    def delete_snapshot(self, name: str, snap: str) -> None:
        super().delete_snapshot(name, snap)
        self._stamp(self.snapshot_path(name, snap)).unlink(missing_ok=True)
