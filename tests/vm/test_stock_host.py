"""lxpy installed from its .deb on a stock Debian 12 host, used as an admin would.

The guest (tests/vm/guest.py) boots Debian 12 with systemd as PID 1 and
pure cgroup v2: what this machine is not (the first two tests check the
guest itself, and that files go in and out). The package is installed with
apt, lxpy.service runs lxpyd on the default root and network, and the
tests below run in file order on that one guest, each building on what
the one before left: containers in their systemd scopes, live cgroup v2
limits, systemd inside a Debian container, lxpyd restarted and killed,
a reboot that stops and starts containers in order, a reinstall, and
the package's removal.

The guest reaches nothing outside: the Debian template comes into it as
the tarball of the suite's build cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lxpy.build.builder import build_rootfs
from lxpy.build.cache import cache_file
from lxpy.model.settings import DEFAULT_MIRROR
from lxpy.model.template import find_template
from tests.conftest import REPO
from tests.vm.guest import Guest
from tests.vm.stock import (
    APT,
    GUEST_CACHE,
    cgroup_of,
    cursor,
    info,
    install,
    journal_since,
    lxpy,
    parent_of,
    payload,
    prepare,
    scope,
    wait,
    wait_running,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]

TIME_BOUND = 900


class _Silent:
    def log(self, line: str) -> None:
        pass

    def progress(self, fraction: float, what: str) -> None:
        pass


@pytest.fixture(scope="module")
def debian_tarball(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built debian-bookworm rootfs as the build cache keeps it; built
    on this host first when the cache lacks it."""
    defn = find_template([REPO / "templates"], "debian-bookworm")
    tar = cache_file(test_cache, defn)
    if not tar.is_file():
        target = tmp_path_factory.mktemp("debian") / "rootfs"
        target.mkdir()
        try:
            trio.run(
                lambda: build_rootfs(
                    defn, target, mirror=DEFAULT_MIRROR, cache_dir=test_cache, report=_Silent()
                )
            )
        finally:
            shutil.rmtree(target, ignore_errors=True)
    assert tar.is_file()
    return tar


@pytest.fixture(scope="module")
def host(guest: Guest, deb: Path, debian_tarball: Path) -> Iterator[Guest]:
    """The guest with the package installed and lxpy.service running."""
    prepare(guest)
    guest.put(debian_tarball, f"{GUEST_CACHE}/{debian_tarball.name}")
    install(guest, deb)
    yield guest


