"""Booting containers through lxpyd: start, stop, restart, freeze, reboot and
poweroff from inside, adoption after lxpyd dies, and no leaks over many
start/stop cycles.

A real lxpyd (the conftest `daemon` fixture) and the real CLI; checks from
the host with nsenter and /proc. Every test is bounded by an alarm; the
fixture's finaliser kills whatever containers a failed test left running.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lxpy.api.client import Client
from lxpy.kernel.cgroups import hierarchies
from lxpy.model.paths import KSMD_MARKER, RunPaths
from lxpy.model.settings import Settings
from lxpy.network import links
from tests.conftest import (
    Daemon,
    alive,
    assert_loopback_only,
    daemon_in,
    info,
    ksm_state,
    start_again,
    stop_containers,
    stop_daemon,
    wait_for,
)
from tests.events import Events

pytestmark = pytest.mark.integration


# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 240


def nsenter(pid: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-a", "-t", str(pid), *cmd], capture_output=True, text=True, timeout=timeout
    )


def payload_cgroups(d: Daemon, name: str) -> set[str]:
    """The cgroup directories daemon `d` has for container `name` now (it
    alone: other daemons on the host may have a container of that name)."""
    return {p for p in d.cgroup(name).paths if os.path.isdir(p)}


def monitors() -> set[int]:
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().startswith("lxpy-mon"):
                    out.add(int(p.name))
            except OSError:
                pass
    return out


def monitor_of(init_pid: int) -> int:
    """The monitor of a container: its init's parent."""
    stat = Path(f"/proc/{init_pid}/stat").read_text()
    ppid = int(stat.rsplit(") ", 1)[1].split()[1])
    assert ppid in monitors()
    return ppid


@pytest.fixture
def busybox(daemon: Daemon) -> Daemon:
    daemon.cli("template", "build", "busybox")
    return daemon


def _started(d: Daemon, name: str, *config: str) -> dict[str, Any]:
    sets = [a for kv in config for a in ("--set", kv)]
    d.cli("create", name, "-t", "busybox", *sets)
    d.cli("start", name)
    ct = info(d, name)
    assert ct["state"] == "RUNNING", ct
    return ct


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_start_asks_to_read_its_init_ahead(
    tmp_path: Path, test_cache: Path, read_ahead: bool
) -> None:
    # The read-ahead (lxpy.storage.prefetch) is a hint with nothing to see
    # in the container once init has run (exec reads a static busybox whole
    # anyway): lxpyd's debug log shows that the start asked for it, with
    # the files found in the container's own tree; that the hint fills the
    # page cache is test_prefetch's. With `read_ahead = false` (the
    # benches' "without" row) the start goes on as before, and nothing is
    # read ahead.
    settings = (
        f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
        f'log_level = "debug"\nread_ahead = {str(read_ahead).lower()}\n'
    )
    with daemon_in(tmp_path, settings) as d:
        d.cli("template", "build", "busybox")
        d.cli("create", "ahead", "-t", "busybox")
        d.cli("start", "ahead")
        # /sbin/init is busybox, linked statically: one file.
        line = f"read ahead 1 files for /sbin/init in {d.root}/pool/containers/ahead"
        if read_ahead:
            wait_for(lambda: line in d.log.read_text(), 10, "the read-ahead's log line")
        assert info(d, "ahead")["state"] == "RUNNING"
        d.cli("stop", "ahead", "--force")
        # The debug log recorded the start and the stop (it is not silent).
        log = d.log.read_text()
        assert "container ahead ended" in log
        assert (line in log) is read_ahead, log[-2000:]


def test_create_writes_the_hostname_files_and_the_log(busybox: Daemon) -> None:
    # At create, not only at start: the first start then finds them written.
    d = busybox
    d.cli("create", "hn1", "-t", "busybox", "--set", "hostname=named-at-create")
    rootfs = d.paths.pool.container("hn1")
    assert (rootfs / "etc/hostname").read_text() == "named-at-create\n"
    assert "127.0.1.1\tnamed-at-create" in (rootfs / "etc/hosts").read_text()
    # Its console log is there too, empty, for the first start to open.
    log = d.paths.console_log("hn1")
    assert log.read_bytes() == b"" and log.stat().st_mode & 0o777 == 0o640
    d.cli("destroy", "hn1")
    assert not log.exists()


