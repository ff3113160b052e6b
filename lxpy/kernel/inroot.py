"""Host-side file access inside a root filesystem that a container's root owns.

Root in a container owns every entry of its rootfs, and an imported
template holds whatever its tarball held. /etc/hostname may be a FIFO
(opened for reading, it blocks until a writer comes: forever), a device
node (opening one may act on the device), a symlink to a host path
(followed from the host, it leads out of the rootfs) or a sparse file of
terabytes (read whole, it fills lxpyd's memory). So host code (lxpyd, the
builders, the launch before pivot_root) never touches a path in a rootfs
with plain open() or pathlib; it comes here, where:

* every path is resolved by the kernel inside the rootfs (openat2
  RESOLVE_IN_ROOT: symlinks and ".." as if the rootfs were "/"), never
  through a magic link (/proc/PID/...) and never across a mount;
* an entry is opened O_PATH first, which opens nothing, and looked at;
  only a regular file is then opened for reading (O_NONBLOCK, O_NOCTTY):
  a FIFO, socket or device node is refused by its type, never opened;
* reads are capped; a larger file is an error naming the path and the cap;
* a file is written as a new file in the same directory (through the
  directory's fd) and renamed over the old entry, so whatever was there
  (a FIFO, a symlink, a device node) is replaced, never written through.

Errors are RootfsError, naming the rootfs ("container 'web'"), the path
inside it and what is wrong: "container 'web': /etc/hostname is a FIFO,
not a regular file".

Only os, stat, time and lxpy's syscall bindings are imported: the launch
path (every monitor) imports this module too.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

from lxpy.errors import LxpyError
from lxpy.kernel import syscalls as sc

# Symlinks and ".." resolve inside the rootfs; /proc/PID/root and the
# like are refused, and so is a path that crosses a mount (on the host no
# mount belongs inside a rootfs: one there is not the container's data).
IN_ROOT = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_XDEV
# The most read from one file unless a caller says otherwise: every file
# lxpy reads in a rootfs (hostname, hosts, passwd, a unit file) is small.
MAX_READ = 1 << 20

_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class RootfsError(LxpyError):
    """An entry of a rootfs that lxpy will not use as it is; `what` says
    what is wrong with it, without naming the rootfs or the path."""

    def __init__(self, message: str, hint: str | None = None, what: str = "") -> None:
        super().__init__(message, hint)
        self.what = what or message


def kind(mode: int) -> str:
    """What a file of `mode` is, for a message: "a FIFO", "a directory", ..."""
    return _KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


def size_text(n: int) -> str:
    """n bytes for a message: 1 MiB, 64 KiB, 100 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _rel(path: str) -> str:
    # openat2 takes a path relative to the root fd; RESOLVE_IN_ROOT treats
    # a leading "/" as the root anyway, but "" must become ".".
    return path.lstrip("/") or "."


def open_path(root_fd: int, path: str, *, follow: bool = True, resolve: int = IN_ROOT) -> int:
    """An O_PATH fd of `path` inside the rootfs open at `root_fd`; with
    follow=False a final symlink is the entry itself. Opens nothing.

    Raises:
        OSError: ENOENT, ENOTDIR, ELOOP, EXDEV (a mount on the way).
    """
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    return sc.openat2(root_fd, _rel(path), flags, resolve)


def open_regular(root_fd: int, path: str) -> int | None:
    """A read fd of `path` inside the rootfs when it is a regular file
    (symlinks followed inside it), else None; never blocks, never opens
    anything but a regular file."""
    try:
        pfd = open_path(root_fd, path)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return None
        return _reopen(pfd, root_fd, path)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _reopen(pfd: int, root_fd: int, path: str, resolve: int = IN_ROOT) -> int:
    # Opened through the O_PATH fd, so it is the inode just looked at even
    # if the name changed since. Without /proc (a process chrooted into a
    # container that has none mounted), by name again, checked to be the
    # same inode.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        return os.open(f"/proc/self/fd/{pfd}", flags)
    except FileNotFoundError:
        fd = sc.openat2(root_fd, _rel(path), flags, resolve)
    want, got = os.fstat(pfd), os.fstat(fd)
    if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino):
        os.close(fd)
        raise OSError(errno.ESTALE, f"{path} changed while it was opened")
    return fd


