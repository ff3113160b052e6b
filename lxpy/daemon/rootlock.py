"""One lxpyd per root: the lock on ROOT/lxpyd.lock.

The lock is an flock(2) on ROOT/lxpyd.lock, which names the pid of the
lxpyd holding it. An flock belongs to the open file, not the process: a
process forked from lxpyd without exec holds it too, past lxpyd's end. So
every process lxpyd forks closes it at once (an at-fork handler here), and
its short-lived helpers die with it (lxpy.kernel.syscalls.fork_helper).

A lock held all the same by processes that are not an lxpyd of this root
(the pid the file names is gone, or does not have the file open: helpers
left by a killed lxpyd of an earlier version) is no reason to refuse to
start: a fresh lock file replaces the held one. lxpyds starting at once
take turns (an flock on the root directory, held for these few steps
only), so the one that comes second finds the first one's pid in the file,
alive, and is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from lxpy.errors import Busy
from lxpy.model.paths import RootPaths

log = logging.getLogger("lxpyd")


# The lock's descriptor in this process (-1: none), closed in forked children.
_held = -1


def _close_in_child() -> None:
    global _held
    if _held >= 0:
        with contextlib.suppress(OSError):
            os.close(_held)
        _held = -1


os.register_at_fork(after_in_child=_close_in_child)


def take(root: Path) -> int:
    """Lock `root` for this process's lifetime; the returned fd holds the
    lock (close it with `release`).

    Raises:
        Busy: a live lxpyd holds it (naming its pid).
        OSError: the root or the lock file cannot be made or opened.
    """
    global _held
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    turn = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Held by another starting lxpyd for a few milliseconds at most.
        fcntl.flock(turn, fcntl.LOCK_EX)
        fd = _take(RootPaths(root).lock)
    finally:
        os.close(turn)
    _held = fd
    return fd


def release(fd: int) -> None:
    """Give up the lock taken with `take`."""
    global _held
    if _held == fd:
        _held = -1
    os.close(fd)


def _take(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return _take_over(path, fd)
        finally:
            os.close(fd)
    except BaseException:
        os.close(fd)
        raise
    _record(fd)
    return fd


def _take_over(path: Path, fd: int) -> int:
    # The lock is held: by the lxpyd the file names, or by leftovers.
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    named = int(text) if text.isdigit() else None
    if named is not None and _has_open(named, key):
        raise Busy(
            f"another lxpyd is already running for {path.parent} (pid {named})",
            hint="stop it first, or use another --root",
        )
    holders = [p for p in _pids() if p != os.getpid() and _has_open(p, key)]
    log.warning(
        "%s is held by %s, not by the lxpyd it names (pid %s, which does not hold it): "
        "taking it over; those processes are leftovers and may be killed",
        path,
        "process " + ", ".join(map(str, holders)) if holders else "a process gone by now",
        text or "?",
    )
    # A new file in its place: the leftovers keep the old one, unlinked.
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    new = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _record(new)
        os.rename(tmp, path)
    except BaseException:
        os.close(new)
        tmp.unlink(missing_ok=True)
        raise
    return new


def _record(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _has_open(pid: int, key: tuple[int, int]) -> bool:
    # Whether process `pid` has the file `key` (st_dev, st_ino) open.
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # cannot tell: taken for the daemon it may be
    for name in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == key:
            return True
    return False


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