def test_busybox_boots_isolated_with_events(busybox: Daemon) -> None:
    d = busybox
    events = Events(d)
    ct = _started(d, "bb1", "hostname=box-one", "environment.GREETING=hi")
    pid = ct["init_pid"]
    assert alive(pid) and ct["started_at"] and ct["addresses"] == []
    # PID 1 is busybox init; nothing of the host is visible.
    inside = nsenter(pid, "ps", "-o", "pid,comm").stdout.split("\n")[1:]
    procs = [line.split() for line in inside if line.strip()]
    assert ["1", "init"] in procs
    assert all(int(p[0]) < 100 for p in procs), procs
    assert "lxpyd" not in nsenter(pid, "ps").stdout
    assert_loopback_only(d, "bb1", pid)
    assert nsenter(pid, "hostname").stdout.strip() == "box-one"
    assert nsenter(pid, "cat", "/etc/hostname").stdout.strip() == "box-one"
    assert "127.0.1.1\tbox-one" in nsenter(pid, "cat", "/etc/hosts").stdout
    assert "GREETING=hi" in Path(f"/proc/{pid}/environ").read_text().replace("\0", "\n")
    # Starting it again does nothing, and says so.
    res = d.cli("start", "bb1")
    assert res.stdout == f"bb1 is already running (init pid {pid})\n"
    assert info(d, "bb1")["init_pid"] == pid
    # Freeze and thaw.
    d.cli("freeze", "bb1")
    assert info(d, "bb1")["state"] == "FROZEN"
    assert payload_cgroups(d, "bb1")
    d.cli("unfreeze", "bb1")
    assert info(d, "bb1")["state"] == "RUNNING"
    assert nsenter(pid, "true").returncode == 0
    assert "login" in d.cli("console", "bb1", "--log").stdout
    # A clean stop: busybox powers off on SIGUSR2.
    d.cli("stop", "bb1")
    ct = info(d, "bb1")
    assert ct["state"] == "STOPPED" and ct["init_pid"] is None
    assert ct["last_exit"] == {"reason": "stopped", "detail": "stopped by lxpy"}, ct
    assert not alive(pid)
    res = d.cli("stop", "bb1", check=False)
    assert res.returncode == 1 and "is not running" in res.stderr
    events.wait_state("bb1", "STOPPED")
    assert events.states("bb1") == [
        ("STOPPED", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "FROZEN"),
        ("FROZEN", "RUNNING"),
        ("RUNNING", "STOPPING"),
        ("STOPPING", "STOPPED"),
    ]


def test_reboot_and_poweroff_inside(busybox: Daemon) -> None:
    d = busybox
    events = Events(d)
    pid = _started(d, "bb2")["init_pid"]
    assert nsenter(pid, "reboot").returncode == 0
    events.wait_state("bb2", "RUNNING", count=2)
    ct = info(d, "bb2")
    assert ct["state"] == "RUNNING" and ct["init_pid"] != pid and alive(ct["init_pid"])
    assert ct["last_exit"]["reason"] == "reboot"
    # The new boot has a network namespace of its own again.
    assert_loopback_only(d, "bb2", ct["init_pid"])
    assert nsenter(ct["init_pid"], "poweroff").returncode == 0
    events.wait_state("bb2", "STOPPED")
    ct = info(d, "bb2")
    assert ct["state"] == "STOPPED" and ct["last_exit"]["reason"] == "poweroff"
    assert events.states("bb2") == [
        ("STOPPED", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "STOPPED"),
    ]
    # restart = stop + start, and works from STOPPED too.
    d.cli("restart", "bb2")
    first = info(d, "bb2")["init_pid"]
    d.cli("restart", "bb2", "--timeout", "10")
    ct = info(d, "bb2")
    assert ct["state"] == "RUNNING" and ct["init_pid"] != first and not alive(first)
    d.cli("stop", "bb2")


def test_stop_timeout_falls_back_to_kill(busybox: Daemon) -> None:
    d = busybox
    # busybox init has no handler for SIGWINCH: the kernel drops it for a
    # pid namespace's init, so only the kill after the timeout ends it.
    # (How long a stop takes: bench/bench_boot.py.)
    _started(d, "stubborn", "halt_signal=SIGWINCH")
    d.cli("stop", "stubborn", "--timeout", "2")
    ct = info(d, "stubborn")
    assert ct["state"] == "STOPPED"
    # Killed once the 2 s it was given were over, not the default 30: the
    # detail says which timeout ran out.
    assert ct["last_exit"] == {
        "reason": "stopped",
        "detail": "stopped by lxpy (killed: still running after the 2 s timeout)",
    }, ct
    d.cli("start", "stubborn")
    d.cli("stop", "stubborn", "--force")
    assert info(d, "stubborn")["last_exit"]["detail"] == "stopped by lxpy (killed at once)"


