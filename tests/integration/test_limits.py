"""Resource limits and stats on real cgroups with real processes.

Each test makes a container cgroup the way the monitor does
(ContainerCgroup.create), runs small Python processes inside it, and checks
what the kernel does: the OOM killer, the pids limit, the CPU quota, live
changes, the counters read_stats reports, and lxcfs's view of the limits.
Everything is killed and removed in the finalisers.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.errors import Busy, InvalidArgument
from lxpy.kernel import lxcfs
from lxpy.kernel.cgroups import ContainerCgroup
from lxpy.kernel.limits import CPU_PERIOD_US, apply_limits, controller_dir
from lxpy.kernel.stats import disk_usage, network_stats, read_stats
from lxpy.model.limits import Limits
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

MiB = 1 << 20


class Box:
    """A container cgroup and the processes a test ran in it."""

    def __init__(self) -> None:
        self.cg = ContainerCgroup.for_name(f"limtest-{uuid.uuid4().hex[:8]}")
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, code: str, *argv: str) -> subprocess.Popen[str]:
        """Start `python -c code` inside the cgroup (it joins before exec)."""
        files = self.cg.procs_files()

        def join() -> None:
            for f in files:
                fd = os.open(f, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)

        p = subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            preexec_fn=join,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    def file(self, controller: str, name: str) -> str:
        found = controller_dir(self.cg, controller)
        assert found is not None, f"no {controller} controller"
        return Path(found[1], name).read_text().strip()


@pytest.fixture
def box() -> Iterator[Box]:
    b = Box()
    b.cg.create()
    try:
        yield b
    finally:
        try:
            b.cg.kill(timeout=10)
        finally:
            for p in b.procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
                for f in (p.stdin, p.stdout):
                    if f:
                        f.close()
            b.cg.remove(timeout=10)


def line(p: subprocess.Popen[str], timeout: float = 20) -> str:
    """One line of a child's output, or fail after `timeout` seconds."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "child said nothing in time"
    return p.stdout.readline().strip()


def say(p: subprocess.Popen[str], text: str) -> None:
    assert p.stdin is not None
    p.stdin.write(text + "\n")
    p.stdin.flush()


SLEEPER = "import sys; print('up', flush=True); sys.stdin.readline()"
# Allocates and touches N MiB when told, then waits.
HOLDER = """
import sys
print('up', flush=True)
held = []
for cmd in sys.stdin:
    n = int(cmd)
    held.append(bytearray(n << 20))
    for i in range(0, n << 20, 4096):
        held[-1][i] = 1
    print('held', flush=True)
"""
HOG = """
chunks = []
while True:
    b = bytearray(16 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    chunks.append(b)
"""
BUSY = "print('up', flush=True)\nwhile True: pass"
FORKER = """
import os, sys, time
n = 0
while True:
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print(n, flush=True)
sys.stdin.readline()
"""


def test_memory_limit_oom_kills_the_hog_and_spares_the_rest(box: Box) -> None:
    apply_limits(box.cg, Limits(memory=64 * MiB, memory_swap=False))
    assert int(box.file("memory", "memory.limit_in_bytes" if _v1(box) else "memory.max")) == (
        64 * MiB
    )
    sleeper = box.run(SLEEPER)
    assert line(sleeper) == "up"
    hog = box.run(HOG)
    assert hog.wait(timeout=60) == -signal.SIGKILL
    assert sleeper.poll() is None, "the OOM killer took the wrong process"
    stats = read_stats(box.cg)
    assert isinstance(stats["oom_kills"], int) and stats["oom_kills"] >= 1
    assert isinstance(stats["memory_peak_bytes"], int)
    assert stats["memory_peak_bytes"] <= 64 * MiB
    assert stats["memory_limit_bytes"] == 64 * MiB
    # The container goes on: a new process still runs in it.
    again = box.run(SLEEPER)
    assert line(again) == "up"


def _v1(box: Box) -> bool:
    found = controller_dir(box.cg, "memory")
    return found is not None and found[0] == 1


def test_pids_limit_stops_a_fork_loop(box: Box) -> None:
    apply_limits(box.cg, {"limits.processes": "10"})
    forker = box.run(FORKER)
    # The forker is one task; nine children fill the limit, the tenth fork fails.
    assert line(forker, timeout=30) == "9"
    assert read_stats(box.cg)["processes"] == 10
    assert int(box.file("pids", "pids.current")) == 10
    # Raised live, the same cgroup takes more.
    apply_limits(box.cg, {"limits.processes": "12"})
    more = box.run(FORKER)
    assert line(more, timeout=30) == "1"