class Rootfs:
    """A rootfs opened for host-side access; every path is inside it.

    Use as a context manager, or close() it.

    Args:
        path: the rootfs on the host (a container's subvolume, a
            template's staging volume, "/" in a chrooted process).
        label: whose rootfs, for messages ("container 'web'").
        cross_mounts: whether a path may cross a mount: only from inside
            the container (its mounts are its own), never on the host.
        hint: what the human can do about a bad entry.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        label: str,
        *,
        cross_mounts: bool = False,
        hint: str = "fix or remove it inside the container, or restore a snapshot",
    ) -> None:
        self.label = label
        self.hint = hint
        self.resolve = IN_ROOT & ~sc.RESOLVE_NO_XDEV if cross_mounts else IN_ROOT
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Rootfs:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def error(self, path: str, what: str) -> RootfsError:
        """The error for `path` (inside the rootfs) that `what` describes."""
        return RootfsError(f"{self.label}: /{_rel(path)} {what}", hint=self.hint, what=what)

    def _oserror(self, path: str, e: OSError) -> RootfsError:
        if e.errno == errno.ELOOP:
            return self.error(path, "cannot be resolved: too many levels of symlinks")
        if e.errno == errno.EXDEV:
            return self.error(path, "crosses a mount point")
        return self.error(path, f"cannot be used: {e.strerror or e}")

    # -- looking ---------------------------------------------------------------
    def stat(self, path: str, *, follow: bool = True) -> os.stat_result | None:
        """The entry at `path` (None when it does not exist); follow=False
        looks at a final symlink itself.

        Raises:
            RootfsError: a symlink loop, a mount on the way.
        """
        pfd = self._entry(path, follow)
        if pfd < 0:
            return None
        try:
            return os.fstat(pfd)
        finally:
            os.close(pfd)

    def _entry(self, path: str, follow: bool = True) -> int:
        # An O_PATH fd of the entry at `path`, or -1 when there is none.
        try:
            return open_path(self.fd, path, follow=follow, resolve=self.resolve)
        except (FileNotFoundError, NotADirectoryError):
            return -1
        except OSError as e:
            raise self._oserror(path, e) from None

    def is_file(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def realpath(self, path: str) -> str | None:
        """`path` with every symlink resolved inside the rootfs, as an
        absolute path inside it; None when it does not exist."""
        try:
            pfd = open_path(self.fd, path, resolve=self.resolve)
        except OSError:
            return None
        try:
            top = os.readlink(f"/proc/self/fd/{self.fd}").rstrip("/")
            full = os.readlink(f"/proc/self/fd/{pfd}")
        except OSError:
            return None
        finally:
            os.close(pfd)
        return "/" + full[len(top) :].lstrip("/") if full.startswith(top + "/") else "/"

    def readlink(self, path: str) -> str | None:
        """The target of the symlink at `path`, or None if it is not one."""
        dfd, name = self._parent(path)
        if dfd < 0:
            return None
        try:
            return os.readlink(name, dir_fd=dfd)
        except OSError:
            return None
        finally:
            os.close(dfd)

    def listdir(self, path: str) -> list[str]:
        """The names in directory `path` ([] when it does not exist).

        Raises:
            RootfsError: it is not a directory.
        """
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = sc.openat2(self.fd, _rel(path), flags, self.resolve)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise self._not_a_dir(path) from None
        except OSError as e:
            raise self._oserror(path, e) from None
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def _not_a_dir(self, path: str) -> RootfsError:
        # Which component is not a directory: the message names it.
        parts = _rel(path).split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            st = self.stat(sub)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return self.error(sub, f"is {kind(st.st_mode)}, not a directory")
        return self.error(path, "is not a directory")

    # -- reading ---------------------------------------------------------------
    def read(self, path: str, cap: int = MAX_READ) -> bytes | None:
        """The contents of regular file `path` (symlinks followed inside
        the rootfs), or None when it does not exist.

        Raises:
            RootfsError: it is not a regular file (a FIFO, a device, a
                directory, ...), or larger than `cap` bytes.
        """
        pfd = self._entry(path)
        if pfd < 0:
            return None
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                raise self.error(path, f"is {kind(st.st_mode)}, not a regular file")
            if st.st_size > cap:
                raise self._too_large(path, cap)
            try:
                fd = _reopen(pfd, self.fd, path, self.resolve)
            except OSError as e:
                raise self._oserror(path, e) from None
        finally:
            os.close(pfd)
        try:
            chunks = []
            left = cap + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > cap:
            raise self._too_large(path, cap)
        return data

    def _too_large(self, path: str, cap: int) -> RootfsError:
        return self.error(path, f"is larger than {size_text(cap)}, the most lxpy reads from it")

    def read_text(self, path: str, cap: int = MAX_READ) -> str | None:
        """read() decoded as UTF-8 (bad bytes replaced)."""
        data = self.read(path, cap)
        return None if data is None else data.decode("utf-8", "replace")

    # -- changing --------------------------------------------------------------
    def _parent(self, path: str, create: bool = False) -> tuple[int, str]:
        """(O_PATH fd of the directory holding `path`, its last name); the
        fd is -1 when that directory does not exist (and not `create`)."""
        parent, _, name = _rel(path).rpartition("/")
        if name in ("", ".", ".."):
            raise self.error(path, "is not a file name")
        if create:
            self.makedirs(parent or ".")
        try:
            dfd = sc.openat2(
                self.fd, parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, self.resolve
            )
        except FileNotFoundError:
            return -1, name
        except NotADirectoryError:
            raise self._not_a_dir(parent) from None
        except OSError as e:
            raise self._oserror(parent, e) from None
        return dfd, name

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Make directory `path` (with `mode`) and the missing ones above it
        (0755); existing symlinks on the way are followed inside the rootfs.

        Raises:
            RootfsError: something on the way is not a directory.
        """
        parts = [p for p in _rel(path).split("/") if p not in ("", ".")]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            st = self.stat(sub)
            if st is not None:
                if not stat.S_ISDIR(st.st_mode):
                    raise self.error(sub, f"is {kind(st.st_mode)}, not a directory")
                continue
            dfd, name = self._parent(sub)
            this = mode if i == len(parts) else 0o755
            try:
                os.mkdir(name, this, dir_fd=dfd)
                # mkdir honours the umask; the mode asked for is what counts.
                fd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
                )
                try:
                    os.fchmod(fd, this)
                finally:
                    os.close(fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise self.error(sub, f"cannot be made: {e.strerror or e}") from None
            finally:
                os.close(dfd)

    def write(
        self, path: str, data: bytes | str, mode: int = 0o644, *, make_parents: bool = False
    ) -> None:
        """Make `path` a regular file holding `data`, replacing whatever
        entry is there (a symlink or FIFO is replaced, not written
        through). A regular file that was there keeps its owner and mode;
        a new one gets `mode` and the owner of its directory.

        Raises:
            RootfsError: its directory is missing (without make_parents) or
                not a directory, `path` is a directory, or the write failed.
        """
        raw = data.encode() if isinstance(data, str) else data

        def make(dfd: int, tmp: str, old: os.stat_result | None) -> None:
            keep = old is not None and stat.S_ISREG(old.st_mode)
            owner = old if keep and old is not None else os.fstat(dfd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                # Owner first: a chown clears setuid bits the mode may hold.
                os.fchown(fd, owner.st_uid, owner.st_gid)
                os.fchmod(fd, stat.S_IMODE(owner.st_mode) if keep else mode)
            finally:
                os.close(fd)

        self._swap(path, "a regular file", make, make_parents)

    def symlink(self, path: str, target: str, *, make_parents: bool = True) -> None:
        """Make `path` a symlink to `target`, replacing whatever entry
        (not a directory) is there.

        Raises:
            RootfsError: `path` is a directory, or its directory cannot be had.
        """

        def make(dfd: int, tmp: str, _old: os.stat_result | None) -> None:
            os.symlink(target, tmp, dir_fd=dfd)

        self._swap(path, "a symlink", make, make_parents)

    def _swap(
        self,
        path: str,
        what: str,
        make: Callable[[int, str, os.stat_result | None], None],
        make_parents: bool,
    ) -> None:
        # The new entry is made beside the old one under a temporary name
        # (make(dir fd, that name, the old entry's lstat)), then renamed
        # over it: whatever was there is replaced, never written through.
        dfd, name = self._parent(path, create=make_parents)
        if dfd < 0:
            raise self.error(path, "cannot be written: its directory does not exist")
        tmp = f".{name}.lxpy-{os.urandom(4).hex()}"
        try:
            old = _lstat_at(dfd, name)
            if old is not None and stat.S_ISDIR(old.st_mode):
                raise self.error(path, f"is a directory, not {what}")
            try:
                make(dfd, tmp, old)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as e:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # the caller's to say: the pool is full
                raise self.error(path, f"cannot be written: {e.strerror or e}") from None
        finally:
            os.close(dfd)

    def remove(self, path: str) -> bool:
        """Remove the entry at `path` (anything but a directory; a symlink
        itself, not its target). True when something was removed."""
        dfd, name = self._parent(path)
        if dfd < 0:
            return False
        try:
            old = _lstat_at(dfd, name)
            if old is None or stat.S_ISDIR(old.st_mode):
                return False
            os.unlink(name, dir_fd=dfd)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self.error(path, f"cannot be removed: {e.strerror or e}") from None
        finally:
            os.close(dfd)


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# -- disk use -----------------------------------------------------------------
# The walk goes down only: no symlink, no "..", no mount crossed.
_WALK = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_XDEV


def allocated_bytes(path: str, deadline: float | None = None) -> int | None:
    """Bytes allocated to `path` and everything under it: blocks, not
    apparent sizes (a sparse file counts what it holds), each inode once.

    Nothing is opened but directories; symlinks are not followed and no
    mount is crossed (a file whose device is not its directory's is a
    mount too). Returns None when `path` is no directory, or when
    time.monotonic() passes `deadline` before the walk is done.
    """
    try:
        root_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    seen: set[tuple[int, int]] = set()
    try:
        total = os.fstat(root_fd).st_blocks * 512
        stack = [""]
        while stack:
            if deadline is not None and time.monotonic() > deadline:
                return None
            rel = stack.pop()
            total += _dir_blocks(root_fd, rel, stack, seen)
    finally:
        os.close(root_fd)
    return total


def _dir_blocks(root_fd: int, rel: str, stack: list[str], seen: set[tuple[int, int]]) -> int:
    # The blocks of directory `rel`'s entries; its subdirectories go on `stack`.
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = sc.openat2(root_fd, rel, flags, _WALK) if rel else os.dup(root_fd)
    except OSError:
        return 0  # a mount point, too deep for a path, gone meanwhile
    total = 0
    try:
        dev = os.fstat(fd).st_dev
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                elif st.st_dev != dev:
                    continue  # a file mounted over this name
                elif st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    except OSError:
        pass
    finally:
        os.close(fd)
    return total