def test_destroy_running_needs_force(busybox: Daemon) -> None:
    d = busybox
    pid = _started(d, "victim")["init_pid"]
    res = d.cli("destroy", "victim", check=False)
    assert res.returncode == 1 and "RUNNING" in res.stderr
    # Renaming and restoring are refused too; a snapshot of a live fs is fine.
    assert d.cli("rename", "victim", "other", check=False).returncode == 1
    d.cli("snapshot", "create", "victim", "live")
    d.cli("destroy", "--force", "victim")
    assert not alive(pid)
    assert "victim" not in d.cli("list").stdout
    assert not payload_cgroups(d, "victim")


def test_failed_start_leaves_nothing(busybox: Daemon) -> None:
    d = busybox
    # A start that fails in the launch itself, once the cgroups and
    # namespaces are made: /proc is no directory to mount proc on.
    d.cli("create", "broken", "-t", "busybox")
    proc = d.paths.pool.container("broken") / "proc"
    proc.rmdir()
    proc.write_text("")
    res = d.cli("start", "broken", check=False)
    assert res.returncode == 1 and "/proc" in res.stderr, res.stderr
    ct = info(d, "broken")
    assert ct["state"] == "STOPPED" and ct["last_exit"]["reason"] == "error", ct
    assert not payload_cgroups(d, "broken")
    assert not RunPaths.of(d.root).container("broken").exists()
    assert not RunPaths.of(d.root).netns("broken").exists()
    # Fixed, it starts.
    proc.unlink()
    proc.mkdir()
    d.cli("start", "broken")
    d.cli("stop", "broken", "--force")


def test_monitor_killed_shows_error(busybox: Daemon) -> None:
    d = busybox
    ct = _started(d, "lost")
    mon = monitor_of(ct["init_pid"])
    os.kill(mon, signal.SIGKILL)
    wait_for(lambda: info(d, "lost")["state"] == "ERROR", 10, "ERROR")
    ct = info(d, "lost")
    assert ct["last_exit"]["reason"] == "monitor-lost" and str(mon) in ct["last_exit"]["detail"]
    assert not alive(ct.get("init_pid") or 0)
    assert not payload_cgroups(d, "lost")
    # It can be started again.
    d.cli("start", "lost")
    d.cli("stop", "lost", "--force")


def test_daemon_sigkill_and_adoption(busybox: Daemon, tmp_path: Path) -> None:
    d = busybox
    ksm_before = ksm_state()
    names = ("ad1", "ad2", "ad3")
    pids = {n: _started(d, n)["init_pid"] for n in names}
    d.proc.kill()
    d.proc.wait(timeout=10)
    # Its socket file stays behind: start_daemon waits for a new one.
    d.socket.unlink()
    assert all(alive(p) for p in pids.values())
    # One monitor dies while no lxpyd watches: the next lxpyd says so.
    gone = monitor_of(pids["ad3"])
    os.kill(gone, signal.SIGKILL)
    wait_for(lambda: not alive(pids["ad3"]), 10, "ad3's init to die with its monitor")
    d2 = start_again(d, tmp_path / "lxpyd2.log")
    try:
        for n in ("ad1", "ad2"):
            ct = info(d2, n)
            assert ct["state"] == "RUNNING" and ct["init_pid"] == pids[n], ct
        ct = info(d2, "ad3")
        assert ct["state"] == "ERROR" and ct["last_exit"]["reason"] == "monitor-lost", ct
        assert "login" in d2.cli("console", "ad1", "--log").stdout
        d2.cli("stop", "ad1")
        d2.cli("stop", "ad2", "--timeout", "5")
        assert not alive(pids["ad1"]) and not alive(pids["ad2"])
        assert "RUNNING" not in d2.cli("list").stdout
        # SIGTERM to lxpyd leaves containers running; the next one adopts.
        pid = _started(d2, "ad4")["init_pid"]
    finally:
        stop_daemon(d2)
    assert alive(pid)
    if ksm_before == "0":
        # A stopping lxpyd ends its ksmd burst (the one ad4's start began).
        assert ksm_state() == "0"
    d3 = start_again(d, tmp_path / "lxpyd3.log")
    try:
        assert info(d3, "ad4")["init_pid"] == pid
        if ksm_before == "0":
            # It runs one for the monitor it adopted.
            wait_for(lambda: ksm_state() == "1", 10, "ksmd to run for the adopted monitor")
        d3.cli("stop", "ad4")
    finally:
        stop_daemon(d3)
    # Only the zygote outlives lxpyd (by design): no container is left.
    assert [x for x in stop_containers(d.root) if not x.startswith("zygote")] == []


