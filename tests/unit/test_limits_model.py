"""limits.* and boot.* keys: parsing, typed views, ordering, restart policy;
the cgroup writes they turn into, planned on fake v1 and v2 trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxpy.errors import InvalidArgument, Unsupported
from lxpy.kernel.cgroups import ContainerCgroup, Hierarchy
from lxpy.kernel.limits import plan_limits
from lxpy.kernel.lxcfs import bind_mounts
from lxpy.kernel.stats import disk_usage, parse_net_dev, read_stats
from lxpy.model import limits as lm
from lxpy.model.config import Container, parse_value

NCPU = len(lm.host_cpus())


def bad(key: str, value: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as ei:
        parse_value(key, value)
    assert ei.value.message.startswith(key + ":"), ei.value.message
    return ei.value


# -- parsers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value,stored",
    [
        ("limits.memory", "512MiB", "512MiB"),
        ("limits.memory", " 1G ", "1G"),
        ("limits.memory", "50%", "50%"),
        ("limits.memory", 268435456, "268435456"),
        ("limits.memory.swap", "false", False),
        ("limits.memory.swap", True, True),
        ("limits.memory.swap", "1GiB", "1GiB"),
        ("limits.cpu", "0.5", "0.5"),
        ("limits.cpu", 0.5, "0.5"),
        ("limits.cpu", "1.0", "1"),
        ("limits.cpu", "0-0", "0-0"),
        ("limits.cpu", "0,0", "0-0"),
        ("limits.cpu.weight", "200", 200),
        ("limits.processes", 100, 100),
        ("limits.processes", " MAX ", "max"),
        ("limits.pty", "64", 64),
        ("limits.kernel.max_inotify_instances", 512, 512),
        ("limits.kernel.max_inotify_watches", "1048576", 1048576),
        ("boot.autostart", "true", True),
        ("boot.priority", "-3", -3),
        ("boot.delay", "2", 2),
        ("boot.delay", "1.5s", 1.5),
        ("boot.stop_priority", 10, 10),
        ("boot.restart", "On-Failure", "on-failure"),
        ("boot.restart", False, "no"),
        ("boot.restart_max", "3", 3),
    ],
)
def test_parse_and_reparse(key: str, value: object, stored: object) -> None:
    assert parse_value(key, value) == stored
    # Records are re-validated on load: a stored value parses to itself.
    assert parse_value(key, stored) == stored


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("limits.memory", "-1G", "negative"),
        ("limits.memory", "512 parsecs", "unknown unit"),
        ("limits.memory", "100", "too small"),
        ("limits.memory", "0", "too small"),
        ("limits.memory", "150%", "1..100"),
        ("limits.memory", "", "empty"),
        ("limits.memory", True, "expected"),
        ("limits.memory.swap", "-1M", "negative"),
        ("limits.memory.swap", "lots", "invalid size"),
        ("limits.cpu", "0", "more than 0"),
        ("limits.cpu", "-0.5", "more than 0"),
        ("limits.cpu", "0.001", "least"),
        ("limits.cpu", "nan", "more than 0"),
        ("limits.cpu", "two", "expected a number"),
        ("limits.cpu", str(NCPU + 1), "more than this host has"),
        ("limits.cpu", f"0-{NCPU}", "does not exist"),
        ("limits.cpu", "3-1", "backwards"),
        ("limits.cpu", "0-1-2", "invalid CPU set"),
        ("limits.cpu.weight", 0, "1..10000"),
        ("limits.cpu.weight", 10001, "1..10000"),
        ("limits.cpu.weight", "heavy", "integer"),
        ("limits.processes", 0, "at least 1"),
        ("limits.processes", "-5", "at least 1"),
        ("limits.processes", "lots", "or max"),
        ("limits.pty", 0, "1..1048576"),
        ("limits.pty", 1 << 21, "1..1048576"),
        ("limits.pty", "max", "integer"),
        ("limits.kernel.max_inotify_instances", 0, "1..2147483647"),
        ("limits.kernel.max_inotify_watches", 2**31, "1..2147483647"),
        ("boot.autostart", "maybe", "true or false"),
        ("boot.priority", "1.5", "integer"),
        ("boot.delay", "-1", "0..3600"),
        ("boot.delay", "soon", "seconds"),
        ("boot.restart", "sometimes", "no, on-failure, always"),
        ("boot.restart_max", 0, "1..1000"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, needle: str) -> None:
    e = bad(key, value)
    assert needle in e.message, e.message
    assert repr(value) in e.message or str(value) in e.message or needle == "empty"


def test_pinned_cpu_error_names_the_missing_cpu_and_hints_at_the_host() -> None:
    e = bad("limits.cpu", f"0,{NCPU + 3}")
    assert str(NCPU + 3) in e.message
    assert e.hint and lm.format_cpu_list(lm.host_cpus()) in e.hint


def test_cpu_lists() -> None:
    assert lm.parse_cpu_list(" 0-3,6\n") == (0, 1, 2, 3, 6)
    assert lm.parse_cpu_list("") == ()
    assert lm.format_cpu_list([5, 0, 1, 2, 9, 8]) == "0-2,5,8-9"
    assert lm.format_cpu_list([]) == ""
    with pytest.raises(ValueError):
        lm.parse_cpu_list("a-b")


# -- typed views -------------------------------------------------------------


def test_limits_from_config() -> None:
    lim = lm.Limits.from_config(
        {
            "limits.memory": "512MiB",
            "limits.memory.swap": "64MiB",
            "limits.cpu": "0.5",
            "limits.cpu.weight": 50,
            "limits.processes": 64,
            "hostname": "x",
        }
    )
    assert lim == lm.Limits(
        memory=512 << 20, memory_swap=64 << 20, cpu_quota=0.5, cpu_weight=50, processes=64
    )
    # limits.processes unset: the default share of the host's PIDs; max: none.
    unset = lm.Limits.from_config({})
    assert unset == lm.Limits(processes=lm.default_processes(), processes_default=True)
    assert lm.Limits.from_config({"limits.processes": "max"}).processes is None
    assert lm.Limits.from_config({"limits.cpu": "0-0"}).cpu_set == (0,)
    assert lm.Limits.from_config({"limits.cpu": "1"}).cpu_quota == 1.0
    half = lm.Limits.from_config({"limits.memory": "50%"}, host_mem=8 << 30)
    assert half.memory == 4 << 30
    assert lm.Limits.from_config({"limits.memory.swap": False}).memory_swap is False


def test_default_processes_is_a_share_of_the_host_pids() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    threads = int(Path("/proc/sys/kernel/threads-max").read_text())
    assert lm.default_processes() == int(min(pid_max, threads) * 0.15)


def test_kernel_limits_from_config() -> None:
    assert lm.KernelLimits.from_config({}) == lm.KernelLimits(1024, None, None)
    kl = lm.KernelLimits.from_config(
        {
            "limits.pty": 16,
            "limits.kernel.max_inotify_instances": 200,
            "limits.kernel.max_inotify_watches": 9000,
        }
    )
    assert kl == lm.KernelLimits(16, 200, 9000)


def test_boot_from_config_defaults_and_values() -> None:
    assert lm.Boot.from_config({}) == lm.Boot()
    b = lm.Boot.from_config(
        {
            "boot.autostart": True,
            "boot.priority": 5,
            "boot.delay": 1.5,
            "boot.stop_priority": 2,
            "boot.restart": "always",
            "boot.restart_max": 2,
        }
    )
    assert (b.autostart, b.priority, b.delay, b.stop_priority) == (True, 5, 1.5, 2)
    assert b.restart is lm.RestartPolicy.ALWAYS and b.restart_max == 2


def test_start_and_stop_order() -> None:
    boots = {
        "web": lm.Boot(autostart=True, priority=10, stop_priority=0),
        "db": lm.Boot(autostart=True, priority=20, stop_priority=-1),
        "cache": lm.Boot(autostart=True, priority=10, stop_priority=5),
        "scratch": lm.Boot(autostart=False, priority=99, stop_priority=1),
    }
    assert lm.start_order(boots) == ["db", "cache", "web"]
    assert lm.stop_order(boots) == ["cache", "scratch", "web", "db"]


@pytest.mark.parametrize(
    "policy,last_exit,expected",
    [
        ("no", {"reason": "killed", "detail": "killed by SIGSEGV"}, False),
        ("on-failure", {"reason": "killed", "detail": "killed by SIGKILL"}, True),
        ("on-failure", {"reason": "exited", "detail": "exited with status 1"}, True),
        ("on-failure", {"reason": "exited", "detail": "exited with status 0"}, False),
        ("on-failure", {"reason": "poweroff", "detail": "halt"}, False),
        ("on-failure", {"reason": "error", "detail": "relaunch failed"}, True),
        ("always", {"reason": "poweroff", "detail": "halt"}, True),
        ("always", {"reason": "exited", "detail": "x", "stopped": True}, False),
        ("on-failure", {"reason": "killed", "detail": "x", "stopped": True}, False),
        ("always", None, False),
    ],
)
def test_wants_restart(policy: str, last_exit: dict[str, object] | None, expected: bool) -> None:
    assert lm.wants_restart(lm.RestartPolicy(policy), last_exit) is expected


def test_restart_budget_is_a_sliding_minute() -> None:
    budget = lm.RestartBudget(max_restarts=3)
    assert [budget.allow(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert "3 times within 60 seconds" in budget.reason()
    assert not budget.allow(59.5)
    assert budget.allow(60.5)  # the restart at 0 left the window


def test_container_record_round_trips_limits() -> None:
    c = Container("c1", "busybox", "now").with_config(
        {
            "limits.memory": "256MiB",
            "limits.memory.swap": "false",
            "limits.cpu": "0.5",
            "limits.processes": "50",
            "boot.autostart": "true",
            "boot.delay": "0.5",
            "boot.restart": "on-failure",
        },
        [],
    )
    again = Container.from_toml(c.to_toml())
    assert dict(again.config) == dict(c.config)
    assert lm.Limits.from_config(again.config).memory == 256 << 20
    dropped = again.with_config({}, ["limits.memory"])
    assert lm.Limits.from_config(dropped.config).memory is None


# -- planned cgroup writes on fake trees ----------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def _v2(tmp_path: Path, controllers: tuple[str, ...], files: list[str]) -> ContainerCgroup:
    h = Hierarchy(str(tmp_path / "cg"), 2, controllers)
    _tree(tmp_path / "cg", {"lxpy.payload.c1/" + f: "" for f in files})
    return ContainerCgroup.for_name("c1", hs=[h])


def _plan(cg: ContainerCgroup, lim: lm.Limits, base: Path) -> list[tuple[str, str, str]]:
    return [(str(Path(w.path).relative_to(base)), w.value, w.key) for w in plan_limits(cg, lim)]


V2_FILES = ["memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max", "cpuset.cpus"]


def test_plan_v2_sets_and_unsets(tmp_path: Path) -> None:
    cg = _v2(tmp_path, ("cpuset", "cpu", "memory", "pids"), V2_FILES)
    base = tmp_path / "cg" / "lxpy.payload.c1"
    lim = lm.Limits(
        memory=256 << 20, memory_swap=False, cpu_quota=0.5, cpu_weight=200, processes=20
    )
    assert _plan(cg, lim, base) == [
        ("memory.max", str(256 << 20), "limits.memory"),
        ("memory.swap.max", "0", "limits.memory.swap"),
        ("cpu.max", "50000 100000", "limits.cpu"),
        ("cpu.weight", "200", "limits.cpu.weight"),
        ("cpuset.cpus", "", "limits.cpu"),
        ("pids.max", "20", "limits.processes"),
    ]
    # Nothing set: every file gets its unlimited value.
    assert _plan(cg, lm.Limits(), base) == [
        ("memory.max", "max", "limits.memory"),
        ("memory.swap.max", "max", "limits.memory.swap"),
        ("cpu.max", "max 100000", "limits.cpu"),
        ("cpu.weight", "100", "limits.cpu.weight"),
        ("cpuset.cpus", "", "limits.cpu"),
        ("pids.max", "max", "limits.processes"),
    ]
    pinned = _plan(cg, lm.Limits(cpu_set=(0, 1, 3)), base)
    assert ("cpuset.cpus", "0-1,3", "limits.cpu") in pinned


def test_plan_v2_enables_controllers_the_parent_does_not_delegate(tmp_path: Path) -> None:
    cg = _v2(tmp_path, ("memory", "pids"), ["cgroup.procs"])
    base = tmp_path / "cg"
    plan = _plan(cg, lm.Limits(memory=64 << 20, processes=5), base)
    assert plan[0] == ("cgroup.subtree_control", "+memory", "limits.memory")
    assert ("lxpy.payload.c1/memory.max", str(64 << 20), "limits.memory") in plan
    assert ("cgroup.subtree_control", "+pids", "limits.processes") in plan


def test_plan_v2_missing_controller_is_unsupported_only_when_used(tmp_path: Path) -> None:
    # A hybrid host's cgroup2 tree offers no controllers.
    cg = _v2(tmp_path, (), ["cgroup.procs"])
    assert plan_limits(cg, lm.Limits()) == []
    # The default process limit is not asked for: the start goes on without.
    assert plan_limits(cg, lm.Limits.from_config({})) == []
    with pytest.raises(Unsupported) as ei:
        plan_limits(cg, lm.Limits(processes=10))
    assert ei.value.message.startswith("limits.processes:")
    with pytest.raises(Unsupported, match="limits.cpu:"):
        plan_limits(cg, lm.Limits(cpu_quota=1.0))


def test_plan_v2_swap_without_accounting(tmp_path: Path) -> None:
    cg = _v2(tmp_path, ("memory",), ["memory.max"])
    base = tmp_path / "cg" / "lxpy.payload.c1"
    assert _plan(cg, lm.Limits(memory=64 << 20), base) == [
        ("memory.max", str(64 << 20), "limits.memory")
    ]
    with pytest.raises(Unsupported, match="limits.memory.swap:.*account swap"):
        plan_limits(cg, lm.Limits(memory=64 << 20, memory_swap=False))


def _v1(tmp_path: Path, memsw: bool = True) -> tuple[ContainerCgroup, Path]:
    root = tmp_path / "v1"
    hs = []
    for ctrl, files in {
        "memory": ["memory.limit_in_bytes"] + (["memory.memsw.limit_in_bytes"] if memsw else []),
        "cpu": ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"],
        "cpuset": ["cpuset.cpus", "cpuset.mems"],
        "pids": ["pids.max"],
    }.items():
        _tree(root / ctrl, {"lxpy.payload.c1/" + f: "" for f in files})
        hs.append(Hierarchy(str(root / ctrl), 1, (ctrl,)))
    (root / "cpuset" / "cpuset.cpus").write_text("0-7\n")
    hs.append(Hierarchy(str(root / "unified"), 2, ()))
    return ContainerCgroup.for_name("c1", hs=hs), root


def test_plan_v1(tmp_path: Path) -> None:
    cg, root = _v1(tmp_path)
    mem = 256 << 20
    lim = lm.Limits(memory=mem, memory_swap=64 << 20, cpu_quota=1.5, cpu_weight=50, processes=9)
    assert _plan(cg, lim, root) == [
        # memsw is lifted first so it never falls below the memory limit.
        ("memory/lxpy.payload.c1/memory.memsw.limit_in_bytes", "-1", "limits.memory.swap"),
        ("memory/lxpy.payload.c1/memory.limit_in_bytes", str(mem), "limits.memory"),
        (
            "memory/lxpy.payload.c1/memory.memsw.limit_in_bytes",
            str(mem + (64 << 20)),
            "limits.memory.swap",
        ),
        ("cpu/lxpy.payload.c1/cpu.cfs_quota_us", "-1", "limits.cpu"),
        ("cpu/lxpy.payload.c1/cpu.cfs_period_us", "100000", "limits.cpu"),
        ("cpu/lxpy.payload.c1/cpu.cfs_quota_us", "150000", "limits.cpu"),
        ("cpu/lxpy.payload.c1/cpu.shares", "512", "limits.cpu.weight"),
        ("cpuset/lxpy.payload.c1/cpuset.cpus", "0-7", "limits.cpu"),
        ("pids/lxpy.payload.c1/pids.max", "9", "limits.processes"),
    ]
    unset = _plan(cg, lm.Limits(), root)
    assert ("memory/lxpy.payload.c1/memory.limit_in_bytes", "-1", "limits.memory") in unset
    assert ("cpu/lxpy.payload.c1/cpu.shares", "1024", "limits.cpu.weight") in unset
    assert ("cpu/lxpy.payload.c1/cpu.cfs_quota_us", "-1", "limits.cpu") == unset[-4]
    assert ("pids/lxpy.payload.c1/pids.max", "max", "limits.processes") in unset
    no_swap = _plan(cg, lm.Limits(memory=mem, memory_swap=False), root)
    assert no_swap[2][1] == str(mem)


def test_plan_v1_swap_rules(tmp_path: Path) -> None:
    cg, _root = _v1(tmp_path)
    with pytest.raises(InvalidArgument, match="limits.memory.swap:.*needs limits.memory"):
        plan_limits(cg, lm.Limits(memory_swap=False))
    cg2, _ = _v1(tmp_path / "nomemsw", memsw=False)
    with pytest.raises(Unsupported, match="limits.memory.swap:"):
        plan_limits(cg2, lm.Limits(memory=1 << 30, memory_swap=False))
    assert plan_limits(cg2, lm.Limits(memory=1 << 30))  # fine without memsw


def test_cpu_weight_maps_to_at_least_two_shares(tmp_path: Path) -> None:
    cg, root = _v1(tmp_path)
    plan = _plan(cg, lm.Limits(cpu_weight=1), root)
    assert ("cpu/lxpy.payload.c1/cpu.shares", "10", "limits.cpu.weight") in plan


# -- stats helpers that need no root --------------------------------------------


def test_parse_net_dev() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "    lo:     100       2    0    0    0     0          0         0      100       2"
        "    0    0    0     0       0          0\n"
        "  eth0: 5000      40    0    0    0     0          0         0     3000      30"
        "    0    0    0     0       0          0\n"
    )
    assert parse_net_dev(text) == {
        "lo": {"rx_bytes": 100, "rx_packets": 2, "tx_bytes": 100, "tx_packets": 2},
        "eth0": {"rx_bytes": 5000, "rx_packets": 40, "tx_bytes": 3000, "tx_packets": 30},
    }


def test_disk_usage_counts_blocks_once_per_inode_and_caches(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "big").write_bytes(b"x" * (1 << 20))
    before = disk_usage(str(root), max_age=0)
    assert before is not None and before >= 1 << 20
    (root / "etc" / "link").hardlink_to(root / "etc" / "big")
    (root / "sym").symlink_to("/usr")  # not followed
    assert disk_usage(str(root), max_age=0) == before
    (root / "more").write_bytes(b"y" * (1 << 20))
    assert disk_usage(str(root), max_age=60) == before  # cached
    assert (disk_usage(str(root), max_age=0) or 0) >= before + (1 << 20)
    assert disk_usage(str(tmp_path / "missing"), max_age=0) is None


def test_lxcfs_bind_mounts_list_only_what_exists(tmp_path: Path) -> None:
    _tree(tmp_path, {"proc/meminfo": "", "proc/uptime": "", "sys/devices/system/cpu/online": ""})
    assert bind_mounts(str(tmp_path)) == [
        (str(tmp_path / "proc/meminfo"), "/proc/meminfo"),
        (str(tmp_path / "proc/uptime"), "/proc/uptime"),
        (str(tmp_path / "sys/devices/system/cpu"), "/sys/devices/system/cpu"),
    ]


def test_read_stats_from_a_fake_v2_tree(tmp_path: Path) -> None:
    cg = _v2(tmp_path, ("memory", "pids"), [])
    base = tmp_path / "cg" / "lxpy.payload.c1"
    _tree(
        base,
        {
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            "memory.current": "1048576\n",
            "memory.peak": "2097152\n",
            "memory.max": "max\n",
            "memory.swap.current": "0\n",
            "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            "pids.current": "7\n",
            "pids.max": "max\n",
        },
    )
    s = read_stats(cg)
    assert s["cpu_seconds"] == 2.5
    assert (s["memory_bytes"], s["memory_peak_bytes"], s["memory_limit_bytes"]) == (
        1 << 20,
        2 << 20,
        None,
    )
    assert (s["swap_bytes"], s["oom_kills"], s["processes"]) == (0, 1, 7)
    assert s["processes_limit"] is None


def test_read_stats_from_a_fake_v1_tree(tmp_path: Path) -> None:
    cg, root = _v1(tmp_path)
    mem = root / "memory" / "lxpy.payload.c1"
    _tree(
        mem,
        {
            "memory.usage_in_bytes": "3145728\n",
            "memory.max_usage_in_bytes": "4194304\n",
            "memory.limit_in_bytes": "9223372036854771712\n",
            "memory.memsw.usage_in_bytes": "4194304\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        },
    )
    (root / "pids" / "lxpy.payload.c1" / "pids.current").write_text("4\n")
    (root / "pids" / "lxpy.payload.c1" / "pids.max").write_text("4915\n")
    s = read_stats(cg)
    assert s["cpu_seconds"] is None  # neither cpu.stat nor cpuacct in this tree
    assert (s["memory_bytes"], s["memory_peak_bytes"], s["memory_limit_bytes"]) == (
        3 << 20,
        4 << 20,
        None,
    )
    assert (s["swap_bytes"], s["oom_kills"], s["processes"]) == (1 << 20, 2, 4)
    assert s["processes_limit"] == 4915
