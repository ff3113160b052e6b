"""Read ahead what a container's init loads before it runs a line of its own.

A container's rootfs is a fresh btrfs snapshot: its data is the template's
on disk, but its files are new inodes, and the page cache belongs to the
inode. So the first exec of init reads the init binary, the dynamic loader,
its cache of library paths and every library it links (systemd: 27 files,
18 MB) from disk, one page
fault at a time, before systemd's main() takes its first timestamp. Measured
on a fresh snapshot: 20.7 ms from exec to that timestamp, 7 ms when the
files are cached.

lxpyd therefore asks the kernel to read those files ahead
(posix_fadvise WILLNEED) as a start begins: the reads then run on another
core while the monitor sets the container up, and init finds them cached.
It is a hint and nothing more: a file that is missing, odd or refused is
skipped, and no error reaches the start.

Every lookup goes through lxpy.kernel.inroot, so no symlink or ".." in a
container's tree (which its root may have written) can lead outside it,
and only regular files are read ahead.

The walk (parsing each ELF file, searching the library directories) takes
as long as the hints themselves, so its result is kept per init file: a
fresh snapshot's init is its template's file (the same inode number, size
and times), and a start of any container from that template reads the
list again instead of walking. A new init binary (an upgrade replaces the
file) is walked afresh. What a kept list can miss: a library that moved
while init stayed the same. It is a hint; init then loads that one itself.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import struct

from lxpy.kernel import elf, inroot
from lxpy.kernel import syscalls as sc

# The loader's own directories, searched after ld.so.conf's (glibc's
# trusted directories; musl's defaults).
DEFAULT_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib")
# Bounds for a tree its container's root may have written: files followed,
# bytes read ahead from one file, ld.so.conf includes followed.
MAX_FILES = 64
MAX_BYTES = 64 << 20
_MAX_INCLUDES = 8
LD_CACHE = "/etc/ld.so.cache"

# Walks made, by init: (path, inode, size, mtime, ctime) -> the files.
_WALKS: dict[tuple[str, int, int, int, int], list[str]] = {}
_MAX_WALKS = 64


def _regular(root_fd: int, path: str) -> int | None:
    """An O_PATH fd of `path` inside the rootfs when it is a regular file,
    or None. An O_PATH fd opens nothing: a device node or FIFO there is
    looked at, never opened."""
    try:
        pfd = inroot.open_path(root_fd, path)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(pfd).st_mode):
        os.close(pfd)
        return None
    return pfd


def elf_needs(fd: int) -> tuple[str | None, list[str], list[str]]:
    """(program interpreter, DT_NEEDED names, DT_RUNPATH/DT_RPATH
    directories) of the ELF file open on `fd`. For a script, its "#!"
    interpreter is the program interpreter; anything else (a static binary,
    data) needs nothing: (None, [], []).
    """
    head = os.pread(fd, 256, 0)
    if head[:2] == b"#!":
        words = head[2:].split(b"\n", 1)[0].split()
        return (words[0].decode(errors="replace") if words else None), [], []
    binary = elf.parse(fd)
    if binary is None:
        return None, [], []
    return binary.interpreter(), *binary.needs()


def lib_dirs(root_fd: int) -> list[str]:
    """The library directories of the rootfs's loader: /etc/ld.so.conf's
    (with its includes), then the loader's defaults."""
    dirs: list[str] = []
    pending = ["/etc/ld.so.conf"]
    includes = 0
    while pending and includes <= _MAX_INCLUDES:
        text = _read_small(root_fd, pending.pop(0))
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                includes += 1
                pending.extend(_glob_in(root_fd, line.split(None, 1)[1].strip()))
            elif line.startswith("/"):
                dirs.append(line)
    return [*dict.fromkeys([*dirs, *DEFAULT_LIB_DIRS])]


def _read_small(root_fd: int, path: str) -> str:
    fd = inroot.open_regular(root_fd, path)
    if fd is None:
        return ""
    try:
        return os.pread(fd, 65536, 0).decode(errors="replace")
    finally:
        os.close(fd)


def _glob_in(root_fd: int, pattern: str) -> list[str]:
    """Files matching `pattern` (a glob in its last component only, as
    Debian's `include /etc/ld.so.conf.d/*.conf`), sorted."""
    parent, _, name = pattern.rpartition("/")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = sc.openat2(root_fd, parent or "/", flags, inroot.IN_ROOT)
    except OSError:
        return []
    try:
        entries = os.listdir(fd)
    finally:
        os.close(fd)
    return [f"{parent}/{e}" for e in sorted(entries) if fnmatch.fnmatchcase(e, name)]


def warm(rootfs: str, init: str) -> list[str]:
    """Read ahead `init` of `rootfs` (a path inside it), its program
    interpreter and the libraries they link, in the order the loader needs
    them; returns the paths (inside the rootfs) that were read ahead.
    """
    try:
        root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return _warm(root_fd, init)
    finally:
        os.close(root_fd)


def forget() -> None:
    """Drop every kept walk."""
    _WALKS.clear()


def _warm(root_fd: int, init: str) -> list[str]:
    # Looked at, not opened: the walk or the kept list opens it.
    fd = _regular(root_fd, init)
    if fd is None:
        return []
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    key = (init, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _WALKS.get(key)
    if known is not None:
        return [path for path in known if _hint(root_fd, path)]
    done = _walk(root_fd, init)
    if len(_WALKS) >= _MAX_WALKS:
        del _WALKS[next(iter(_WALKS))]
    _WALKS[key] = done
    return done


def _hint(root_fd: int, path: str) -> bool:
    """Read ahead one file of the rootfs; whether it could be."""
    fd = inroot.open_regular(root_fd, path)
    if fd is None:
        return False
    try:
        _advise(fd, os.fstat(fd).st_size)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _advise(fd: int, size: int) -> None:
    os.posix_fadvise(fd, 0, min(size, MAX_BYTES), os.POSIX_FADV_WILLNEED)


def _walk(root_fd: int, init: str) -> list[str]:
    done: list[str] = []
    seen: set[tuple[int, int]] = set()
    queue = [init]
    dirs: list[str] | None = None
    while queue and len(done) < MAX_FILES:
        path = queue.pop(0)
        fd = inroot.open_regular(root_fd, path)
        if fd is None:
            continue
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            # First the hint, so the read starts before we parse.
            _advise(fd, st.st_size)
            done.append(path)
            interp, needed, runpath = elf_needs(fd)
        except (OSError, struct.error):
            continue
        finally:
            os.close(fd)
        if interp:
            queue.insert(0, interp)  # the loader runs first
        if not needed:
            continue
        if LD_CACHE not in queue and LD_CACHE not in done:
            # glibc's loader reads its cache of library paths before the
            # first library (a data file: read ahead, nothing to parse).
            queue.insert(1 if interp else 0, LD_CACHE)
        if dirs is None:
            dirs = lib_dirs(root_fd)
        origin = os.path.dirname(path)
        search = [d.replace("$ORIGIN", origin) for d in runpath] + dirs
        for name in needed:
            found = name if "/" in name else _find_lib(root_fd, name, search)
            if found:
                queue.append(found)
    return done


def _find_lib(root_fd: int, name: str, dirs: list[str]) -> str | None:
    for d in dirs:
        path = f"{d}/{name}"
        fd = _regular(root_fd, path)
        if fd is not None:
            os.close(fd)
            return path
    return None