def _settled(measure: Callable[[], Any], timeout: float = 5) -> Any:
    """measure()'s value once two looks 0.2 s apart agree (its last one
    after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    value = measure()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        value, last = measure(), value
        if value == last:
            break
    return value


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _children(pid: int) -> set[int]:
    """Every descendant of `pid`."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _mergeable(pid: int) -> list[str]:
    """The mappings of `pid` marked mergeable (VmFlags "mg"), by name."""
    found, name = [], ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("VmFlags:"):
            if "mg" in line.split()[1:]:
                found.append(name)
        elif not line[0].isupper():
            fields = line.split()
            name = fields[5] if len(fields) > 5 else "[anon]"
    return found


def test_monitors_memory_is_merged_and_containers_never(busybox: Daemon) -> None:
    d = busybox
    before = ksm_state()
    if before is None:
        pytest.fail("this kernel has no KSM (/sys/kernel/mm/ksm)")
    names = ("km1", "km2", "km3")
    inits = [_started(d, name)["init_pid"] for name in names]
    monitors = [
        int(Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[1]) for p in inits
    ]
    for mon in monitors:
        # Marked a moment after the start's answer (monitor.SETTLE).
        def marked(mon: int = mon) -> bool:
            return {"[heap]", "[anon]"} <= set(_mergeable(mon))

        wait_for(marked, 5, f"monitor {mon}'s memory marked mergeable")
    # Nothing of the container's is: not init, not what exec runs.
    for pid in inits:
        assert _mergeable(pid) == []
    res = d.cli("exec", "km1", "--", "grep", "-c", " mg", "/proc/self/smaps", check=False)
    assert res.stdout.strip() == "0", res

    def merged() -> bool:
        return all(int(Path(f"/proc/{m}/ksm_merging_pages").read_text()) > 50 for m in monitors)

    # lxpyd (setting `ksm`, on by default) ran ksmd, which folded the pages
    # the three monitors wrote alike...
    wait_for(merged, 90, "ksmd to merge the monitors' pages")
    if before != "1":
        # ... and stops it once a scan finds nothing new; they stay merged.
        wait_for(lambda: ksm_state() == "0", 90, "lxpyd to stop ksmd")
        assert not KSMD_MARKER.exists()
        assert merged()
    for name in names:
        d.cli("stop", name, "--force")


def test_start_stop_cycles_leak_nothing(busybox: Daemon, tmp_path: Path) -> None:
    d = busybox
    d.cli("create", "cyc", "-t", "busybox")
    client = Client(d.socket)
    # The first start starts the zygote: count from after it.
    client.start_container("cyc")
    client.stop_container("cyc", force=True)
    zygote = next(
        p
        for p in _children(d.proc.pid)
        if Path(f"/proc/{p}/comm").read_text().startswith("lxpy-zyg")
    )

    def comm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""  # gone meanwhile

    def ours() -> tuple[int, list[str], set[str], set[int], int, set[int]]:
        # Other daemons run beside this one: count only this daemon's share.
        run_dir = str(RunPaths.of(d.root).dir)
        mounts = [
            line
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(tmp_path) in line or run_dir in line
        ]
        cgroups = payload_cgroups(d, "cyc")
        # The zygote's spare monitor is a new process after every start that
        # took it: counted, not named.
        spares = {p for p in _children(zygote) if comm(p) == "lxpy-spare"}
        return (
            _fds(d.proc.pid),
            mounts,
            cgroups,
            _children(zygote) - spares,
            len(spares),
            _children(d.proc.pid) - spares,
        )

    # Counted once it holds still: the connections of the stop just made
    # close a moment after its answer, as after the last stop below.
    before = _settled(ours)
    for i in range(20):
        assert client.start_container("cyc")["state"] == "RUNNING"
        # Every fifth a clean poweroff (busybox takes ~2 s for it), else a kill.
        ct = client.stop_container("cyc", timeout=10, force=i % 5 != 0)
        assert ct["state"] == "STOPPED"
    # The last answer's connection closes a moment after the client read it.
    try:
        wait_for(lambda: ours() == before, 5, "the counts to settle")
    except AssertionError:
        assert ours() == before

    # With nothing running, a stopped lxpyd leaves no zygote, run dir or
    # cgroup parent behind.
    stop_daemon(d)
    wait_for(lambda: not alive(zygote), 5, "the zygote to end")
    run = RunPaths.of(d.root).dir
    wait_for(lambda: not run.exists(), 5, f"{run} to go")
    parent = Settings(root=d.root).cgroup_parent
    assert not [h for h in hierarchies() if Path(h.mountpoint, parent).exists()]


