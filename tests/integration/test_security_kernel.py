"""User namespaces, idmapped mounts, ownership shifting, capabilities and
seccomp inside a user namespace, on the real kernel and a real btrfs.

Every namespace lives in a forked child or behind a descriptor closed at
the end of the test; mounts are made inside private mount namespaces of
children, or under the btrfs fixture, which unmounts everything it holds.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lxpy.kernel import caps, idranges, mounts, namespaces, seccomp, shift
from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import delegate_cgroups, hierarchies
from tests.conftest import owns
from tests.forking import in_child

pytestmark = pytest.mark.integration

BASE = 3_000_000  # a range no host user owns
MAP = idranges.IdMap(BASE, BASE + 100_000, 65536)


@pytest.fixture
def userns() -> Iterator[int]:
    fd = namespaces.create_userns(MAP)
    try:
        yield fd
    finally:
        os.close(fd)


def test_userns_has_the_map_and_makes_root_unprivileged(userns: int) -> None:
    def child() -> dict[str, object]:
        namespaces.enter_userns(userns)
        out: dict[str, object] = {
            "uid_map": Path("/proc/self/uid_map").read_text().split(),
            "gid_map": Path("/proc/self/gid_map").read_text().split(),
            "ids": (os.getuid(), os.getgid(), os.getgroups()),
        }
        # Root here, but the host's /etc/shadow belongs to a host root
        # this namespace does not contain.
        try:
            Path("/etc/shadow").read_bytes()
            out["shadow"] = "read"
        except PermissionError:
            out["shadow"] = "EACCES"
        try:
            sc.sethostname("escaped")
            out["hostname"] = "changed"
        except OSError as e:
            out["hostname"] = errno.errorcode.get(e.errno or 0, str(e.errno))
        return out

    res = in_child(child)
    assert res["uid_map"] == ["0", str(BASE), "65536"]
    assert res["gid_map"] == ["0", str(BASE + 100_000), "65536"]
    assert res["ids"] == (0, 0, [])
    assert res["shadow"] == "EACCES"
    # The host's UTS namespace is owned by the host's user namespace.
    assert res["hostname"] == "EPERM"


def test_idmapped_mount_on_btrfs(btrfs_dir: Path, userns: int) -> None:
    src = btrfs_dir / "rootfs"
    src.mkdir()
    (src / "etc").mkdir()
    (src / "etc/owned-by-root").write_text("x")
    (src / "etc/owned-by-33").write_text("x")
    os.chown(src / "etc/owned-by-33", 33, 33)
    assert shift.idmap_method(str(src)) == "idmapped"
    view = btrfs_dir / "view"
    view.mkdir()
    mounts.mount_idmapped(str(src), str(view), userns)

    # The host's view through the mount: on-disk k appears as base + k.
    st = os.stat(view / "etc/owned-by-root")
    assert (st.st_uid, st.st_gid) == (BASE, BASE + 100_000)
    assert os.stat(view / "etc/owned-by-33").st_uid == BASE + 33

    def child() -> dict[str, object]:
        # As in the launch path: step into the tree before becoming the
        # container's root, which may not search the host's directories
        # above it (here pytest's 0700 tmp dir).
        raw_etc = os.open(src / "etc", os.O_PATH | os.O_DIRECTORY)
        os.chdir(view)
        namespaces.enter_userns(userns)
        seen = os.stat("etc/owned-by-root")
        Path("etc/made-inside").write_text("y")
        os.mkdir("etc/dir-inside")
        os.chown("etc/dir-inside", 1000, 1000)
        made = os.stat("etc/made-inside")
        # The raw tree is owned by a host root this namespace lacks.
        try:
            os.close(os.open("raw-write", os.O_CREAT | os.O_WRONLY, dir_fd=raw_etc))
            raw = "written"
        except PermissionError:
            raw = "EACCES"
        return {"seen": (seen.st_uid, seen.st_gid), "made": made.st_uid, "raw": raw}

    res = in_child(child)
    # Inside the container root's files are root's...
    assert res["seen"] == (0, 0)
    assert res["made"] == 0
    assert res["raw"] == "EACCES"
    # ...on disk they stay unshifted (the template remains shareable)...
    assert os.stat(src / "etc/made-inside").st_uid == 0
    assert os.stat(src / "etc/dir-inside").st_uid == 1000
    # ...and the host sees them as the mapped IDs through the container's view.
    assert os.stat(view / "etc/made-inside").st_uid == BASE
    assert os.stat(view / "etc/dir-inside").st_uid == BASE + 1000


def test_idmap_method_falls_back_where_idmapping_is_impossible() -> None:
    # procfs cannot be idmapped on any kernel.
    assert shift.idmap_method("/proc/self") == "shift"


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_shift_tree_keeps_suid_acls_caps_and_hardlinks(btrfs_dir: Path) -> None:
    root = btrfs_dir / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    su = root / "usr/bin/su"
    su.write_text("#!/bin/sh\n")
    os.chmod(su, 0o4755)
    ping = root / "usr/bin/ping"
    ping.write_text("#!/bin/sh\n")
    # cap_net_raw+ep, revision 2 (as the host writes it)
    v2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    os.setxattr(ping, "security.capability", v2)
    acl_file = root / "shared"
    acl_file.write_text("x")
    # user::rw-, user:1000:r--, group::r--, mask::r--, other::---
    os.setxattr(
        acl_file,
        "system.posix_acl_access",
        _acl(
            [
                (1, 6, 0xFFFFFFFF),
                (2, 4, 1000),
                (4, 4, 0xFFFFFFFF),
                (0x10, 4, 0xFFFFFFFF),
                (0x20, 0, 0xFFFFFFFF),
            ]
        ),
    )
    os.link(su, root / "usr/bin/su-again")
    os.symlink("/etc/nowhere", root / "dangling")
    os.chown(root / "shared", 100, 34)

    changed = shift.shift_tree(str(root), MAP)
    assert changed == 7  # rootfs, usr, usr/bin, su (once), ping, shared, dangling

    assert os.lstat(root).st_uid == BASE
    st = os.stat(su)
    assert (st.st_uid, st.st_gid) == (BASE, BASE + 100_000)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert os.lstat(root / "dangling").st_uid == BASE
    assert (os.stat(acl_file).st_uid, os.stat(acl_file).st_gid) == (BASE + 100, BASE + 100_034)
    raw_acl = os.getxattr(acl_file, "system.posix_acl_access")
    assert struct.unpack_from("<HHI", raw_acl, 12) == (2, 4, BASE + 1000)
    caps_v3 = os.getxattr(ping, "security.capability")
    magic, permitted = struct.unpack_from("<II", caps_v3)
    assert magic == 0x03000001 and permitted == 1 << 13
    assert struct.unpack_from("<I", caps_v3, 20)[0] == BASE
    # Once only: a second pass changes nothing.
    assert shift.shift_tree(str(root), MAP) == 0


def test_shift_tree_walks_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    # A tree deeper than Python's recursion limit (shutil and os.makedirs
    # recurse too: it is made and removed one level at a time).
    depth = sys.getrecursionlimit() + 100
    root = tmp_path / "rootfs"
    levels = [str(root)]
    for _ in range(depth):
        levels.append(os.path.join(levels[-1], "d"))
    try:
        for path in levels:
            os.mkdir(path)
        deepest = os.path.join(levels[-1], "file")
        Path(deepest).write_text("x")
        os.chown(deepest, 100, 34)

        assert shift.shift_tree(str(root), MAP) == depth + 2

        st = os.lstat(levels[-1])
        assert (st.st_uid, st.st_gid) == (BASE, BASE + 100_000)
        st = os.lstat(deepest)
        assert (st.st_uid, st.st_gid) == (BASE + 100, BASE + 100_034)
    finally:
        if os.path.lexists(os.path.join(levels[-1], "file")):
            os.unlink(os.path.join(levels[-1], "file"))
        for path in reversed(levels):
            if os.path.lexists(path):
                os.rmdir(path)


def test_netns_owned_by_the_userns_lets_container_root_mount_sysfs(
    userns: int, tmp_path: Path
) -> None:
    netns = namespaces.create_netns_in(userns)
    target = tmp_path / "sys"
    target.mkdir()
    try:
        assert owns(userns, netns)

        def attempt(join_netns: bool) -> str:
            if join_netns:
                sc.setns(netns, sc.CLONE_NEWNET)
            else:
                sc.unshare(sc.CLONE_NEWNET)  # owned by the host's user namespace
            namespaces.enter_userns(userns)
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            try:
                sc.mount("sysfs", "/sys", "sysfs", sc.MS_RDONLY)
            except OSError as e:
                return errno.errorcode.get(e.errno or 0, str(e.errno))
            return "mounted"

        assert in_child(lambda: attempt(True)) == "mounted"
        assert in_child(lambda: attempt(False)) == "EPERM"
    finally:
        os.close(netns)


def test_pin_ns_keeps_the_namespace(tmp_path: Path) -> None:
    fd = namespaces.create_userns(MAP)
    path = tmp_path / "userns"
    try:
        namespaces.pin_ns(fd, str(path))
        ino = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    try:
        again = os.open(path, os.O_RDONLY)
        try:
            assert os.fstat(again).st_ino == ino
        finally:
            os.close(again)
    finally:
        namespaces.unpin_ns(str(path))
    assert not path.exists()
    namespaces.unpin_ns(str(path))  # idempotent


def test_delegate_cgroups() -> None:
    v2 = [h for h in hierarchies() if h.version == 2]
    if not v2:
        pytest.skip("no cgroup2 hierarchy mounted")
    d = Path(v2[0].mountpoint) / f"lxpy-test-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        delegate_cgroups([str(d)], MAP)
        for p in (d, d / "cgroup.procs", d / "cgroup.subtree_control"):
            assert (os.stat(p).st_uid, os.stat(p).st_gid) == (BASE, BASE + 100_000)
        assert os.stat(d / "cgroup.max.depth").st_uid == 0  # limits stay the host's
    finally:
        d.rmdir()


def test_capability_drop_and_clear() -> None:
    def child() -> dict[str, set[str]]:
        caps.drop_bounding(["sys_module", "CAP_SYS_TIME", "mac_admin"])
        caps.clear_inheritable_and_ambient()
        return caps.read_sets()

    sets = in_child(child)
    assert not {"sys_module", "sys_time", "mac_admin"} & sets["bounding"]
    assert "sys_admin" in sets["bounding"]
    assert sets["inheritable"] == set() and sets["ambient"] == set()


def test_seccomp_in_userns_without_no_new_privs(userns: int) -> None:
    def child() -> dict[str, object]:
        namespaces.enter_userns(userns)
        # Root of the user namespace holds CAP_SYS_ADMIN there: no
        # no_new_privs needed, so setuid programs keep working.
        seccomp.apply(seccomp.default_policy())
        nnp = "NoNewPrivs:\t0" in Path("/proc/self/status").read_text()
        try:
            sc.sethostname("x")
            host = "changed"
        except OSError as e:
            host = errno.errorcode.get(e.errno or 0, str(e.errno))
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        ret = libc.syscall(ctypes.c_long(175), None, 0, b"")  # x86_64 init_module
        return {"nnp_off": nnp, "init_module": ctypes.get_errno() if ret < 0 else 0, "host": host}

    if os.uname().machine != "x86_64":
        pytest.skip("the probe uses x86_64 numbers")
    res = in_child(child)
    assert res == {"nnp_off": True, "init_module": errno.EPERM, "host": "EPERM"}


def _pivot_into(tree_maker: Callable[[], int] | None, root: Path, userns: int) -> str:
    """The launch path's order: tree made as host root, attached and
    pivoted into inside the container's namespaces."""
    tree = tree_maker() if tree_maker else -1
    os.chdir(root)
    if tree < 0:
        # The naive order: bind in a host-owned mount namespace first.
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount(str(root), str(root), None, sc.MS_BIND)
        os.chdir(root)
    namespaces.enter_userns(userns)
    sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWUTS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    if tree >= 0:
        mounts.attach_tree(tree, ".")
        os.fchdir(tree)
        os.close(tree)
    try:
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    os.chdir("/")
    st = os.stat("/etc/owned-by-root")
    sc.sethostname("inside")  # the UTS namespace is the container's own
    return f"pivoted {st.st_uid} {sorted(os.listdir('/'))}"


def test_launch_order_pivots_into_an_attached_tree(btrfs_dir: Path, userns: int) -> None:
    root = btrfs_dir / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/owned-by-root").write_text("x")
    idmapped = in_child(
        lambda: _pivot_into(lambda: mounts.idmapped_tree(str(root), userns), root, userns)
    )
    assert idmapped == "pivoted 0 ['etc']"
    # Without an idmap (the shifted fallback) the same order works.
    assert in_child(
        lambda: _pivot_into(lambda: mounts.clone_tree(str(root)), root, userns)
    ).startswith("pivoted")
    # A mount made in the host's mount namespace is locked in the
    # container's copy of it, and pivot_root refuses a locked new root.
    assert in_child(lambda: _pivot_into(None, root, userns)) == "EINVAL"