def _quota(box: Box) -> tuple[int, int]:
    """(quota, period) in microseconds, as the kernel holds them."""
    if _v1(box):
        return int(box.file("cpu", "cpu.cfs_quota_us")), int(box.file("cpu", "cpu.cfs_period_us"))
    quota, period = box.file("cpu", "cpu.max").split()
    return (-1 if quota == "max" else int(quota)), int(period)


def _throttled(box: Box) -> int:
    """How many periods the kernel has throttled the cgroup in so far."""
    stat = dict(ln.split() for ln in box.file("cpu", "cpu.stat").splitlines())
    return int(stat["nr_throttled"])


def test_cpu_quota_holds_a_busy_loop_and_changes_live(box: Box) -> None:
    # The kernel holds the loop to its quota: it throttles it, period after
    # period. (The share it then gets: bench/bench_limits.py.)
    busy = None
    for cpus in (0.5, 0.2):
        apply_limits(box.cg, {"limits.cpu": str(cpus)})
        assert _quota(box) == (int(cpus * CPU_PERIOD_US), CPU_PERIOD_US)
        if busy is None:
            busy = box.run(BUSY)
            assert line(busy) == "up"
        before = _throttled(box)

        def throttled(before: int = before) -> bool:
            return _throttled(box) > before

        wait_for(throttled, 60, f"throttling at limits.cpu={cpus}")


def test_cpu_pinning_and_weight_are_written(box: Box) -> None:
    apply_limits(box.cg, {"limits.cpu": "0-0", "limits.cpu.weight": "50"})
    assert box.file("cpuset", "cpuset.cpus") == "0"
    weight = box.file("cpu", "cpu.shares" if _v1(box) else "cpu.weight")
    assert weight == ("512" if _v1(box) else "50")
    busy = box.run("import os; print(sorted(os.sched_getaffinity(0)), flush=True)")
    assert line(busy) == "[0]"
    apply_limits(box.cg, {})
    parent = Path(controller_dir(box.cg, "cpuset")[1]).parent  # type: ignore[index]
    assert box.file("cpuset", "cpuset.cpus") == (parent / "cpuset.cpus").read_text().strip()


def test_memory_limit_changes_live_and_refuses_to_drop_below_use(box: Box) -> None:
    limit_file = "memory.limit_in_bytes" if _v1(box) else "memory.max"
    apply_limits(box.cg, {"limits.memory": "64MiB"})
    assert int(box.file("memory", limit_file)) == 64 * MiB
    apply_limits(box.cg, {"limits.memory": "128MiB", "limits.memory.swap": "false"})
    assert int(box.file("memory", limit_file)) == 128 * MiB
    holder = box.run(HOLDER)
    assert line(holder) == "up"
    say(holder, "48")
    assert line(holder) == "held"
    if _v1(box):
        # v1 cannot reclaim anonymous memory without swap and says so;
        # cgroup2 would OOM-kill instead.
        with pytest.raises(Busy) as ei:
            apply_limits(box.cg, {"limits.memory": "16MiB", "limits.memory.swap": "false"})
        assert ei.value.message.startswith("limits.memory:")
        assert holder.poll() is None
    apply_limits(box.cg, {})  # unset: unlimited again
    raw = box.file("memory", limit_file)
    assert raw == "max" or int(raw) >= 1 << 62
    with pytest.raises(InvalidArgument, match="limits.memory:"):
        apply_limits(box.cg, {"limits.memory": "lots"})


def test_stats_follow_the_load(box: Box) -> None:
    first = read_stats(box.cg)
    assert first["processes"] == 0
    holder = box.run(HOLDER)
    assert line(holder) == "up"
    sleepers = [box.run(SLEEPER) for _ in range(2)]
    for s in sleepers:
        assert line(s) == "up"
    before = read_stats(box.cg)
    assert before["processes"] == 3
    say(holder, "40")
    assert line(holder) == "held"
    after = read_stats(box.cg)
    assert isinstance(before["memory_bytes"], int) and isinstance(after["memory_bytes"], int)
    assert after["memory_bytes"] - before["memory_bytes"] >= 35 * MiB
    peak = after["memory_peak_bytes"]
    assert isinstance(peak, int) and peak >= after["memory_bytes"]
    busy = box.run(BUSY)
    assert line(busy) == "up"
    used = after["cpu_seconds"]
    assert isinstance(used, float)
    # The loop's CPU time shows in the counter (how fast: not a test's business).
    wait_for(lambda: read_stats(box.cg)["cpu_seconds"] > used + 0.1, 60, "the loop's CPU time")  # type: ignore[operator]
    assert read_stats(box.cg)["processes"] == 4


