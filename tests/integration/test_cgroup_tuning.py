"""The favordynmods remount: set, idempotent, and other options kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxpy.kernel.cgroups import favor_dynmods

pytestmark = pytest.mark.integration


def _cgroup2_line() -> tuple[str, str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[0] == "cgroup2" and pre.split()[3] == "/":
            return pre.split()[5], post.split()[2]
    pytest.fail("no cgroup2 mount on this host (every supported host has one)")


def test_favordynmods_is_set_and_keeps_the_other_options() -> None:
    mount_opts_before, super_before = _cgroup2_line()
    assert favor_dynmods() is not None
    mount_opts, superopts = _cgroup2_line()
    assert "favordynmods" in superopts.split(",")
    # Whatever else was set (nsdelegate, nosuid, ...) is still set.
    assert set(super_before.split(",")) - {"favordynmods"} <= set(superopts.split(","))
    assert set(mount_opts_before.split(",")) == set(mount_opts.split(","))
    # A second call changes nothing.
    assert favor_dynmods() is not None
    assert _cgroup2_line() == (mount_opts, superopts)
