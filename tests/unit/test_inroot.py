"""Host-side file access inside a rootfs (lxpy.kernel.inroot), on trees
made here with the entries a hostile root would leave."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.build.rootfs import check_init, set_hostname_files
from lxpy.kernel import inroot
from lxpy.kernel.inroot import Rootfs, RootfsError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "sbin").mkdir()
    return root


@pytest.fixture
def root(tree: Path) -> Iterator[Rootfs]:
    with Rootfs(tree, "container 'web'") as r:
        yield r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    f = tmp_path / "outside"
    f.write_text("host data\n")
    return f


def test_a_fifo_is_refused_by_its_type_without_blocking(tree: Path, root: Rootfs) -> None:
    os.mkfifo(tree / "etc/hosts")
    with pytest.raises(RootfsError, match=r"^container 'web': /etc/hosts is a FIFO, not a regular"):
        root.read("etc/hosts")


def test_a_socket_is_refused(tree: Path, root: Rootfs) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tree / "etc/hosts"))
        with pytest.raises(RootfsError, match="/etc/hosts is a socket"):
            root.read("etc/hosts")


def test_a_huge_sparse_file_is_refused_from_its_size(tree: Path, root: Rootfs) -> None:
    with open(tree / "etc/hosts", "wb") as f:
        f.truncate(10 << 30)
    with pytest.raises(RootfsError, match=r"/etc/hosts is larger than 1 MiB, the most lxpy"):
        root.read("etc/hosts")


def test_symlinks_out_resolve_inside(tree: Path, root: Rootfs, outside: Path) -> None:
    (tree / "etc/passwd").symlink_to(outside)
    (tree / "etc/up").symlink_to("../../../../" + outside.name)
    assert root.read("etc/passwd") is None
    assert root.read("etc/up") is None
    assert root.stat("etc/passwd") is None
    assert root.stat("etc/passwd", follow=False) is not None
    (tree / outside.name).write_text("inside\n")
    assert root.read_text("etc/up") == "inside\n"


def test_write_replaces_what_is_there_never_through_it(
    tree: Path, root: Rootfs, outside: Path
) -> None:
    before = outside.stat()
    (tree / "etc/hostname").symlink_to(outside)
    root.write("etc/hostname", "web\n")
    assert outside.read_text() == "host data\n"
    assert outside.stat().st_mtime_ns == before.st_mtime_ns
    os.unlink(tree / "etc/hostname")
    os.mkfifo(tree / "etc/hostname")
    root.write("etc/hostname", "web\n")
    st = os.lstat(tree / "etc/hostname")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert (tree / "etc/hostname").read_text() == "web\n"
    # A regular file keeps its mode; nothing is left beside it.
    os.chmod(tree / "etc/hostname", 0o600)
    root.write("etc/hostname", "db\n")
    assert stat.S_IMODE(os.stat(tree / "etc/hostname").st_mode) == 0o600
    assert sorted(os.listdir(tree / "etc")) == ["hostname"]


def test_errors_name_what_is_in_the_way(tree: Path, root: Rootfs) -> None:
    (tree / "etc/hostname").mkdir()
    with pytest.raises(RootfsError, match="/etc/hostname is a directory, not a regular file"):
        root.write("etc/hostname", "web\n")
    os.mkfifo(tree / "run")
    with pytest.raises(RootfsError, match="/run is a FIFO, not a directory"):
        root.write("run/x/y", "", make_parents=True)
    with pytest.raises(RootfsError, match="/run is a FIFO, not a directory"):
        root.listdir("run/x")
    os.symlink("loop", tree / "loop")
    with pytest.raises(RootfsError, match="/loop cannot be resolved: too many levels"):
        root.read("loop")


def test_hostname_files_replace_lxpys_own_and_leave_the_containers(
    tree: Path, root: Rootfs, outside: Path
) -> None:
    os.mkfifo(tree / "etc/hostname")
    (tree / "etc/hosts").symlink_to(outside)
    set_hostname_files(root, "web")
    assert (tree / "etc/hostname").read_text() == "web\n"
    assert (tree / "etc/hosts").is_symlink() and outside.read_text() == "host data\n"
    os.unlink(tree / "etc/hosts")
    with open(tree / "etc/hosts", "wb") as f:
        f.truncate(10 << 30)
    set_hostname_files(root, "web")  # left alone, not read
    assert (tree / "etc/hosts").stat().st_size == 10 << 30
    os.unlink(tree / "etc/hosts")
    (tree / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tplaceholder\n")
    set_hostname_files(root, "web")
    assert (tree / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tweb\n"


def test_init_must_be_a_regular_file(tree: Path, root: Rootfs, outside: Path) -> None:
    (tree / "sbin/init").symlink_to(outside)
    with pytest.raises(RootfsError, match=r"its init /sbin/init does not exist \(a symlink to /"):
        check_init(root, "/sbin/init")
    os.unlink(tree / "sbin/init")
    os.mkfifo(tree / "sbin/init")
    with pytest.raises(RootfsError, match="its init /sbin/init is a FIFO, not a program"):
        check_init(root, "/sbin/init")
    os.unlink(tree / "sbin/init")
    (tree / "bin").mkdir()
    (tree / "bin/busybox").write_text("")
    (tree / "sbin/init").symlink_to("/bin/busybox")
    with pytest.raises(RootfsError, match="/sbin/init is not executable"):
        check_init(root, "/sbin/init")
    os.chmod(tree / "bin/busybox", 0o755)
    check_init(root, "/sbin/init")


def test_the_disk_walk_counts_blocks_and_stays_inside(tree: Path, outside: Path) -> None:
    with open(outside, "wb") as f:
        f.write(os.urandom(1 << 20))
    (tree / "etc/link").symlink_to(outside)
    (tree / "etc/dirlink").symlink_to(outside.parent)
    os.mkfifo(tree / "etc/fifo")
    with open(tree / "etc/sparse", "wb") as f:
        f.truncate(10 << 30)
    total = inroot.allocated_bytes(str(tree))
    assert total is not None and total < 1 << 20
    (tree / "etc/data").write_bytes(os.urandom(1 << 20))
    os.link(tree / "etc/data", tree / "etc/data2")
    grown = inroot.allocated_bytes(str(tree))
    assert grown is not None and (1 << 20) <= grown - total < (1 << 20) + (64 << 10)
    assert inroot.allocated_bytes(str(tree), deadline=0) is None
    assert inroot.allocated_bytes(str(tree / "missing")) is None


def test_a_racing_rename_elsewhere_never_fails_a_lookup(tmp_path: Path) -> None:
    # Debian 13's /usr/sbin/init is ../lib/systemd/systemd: a scoped walk
    # over ".." that races with any rename on the host gets EAGAIN from
    # the kernel, which sc.openat2 retries. The raw syscall, asked the same
    # way meanwhile, shows that the race did happen here.
    import ctypes
    import errno
    import subprocess
    import sys

    from lxpy.kernel import syscalls as sc

    (tmp_path / "lib/systemd").mkdir(parents=True)
    (tmp_path / "lib/systemd/systemd").write_text("")
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/init").symlink_to("../../lib/systemd/systemd")
    spin = tmp_path / "spin"
    spin.write_text("")
    # Renames in a process of its own, so they run while a lookup does.
    renamer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "a, b = sys.argv[1], sys.argv[1] + '.x'\n"
            "while True:\n    os.rename(a, b); os.rename(b, a)\n",
            str(spin),
        ]
    )

    def raw_eagain(root_fd: int) -> bool:
        how = sc._OpenHow(os.O_PATH | os.O_CLOEXEC, 0, sc.RESOLVE_IN_ROOT)
        ret = sc._libc.syscall(
            ctypes.c_long(sc._OPENAT2_NR),
            ctypes.c_int(root_fd),
            b"usr/sbin/init",
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if ret >= 0:
            os.close(ret)
            return False
        assert ctypes.get_errno() == errno.EAGAIN
        return True

    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    raced = 0
    try:
        for _ in range(200_000):
            fd = sc.openat2(root_fd, "usr/sbin/init", os.O_PATH | os.O_CLOEXEC, sc.RESOLVE_IN_ROOT)
            os.close(fd)
            raced += raw_eagain(root_fd)
            if raced >= 3:
                break
    finally:
        renamer.kill()
        renamer.wait()
        os.close(root_fd)
    assert raced >= 1, "the race never happened: the check above proved nothing"
