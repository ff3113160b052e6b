"""The guest is the host lxpy is meant for: systemd as PID 1, pure cgroup
v2, a shared root mount, btrfs and loop devices; files go in and out, and
a reboot comes back."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.vm.guest import Guest

pytestmark = [pytest.mark.integration, pytest.mark.vm]

# The first run builds the image and every module boots under TCG.
TIME_BOUND = 1500


def test_pid1_is_systemd(guest: Guest) -> None:
    assert guest.run("ps -p 1 -o comm=").stdout.strip() == "systemd"


def test_pure_cgroup2(guest: Guest) -> None:
    assert guest.run("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"


def test_root_mount_is_shared(guest: Guest) -> None:
    assert guest.run("findmnt -no PROPAGATION /").stdout.strip() == "shared"


def test_boots_to_running(guest: Guest) -> None:
    state = guest.run("systemctl is-system-running --wait", check=False, timeout=300)
    failed = guest.run("systemctl --failed --no-legend --plain", check=False).stdout
    assert state.stdout.strip() in ("running", "degraded"), (state.stdout, failed)
    if state.stdout.strip() == "degraded":
        warnings.warn(f"the guest booted degraded; failed units:\n{failed}", stacklevel=1)


def test_btrfs_and_loop_load(guest: Guest) -> None:
    guest.run("modprobe -a btrfs loop")
    assert "btrfs" in guest.run("cat /proc/filesystems").stdout.split()
    guest.run("test -c /dev/loop-control")


def test_put_then_get(guest: Guest, tmp_path: Path) -> None:
    sent = tmp_path / "sent"
    sent.write_bytes(os.urandom(1 << 20) + b"\0\n\r\xff")
    guest.put(sent, "/root/blob")
    back = tmp_path / "back"
    guest.get("/root/blob", back)
    assert back.read_bytes() == sent.read_bytes()


def test_reboot_comes_back(guest: Guest) -> None:
    # Last in the module: the guest the others saw is gone after it.
    before = guest.run("cat /proc/sys/kernel/random/boot_id").stdout
    guest.reboot()
    assert guest.run("cat /proc/sys/kernel/random/boot_id").stdout != before
    state = guest.run("systemctl is-system-running --wait", check=False, timeout=300)
    assert state.stdout.strip() in ("running", "degraded")
