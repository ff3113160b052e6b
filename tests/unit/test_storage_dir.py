"""The storage layer's pure parts and the dir backend, without root."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lxpy.errors import AlreadyExists, Busy, InvalidArgument, LxpyError, NotFound
from lxpy.storage.dir import DirBackend
from lxpy.storage.layout import guard_name, iso_utc, os_error
from lxpy.storage.mounts import is_mount_point, mount_of, mounts_under


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
    assert os.listdir(be.path / "containers") == []
