"""The favordynmods remount: set when it is not, idempotent, and the other
options kept.

The option is host-wide (one cgroup2 superblock) and stays until a reboot,
so an earlier lxpyd on this host has usually set it already. The test
clears it first, as a host would boot, so that favor_dynmods() really
remounts; it leaves the option as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import favor_dynmods, mount_flags

pytestmark = pytest.mark.integration


def _cgroup2_line() -> tuple[str, str, str]:
    """(mountpoint, mount options, superblock options) of the cgroup2 root."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[0] == "cgroup2" and pre.split()[3] == "/":
            return pre.split()[4], pre.split()[5], post.split()[2]
    pytest.fail("no cgroup2 mount on this host (every supported host has one)")


def _superopts(line: tuple[str, str, str]) -> set[str]:
    return set(line[2].split(",")) - {"rw", "ro"}


def _set_favordynmods(on: bool) -> None:
    """Remount the cgroup2 superblock with or without favordynmods, the rest
    and the mount's flags as they are (a remount without an option clears
    it)."""
    mountpoint, mount_opts, _ = line = _cgroup2_line()
    opts = _superopts(line) - {"favordynmods"} | ({"favordynmods"} if on else set())
    flags = sc.MS_REMOUNT | mount_flags(mount_opts)
    sc.mount(None, mountpoint, None, flags, ",".join(sorted(opts)))


@pytest.fixture
def cleared() -> Iterator[None]:
    was_set = "favordynmods" in _superopts(_cgroup2_line())
    _set_favordynmods(False)
    try:
        yield
    finally:
        _set_favordynmods(was_set)


def test_favordynmods_is_set_and_keeps_the_other_options(cleared: None) -> None:
    before = _cgroup2_line()
    assert "favordynmods" not in _superopts(before)
    assert favor_dynmods() == before[0]
    after = _cgroup2_line()
    assert _superopts(after) == _superopts(before) | {"favordynmods"}
    # The mount's own flags (nosuid, nodev, relatime, ...) are kept too.
    assert set(after[1].split(",")) == set(before[1].split(","))
    # A second call changes nothing.
    assert favor_dynmods() == before[0]
    assert _cgroup2_line() == after
