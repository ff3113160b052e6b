"""Storage backends on real filesystems: btrfs on a loop pool, dir on tmp_path.

The behaviour every backend must have runs against both; btrfs-only tests
check what only subvolumes give (read-only templates, snapshots, nested
subvolumes); open_pool tests make real loop pools.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import btrfsutil
import pytest

from lxpy.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    LxpyError,
    NotFound,
    Unsupported,
)
from lxpy.model.paths import TREES, RootPaths
from lxpy.model.settings import Settings
from lxpy.storage.btrfs import BtrfsBackend
from lxpy.storage.dir import DirBackend
from lxpy.storage.mounts import is_mount_point, mount_of, mounts_under
from lxpy.storage.pool import POOL_MAX, POOL_MIN, default_pool_size, open_pool, pool_info
from lxpy.storage.tree import TreeBackend, iso_utc
from tests.conftest import unmount_all_under

pytestmark = pytest.mark.integration

MiB = 1024**2


@pytest.fixture(params=["btrfs", "dir"])
def backend(request: pytest.FixtureRequest) -> Iterator[TreeBackend]:
    if request.param == "btrfs":
        be: TreeBackend = BtrfsBackend(request.getfixturevalue("btrfs_dir") / "pool")
    else:
        be = DirBackend(request.getfixturevalue("plain_dir") / "pool")
    yield be
    # Every operation must leave no hidden leftovers behind.
    for tree in TREES:
        assert [e for e in os.listdir(be.path / tree) if e.startswith(".")] == []


@pytest.fixture
def bbackend(btrfs_dir: Path) -> BtrfsBackend:
    return BtrfsBackend(btrfs_dir / "pool")


def make_template(be: TreeBackend, name: str = "base", text: str = "v1") -> Path:
    staging = be.begin_template(name)
    (staging / "etc").mkdir()
    (staging / "etc" / "hostname").write_text(text + "\n")
    (staging / "bin").mkdir()
    (staging / "bin" / "sh").write_text("#!/bin/true\n")
    os.chown(staging / "bin" / "sh", 1234, 4321)  # before chmod: chown clears setuid
    (staging / "bin" / "sh").chmod(0o4755)
    os.symlink("sh", staging / "bin" / "ash")
    os.link(staging / "bin" / "sh", staging / "bin" / "hardsh")
    os.mknod(staging / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    be.commit_template(name)
    return be.template_path(name)


def hostname(root: Path) -> str:
    return (root / "etc" / "hostname").read_text().strip()


# -- behaviour of every backend ---------------------------------------------------


def test_template_lifecycle(backend: TreeBackend) -> None:
    assert not backend.template_exists("base")
    tpl = make_template(backend)
    assert backend.template_exists("base")
    assert hostname(tpl) == "v1"
    # A stale staging volume is replaced by an empty one.
    staging = backend.begin_template("base")
    (staging / "junk").write_text("x")
    staging = backend.begin_template("base")
    assert os.listdir(staging) == []
    backend.abort_template("base")
    assert not staging.exists()
    backend.abort_template("base")  # idempotent
    # Committing again replaces the template as a whole.
    staging = backend.begin_template("base")
    (staging / "etc").mkdir()
    (staging / "etc" / "hostname").write_text("v2\n")
    backend.commit_template("base")
    assert hostname(tpl) == "v2"
    assert not (tpl / "bin").exists()
    backend.delete_template("base")
    assert not backend.template_exists("base")
    backend.delete_template("base")  # idempotent


def test_commit_without_staging(backend: TreeBackend) -> None:
    with pytest.raises(NotFound, match="no staging volume"):
        backend.commit_template("base")


def test_create_container_copies_the_template(backend: TreeBackend) -> None:
    tpl = make_template(backend)
    backend.create_container("c1", "base")
    root = backend.container_path("c1")
    assert backend.container_exists("c1")
    assert hostname(root) == "v1"
    # cp -a and snapshots alike keep owners, modes, links and devices.
    st = os.stat(root / "bin" / "sh")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o4755)
    assert os.readlink(root / "bin" / "ash") == "sh"
    assert st.st_ino == os.stat(root / "bin" / "hardsh").st_ino
    assert stat.S_ISCHR(os.stat(root / "null").st_mode)
    # Writable and independent of the template.
    (root / "etc" / "hostname").write_text("changed\n")
    assert hostname(tpl) == "v1"


def test_create_container_errors(backend: TreeBackend) -> None:
    with pytest.raises(NotFound, match="template 'base' is not built"):
        backend.create_container("c1", "base")
    make_template(backend)
    backend.create_container("c1", "base")
    with pytest.raises(AlreadyExists, match="container 'c1' already exists"):
        backend.create_container("c1", "base")


def test_snapshot_restore_round_trip(backend: TreeBackend) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    root = backend.container_path("c1")
    backend.create_snapshot("c1", "s1")
    (root / "etc" / "hostname").write_text("v2\n")
    (root / "new").write_text("new")
    backend.create_snapshot("c1", "s2")
    (root / "etc" / "hostname").write_text("v3\n")

    snaps = backend.list_snapshots("c1")
    assert [s.name for s in snaps] == ["s1", "s2"]
    for s in snaps:
        taken = datetime.strptime(s.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - taken).total_seconds()) < 60

    backend.restore_snapshot("c1", "s1")
    assert hostname(root) == "v1" and not (root / "new").exists()
    (root / "etc" / "hostname").write_text("after-restore\n")  # writable again
    backend.restore_snapshot("c1", "s2")
    assert hostname(root) == "v2" and (root / "new").exists()
    # The snapshots themselves are untouched by restore and later writes.
    assert hostname(backend.snapshot_path("c1", "s1")) == "v1"


def test_snapshot_errors(backend: TreeBackend) -> None:
    with pytest.raises(NotFound, match="container 'c1' has no storage volume"):
        backend.create_snapshot("c1", "s1")
    assert backend.list_snapshots("c1") == []
    make_template(backend)
    backend.create_container("c1", "base")
    backend.create_snapshot("c1", "s1")
    with pytest.raises(AlreadyExists):
        backend.create_snapshot("c1", "s1")
    with pytest.raises(NotFound, match="no snapshot 'nope'"):
        backend.restore_snapshot("c1", "nope")
    backend.delete_snapshot("c1", "s1")
    backend.delete_snapshot("c1", "s1")  # idempotent
    assert backend.list_snapshots("c1") == []


def test_restore_rolls_back_when_it_fails_half_way(
    backend: TreeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    root = backend.container_path("c1")
    backend.create_snapshot("c1", "s1")
    (root / "etc" / "hostname").write_text("precious\n")
    real_copy = backend._copy

    def copy_then_fail(src: Path, dst: Path, *, read_only: bool) -> None:
        # The copy really lands at the rootfs's name, then the step fails:
        # the rollback must remove it and put the original back.
        real_copy(src, dst, read_only=read_only)
        assert dst.exists()
        raise OSError(errno.EIO, "simulated failure after the copy")

    monkeypatch.setattr(backend, "_copy", copy_then_fail)
    with pytest.raises(Exception, match="simulated failure"):
        backend.restore_snapshot("c1", "s1")
    assert hostname(root) == "precious"
    assert backend.container_exists("c1")


def test_commit_keeps_the_old_template_when_it_fails(
    backend: TreeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tpl = make_template(backend)
    staging = backend.begin_template("base")
    (staging / "etc").mkdir()
    (staging / "etc" / "hostname").write_text("v2\n")

    def fail(staging: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend, "_seal", fail)
    with pytest.raises(LxpyError, match="storage pool is full"):
        backend.commit_template("base")
    assert hostname(tpl) == "v1"
    monkeypatch.undo()
    # The staging volume is still there to retry or abort.
    backend.abort_template("base")


def test_rename_with_snapshots(backend: TreeBackend) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    backend.create_snapshot("c1", "s1")
    backend.rename_container("c1", "c2")
    assert not backend.container_exists("c1")
    assert hostname(backend.container_path("c2")) == "v1"
    assert [s.name for s in backend.list_snapshots("c2")] == ["s1"]
    assert backend.list_snapshots("c1") == []
    backend.restore_snapshot("c2", "s1")
    with pytest.raises(NotFound):
        backend.rename_container("c1", "c3")
    backend.create_container("c3", "base")
    with pytest.raises(AlreadyExists):
        backend.rename_container("c2", "c3")
    assert backend.container_exists("c2")


def test_clone(backend: TreeBackend) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    backend.create_snapshot("c1", "s1")
    (backend.container_path("c1") / "etc" / "hostname").write_text("mine\n")
    backend.clone_container("c1", "c2")
    c2 = backend.container_path("c2")
    assert hostname(c2) == "mine"
    assert backend.list_snapshots("c2") == []
    c2.joinpath("etc", "hostname").write_text("theirs\n")
    assert hostname(backend.container_path("c1")) == "mine"
    with pytest.raises(AlreadyExists):
        backend.clone_container("c1", "c2")
    with pytest.raises(NotFound):
        backend.clone_container("nope", "c3")


def test_delete_container_is_idempotent_and_takes_snapshots(backend: TreeBackend) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    backend.create_snapshot("c1", "s1")
    backend.create_snapshot("c1", "s2")
    backend.delete_container("c1")
    assert not backend.container_path("c1").exists()
    assert not backend.snapshot_dir("c1").exists()
    backend.delete_container("c1")
    assert backend.template_exists("base")


def test_delete_refuses_while_something_is_mounted_inside(backend: TreeBackend) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    proc = backend.container_path("c1") / "proc"
    proc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(proc)], check=True)
    try:
        (proc / "host-file").write_text("must survive")
        with pytest.raises(Busy, match="mounted inside"):
            backend.delete_container("c1")
        assert (proc / "host-file").read_text() == "must survive"
    finally:
        subprocess.run(["umount", str(proc)], check=True)
    backend.delete_container("c1")
    assert not backend.container_exists("c1")


@pytest.mark.parametrize("bad", ["../escape", ".build-x", "a/b", ""])
def test_names_cannot_leave_their_tree(backend: TreeBackend, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        backend.container_path(bad)
    with pytest.raises(InvalidArgument):
        backend.delete_container(bad)
    with pytest.raises(InvalidArgument):
        backend.create_snapshot("c1", bad)


def test_recover_settles_a_crash(backend: TreeBackend) -> None:
    make_template(backend)
    backend.create_container("c1", "base")
    backend.create_container("c2", "base")
    containers = backend.paths.containers
    # A crash during restore, after the rootfs was moved aside.
    os.rename(containers / "c1", containers / ".restore-c1")
    # A crash during a delete, after the rename.
    os.rename(containers / "c2", containers / ".trash-c2-0000")
    # A crash during a template build.
    (backend.begin_template("other") / "x").write_text("x")
    backend.recover()
    assert hostname(backend.container_path("c1")) == "v1"
    assert not backend.container_exists("c2")
    assert not backend.template_exists("other")


# -- btrfs only -----------------------------------------------------------------------


def test_btrfs_template_is_read_only(bbackend: BtrfsBackend) -> None:
    tpl = make_template(bbackend)
    assert btrfsutil.is_subvolume(tpl)
    assert btrfsutil.get_subvolume_read_only(tpl)
    with pytest.raises(OSError) as e:
        (tpl / "etc" / "hostname").write_text("no")
    assert e.value.errno == errno.EROFS
    # The staging volume is gone once committed.
    assert not bbackend.paths.staging("base").exists()


def test_btrfs_container_is_a_writable_snapshot(bbackend: BtrfsBackend) -> None:
    tpl = make_template(bbackend)
    bbackend.create_container("c1", "base")
    root = bbackend.container_path("c1")
    assert btrfsutil.is_subvolume(root)
    assert not btrfsutil.get_subvolume_read_only(root)
    info, tinfo = btrfsutil.subvolume_info(root), btrfsutil.subvolume_info(tpl)
    assert info.parent_uuid == tinfo.uuid  # a snapshot, not a copy
    (root / "etc" / "hostname").write_text("c1\n")
    assert hostname(tpl) == "v1"


def test_btrfs_snapshots_are_read_only(bbackend: BtrfsBackend) -> None:
    make_template(bbackend)
    bbackend.create_container("c1", "base")
    bbackend.create_snapshot("c1", "s1")
    snap = bbackend.snapshot_path("c1", "s1")
    assert btrfsutil.get_subvolume_read_only(snap)
    otime = btrfsutil.subvolume_info(snap).otime
    assert bbackend.list_snapshots("c1")[0].created_at == iso_utc(otime)


def test_btrfs_nested_subvolumes_are_deleted(bbackend: BtrfsBackend) -> None:
    make_template(bbackend)
    bbackend.create_container("c1", "base")
    root = bbackend.container_path("c1")
    # What systemd (/var/lib/machines) and docker (btrfs driver) make.
    btrfsutil.create_subvolume(root / "machines")
    btrfsutil.create_subvolume(root / "machines" / "inner")
    (root / "machines" / "inner" / "f").write_text("x")
    btrfsutil.create_subvolume(root / "machines" / "inner" / "deep")
    btrfsutil.create_snapshot(root / "machines" / "inner", root / "ro", read_only=True)
    # A read-only subvolume with a subvolume inside it: only deletable once
    # its flag is cleared.
    btrfsutil.set_subvolume_read_only(root / "machines" / "inner", True)
    bbackend.create_snapshot("c1", "s1")
    # Restore moves the rootfs with its nested subvolumes aside and deletes it.
    bbackend.restore_snapshot("c1", "s1")
    assert not (root / "machines" / "inner" / "f").exists()
    btrfsutil.create_subvolume(root / "again")
    btrfsutil.set_subvolume_read_only(root / "again", True)
    bbackend.delete_container("c1")
    assert not root.exists()
    # Nothing else is left on the filesystem: template only.
    left = [p for p, _ in btrfsutil.SubvolumeIterator(bbackend.path.parent, top=5)]
    assert sorted(left) == ["pool/templates/base"]


def test_btrfs_delete_of_a_mounted_rootfs_is_busy(bbackend: BtrfsBackend) -> None:
    make_template(bbackend)
    bbackend.create_container("c1", "base")
    root = bbackend.container_path("c1")
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        with pytest.raises(Busy):
            bbackend.delete_container("c1")
    finally:
        subprocess.run(["umount", str(root)], check=True)
    assert bbackend.container_exists("c1")
    bbackend.delete_container("c1")


# -- open_pool --------------------------------------------------------------------------


@pytest.fixture
def plain_root(tmp_path: Path) -> Iterator[Path]:
    """A root on a filesystem that is not btrfs; every mount under it goes."""
    if mount_of(tmp_path).fstype == "btrfs":
        pytest.skip("tmp_path is on btrfs; the loop-pool path needs a non-btrfs root")
    try:
        yield tmp_path / "root"
    finally:
        unmount_all_under(tmp_path)


def test_open_pool_dir(plain_root: Path) -> None:
    be = open_pool(Settings(root=plain_root, storage="dir"))
    assert isinstance(be, DirBackend)
    assert be.path == RootPaths(plain_root).pool_dir
    assert all(t.is_dir() for t in be.paths.trees)
    assert not RootPaths(plain_root).pool_image.exists()
    info = pool_info(be)
    assert info["backend"] == "dir" and info["instant_snapshot"] is False


def test_open_pool_on_btrfs_root_uses_it_directly(btrfs_dir: Path) -> None:
    be = open_pool(Settings(root=btrfs_dir / "root"))
    assert isinstance(be, BtrfsBackend)
    assert not (btrfs_dir / "root" / "pool.img").exists()
    assert not is_mount_point(be.path)
    make_template(be)
    be.create_container("c1", "base")


def test_open_pool_makes_and_reuses_a_loop_pool(plain_root: Path) -> None:
    settings = Settings(root=plain_root, storage="auto", pool_size=512 * MiB)
    be = open_pool(settings)
    assert isinstance(be, BtrfsBackend)
    image = plain_root / "pool.img"
    assert image.stat().st_size == 512 * MiB
    assert image.stat().st_blocks * 512 < 512 * MiB  # sparse
    assert mount_of(be.path).fstype == "btrfs" and is_mount_point(be.path)
    make_template(be)
    be.create_container("c1", "base")
    info = pool_info(be)
    assert info["backend"] == "btrfs" and info["instant_snapshot"] is True
    assert 0 < int(str(info["free_bytes"])) < int(str(info["size_bytes"])) <= 512 * MiB

    again = open_pool(settings)
    assert isinstance(again, BtrfsBackend)
    assert mounts_under(plain_root) == [str(be.path)]  # no second mount
    assert again.container_exists("c1")

    # After an unmount (a host reboot), the image is mounted again.
    subprocess.run(["umount", str(be.path)], check=True)
    third = open_pool(settings)
    assert third.container_exists("c1")
    assert mounts_under(plain_root) == [str(be.path)]


def test_open_pool_btrfs_impossible_raises_and_cleans_up(plain_root: Path) -> None:
    # Below mkfs.btrfs's minimum size, so mkfs fails.
    settings = Settings(root=plain_root, storage="btrfs", pool_size=16 * MiB)
    with pytest.raises(Unsupported, match="mkfs.btrfs failed") as e:
        open_pool(settings)
    assert e.value.hint and "pool_size" in e.value.hint
    assert not (plain_root / "pool.img").exists()
    assert mounts_under(plain_root) == []


def test_open_pool_auto_falls_back_to_dir(
    plain_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(root=plain_root, storage="auto", pool_size=16 * MiB)
    with caplog.at_level(logging.WARNING, logger="lxpy.storage"):
        be = open_pool(settings)
    assert isinstance(be, DirBackend)
    assert "no btrfs storage pool" in caplog.text
    assert not (plain_root / "pool.img").exists()
    make_template(be)
    be.create_container("c1", "base")
    # Later starts keep the directory pool rather than hide it under a mount.
    again = open_pool(Settings(root=plain_root, storage="auto", pool_size=512 * MiB))
    assert isinstance(again, DirBackend) and again.container_exists("c1")
    with pytest.raises(Unsupported, match="already holds a directory pool"):
        open_pool(Settings(root=plain_root, storage="btrfs", pool_size=512 * MiB))


def test_default_pool_size_is_clamped(tmp_path: Path) -> None:
    size = default_pool_size(tmp_path)
    assert POOL_MIN <= size <= POOL_MAX