def test_network_counters_come_from_the_process_netns() -> None:
    ns = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        host_ns = os.readlink("/proc/self/ns/net")
        # unshare(1) enters the new namespace just before it execs sleep.
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{ns.pid}/ns/net") != host_ns:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        counters = network_stats(ns.pid)
        assert list(counters) == ["lo"], counters  # not the host's interfaces
        enter = ["nsenter", "-t", str(ns.pid), "-n"]
        subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        send = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.sendto(b'x' * 1000, ('127.0.0.1', 9))"
        )
        subprocess.run([*enter, sys.executable, "-c", send], check=True, timeout=10)
        after = network_stats(ns.pid)["lo"]
        assert after["tx_bytes"] - counters["lo"]["tx_bytes"] >= 1000
        assert after["tx_packets"] > counters["lo"]["tx_packets"]
    finally:
        ns.kill()
        ns.wait(timeout=10)
    assert network_stats(ns.pid) == {}


def test_disk_use_of_a_subvolume_without_quotas(btrfs_dir: Path) -> None:
    tmpl, cont = btrfs_dir / "template", btrfs_dir / "container"
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(tmpl)], check=True, timeout=30)
    (tmpl / "base").write_bytes(os.urandom(8 * MiB))
    subprocess.run(
        ["btrfs", "-q", "subvolume", "snapshot", str(tmpl), str(cont)], check=True, timeout=30
    )
    (cont / "new").write_bytes(os.urandom(4 * MiB))
    os.sync()
    used = disk_usage(str(cont), max_age=0)
    assert used is not None and used >= 12 * MiB
    exclusive = disk_usage(str(cont), exclusive=True, max_age=0)
    assert exclusive is not None and 4 * MiB <= exclusive < 6 * MiB
    stats = read_stats(ContainerCgroup.for_name("nonexistent-xyz"), None, str(cont))
    assert stats["disk_bytes"] == used
    assert stats["processes"] is None and stats["network"] == {}


@pytest.fixture
def lxcfs_mount(tmp_path: Path) -> Iterator[str]:
    if shutil.which("lxcfs") is None:
        pytest.skip("lxcfs is not installed (apt-get install lxcfs)")
    mnt = str(tmp_path / "lxcfs")
    try:
        yield lxcfs.start(mnt, timeout=20)
    finally:
        lxcfs.stop(mnt)
    assert mnt not in lxcfs.mounts()


READ_ALL = "import sys; sys.stdout.write(open(sys.argv[1]).read())"


def _read_inside(box: Box, path: str) -> str:
    """The text of `path` as a process in the box reads it."""
    out, _err = box.run(READ_ALL, path).communicate(timeout=20)
    return out


def test_lxcfs_shows_the_limits(box: Box, lxcfs_mount: str) -> None:
    apply_limits(box.cg, {"limits.memory": "128MiB", "limits.cpu": "0-0"})
    meminfo = _read_inside(box, f"{lxcfs_mount}/proc/meminfo")
    assert "MemTotal:         131072 kB" in meminfo.splitlines()[0], meminfo[:200]
    cpuinfo = _read_inside(box, f"{lxcfs_mount}/proc/cpuinfo")
    assert sum(1 for x in cpuinfo.splitlines() if x.startswith("processor")) == 1
    apply_limits(box.cg, {"limits.memory": "128MiB", "limits.cpu": "0.5"})
    online = _read_inside(box, f"{lxcfs_mount}/sys/devices/system/cpu/online")
    assert online.strip() == "0", online  # --enable-cfs: a quota of 0.5 rounds up to 1 CPU
    # Uptime counts from the reader's pid namespace's init.
    res = subprocess.run(
        ["unshare", "-p", "-f", "--kill-child", "cat", f"{lxcfs_mount}/proc/uptime"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert float(res.stdout.split()[0]) < 5
    mounts = dict((t, s) for s, t in lxcfs.bind_mounts(lxcfs_mount))
    assert mounts["/proc/meminfo"] == f"{lxcfs_mount}/proc/meminfo"
    assert "/proc/uptime" in mounts and "/sys/devices/system/cpu" in mounts
