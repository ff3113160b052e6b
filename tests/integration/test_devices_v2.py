"""The cgroup v2 device allow-list, as the kernel enforces it.

A scratch cgroup under this host's cgroup2 mount gets the program built
from ALLOWED; a forked child moves itself into it and tries device nodes.
On a hybrid host the v1 devices controller still applies too, but the
test's own v1 devices cgroup allows everything, so every refusal seen here
is the BPF program's.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lxpy.kernel import bpfdev, devices
from lxpy.kernel.cgroups import ContainerCgroup, hierarchies
from tests.forking import in_child

pytestmark = pytest.mark.integration


def _cgroup2_mount() -> str:
    for h in hierarchies():
        if h.version == 2:
            return h.mountpoint
    pytest.fail("no cgroup2 mount on this host (every supported host has one)")


def _remove(path: str) -> None:
    if not os.path.isdir(path):
        return
    for sub in os.scandir(path):
        if sub.is_dir(follow_symlinks=False):
            _remove(sub.path)
    # A child the test could not reap in time still counts: kill what is left.
    with open(os.path.join(path, "cgroup.procs")) as f:
        for pid in f.read().split():
            os.kill(int(pid), 9)
            try:
                os.waitpid(int(pid), 0)
            except ChildProcessError:
                pass
    os.rmdir(path)


@pytest.fixture
def scratch() -> Iterator[str]:
    path = os.path.join(_cgroup2_mount(), f"lxpy-test-devices-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        _remove(path)


def _enter(cg: str) -> None:
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def _errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


def _open_close(path: str, flags: int) -> None:
    os.close(os.open(path, flags | os.O_CLOEXEC))


def _probe(cg: str, tmp: Path) -> dict[str, int]:
    """In a child inside `cg`: what each device step returns (0 or errno)."""

    def child() -> dict[str, int]:
        _enter(cg)
        null, loop, kmsg = str(tmp / "null"), str(tmp / "loop0"), str(tmp / "kmsg-in")
        return {
            "open /dev/null rw": _errno_of(lambda: _open_close("/dev/null", os.O_RDWR)),
            "mknod c 1:3": _errno_of(
                lambda: os.mknod(null, stat.S_IFCHR | 0o600, os.makedev(1, 3))
            ),
            "open own null rw": _errno_of(lambda: _open_close(null, os.O_RDWR)),
            "mknod b 7:0": _errno_of(
                lambda: os.mknod(loop, stat.S_IFBLK | 0o600, os.makedev(7, 0))
            ),
            "mknod c 1:11": _errno_of(
                lambda: os.mknod(kmsg, stat.S_IFCHR | 0o600, os.makedev(1, 11))
            ),
            "open kmsg": _errno_of(lambda: _open_close(str(tmp / "kmsg"), os.O_RDONLY)),
        }

    result: dict[str, int] = in_child(child)
    return result


def _kmsg_node(tmp: Path) -> str:
    # Made outside the cgroup: a node the list does not let anyone inside open.
    path = str(tmp / "kmsg")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 11))
    return path


EXPECTED = {
    "open /dev/null rw": 0,
    "mknod c 1:3": 0,
    "open own null rw": 0,
    "mknod b 7:0": errno.EPERM,
    "mknod c 1:11": 0,
    "open kmsg": errno.EPERM,
}


def test_program_from_allowed_enforces_the_list(scratch: str, tmp_path: Path) -> None:
    kmsg = _kmsg_node(tmp_path)
    assert bpfdev.attached(scratch) == 0
    bpfdev.attach(scratch, devices.ALLOWED)
    assert bpfdev.attached(scratch) == 1
    assert _probe(scratch, tmp_path) == EXPECTED
    assert not (tmp_path / "loop0").exists()
    # The same open outside the cgroup works: the refusal is the program's.
    _open_close(kmsg, os.O_RDONLY)


def test_without_the_program_everything_works(scratch: str, tmp_path: Path) -> None:
    # The control: the same steps in a bare cgroup refuse nothing.
    _kmsg_node(tmp_path)
    assert set(_probe(scratch, tmp_path).values()) == {0}


def test_a_program_below_cannot_widen_the_list(scratch: str, tmp_path: Path) -> None:
    # BPF_F_ALLOW_MULTI: every program from the cgroup up must allow.
    _kmsg_node(tmp_path)
    bpfdev.attach(scratch, devices.ALLOWED)
    inner = os.path.join(scratch, "inner")
    os.mkdir(inner)
    bpfdev.attach(inner, ["a"])
    assert _probe(inner, tmp_path) == EXPECTED


def test_restrict_uses_the_program_without_a_v1_devices_controller(
    scratch: str, tmp_path: Path
) -> None:
    # A cgroup known only by its v2 directory, as on a pure cgroup v2 host.
    v2 = next(h for h in hierarchies() if h.version == 2)
    cg = ContainerCgroup("scratch", [(v2, scratch)])
    assert devices.devices_dir(cg) is None
    _kmsg_node(tmp_path)
    assert devices.restrict(cg) is True
    assert _probe(scratch, tmp_path) == EXPECTED


def test_restrict_without_any_hierarchy_does_nothing() -> None:
    assert devices.restrict(ContainerCgroup("none", [])) is False
