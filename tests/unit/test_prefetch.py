"""The read-ahead of a container's init and libraries (lxpy.storage.prefetch),
on the host's own binaries and on small trees made here."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lxpy.storage import prefetch


def _ldd(binary: str) -> set[str]:
    """What the loader maps for `binary`, as real paths (ldd's view)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            found.add(os.path.realpath(path))
    return found | {os.path.realpath(binary)}


@pytest.mark.parametrize("binary", ["/usr/bin/python3.11", "/usr/lib/systemd/systemd"])
def test_the_walk_reads_ahead_what_the_loader_loads(binary: str) -> None:
    # systemd finds its own libraries through DT_RUNPATH; python through
    # ld.so.conf.
    if not os.path.exists(binary):
        pytest.skip(f"{binary} is not installed")
    warmed = prefetch.warm("/", binary)
    assert {os.path.realpath(p) for p in warmed} == _ldd(binary) | {"/etc/ld.so.cache"}
    assert warmed[0] == binary
    assert "ld-linux" in warmed[1]  # the loader comes next: it runs first
    assert warmed[2] == "/etc/ld.so.cache"  # which reads its cache first


def _tree(tmp_path: Path) -> Path:
    """A rootfs whose init is a copy of /bin/true, and nothing else."""
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    shutil.copy("/bin/true", root / "sbin" / "init")
    return root


def _with_libs(root: Path) -> Path:
    (root / "lib64").mkdir()
    (root / "lib").mkdir()
    loader = next(p for p in _ldd("/bin/true") if "ld-linux" in p)
    libc = next(p for p in _ldd("/bin/true") if "libc.so" in p)
    shutil.copy(loader, root / "lib64" / "ld-linux-x86-64.so.2")
    shutil.copy(libc, root / "lib" / "libc.so.6")
    return root


def test_symlinks_and_dotdot_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    # Followed from the host, each of these reaches the host's own loader
    # and libc; resolved inside the rootfs, nothing.
    (root / "lib64").symlink_to("/../../../../../../lib64")
    libs = root / "etc"
    libs.mkdir()
    (libs / "ld.so.conf").write_text("/../../../../../../usr/lib/x86_64-linux-gnu\n")
    (root / "lib").symlink_to("../../../../../../../lib")
    assert prefetch.warm(str(root), "/sbin/init") == ["/sbin/init"]
    # The same names, present inside: found there (by a new walk: the
    # kept one is for the same init file).
    prefetch.forget()
    for link in ("lib64", "lib"):
        (root / link).unlink()
    _with_libs(root)
    assert prefetch.warm(str(root), "/sbin/init") == [
        "/sbin/init",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/libc.so.6",
    ]


def test_a_walk_is_kept_for_the_same_init_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _with_libs(_tree(tmp_path))
    # Another rootfs whose init is the same file (as a snapshot's is: the
    # same inode, size and times; linked first, as a link changes ctime).
    other = tmp_path / "other"
    (other / "sbin").mkdir(parents=True)
    os.link(root / "sbin" / "init", other / "sbin" / "init")
    _with_libs(other)
    (other / "lib" / "libc.so.6").unlink()
    files = ["/sbin/init", "/lib64/ld-linux-x86-64.so.2", "/lib/libc.so.6"]
    assert prefetch.warm(str(root), "/sbin/init") == files
    # There: the kept list, hinted inside it, with no walk; a file it lacks
    # is left out.

    def no_walk(fd: int) -> object:
        raise AssertionError("walked again")

    monkeypatch.setattr(prefetch, "elf_needs", no_walk)
    assert prefetch.warm(str(other), "/sbin/init") == files[:2]
    # A new init file (an upgrade replaces it) is walked afresh.
    (other / "sbin" / "init").unlink()
    shutil.copy("/bin/true", other / "sbin" / "init")
    with pytest.raises(AssertionError, match="walked again"):
        prefetch.warm(str(other), "/sbin/init")


def test_odd_files_are_skipped_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    os.mkfifo(root / "sbin" / "fifo")  # opening it for reading would block
    (root / "sbin" / "dir").mkdir()
    (root / "sbin" / "script").write_text("#!/bin/sh\nexec true\n")
    (root / "sbin" / "stub").write_bytes(b"\x7fELF\x02\x01")  # cut short
    # A warm() that opened the FIFO would never return: it is given a
    # thread, and found done (not timed: the bound only keeps a hang short).
    got: list[list[str]] = []
    t = threading.Thread(target=lambda: got.append(prefetch.warm(str(root), "/sbin/fifo")))
    t.daemon = True
    t.start()
    t.join(30)
    assert got == [[]], "warm() blocked on a FIFO"
    assert prefetch.warm(str(root), "/sbin/dir") == []
    assert prefetch.warm(str(root), "/sbin/missing") == []
    assert prefetch.warm(str(root), "/sbin/script") == ["/sbin/script"]  # no /bin/sh here
    assert prefetch.warm(str(root), "/sbin/stub") == ["/sbin/stub"]
    assert prefetch.warm(str(tmp_path / "no-rootfs"), "/sbin/init") == []


def test_a_script_brings_its_interpreter(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "bin").mkdir()
    shutil.copy("/bin/true", root / "bin" / "sh")
    (root / "sbin" / "init").unlink()
    (root / "sbin" / "init").write_text("#!/bin/sh -e\nexec /sbin/real-init\n")
    assert prefetch.warm(str(root), "/sbin/init") == ["/sbin/init", "/bin/sh"]


def _cached_bytes(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


def test_the_files_end_up_in_the_page_cache(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    init = root / "sbin" / "init"
    with open(init, "ab") as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert _cached_bytes(init) < 1 << 20
    assert prefetch.warm(str(root), "/sbin/init") == ["/sbin/init"]
    deadline = time.monotonic() + 5
    while _cached_bytes(init) < init.stat().st_size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _cached_bytes(init) >= init.stat().st_size


def _resident_pages(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--raw", "--noheadings", "--bytes", "--output", "PAGES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


def _evicted(path: Path) -> Path:
    """`path` with none of its pages in the page cache (written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert _resident_pages(path) == 0
    return path


def test_the_files_are_in_the_page_cache_afterwards(tmp_path: Path) -> None:
    root = _with_libs(_tree(tmp_path))
    files = [root / "sbin" / "init", root / "lib" / "libc.so.6"]
    control = tmp_path / "control"  # the same bytes, which nothing reads
    shutil.copy(files[1], control)
    for f in [*files, control]:
        _evicted(f)
    prefetch.warm(str(root), "/sbin/init")
    # The hint starts the reads; they finish on their own.
    for f in files:
        pages = -(-f.stat().st_size // os.sysconf("SC_PAGE_SIZE"))
        deadline = time.monotonic() + 10
        while _resident_pages(f) < pages:
            assert time.monotonic() < deadline, f"{f} not read ahead"
            time.sleep(0.01)
    assert _resident_pages(control) == 0
