"""Choosing and opening the storage pool at `root/pool`.

In order:
  1. storage = "dir": plain directories.
  2. Something btrfs is already mounted at root/pool (our loop image from an
     earlier start, or a disk the admin mounted there): use it.
  3. root/pool.img exists: mount it (an earlier start made it).
  4. The root is on btrfs: root/pool is a plain directory on it.
  5. Otherwise make a loop-file btrfs pool, root/pool.img, mounted at
     root/pool (as LXD does). When that is impossible, storage = "btrfs"
     fails and "auto" falls back to plain directories with a warning.
A directory pool left by such a fallback stays a directory pool: a loop
mount over it would hide its containers.

Whatever the kind, its directories are closed to other users
(tree.CLOSED_MODE); a loop image is root's alone and mounted nosuid and
nodev. A pool an older lxpy left open is closed here.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from lxpy.errors import Unsupported
from lxpy.kernel import mounts
from lxpy.model.paths import TREES
from lxpy.model.settings import Settings
from lxpy.storage.base import Backend
from lxpy.storage.btrfs import BtrfsBackend
from lxpy.storage.dir import DirBackend
from lxpy.storage.mounts import is_mount_point, mount_of
from lxpy.storage.tree import TreeBackend

log = logging.getLogger("lxpy.storage")

GiB = 1024**3
# The loop file is sparse, so its size is a ceiling, not what it costs. Its
# default follows LXD's reasoning: a share of the free space, so the pool
# can never promise the host's last bytes away (a full host under a
# half-empty pool is worse than a full pool); at least 5 GiB, enough for
# a few Debian templates and their containers even on a small disk; at most
# 100 GiB, because a btrfs pool is easy to grow (`btrfs filesystem resize`)
# but hard to shrink. Set pool_size to choose.
POOL_SHARE = 0.2
POOL_MIN = 5 * GiB
POOL_MAX = 100 * GiB
_TOOL_TIMEOUT = 120
# The loop image holds every rootfs: root's alone.
IMAGE_MODE = 0o600


class _NoLoopPool(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def default_pool_size(root: Path) -> int:
    """The loop pool size used when settings.pool_size is not set."""
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    return min(max(int(free * POOL_SHARE), POOL_MIN), POOL_MAX)


def open_pool(settings: Settings) -> TreeBackend:
    """Open (making it on first use) the storage pool of `settings.root`.

    Synchronous and may block for seconds on first use (mkfs, mount). Also
    settles what a crash left half done (see TreeBackend.recover).

    Raises:
        Unsupported: storage = "btrfs" and no btrfs pool can be had here.
    """
    root = settings.root
    pool = settings.paths.pool_dir
    root.mkdir(parents=True, exist_ok=True)
    backend = DirBackend(pool) if settings.storage == "dir" else _open_btrfs(settings)
    # Containers' files are nobody else's business; a pool made by an
    # older lxpy had them open (see tree.CLOSED_MODE).
    for what in backend.close_to_others():
        log.warning("storage pool: closed %s to other users", what)
    backend.recover()
    log.info("storage pool: %s at %s", backend.name, pool)
    return backend


def _open_btrfs(settings: Settings) -> TreeBackend:
    root = settings.root
    pool = settings.paths.pool_dir
    image = settings.paths.pool_image
    strict = settings.storage == "btrfs"
    if is_mount_point(pool):
        fstype = mount_of(pool).fstype
        if fstype == "btrfs":
            if image.exists():
                # Mounted by an earlier start, maybe by an older lxpy.
                _close_image(image, pool)
            return BtrfsBackend(pool)
        return _fallback(
            strict,
            pool,
            f"{pool} is a {fstype} mount, not btrfs",
            'mount a btrfs filesystem there, or set storage = "dir"',
        )
    if not image.exists():
        if mount_of(root).fstype == "btrfs":
            return BtrfsBackend(pool)
        if _holds_volumes(pool):
            return _fallback(
                strict,
                pool,
                f"{pool} already holds a directory pool",
                'keep storage = "auto" or "dir" for it, or move it away to start a btrfs pool',
            )
    try:
        _loop_pool(image, pool, settings.pool_size)
    except _NoLoopPool as e:
        return _fallback(strict, pool, e.message, e.hint)
    _close_image(image, pool)
    return BtrfsBackend(pool)


def _close_image(image: Path, pool: Path) -> None:
    """The loop image readable by root alone, and its mount at `pool`
    nosuid and nodev, as a pool made by an older lxpy needs (it made the
    image 0644 and mounted it without either).

    Why: the image holds every rootfs, whose files a host user must not
    read; and no setuid file or device node a container's root made may
    take effect through the host's view of the pool. Containers do not
    lose them: each one's rootfs is a clone of this mount with both
    attributes cleared (see lxpy.kernel.mounts.ROOTFS_ATTRS).
    """
    if stat.S_IMODE(image.stat().st_mode) != IMAGE_MODE:
        os.chmod(image, IMAGE_MODE)
        log.warning("storage pool: %s made readable by root alone", image)
    if not _loop_backed_by(mount_of(pool).source, image):
        # Something else mounted there (a disk of the admin's): its
        # options are the admin's to choose.
        return
    flags = os.statvfs(pool).f_flag
    if flags & os.ST_NOSUID and flags & os.ST_NODEV:
        return
    mounts.set_mount_attrs(str(pool), add=mounts.ROOTFS_ATTRS)
    log.warning("storage pool: %s remounted nosuid,nodev", pool)


def _loop_backed_by(source: str, image: Path) -> bool:
    """Whether the block device `source` is a loop device over `image`."""
    name = os.path.basename(source)
    try:
        backing = Path(f"/sys/class/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return False
    try:
        return os.path.samefile(backing, image)
    except OSError:
        return False


def _fallback(strict: bool, pool: Path, message: str, hint: str) -> TreeBackend:
    if strict:
        raise Unsupported(f"cannot use a btrfs storage pool: {message}", hint=hint)
    log.warning(
        "no btrfs storage pool (%s; %s): using plain directories, where create and "
        "snapshot copy the whole rootfs",
        message,
        hint,
    )
    return DirBackend(pool)


def _holds_volumes(pool: Path) -> bool:
    for tree in TREES:
        d = pool / tree
        if d.is_dir() and any(not e.startswith(".") for e in os.listdir(d)):
            return True
    return False


def _run(args: list[str]) -> str | None:
    """Run a tool; its error output when it fails, None when it worked."""
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=_TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if res.returncode == 0:
        return None
    out = (res.stderr.strip() or res.stdout.strip()).splitlines()
    return out[-1] if out else f"{args[0]} exited {res.returncode}"


def _loop_pool(image: Path, pool: Path, size: int | None) -> None:
    """Mount the loop image at `pool`, making the image first if needed.
    A pool made here and not usable is removed again."""
    created = False
    if not image.exists():
        if shutil.which("mkfs.btrfs") is None:
            raise _NoLoopPool(
                "mkfs.btrfs is not installed", 'install btrfs-progs, or set storage = "dir"'
            )
        size = size if size is not None else default_pool_size(image.parent)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, IMAGE_MODE)
        with open(fd, "wb") as f:
            f.truncate(size)  # sparse: blocks are allocated as btrfs writes
        created = True
        err = _run(["mkfs.btrfs", "-q", str(image)])
        if err is not None:
            image.unlink()
            raise _NoLoopPool(
                f"mkfs.btrfs failed on {image} ({size} bytes): {err}",
                'give pool_size a value of at least 256MiB, or set storage = "dir"',
            )
    made_dir = not pool.exists()
    pool.mkdir(exist_ok=True)
    err = _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(pool)])
    if err is not None:
        if created:
            image.unlink()
        if made_dir:
            pool.rmdir()
        raise _NoLoopPool(
            f"cannot mount {image} at {pool}: {err}",
            "a loop device (/dev/loop-control) and btrfs support in the kernel are needed; "
            'or set storage = "dir"',
        )


def pool_info(backend: Backend) -> dict[str, object]:
    """What GET /1.0 reports about the pool: backend, path, capabilities and
    the size and free space of its filesystem in bytes."""
    st = os.statvfs(backend.path)
    return {
        "backend": backend.name,
        "path": str(backend.path),
        "instant_snapshot": backend.caps.instant_snapshot,
        "readonly_snapshots": backend.caps.readonly_snapshots,
        "size_bytes": st.f_blocks * st.f_frsize,
        "free_bytes": st.f_bavail * st.f_frsize,
    }