# The guest first: what this machine is not, and what the tests below need
# of it (the package is installed after these).
def test_the_guest_is_a_stock_host(guest: Guest) -> None:
    assert guest.run("ps -p 1 -o comm=").stdout.strip() == "systemd"
    assert guest.run("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    assert guest.run("findmnt -no PROPAGATION /").stdout.strip() == "shared"
    state = guest.run("systemctl is-system-running --wait", check=False, timeout=300)
    failed = guest.run("systemctl --failed --no-legend --plain", check=False).stdout
    assert state.stdout.strip() in ("running", "degraded"), (state.stdout, failed)
    guest.run("modprobe -a btrfs loop")
    assert "btrfs" in guest.run("cat /proc/filesystems").stdout.split()
    guest.run("test -c /dev/loop-control")


def test_files_go_in_and_out(guest: Guest, tmp_path: Path) -> None:
    sent = tmp_path / "sent"
    sent.write_bytes(os.urandom(1 << 20) + b"\0\n\r\xff")
    guest.put(sent, "/root/blob")
    back = tmp_path / "back"
    guest.get("/root/blob", back)
    assert back.read_bytes() == sent.read_bytes()
    guest.run("rm /root/blob")


def test_the_service_runs_on_a_stock_host(host: Guest) -> None:
    g = host
    assert g.run("systemctl is-active lxpy").stdout.strip() == "active"
    assert g.run("systemctl is-enabled lxpy-containers").stdout.strip() == "enabled"
    lxpy(g, "list")
    assert g.run("findmnt -no FSTYPE /var/lib/lxpy/pool").stdout.strip() == "btrfs"


def test_containers_start_in_scopes_of_their_own(host: Guest) -> None:
    g = host
    lxpy(g, "template build busybox")
    # Unprivileged (the default) and privileged, both on lxpybr0.
    lxpy(g, "create b1 -t busybox")
    lxpy(g, "create b2 -t busybox --set security.privileged=true")
    lxpy(g, "start b1 b2")
    pids = wait_running(g, ("b1", "b2"))
    monitors = {n: parent_of(g, pid) for n, pid in pids.items()}
    for name in ("b1", "b2"):
        wait(g, f"lxpy list | grep -q '^{name} .*10\\.'", 60, f"an address for {name}")
        assert cgroup_of(g, pids[name]).startswith(
            f"0::/machine.slice/{scope(name)}/lxpy.payload.{name}"
        )
        assert cgroup_of(g, monitors[name]) == f"0::/machine.slice/{scope(name)}/lxpy.monitor"
        assert g.run(f"systemctl is-active {scope(name)}").stdout.strip() == "active"
    # Nothing of a container is in lxpyd's unit, and none of its mounts
    # reached the host's shared mount table.
    procs = g.run("cat /sys/fs/cgroup/system.slice/lxpy.service/cgroup.procs").stdout.split()
    assert str(pids["b1"]) not in procs and str(monitors["b1"]) not in procs
    assert "/var/lib/lxpy/pool/containers/" not in g.run("cat /proc/self/mountinfo").stdout
    assert "lxpy-" in g.run("systemd-cgls --no-pager /machine.slice").stdout


def test_the_device_allow_list_holds_in_a_privileged_container(host: Guest) -> None:
    # cgroup v2 has no devices controller: a BPF program holds the list.
    g = host

    def inside(script: str) -> subprocess.CompletedProcess[str]:
        return g.run(f"lxpy exec b2 -- sh -c '{script}'", check=False)

    assert inside("echo x > /dev/null").returncode == 0
    # Root may make character nodes, but open only the allowed ones.
    assert inside("mknod /tmp/kmsg c 1 11").returncode == 0
    res = inside("cat /tmp/kmsg")
    assert res.returncode != 0 and "not permitted" in res.stderr, res
    # No block node may be made: a node of the host's disk would do.
    res = inside("mknod /tmp/disk b 8 0")
    assert res.returncode != 0 and "not permitted" in res.stderr, res


def test_apparmor_confines_a_privileged_container(host: Guest) -> None:
    # Stock Debian runs AppArmor: root in a privileged container (host
    # root, CAP_SYS_ADMIN) is held by lxpy's profile, in init and in exec.
    g = host
    assert "AppArmor profile lxpy-container" in info(g, "b2")["security"]
    pid = info(g, "b2")["init_pid"]
    assert g.run(f"cat /proc/{pid}/attr/current").stdout.strip() == "lxpy-container (enforce)"

    def refused(script: str) -> str:
        res = g.run(f"lxpy exec b2 -- sh -c '{script}'", check=False)
        assert res.returncode != 0, f"{script}: {res.stdout}{res.stderr}"
        return res.stderr

    assert "lxpy-container" in g.run("lxpy exec b2 -- cat /proc/self/attr/current").stdout
    # A remount of /proc/sys read-write goes through; the write does not.
    assert "denied" in refused(
        "mount -o remount,rw /proc/sys; echo 0 > /proc/sys/kernel/ctrl-alt-del"
    )
    g.run("lxpy exec b2 -- mkdir -p /tmp/m")
    for script in (
        "mount -t devtmpfs none /tmp/m",
        # Refused for its type, before the kernel looks for a block device.
        "mount -t ext4 /tmp /tmp/m",
        # procfs and sysfs only where the profile's rules cover them.
        "mount -t proc proc /tmp/m",
        "mount -t sysfs sysfs /tmp/m",
        "mount --bind /proc /tmp/m",
        "echo b > /proc/sysrq-trigger",
    ):
        assert "denied" in refused(script), script
    # What a system does still works: its own network's knobs, a tmpfs.
    g.run("lxpy exec b2 -- sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'")
    g.run("lxpy exec b2 -- sh -c 'mount -t tmpfs t /tmp/m && umount /tmp/m'")
    # Unprivileged containers keep their user namespace as their wall.
    assert "unprivileged" in info(g, "b1")["security"]


def test_cgroup_v2_limits_are_set_live(host: Guest) -> None:
    g = host
    for key, value in (
        ("limits.memory", "256MiB"),
        ("limits.memory.swap", "false"),
        ("limits.cpu", "0.5"),
        ("limits.cpu.weight", "50"),
        ("limits.processes", "300"),
    ):
        lxpy(g, f"config set b1 {key} {value}")
    files = {
        f: g.run(f"cat {payload('b1')}/{f}").stdout.strip()
        for f in ("memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max")
    }
    assert files == {
        "memory.max": str(256 << 20),
        "memory.swap.max": "0",
        "cpu.max": "50000 100000",
        "cpu.weight": "50",
        "pids.max": "300",
    }
    stats = info(g, "b1")["stats"]
    assert stats["memory_limit_bytes"] == 256 << 20
    top = lxpy(g, "top --once")
    assert "256.0MiB" in next(line for line in top.splitlines() if line.startswith("b1 ")), top
    # Accounted from the start, with no limit set too.
    assert info(g, "b2")["stats"]["memory_bytes"] > 0


def test_nesting_on_a_pure_cgroup_v2_host(host: Guest) -> None:
    g = host
    # Through two shells: the guest's login shell, then sh -c "...".
    probe = "unshare -U -r -m -p -f --mount-proc sh -c 'echo pid=\\$\\$'"

    def inside(name: str, script: str) -> subprocess.CompletedProcess[str]:
        return g.run(f'lxpy exec {name} -- sh -c "exec 2>&1; {script}"', check=False)

    lxpy(g, "create n1 -t busybox --set security.nesting=true")
    lxpy(g, "start n1")
    wait_running(g, ("n1",))
    # b1 runs without nesting: a fresh proc in a nested namespace is
    # refused there, and made in n1.
    off = inside("b1", probe)
    assert off.returncode != 0 and "Operation not permitted" in off.stdout, off
    on = inside("n1", probe)
    assert on.returncode == 0 and "pid=1" in on.stdout, on
    # Its cgroup2 subtree is its root's to divide, within its own limits.
    moved = inside(
        "n1",
        "mkdir /sys/fs/cgroup/inner && echo \\$\\$ > /sys/fs/cgroup/inner/cgroup.procs "
        "&& cat /proc/self/cgroup",
    )
    assert moved.returncode == 0 and moved.stdout.strip() == "0::/inner", moved
    nodes = inside("n1", "exec 3<>/dev/fuse 4<>/dev/net/tun && echo nodes-ok")
    assert "nodes-ok" in nodes.stdout, nodes
    lxpy(g, "destroy n1 --force")


def system_running(g: Guest, name: str) -> None:
    """Until systemd in container `name` has booted: `running`, not degraded."""
    # systemctl answers only once systemd has opened its socket.
    wait(g, f"lxpy exec {name} -- test -S /run/systemd/private", 120, f"systemd in {name}")
    res = g.run(f"lxpy exec {name} -- systemctl is-system-running --wait", check=False, timeout=300)
    failed = g.run(f"lxpy exec {name} -- systemctl --failed --no-pager", check=False).stdout
    assert res.stdout.strip() == "running", res.stdout + failed


def test_systemd_runs_its_units_inside_a_debian_container(host: Guest) -> None:
    g = host
    lxpy(g, "template build debian-bookworm", timeout=600)
    lxpy(g, "create d1 -t debian-bookworm")
    lxpy(g, "start d1")
    wait_running(g, ("d1",))
    system_running(g, "d1")
    inside = g.run("lxpy exec d1 -- systemd-cgls --no-pager").stdout
    assert "init.scope" in inside and "system.slice" in inside, inside
    # Its units' cgroups are below the container's, in its scope.
    assert g.run(f"test -d {payload('d1')}/system.slice", check=False).returncode == 0
    # Privileged, under the AppArmor profile, systemd boots all the same.
    lxpy(g, "create pd -t debian-bookworm --set security.privileged=true")
    lxpy(g, "start pd")
    system_running(g, "pd")
    lxpy(g, "stop pd")


def test_restart_and_kill_of_lxpyd_keep_containers(host: Guest) -> None:
    g = host
    before = wait_running(g, ("b1", "b2", "d1"))
    mark = cursor(g)
    g.run("systemctl restart lxpy")
    assert wait_running(g, ("b1", "b2", "d1")) == before
    journal = journal_since(g, mark)
    assert not re.search(r"left-over process|remains running", journal), journal
    main = g.run("systemctl show -p MainPID --value lxpy").stdout.strip()
    g.run(f"kill -9 {main}")
    # Restart=on-failure brings it back; it adopts every container.
    wait(g, f'[ "$(systemctl show -p MainPID --value lxpy)" != {main} ]', 60, "a new lxpyd")
    assert wait_running(g, ("b1", "b2", "d1")) == before
    # A SIGKILL and a stop leave each network's dnsmasq serving, in a
    # scope of its own (the next lxpyd adopts it): nothing is left in the
    # service's unit.
    mark = cursor(g)
    g.run("systemctl stop lxpy")
    for pid in before.values():
        assert g.run(f"kill -0 {pid}", check=False).returncode == 0
    journal = journal_since(g, mark)
    assert not re.search(r"left-over process|remains running", journal), journal
    g.run("systemctl start lxpy")
    assert wait_running(g, ("b1", "b2", "d1")) == before


def test_a_reboot_stops_and_starts_containers_in_order(host: Guest) -> None:
    g = host
    for name, prio in (("b1", 10), ("b2", 20), ("d1", 30)):
        lxpy(g, f"config set {name} boot.autostart true")
        lxpy(g, f"config set {name} boot.priority {prio}")
        lxpy(g, f"config set {name} boot.stop_priority {prio}")
    g.reboot()
    after = wait_running(g, ("b1", "b2", "d1"), timeout=300)
    assert len(set(after.values())) == 3
    # The previous boot: lxpyd stopped them, highest stop_priority first.
    last = g.run("journalctl -q --no-pager -b -1 -u lxpy -g 'stopping \\(stop_priority'").stdout
    order = [int(m) for m in re.findall(r"stop_priority (\d+)", last)]
    assert order == [30, 20, 10], last
    # This boot: started highest boot.priority first (init's start time,
    # in clock ticks since boot: /proc/PID/stat's 22nd field).
    started = {n: int(g.run(f"cut -d' ' -f22 /proc/{pid}/stat").stdout) for n, pid in after.items()}
    assert started["d1"] < started["b2"] < started["b1"], started


def test_a_reinstall_keeps_containers_running(host: Guest, deb: Path) -> None:
    g = host
    before = wait_running(g, ("b1", "b2", "d1"))
    install(g, deb, "--reinstall")
    assert wait_running(g, ("b1", "b2", "d1")) == before


def test_remove_and_purge_keep_the_containers_data(host: Guest) -> None:
    g = host
    data = "/var/lib/lxpy/pool/containers/b1/etc/hostname"
    lxpy(g, "stop-all")
    g.run(f"{APT} remove lxpy", timeout=300)
    assert g.run(f"cat {data}").stdout.strip() == "b1"
    assert g.run("test -e /usr/bin/lxpy", check=False).returncode != 0
    g.run(f"{APT} purge lxpy", timeout=300)
    assert g.run(f"cat {data}").stdout.strip() == "b1"
    assert g.run("test -e /etc/lxpy", check=False).returncode != 0
    # Nothing of lxpy runs any more: lxpyd, its zygote, monitors, dnsmasq.
    procs = g.run("ps -eo comm=").stdout.splitlines()
    assert not [p for p in procs if p.startswith(("lxpy", "dnsmasq"))], procs
