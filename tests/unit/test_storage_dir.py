"""The storage layer's pure parts and the dir backend, without root."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lxpy.errors import AlreadyExists, Busy, InvalidArgument, LxpyError, NotFound
from lxpy.model.paths import TREES
from lxpy.storage.dir import DirBackend
from lxpy.storage.mounts import is_mount_point, mount_of, mounts_under
from lxpy.storage.tree import CLOSED_MODE, guard_name, iso_utc, os_error


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "x\0y"])
def test_guard_name_refuses_escapes(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        guard_name(bad, "container")


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(1_700_000_000.7) == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.ENOENT, NotFound),
        (errno.EEXIST, AlreadyExists),
        (errno.ENOTEMPTY, AlreadyExists),
        (errno.EBUSY, Busy),
        (errno.EIO, LxpyError),
    ],
)
def test_errno_translation(code: int, cls: type[LxpyError]) -> None:
    err = os_error(OSError(code, os.strerror(code)), "container 'x'")
    assert type(err) is cls
    assert "container 'x'" in err.message


def test_mount_table() -> None:
    assert is_mount_point(Path("/"))
    assert mount_of(Path("/proc/self")).fstype == "proc"
    assert "/proc" in mounts_under(Path("/"))


def test_dir_backend_lifecycle(tmp_path: Path) -> None:
    be = DirBackend(tmp_path / "pool")
    staging = be.begin_template("base")
    (staging / "hostname").write_text("base\n")
    be.commit_template("base")
    be.create_container("c1", "base")
    root = be.container_path("c1")
    assert (root / "hostname").read_text() == "base\n"
    be.create_snapshot("c1", "s1")
    (root / "hostname").write_text("changed\n")
    [snap] = be.list_snapshots("c1")
    assert snap.name == "s1" and snap.created_at.endswith("Z")
    be.restore_snapshot("c1", "s1")
    assert (root / "hostname").read_text() == "base\n"
    be.delete_snapshot("c1", "s1")
    assert os.listdir(be.snapshot_dir("c1")) == []  # the side file went too
    be.delete_container("c1")
    be.delete_container("c1")
    assert os.listdir(be.paths.containers) == []


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_the_way_to_every_rootfs_is_closed(tmp_path: Path) -> None:
    be = DirBackend(tmp_path / "pool")
    (be.begin_template("base") / "hostname").write_text("base\n")
    be.commit_template("base")
    be.create_container("c1", "base")
    be.create_snapshot("c1", "s1")
    be.clone_container("c1", "c2")
    be.rename_container("c1", "c3")
    closed = [be.path, *(be.path / t for t in TREES), be.snapshot_dir("c3")]
    assert {p: _mode(p) for p in closed} == {p: CLOSED_MODE for p in closed}
    # A rootfs's own top directory is the container's `/`: left as it is.
    assert _mode(be.container_path("c2")) == 0o755
    assert be.close_to_others() == []


def test_an_open_pool_is_closed_again(tmp_path: Path) -> None:
    be = DirBackend(tmp_path / "pool")
    be.begin_template("base")
    be.commit_template("base")
    be.create_container("c1", "base")
    be.create_snapshot("c1", "s1")
    # The modes an older lxpy gave them.
    opened = [be.path / t for t in TREES] + [be.snapshot_dir("c1")]
    os.chmod(be.path, 0o711)
    for p in opened:
        os.chmod(p, 0o755)
    changed = DirBackend(be.path).close_to_others()
    assert changed == [f"{be.path} (711)"] + [f"{p} (755)" for p in opened]
    assert {_mode(p) for p in [be.path, *opened]} == {CLOSED_MODE}
