"""Limits, stats, the inside view, autostart and the restart policy, end to
end: a real lxpyd (with an lxcfs of its own), busybox containers, load run
inside with `lxpy exec`, and the kernel's counters read on the host.

Every test is bounded by an alarm; the fixture's finaliser stops lxpyd,
kills what it left running, stops its lxcfs and unmounts the pool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.api.client import Client
from lxpy.errors import LxpyError
from lxpy.kernel import lxcfs
from lxpy.kernel.limits import controller_dir
from lxpy.model.limits import parse_cpu_list
from tests.conftest import (
    VENV_BIN,
    Daemon,
    alive,
    daemon_in,
    info,
    start_again,
    stop_daemon,
    wait_for,
)
from tests.events import Events

pytestmark = pytest.mark.integration

MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 180


def _settings(tmp_path: Path, cache: Path) -> str:
    mode = "on" if shutil.which("lxcfs") and os.path.exists("/dev/fuse") else "off"
    return (
        f'pool_size = "3GiB"\nbuild_cache = "{cache}"\ndefault_network = ""\n'
        f'lxcfs = "{mode}"\nlxcfs_mount = "{tmp_path / "lxcfs"}"\n'
    )


@pytest.fixture
def bb(tmp_path: Path, test_cache: Path) -> Iterator[Daemon]:
    """lxpyd with its own lxcfs (when installed) and the busybox template built."""
    with daemon_in(
        tmp_path, _settings(tmp_path, test_cache), lambda: lxcfs.stop(str(tmp_path / "lxcfs"))
    ) as d:
        d.cli("template", "build", "busybox")
        yield d


def restart_daemon(d: Daemon, log: Path) -> Daemon:
    """Stop lxpyd (containers keep running) and start it again on the same root."""
    stop_daemon(d)
    return start_again(d, log)


def create(d: Daemon, name: str, *config: str, start: bool = True) -> None:
    sets = [a for kv in config for a in ("--set", kv)]
    d.cli("create", name, "-t", "busybox", *sets)
    if start:
        d.cli("start", name)


def ex(d: Daemon, name: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`lxpy exec NAME -- sh -c SCRIPT`, not checked."""
    return d.cli("exec", name, "-T", "--", "sh", "-c", script, check=False, timeout=timeout)