def test_debian_boots_to_running(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "debian-bookworm", timeout=1800)
    d.cli("create", "deb", "-t", "debian-bookworm", "--set", "hostname=debby")
    # How fast it boots and stops: bench/bench_boot.py.
    d.cli("start", "deb")
    pid = info(d, "deb")["init_pid"]
    assert system_state(pid) == "running"
    failed = nsenter(pid, "systemctl", "--failed", "--plain", "--no-legend").stdout
    assert failed.strip() == ""
    virt = nsenter(pid, "systemd-detect-virt", "--container")
    assert virt.returncode == 0 and virt.stdout.strip() not in ("", "none")
    assert nsenter(pid, "hostname").stdout.strip() == "debby"
    assert nsenter(pid, "cat", "/etc/hostname").stdout.strip() == "debby"
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "systemd"
    # Reboot inside: a new systemd boots to running again.
    assert nsenter(pid, "systemctl", "reboot").returncode == 0
    pid2 = wait_for(
        lambda: (
            (i := info(d, "deb"))["state"] == "RUNNING" and i["init_pid"] != pid and i["init_pid"]
        ),
        30,
        "the reboot",
    )
    assert system_state(pid2) == "running"
    # A stop (SIGRTMIN+3) is a clean poweroff: nothing was killed.
    d.cli("stop", "deb")
    ct = info(d, "deb")
    assert ct["last_exit"]["detail"] == "stopped by lxpy", ct
    # Poweroff inside.
    d.cli("start", "deb")
    pid3 = info(d, "deb")["init_pid"]
    assert system_state(pid3) == "running"
    assert nsenter(pid3, "poweroff").returncode == 0
    wait_for(lambda: info(d, "deb")["state"] == "STOPPED", 30, "poweroff")
    assert info(d, "deb")["last_exit"]["reason"] == "poweroff"


def system_state(pid: int) -> str:
    """`systemctl is-system-running --wait` inside; retried while systemd has
    not yet opened its private socket (a few ms after exec)."""

    def ask() -> str:
        res = nsenter(pid, "systemctl", "is-system-running", "--wait", timeout=90)
        return "" if "Failed to connect" in res.stderr else res.stdout.strip()

    return str(wait_for(ask, 60, "systemd to answer"))


def _free_subnet() -> str:
    used = links.used_subnets()
    for third in range(256):
        cand = ipaddress.IPv4Network(f"10.214.{(os.getpid() + third) % 256}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return str(cand)
    raise AssertionError("no free 10.214.x.0/24")


def test_container_on_a_network_gets_an_address(busybox: Daemon) -> None:
    d = busybox
    net = f"lxb{os.getpid() % 100000}"
    d.cli("network", "create", net, "--subnet", _free_subnet())
    try:
        _started(d, "netty", f"network={net}")
        addrs = wait_for(lambda: info(d, "netty")["addresses"], 10, "a DHCP address")
        pid = info(d, "netty")["init_pid"]
        assert addrs[0] in nsenter(pid, "ip", "-4", "addr", "show", "eth0").stdout
        assert addrs[0] in d.cli("list").stdout
        d.cli("stop", "netty")
        assert info(d, "netty")["addresses"] == []
        d.cli("destroy", "netty")
        # systemd-networkd on eth0 of the Debian template: an address, and
        # no unit fails with a network either.
        d.cli("template", "build", "debian-bookworm", timeout=1800)
        d.cli("create", "debnet", "-t", "debian-bookworm", "--set", f"network={net}")
        d.cli("start", "debnet")
        pid = info(d, "debnet")["init_pid"]
        assert system_state(pid) == "running"
        assert nsenter(pid, "systemctl", "--failed", "--plain", "--no-legend").stdout.strip() == ""
        assert wait_for(lambda: info(d, "debnet")["addresses"], 15, "a DHCP address")
        d.cli("destroy", "--force", "debnet")
    finally:
        d.cli("network", "delete", net, check=False)
