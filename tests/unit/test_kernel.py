"""Kernel bindings and runtime pieces that need no root: parsing, errors, specs."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from lxpy.errors import InvalidArgument
from lxpy.kernel import ksm
from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import PREFIX, ContainerCgroup, Hierarchy, layout, parse_mountinfo
from lxpy.runtime.monitor import _why
from lxpy.runtime.spec import LaunchSpec

HYBRID = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,relatime shared:8 - tmpfs tmpfs rw,mode=755
27 26 0:25 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
28 26 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct,cpu
29 26 0:27 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
30 26 0:28 / /sys/fs/cgroup/systemd rw,relatime shared:12 - cgroup cgroup rw,xattr,name=systemd
31 26 0:29 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw
32 30 0:28 /lxc /mnt/x rw,relatime - cgroup cgroup rw,memory
33 26 0:27 / /mnt/again rw,relatime shared:11 - cgroup cgroup rw,memory
"""

UNIFIED = """\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_parse_mountinfo_hybrid() -> None:
    hs = parse_mountinfo(HYBRID)
    assert [(h.mountpoint, h.version, h.controllers) for h in hs] == [
        ("/sys/fs/cgroup/cpu", 1, ("cpu",)),
        ("/sys/fs/cgroup/cpu,cpuacct", 1, ("cpuacct", "cpu")),
        ("/sys/fs/cgroup/memory", 1, ("memory",)),
        ("/sys/fs/cgroup/systemd", 1, ("name=systemd",)),
        ("/sys/fs/cgroup/unified", 2, ()),
    ]
    assert layout(hs) == "hybrid"


def test_parse_mountinfo_unified_and_none() -> None:
    hs = parse_mountinfo(UNIFIED)
    assert hs == [Hierarchy("/sys/fs/cgroup", 2, ())]
    assert layout(hs) == "unified"
    assert layout([]) == "none"
    assert layout([Hierarchy("/x", 1, ("memory",))]) == "legacy"


def test_container_cgroup_paths() -> None:
    hs = parse_mountinfo(HYBRID)
    cg = ContainerCgroup.for_name("web", hs, parent="/machines/")
    assert cg.paths[0] == f"/sys/fs/cgroup/cpu/machines/{PREFIX}web"
    assert cg.unified == f"/sys/fs/cgroup/unified/machines/{PREFIX}web"
    assert cg.procs_files()[-1].endswith(f"{PREFIX}web/cgroup.procs")


def test_cgroup_pids_of_missing_cgroup_is_empty(tmp_path: Path) -> None:
    cg = ContainerCgroup("gone", [(Hierarchy(str(tmp_path), 2, ()), str(tmp_path / "nope"))])
    assert cg.pids() == set()
    assert not cg.exists()
    cg.remove()  # idempotent


def test_syscall_errors_name_the_call(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        sc.umount2(tmp_path)
    # EINVAL as root (not a mount point), EPERM otherwise.
    assert info.value.errno in (errno.EINVAL, errno.EPERM)
    assert "umount2(" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(OSError) as info:
        sc.setns(-1, sc.CLONE_NEWNET)
    assert info.value.errno == errno.EBADF and "setns(" in str(info.value)


def test_set_process_name_truncates() -> None:
    # Runs in a child so the test runner keeps its own name.
    pid = os.fork()
    if pid == 0:
        try:
            sc.set_process_name("lxpy-a-very-long-name")
            ok = Path("/proc/self/comm").read_text().strip() == "lxpy-a-very-lon"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_why_init_ended() -> None:
    # Wait statuses as waitpid(2) encodes them.
    assert _why(signal.SIGHUP)[0] == "reboot"
    assert _why(signal.SIGINT)[0] == "poweroff"
    assert _why(signal.SIGKILL) == ("killed", "killed by SIGKILL")
    assert _why(3 << 8) == ("exited", "exited with status 3")


def _spec(tmp_path: Path, **kw: object) -> dict[str, object]:
    return {"name": "c1", "rootfs": str(tmp_path), "control_socket": str(tmp_path / "s"), **kw}


def test_launch_spec_round_trip(tmp_path: Path) -> None:
    spec = LaunchSpec.from_json(
        _spec(tmp_path, args=["--x"], env={"A": "b"}, halt_signal="RTMIN+3", ttys=2)
    )
    assert LaunchSpec.from_json(spec.to_json()) == spec
    assert spec.effective_hostname == "c1"
    assert spec.halt_signum() == signal.SIGRTMIN + 3


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"bogus": 1}, "unknown field"),
        ({"init": "sbin/init"}, "absolute"),
        ({"halt_signal": "SIGNOPE"}, "unknown signal"),
        ({"cgroup_view": "v1"}, "cgroup_view"),
        ({"drop_caps": ["sys_fly"]}, "capabilities"),
        ({"env": {"A": 1}}, "env"),
        ({"args": "x"}, "args"),
    ],
)
def test_launch_spec_rejects(tmp_path: Path, extra: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        LaunchSpec.from_json(_spec(tmp_path, **extra))


def test_launch_spec_needs_a_rootfs_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a directory"):
        LaunchSpec.from_json(_spec(tmp_path, rootfs=str(tmp_path / "missing")))


def test_ksm_switch_and_counters(tmp_path: Path) -> None:
    assert ksm.run_state(tmp_path) is None  # no KSM in this kernel
    (tmp_path / "run").write_text("0\n")
    (tmp_path / "full_scans").write_text("7\n")
    (tmp_path / "pages_sharing").write_text("1234\n")
    assert ksm.run_state(tmp_path) == "0"
    ksm.set_running(True, tmp_path)
    assert ksm.run_state(tmp_path) == "1"
    assert ksm.progress(tmp_path) == (7, 1234)


def _vm_flags(pid: int | str) -> dict[str, set[str]]:
    """The VmFlags of each mapping of `pid` (keyed by its address range)."""
    flags: dict[str, set[str]] = {}
    key = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("VmFlags:"):
                flags[key] = set(line.split()[1:])
            elif not line[0].isupper():
                key = line.split()[0]
    return flags


def test_mark_mergeable_marks_private_writable_mappings_and_ends_at_exec() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ksm.mark_mergeable()
            marked = _vm_flags("self")
            heap = [k for k, v in marked.items() if "mg" in v]
            os.write(w, f"{len(heap)}\n".encode())
            # What an exec'd program gets is not marked.
            os.dup2(w, 1)
            os.execv("/bin/sh", ["sh", "-c", "grep -c ' mg' /proc/self/smaps || true"])
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        before, after = f.read().split()
    os.waitpid(pid, 0)
    assert int(before) > 3, "the heap, the allocator's arenas and the data segment"
    assert after == "0"


def test_console_log_notes_what_a_full_disk_kept_out(tmp_path: Path) -> None:
    from lxpy.runtime.monitor import Monitor
    from lxpy.runtime.spec import LaunchSpec

    m = Monitor(LaunchSpec(name="log", rootfs="/nonexistent", control_socket="/nonexistent"))
    # /dev/full answers every write with ENOSPC, as a full pool does.
    m.log_fd = os.open("/dev/full", os.O_WRONLY)
    try:
        m._log_console(b"lost one\n")
        m._log_console(b"lost two\n")
    finally:
        os.close(m.log_fd)
    assert m.log_lost == 18
    m.log_fd = os.open(tmp_path / "console.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        m._log_console(b"back\n")
    finally:
        os.close(m.log_fd)
    assert (tmp_path / "console.log").read_bytes() == (
        b"\r\n[lxpy: 18 bytes of console output were not logged: the storage pool was full]\r\n"
        b"back\n"
    )
    assert m.log_lost == 0


def test_map_root_is_the_host_id_of_root_inside() -> None:
    from lxpy.kernel.hostlimits import map_root

    assert map_root("0 1065536 65536\n") == 1065536
    assert map_root("1 5000 10\n0 7000 1\n") == 7000
    assert map_root("") == 0


def test_pool_full_round_trip() -> None:
    from lxpy.errors import PoolFull, from_json, pool_full

    e = from_json(pool_full("container 'c2'").to_json())
    assert isinstance(e, PoolFull) and e.status == 507
    assert e.message == "storage pool is full (container 'c2')"