def background(d: Daemon, name: str, script: str) -> subprocess.Popen[bytes]:
    """`lxpy exec` left running; the command is killed when the caller hangs up."""
    return subprocess.Popen(
        [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "exec", name, "-T"]
        + ["--", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def end(p: subprocess.Popen[bytes]) -> None:
    p.kill()
    p.wait(timeout=10)


def cgroup_file(d: Daemon, name: str, controller: str, file: str) -> str:
    found = controller_dir(d.cgroup(name), controller)
    assert found is not None, f"no {controller} controller"
    return Path(found[1], file).read_text().strip()


def throttled(d: Daemon, name: str) -> int:
    """How many periods the kernel has throttled container `name` to its quota."""
    stat = dict(ln.split() for ln in cgroup_file(d, name, "cpu", "cpu.stat").splitlines())
    return int(stat["nr_throttled"])


def start_time(pid: int) -> float:
    """When process `pid` started, in seconds since boot (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(") ", 1)[1].split()[19]) / CLK_TCK


# -- limits ---------------------------------------------------------------------


def test_memory_hog_is_oom_killed_inside(bb: Daemon) -> None:
    create(bb, "hog", "limits.memory=64MiB", "limits.memory.swap=false")
    init = info(bb, "hog")["init_pid"]
    # tail keeps the whole of its one endless "line" in memory.
    res = ex(bb, "hog", "head -c 314572800 /dev/zero | tail > /dev/null; echo survived $?")
    assert "survived 137" in res.stdout, res
    ct = info(bb, "hog")
    assert ct["state"] == "RUNNING" and alive(init), ct
    assert ct["stats"]["oom_kills"] >= 1, ct["stats"]
    assert ct["stats"]["memory_limit_bytes"] == 64 * MiB
    assert ex(bb, "hog", "echo still here").stdout.strip() == "still here"


def test_fork_bomb_stops_at_the_process_limit(bb: Daemon) -> None:
    create(bb, "bomb", "limits.processes=20")
    script = "n=0; while [ $n -lt 500 ]; do sleep 100 & n=$((n+1)); echo $n > /tmp/n; done"
    res = ex(bb, "bomb", script)
    assert res.returncode != 0 and "fork" in res.stderr.lower(), res
    forked = int(ex(bb, "bomb", "cat /tmp/n").stdout)
    assert 5 <= forked < 20, forked
    assert int(cgroup_file(bb, "bomb", "pids", "pids.max")) == 20
    assert int(cgroup_file(bb, "bomb", "pids", "pids.current")) <= 20
    events = cgroup_file(bb, "bomb", "pids", "pids.events")
    assert int(events.split()[1]) >= 1, events
    stats = Client(bb.socket).container_stats("bomb")
    assert stats and 5 <= stats["processes"] <= 20, stats
    # Still usable once the sleepers are gone (killall is exec'd, no fork).
    ex(bb, "bomb", "exec killall sleep")
    assert ex(bb, "bomb", "echo ok").stdout.strip() == "ok"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_cpu_quota_live_changes_and_stats(bb: Daemon) -> None:
    create(bb, "cpu", "limits.cpu=0.5", "limits.memory=128MiB")
    c = Client(bb.socket)
    before = c.container_stats("cpu")
    assert before is not None
    # Two busy loops: the quota, not the one pinned CPU, holds them at half.
    p = background(bb, "cpu", "while :; do :; done & while :; do :; done")
    try:
        # The kernel holds them to half a CPU: it throttles them, period after
        # period. (The share a loop gets: bench/bench_limits.py.)
        assert cgroup_file(bb, "cpu", "cpu", "cpu.cfs_quota_us") == "50000"
        first = throttled(bb, "cpu")
        wait_for(lambda: throttled(bb, "cpu") > first, 60, "the quota to throttle the loops")
        frame = bb.cli("top", "--once").stdout
        assert "cpu" in frame and "RUNNING" in frame, frame
        # A live change, at once: two CPUs' worth (pinned to two CPUs).
        bb.cli("config", "set", "cpu", "limits.cpu", "2")
        assert cgroup_file(bb, "cpu", "cpu", "cpu.cfs_quota_us") == "200000"
        assert len(parse_cpu_list(cgroup_file(bb, "cpu", "cpuset", "cpuset.cpus"))) == 2
        # Their CPU time shows in the stats.
        wait_for(
            lambda: (c.container_stats("cpu") or {})["cpu_seconds"] > before["cpu_seconds"] + 1.0,
            60,
            "the loops' CPU time",
        )
    finally:
        end(p)
    # Memory: a live change, and the use grows as a process holds 40 MiB.
    bb.cli("config", "set", "cpu", "limits.memory", "256MiB")
    assert int(cgroup_file(bb, "cpu", "memory", "memory.limit_in_bytes")) == 256 * MiB
    p = background(bb, "cpu", "(head -c 41943040 /dev/zero; sleep 60) | tail")
    try:
        wait_for(
            lambda: (
                (c.container_stats("cpu") or {})["memory_bytes"] > before["memory_bytes"] + 35 * MiB
            ),
            20,
            "memory use to grow",
        )
        if controller_dir(bb.cgroup("cpu"), "memory")[0] == 1:  # type: ignore[index]
            # cgroup v1 refuses a limit below what cannot be reclaimed: the
            # error names the key and nothing is saved.
            res = bb.cli("config", "set", "cpu", "limits.memory", "8MiB", check=False)
            assert res.returncode == 1 and "limits.memory" in res.stderr, res
            assert info(bb, "cpu")["config"]["limits.memory"] == "256MiB"
            assert int(cgroup_file(bb, "cpu", "memory", "memory.limit_in_bytes")) == 256 * MiB
    finally:
        end(p)
    # Unset: unlimited at once.
    bb.cli("config", "unset", "cpu", "limits.cpu")
    assert cgroup_file(bb, "cpu", "cpu", "cpu.cfs_quota_us") == "-1"
    ct = info(bb, "cpu")
    assert ct["stats"]["disk_bytes"] > 0 and "lo" in ct["stats"]["network"], ct["stats"]
    text = bb.cli("info", "cpu").stdout
    assert "cpu time:" in text and "memory:" in text and "disk:" in text, text
    bb.cli("stop", "cpu", "--force")
    assert info(bb, "cpu")["stats"] is None
    assert c.container_stats("cpu") is None


def test_inside_view(bb: Daemon) -> None:
    create(bb, "view", "limits.memory=256MiB", "limits.cpu=0.5")
    # A quota pins ceil(quota) CPUs, balanced across containers.
    assert ex(bb, "view", "nproc").stdout.strip() == "1"
    create(bb, "view2", "limits.cpu=0.5")
    cpus = [cgroup_file(bb, n, "cpuset", "cpuset.cpus") for n in ("view", "view2")]
    if (os.cpu_count() or 1) > 1:
        assert cpus[0] != cpus[1], cpus
    if not lxcfs.mounts():
        pytest.skip("no lxcfs: /proc/meminfo and /proc/uptime are the host's")
    meminfo = ex(bb, "view", "cat /proc/meminfo").stdout
    assert "MemTotal:         262144 kB" in meminfo, meminfo[:200]
    # Its uptime counts from its init's start, not the host's boot: between
    # the host's uptimes before and after the read, less init's start.
    started = start_time(info(bb, "view")["init_pid"])
    host_before = float(Path("/proc/uptime").read_text().split()[0])
    up = float(ex(bb, "view", "cat /proc/uptime").stdout.split()[0])
    host_after = float(Path("/proc/uptime").read_text().split()[0])
    assert host_before - started - 1 <= up <= host_after - started + 1, (up, started)
    cpuinfo = ex(bb, "view", "grep -c ^processor /proc/cpuinfo").stdout.strip()
    assert cpuinfo == "1", cpuinfo


# -- autostart, stop-all, restart policy --------------------------------------------


def test_autostart_order_and_delay(bb: Daemon, tmp_path: Path) -> None:
    create(bb, "c1", "boot.autostart=true", "boot.stop_priority=10", start=False)
    create(bb, "c2", "boot.autostart=true", "boot.priority=10", "boot.delay=2", start=False)
    create(bb, "c3", "boot.autostart=true", "boot.priority=5", "boot.delay=1", start=False)
    create(bb, "c4", start=False)
    # Running and autostart: adopted on the restart, not started again.
    create(bb, "c5", "boot.autostart=true", "boot.priority=20")
    c5 = info(bb, "c5")["init_pid"]
    d = restart_daemon(bb, tmp_path / "lxpyd2.log")
    try:
        names = ("c2", "c3", "c1")
        pids = wait_for(
            lambda: (
                [info(d, n)["init_pid"] for n in names]
                if all(info(d, n)["state"] == "RUNNING" for n in names)
                else None
            ),
            30,
            "the autostart containers to run",
        )
        t = [start_time(p) for p in pids]
        assert t[0] < t[1] < t[2], t
        assert t[1] - t[0] >= 1.9, t
        assert t[2] - t[1] >= 0.9, t
        assert info(d, "c4")["state"] == "STOPPED"
        assert info(d, "c5")["init_pid"] == c5
        # Host shutdown: higher stop_priority first.
        res = Client(d.socket).stop_all(timeout=10)
        assert res["stopped"][0] == "c1" and set(res["stopped"]) == {"c1", "c2", "c3", "c5"}, res
        assert res["errors"] == {}
        assert "RUNNING" not in d.cli("list").stdout
    finally:
        stop_daemon(d)


def test_restart_policy(bb: Daemon) -> None:
    c = Client(bb.socket)
    events = Events(bb)
    crash = {
        "init": "/bin/sh",
        "init.args": ["-c", "sleep 0.1; exit 1"],
        "boot.restart": "on-failure",
        "boot.restart_max": 3,
    }
    c.create_container("crashy", "busybox", crash)
    c.start_container("crashy")
    ct = wait_for(
        lambda: (x := c.container("crashy"))["state"] == "ERROR" and x, 30, "crashy to give up"
    )
    assert ct["last_exit"]["reason"] == "restart-limit", ct
    assert "restarted 3 times" in ct["last_exit"]["detail"], ct
    assert "exited with status 1" in ct["last_exit"]["detail"], ct
    wait_for(lambda: events.actions("crashy", "container-restart-limit"), 5, "the event")
    assert len(events.actions("crashy", "container-restarting")) == 3
    # A clean end (exit 0) is not a failure: no restart.
    c.create_container("clean", "busybox", {**crash, "init.args": ["-c", "sleep 0.1; exit 0"]})
    c.start_container("clean")
    wait_for(lambda: c.container("clean")["state"] == "STOPPED", 15, "clean to stop")
    time.sleep(0.5)
    assert c.container("clean")["state"] == "STOPPED"
    assert not events.actions("clean", "container-restarting")
    # always: a power-off inside is restarted too; a stop through lxpy is not.
    c.create_container("always", "busybox", {"boot.restart": "always"})
    first = c.start_container("always")["init_pid"]
    ex(bb, "always", "poweroff")
    wait_for(
        lambda: c.container("always")["init_pid"] not in (None, first), 30, "a restarted always"
    )
    try:
        c.stop_container("always", timeout=10)
    except LxpyError:
        # It may have been between its restarts: stop it once it runs again.
        wait_for(lambda: c.container("always")["state"] == "RUNNING", 15, "always to run")
        c.stop_container("always", timeout=10)
    time.sleep(0.5)
    assert c.container("always")["state"] == "STOPPED"
