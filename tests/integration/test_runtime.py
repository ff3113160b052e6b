"""Booting busybox system containers through the zygote and a monitor.

Real namespaces, cgroups, ptys and pivot_root; checks are made from the
host (nsenter, /proc, /sys/fs/cgroup). Every test is bounded by an alarm,
and its finaliser kills whatever it started and removes its cgroups.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxpy.errors import LxpyError
from lxpy.kernel import bpfdev, pages
from lxpy.kernel.cgroups import (
    PREFIX,
    ContainerCgroup,
    Hierarchy,
    hierarchies,
    hierarchy_ids,
    remove_parent,
)
from lxpy.kernel.devices import ALLOWED, devices_dir, init_parent
from lxpy.kernel.limits import controller_dir
from lxpy.runtime import monitor
from lxpy.runtime.control import MonitorClient
from lxpy.runtime.spec import LaunchSpec
from lxpy.runtime.zygote import spawn_monitor, spawn_request, start_zygote
from tests.conftest import alive, named_cgroup_hierarchy, wait_for

pytestmark = pytest.mark.integration

BUSYBOX = "/bin/busybox"
DEFAULT_INITTAB = """\
::sysinit:/bin/echo hello from lxpy > /dev/console
::respawn:/bin/sleep 3600
console::respawn:/bin/sh
::shutdown:/bin/echo bye
"""


def make_busybox_rootfs(root: Path, inittab: str = DEFAULT_INITTAB) -> Path:
    """A minimal busybox system: the host's static busybox plus applet links."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in applets:
        link = root / rel
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "etc/inittab").write_text(inittab)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\ntty:x:5:\n")
    return root


def nsenter(pid: int, *cmd: str) -> str:
    res = subprocess.run(
        ["nsenter", "-a", "-t", str(pid), *cmd], capture_output=True, text=True, timeout=10
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def host_mounts_under(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if str(path) in line]


# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 60
# Every container here is made under a parent cgroup of this run's own.
PARENT = f"lxpy.test-{os.getpid()}"


@pytest.fixture(autouse=True)
def _parent_removed() -> Iterator[None]:
    yield
    remove_parent(PARENT)
    assert not [h for h in hierarchies() if os.path.isdir(os.path.join(h.mountpoint, PARENT))]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("zygote") / "zygote.sock"
    proc = start_zygote(path)
    try:
        yield path
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Booted:
    spec: LaunchSpec
    client: MonitorClient
    monitor_pid: int
    init_pid: int
    dir: Path

    def status(self) -> dict[str, object]:
        return self.client.request("status")


def _spawned(zygote: Path, spec: LaunchSpec, d: Path) -> Booted:
    """Have `zygote` start `spec` (its files under `d`)."""
    reply = spawn_monitor(zygote, spec)
    return Booted(
        spec,
        MonitorClient(spec.control_socket),
        int(reply["monitor_pid"]),  # type: ignore[call-overload]
        int(reply["init_pid"]),  # type: ignore[call-overload]
        d,
    )


def _teardown(b: Booted) -> None:
    if alive(b.monitor_pid):
        try:
            b.client.request("kill", wait=15)
        except LxpyError:
            pass
        try:
            wait_for(lambda: not alive(b.monitor_pid), 10, "the monitor to exit")
        except AssertionError:
            os.kill(b.monitor_pid, signal.SIGKILL)
    cg = ContainerCgroup.for_name(b.spec.name, parent=PARENT)
    cg.kill(timeout=5)
    cg.remove(timeout=5)


@pytest.fixture
def boot(tmp_path: Path, zygote: Path) -> Iterator[Callable[..., Booted]]:
    """Boot a busybox container; everything it made is removed afterwards."""
    booted: list[Booted] = []

    def _boot(
        inittab: str = DEFAULT_INITTAB,
        files: dict[str, str] | None = None,
        name: str = "",
        **spec_args: object,
    ) -> Booted:
        name = name or "t" + uuid.uuid4().hex[:10]
        d = tmp_path / name
        rootfs = make_busybox_rootfs(d / "rootfs", inittab)
        for rel, text in (files or {}).items():
            (rootfs / rel).write_text(text)
            (rootfs / rel).chmod(0o755)
        fields: dict[str, object] = {
            "name": name,
            "rootfs": str(rootfs),
            "control_socket": str(d / "monitor.sock"),
            "console_log": str(d / "console.log"),
            "state_file": str(d / "state.json"),
            "halt_signal": "SIGUSR2",
            "reboot_signal": "SIGTERM",
            "stop_timeout": 10,
            "cgroup_parent": PARENT,
        }
        fields.update(spec_args)
        b = _spawned(zygote, LaunchSpec.from_json(fields), d)
        booted.append(b)
        return b

    try:
        yield _boot
    finally:
        for b in booted:
            _teardown(b)
        leftovers = [line for b in booted for line in host_mounts_under(b.dir)]
        assert leftovers == []


def assert_gone(b: Booted) -> None:
    """Nothing of the container is left on the host."""
    wait_for(lambda: not alive(b.monitor_pid), 10, "the monitor to exit")
    assert not alive(b.init_pid)
    assert not Path(b.spec.control_socket).exists()
    assert not any(
        Path(p).exists() for p in ContainerCgroup.for_name(b.spec.name, parent=PARENT).paths
    )
    assert host_mounts_under(b.dir) == []


def test_boots_busybox_with_init_as_pid1(boot: Callable[..., Booted]) -> None:
    b = boot(hostname="bbox")
    status = Path(f"/proc/{b.init_pid}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[1:] == [str(b.init_pid), "1"]
    assert nsenter(b.init_pid, "hostname").strip() == "bbox"
    # Only the container's own processes are visible inside.
    wait_for(lambda: "sleep 3600" in nsenter(b.init_pid, "ps"), 5, "the respawned sleep")
    rows = [line.split(None, 2) for line in nsenter(b.init_pid, "ps").splitlines()[1:]]
    assert rows[0][0] == "1"
    assert {r[2].split()[0] for r in rows} <= {"init", "/bin/sleep", "/bin/sh", "ps"}
    # The console is captured, in the ring buffer and in the log file.
    wait_for(lambda: "hello from lxpy" in str(b.client.request("console-log")["text"]), 5, "log")
    assert "hello from lxpy" in Path(b.spec.console_log).read_text()
    st = b.status()
    assert st["state"] == "RUNNING" and st["init_pid"] == b.init_pid
    # Mounts made for the container stay in its mount namespace.
    assert host_mounts_under(b.dir) == []
    # Every process of the container is in its cgroup on every hierarchy.
    cg = ContainerCgroup.for_name(b.spec.name, parent=PARENT)
    assert b.init_pid in cg.pids()
    for path in cg.procs_files():
        assert str(b.init_pid) in Path(path).read_text().split()


@pytest.fixture
def named_hierarchy(tmp_path: Path, zygote: Path) -> Iterator[Path]:
    """A cgroup v1 hierarchy without controllers, mounted once the zygote runs."""
    spawn_request(zygote, {"cmd": "ping"})
    with named_cgroup_hierarchy(tmp_path / "named-cgroup") as (mnt, _name):
        yield mnt


def test_a_cgroup_hierarchy_mounted_later_holds_the_next_container(
    named_hierarchy: Path, boot: Callable[..., Booted]
) -> None:
    # The zygote keeps the hierarchies its monitors use, so it must notice
    # one mounted after it started.
    b = boot()
    procs = named_hierarchy / PARENT / (PREFIX + b.spec.name) / "cgroup.procs"
    assert str(b.init_pid) in procs.read_text().split()


def test_a_reboot_makes_again_the_cgroup_a_tool_removed_from_its_hierarchy(
    named_hierarchy: Path, boot: Callable[..., Booted]
) -> None:
    # A tool that owns a named hierarchy may clear it while a container
    # runs (the processes back to its root, the directories removed):
    # init's next boot goes into a directory made again, not into an error.
    b = boot()
    mine = named_hierarchy / PARENT / (PREFIX + b.spec.name)
    for pid in (mine / "cgroup.procs").read_text().split():
        (named_hierarchy / "cgroup.procs").write_text(pid)
    mine.rmdir()
    nsenter(b.init_pid, "reboot", "-f")
    st = wait_for(
        lambda: (s := b.status())["boots"] == 2 and s["state"] == "RUNNING" and s, 10, "reboot"
    )
    assert str(st["init_pid"]) in (mine / "cgroup.procs").read_text().split()


def test_a_kept_hierarchy_unmounted_since_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the zygote read at its start (monitor._hierarchies): kept while
    # the kernel has the same hierarchies. One unmounted since keeps its ID
    # while the kernel frees it (seconds, on a busy host): its mountpoint,
    # no longer a cgroup tree, sends the monitor back to the mount table.
    now = hierarchies()
    gone = Hierarchy(str(tmp_path), 1, ())
    monkeypatch.setattr(monitor, "HIERARCHIES", (hierarchy_ids(), [*now, gone]))
    assert monitor._hierarchies() == now
    monkeypatch.setattr(monitor, "HIERARCHIES", (hierarchy_ids(), now))
    assert monitor._hierarchies() is now


def test_stop_with_halt_signal_removes_everything(boot: Callable[..., Booted]) -> None:
    b = boot()
    reply = b.client.request("stop", wait=20, signal="SIGUSR2")
    last = reply["last_exit"]
    assert isinstance(last, dict)
    assert last["reason"] == "poweroff" and last["forced"] is False
    assert_gone(b)
    assert "bye" in Path(b.spec.console_log).read_text()


def test_stop_timeout_falls_back_to_kill(boot: Callable[..., Booted]) -> None:
    # An init that ignores the halt signal.
    stubborn = '#!/bin/sh\ntrap "" USR2 TERM\nwhile :; do sleep 1; done\n'
    b = boot(init="/sbin/stubborn", files={"sbin/stubborn": stubborn})
    # Answered within the request's bound (20 s) although the default stop
    # timeout is 30 s: the 0.5 s given was kept, and init was killed then.
    reply = b.client.request("stop", wait=20, timeout=0.5)
    last = reply["last_exit"]
    assert isinstance(last, dict)
    assert last["forced"] is True and last["reason"] == "killed"
    assert_gone(b)


def test_reboot_inside_relaunches(boot: Callable[..., Booted]) -> None:
    b = boot()
    nsenter(b.init_pid, "reboot", "-f")
    st = wait_for(
        lambda: (s := b.status())["boots"] == 2 and s["state"] == "RUNNING" and s, 10, "reboot"
    )
    assert isinstance(st, dict)
    assert st["monitor_pid"] == b.monitor_pid
    assert st["init_pid"] != b.init_pid and alive(int(st["init_pid"]))
    assert st["last_exit"]["reason"] == "reboot"
    assert not alive(b.init_pid)
    b.init_pid = int(st["init_pid"])
    assert nsenter(b.init_pid, "hostname").strip() == b.spec.name


def test_reboot_command_uses_the_reboot_signal(boot: Callable[..., Booted]) -> None:
    b = boot()
    b.client.request("reboot")
    # busybox init reboots gracefully on SIGTERM (about 2 s of shutdown).
    st = wait_for(lambda: (s := b.status())["boots"] == 2 and s, 10, "reboot")
    assert st["last_exit"]["reason"] == "reboot"


def test_reboot_signal_reaches_an_init_that_handles_it_late(
    boot: Callable[..., Booted],
) -> None:
    # The kernel drops signals to a namespace's init that it neither handles
    # nor blocks; this init takes SIGTERM only after a second, so the first
    # sends are lost and the monitor must repeat the signal.
    late = (
        "#!/bin/sh\nsleep 1\n"
        "trap 'echo caught the signal; exit 0' TERM\n"
        "while :; do sleep 0.1; done\n"
    )
    b = boot(init="/sbin/late", files={"sbin/late": late})
    b.client.request("reboot")
    log = Path(b.spec.console_log)
    wait_for(lambda: "caught the signal" in log.read_text(), 10, "the late trap")


def test_poweroff_inside_ends_the_monitor(boot: Callable[..., Booted]) -> None:
    b = boot()
    nsenter(b.init_pid, "poweroff", "-f")
    assert_gone(b)
    state = json.loads(Path(b.spec.state_file).read_text())
    assert state["state"] == "STOPPED"
    assert state["last_exit"]["reason"] == "poweroff"


def test_freeze_and_thaw(boot: Callable[..., Booted]) -> None:
    b = boot()
    cg = ContainerCgroup.for_name(b.spec.name, parent=PARENT)
    b.client.request("freeze")
    assert b.status()["state"] == "FROZEN"
    assert cg.frozen()
    b.client.request("thaw")
    assert b.status()["state"] == "RUNNING"
    assert not cg.frozen()
    # A frozen container still stops cleanly: the monitor thaws it first.
    b.client.request("freeze")
    reply = b.client.request("stop", wait=20)
    assert reply["last_exit"]["reason"] == "poweroff"  # type: ignore[index]
    assert_gone(b)


def test_kill_command(boot: Callable[..., Booted]) -> None:
    b = boot()
    reply = b.client.request("kill", wait=10)
    assert reply["last_exit"]["reason"] == "killed"  # type: ignore[index]
    assert_gone(b)


def test_attach_talks_to_the_console_shell(boot: Callable[..., Booted]) -> None:
    b = boot()
    wait_for(lambda: "/bin/sh" in nsenter(b.init_pid, "ps"), 5, "the console shell")
    conn, master = b.client.attach()
    try:
        os.write(master, b"echo $((40 + 2))x\n")
        out = b""
        deadline = time.monotonic() + 5
        while b"42x" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                out += os.read(master, 4096)
        assert b"42x" in out
        # Only one console attach at a time.
        with pytest.raises(LxpyError, match="already attached"):
            b.client.attach()
    finally:
        os.close(master)
        conn.close()
    # Detached: the monitor logs the console again.
    nsenter(b.init_pid, "sh", "-c", "echo back-in-log > /dev/console")
    wait_for(lambda: "back-in-log" in str(b.client.request("console-log")["text"]), 5, "log")


def test_failed_start_reports_and_leaves_nothing(tmp_path: Path, zygote: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    name = "t" + uuid.uuid4().hex[:10]
    spec = LaunchSpec.from_json(
        {
            "name": name,
            "rootfs": str(rootfs),
            "control_socket": str(tmp_path / "m.sock"),
            "init": "/sbin/no-such-init",
            "cgroup_parent": PARENT,
        }
    )
    with pytest.raises(LxpyError, match="no-such-init|No such file"):
        spawn_monitor(zygote, spec)
    assert not (tmp_path / "m.sock").exists()
    assert not any(Path(p).exists() for p in ContainerCgroup.for_name(name, parent=PARENT).paths)
    assert host_mounts_under(tmp_path) == []


def test_an_id_map_the_kernel_refuses_fails_the_start_cleanly(tmp_path: Path, zygote: Path) -> None:
    # The launch makes the user namespace (no pinned one): its map is
    # written by the monitor, and a range past the last ID is refused.
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    name = "t" + uuid.uuid4().hex[:10]
    top = 2**32 - 1000
    spec = LaunchSpec.from_json(
        {
            "name": name,
            "rootfs": str(rootfs),
            "control_socket": str(tmp_path / "m.sock"),
            "cgroup_parent": PARENT,
            "uid_base": top,
            "gid_base": top,
            "idmap_size": 65536,
        }
    )
    assert not spec.privileged and not spec.userns
    with pytest.raises(LxpyError, match="failed to start: writing uid_map .*: Invalid argument"):
        spawn_monitor(zygote, spec)
    assert not (tmp_path / "m.sock").exists()
    assert not any(Path(p).exists() for p in ContainerCgroup.for_name(name, parent=PARENT).paths)
    assert host_mounts_under(tmp_path) == []


def test_a_leftover_cgroup_loses_an_earlier_runs_limits(boot: Callable[..., Booted]) -> None:
    name = "t" + uuid.uuid4().hex[:10]
    cg = ContainerCgroup.for_name(name, parent=PARENT)
    # What a run that died without cleaning up left: its cgroup and its limit.
    assert cg.create(init_parent) is True
    assert cg.create(init_parent) is False  # reused: not new
    found = controller_dir(cg, "memory")
    assert found is not None
    limit = Path(found[1], "memory.max" if found[0] == 2 else "memory.limit_in_bytes")
    limit.write_text(str(64 << 20))
    boot(name=name)
    # No limits.* set: the start wrote "no limit" over the old one.
    value = limit.read_text().strip()
    assert value == "max" or int(value) > 1 << 60, value


def test_second_monitor_for_the_same_socket_is_busy(
    boot: Callable[..., Booted], zygote: Path
) -> None:
    b = boot()
    with pytest.raises(LxpyError, match="already answers"):
        spawn_monitor(zygote, b.spec)
    assert b.status()["state"] == "RUNNING"


def test_monitor_survives_its_starter_and_the_zygote(tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    name = "t" + uuid.uuid4().hex[:10]
    sock = tmp_path / "m.sock"
    spec = LaunchSpec.from_json(
        {
            "name": name,
            "rootfs": str(rootfs),
            "control_socket": str(sock),
            "halt_signal": "SIGUSR2",
            "cgroup_parent": PARENT,
        }
    )
    # A starter process (standing in for lxpyd) starts a zygote of its own,
    # has it spawn the monitor, reports the pids and waits to be killed.
    starter_code = (
        "import json, sys, time\n"
        "from lxpy.runtime.spec import LaunchSpec\n"
        "from lxpy.runtime.zygote import start_zygote, spawn_monitor\n"
        f"zs = {str(tmp_path / 'z.sock')!r}\n"
        "z = start_zygote(zs)\n"
        "r = spawn_monitor(zs, LaunchSpec.from_json(json.loads(sys.argv[1])))\n"
        "print(json.dumps({'zygote': z.pid, **r}), flush=True)\n"
        "time.sleep(60)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", starter_code, json.dumps(spec.to_json())],
        stdout=subprocess.PIPE,
        text=True,
    )
    monitor_pid = 0
    try:
        assert starter.stdout is not None
        info = json.loads(starter.stdout.readline())
        monitor_pid = int(info["monitor_pid"])
        starter.kill()
        starter.wait(timeout=10)
        os.kill(int(info["zygote"]), signal.SIGKILL)
        wait_for(lambda: not alive(int(info["zygote"])), 10, "the zygote to die")
        client = MonitorClient(str(sock))
        st = client.request("status")
        assert st["state"] == "RUNNING" and st["monitor_pid"] == monitor_pid
        assert alive(int(info["init_pid"]))
        reply = client.request("stop", wait=20)
        assert reply["last_exit"]["reason"] == "poweroff"  # type: ignore[index]
        wait_for(lambda: not alive(monitor_pid), 10, "the monitor to exit")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        if monitor_pid and alive(monitor_pid):
            os.kill(monitor_pid, signal.SIGKILL)
        cg = ContainerCgroup.for_name(name, parent=PARENT)
        cg.kill(timeout=5)
        cg.remove(timeout=5)
    assert not any(Path(p).exists() for p in ContainerCgroup.for_name(name, parent=PARENT).paths)
    assert not sock.exists()


def test_container_cgroups_nest_under_a_parent_that_bounds_them(
    boot: Callable[..., Booted],
) -> None:
    b = boot()
    cg = ContainerCgroup.for_name(b.spec.name, parent=PARENT)
    assert all(os.path.basename(os.path.dirname(p)) == PARENT for p in cg.paths)
    for line in Path(f"/proc/{b.init_pid}/cgroup").read_text().splitlines():
        if line.split(":")[1].startswith("name=lxpytest"):
            # A hierarchy another test run mounted for a while on this host
            # (named_hierarchy): it holds the container only if it was
            # there before the start.
            continue
        assert line.endswith(f"/{PARENT}/{PREFIX}{b.spec.name}"), line
    dev = devices_dir(cg)
    if dev is None:
        # Pure cgroup v2: the allow-list is a device program on the
        # container's cgroup2 directory (what it allows: test_devices_v2).
        assert cg.unified is not None
        assert len(bpfdev.attached(cg.unified)) == 1
        return
    listed = Path(os.path.dirname(dev), "devices.list").read_text().split("\n")
    assert sorted(filter(None, listed)) == sorted(ALLOWED)
    # Even host root cannot widen the container's list past its parent's.
    for rule in ("a", "b 8:0 rwm", "b *:* m"):
        with pytest.raises(PermissionError):
            Path(dev, "devices.allow").write_text(rule)


def test_unknown_command_is_an_error(boot: Callable[..., Booted]) -> None:
    b = boot()
    with pytest.raises(LxpyError, match="unknown command"):
        b.client.request("dance")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(b.spec.control_socket)
    raw.sendall(b"not json\n")
    assert b'"invalid_argument"' in raw.recv(4096)
    raw.close()
    assert b.status()["state"] == "RUNNING"
    assert PREFIX + b.spec.name in str(b.status()["cgroup"])


def _debian_rootfs(cache: Path, dest: Path) -> Path:
    """A Debian bookworm systemd rootfs at `dest`: unpacked from the suite's
    build cache when a built tarball is there, else bootstrapped."""
    dest.mkdir()
    tars = sorted(cache.glob("debian-bookworm-*.tar"), key=lambda p: p.stat().st_mtime)
    if tars:
        subprocess.run(
            ["tar", "-x", "--numeric-owner", "-f", str(tars[-1]), "-C", str(dest)],
            check=True,
            timeout=120,
        )
    else:
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus",
                "bookworm",
                str(dest),
                "http://deb.debian.org/debian",
            ],
            check=True,
            timeout=600,
        )
    return dest


def _system_running(pid: int, timeout: float = 20) -> str:
    """`systemctl is-system-running --wait` inside, once systemd answers."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["nsenter", "-a", "-t", str(pid), "systemctl", "is-system-running", "--wait"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        state = res.stdout.strip()
        if state not in ("", "offline"):
            return state
        time.sleep(0.01)
    return state or "no answer"


@pytest.mark.slow
def test_boots_debian_systemd_to_running(tmp_path: Path, zygote: Path, test_cache: Path) -> None:
    signal.alarm(700)  # may have to bootstrap the rootfs first
    rootfs = _debian_rootfs(test_cache, tmp_path / "rootfs")
    signal.alarm(60)
    name = "t" + uuid.uuid4().hex[:10]
    spec = LaunchSpec.from_json(
        {
            "name": name,
            "rootfs": str(rootfs),
            "control_socket": str(tmp_path / "m.sock"),
            "console_log": str(tmp_path / "console.log"),
            "halt_signal": "SIGRTMIN+4",
            "reboot_signal": "SIGINT",
            "uuid": str(uuid.uuid4()),
            "cgroup_parent": PARENT,
        }
    )
    b = Booted(spec, MonitorClient(spec.control_socket), 0, 0, tmp_path)
    try:
        reply = spawn_monitor(zygote, spec)
        b.monitor_pid = int(reply["monitor_pid"])  # type: ignore[call-overload]
        b.init_pid = int(reply["init_pid"])  # type: ignore[call-overload]
        state = _system_running(b.init_pid)
        failed = nsenter(b.init_pid, "systemctl", "--failed", "--no-legend", "--plain")
        assert state == "running", f"{state}; failed units:\n{failed}"
        # systemd got its own cgroup2 subtree to manage.
        assert (
            Path(ContainerCgroup.for_name(name, parent=PARENT).unified or "") / "init.scope"
        ).is_dir()
        # A reboot requested through the monitor (SIGINT, ctrl-alt-del)
        # comes back as a new boot of the same container.
        b.client.request("reboot")
        st = wait_for(
            lambda: (s := b.status())["boots"] == 2 and s["state"] == "RUNNING" and s, 15, "reboot"
        )
        b.init_pid = int(st["init_pid"])
        assert _system_running(b.init_pid) == "running"
        reply = b.client.request("stop", wait=40)
        assert reply["last_exit"]["reason"] == "poweroff"  # type: ignore[index]
        assert reply["last_exit"]["forced"] is False  # type: ignore[index]
        assert_gone(b)
    finally:
        _teardown(b)
        shutil.rmtree(rootfs, ignore_errors=True)


def _spares(zygote_pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{zygote_pid}/task/{zygote_pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for pid in map(int, kids):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "lxpy-spare":
                out.append(pid)
        except OSError:
            continue
    return out


def _copied(pid: int, runs: list[tuple[int, int]]) -> int:
    """How many pages of `runs` process `pid` holds as its own copy."""
    own = 0
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for addr, n in runs:
            f.seek(addr // pages.PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", f.read(n * 8)):
                own += entry >> 63 & 1 and entry >> 56 & 1
    return own


def _spec_for(tmp_path: Path, name: str) -> LaunchSpec:
    rootfs = make_busybox_rootfs(tmp_path / name / "rootfs")
    return LaunchSpec.from_json(
        {
            "name": name,
            "rootfs": str(rootfs),
            "control_socket": str(tmp_path / name / "m.sock"),
            "halt_signal": "SIGUSR2",
            "cgroup_parent": PARENT,
        }
    )


def test_a_spare_monitor_forked_ahead_takes_the_next_start(tmp_path: Path) -> None:
    sock = tmp_path / "z.sock"
    proc = start_zygote(sock)
    booted: list[Booted] = []

    def start(name: str) -> Booted:
        b = _spawned(sock, _spec_for(tmp_path, name), tmp_path / name)
        booted.append(b)
        return b

    try:
        first = wait_for(lambda: _spares(proc.pid), 5, "a spare")[0]
        assert start("t" + uuid.uuid4().hex[:10]).monitor_pid == first
        # Once its init runs, that monitor saves the pages its start wrote.
        saved = Path(f"{sock}.pages")
        runs = wait_for(lambda: pages.load(str(saved)), 5, "the saved pages")
        assert pages.total(runs) > 200
        # A new spare copies them in while it waits; the first had none to copy.
        second = wait_for(lambda: [p for p in _spares(proc.pid) if p != first], 5, "a new spare")[0]
        copied = wait_for(lambda: _copied(second, runs) > pages.total(runs) // 2, 5, "the copies")
        assert copied
        assert start("t" + uuid.uuid4().hex[:10]).monitor_pid == second
        # A spare that died is passed over: the zygote forks the monitor.
        third = wait_for(lambda: [p for p in _spares(proc.pid) if p != second], 5, "a spare")[0]
        os.kill(third, signal.SIGKILL)
        b = start("t" + uuid.uuid4().hex[:10])
        assert b.monitor_pid != third and b.client.request("status")["state"] == "RUNNING"
        # The zygote's end takes its spare along, not the monitors it made.
        spare = wait_for(lambda: _spares(proc.pid), 5, "a spare")[0]
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not alive(spare), 5, "the spare to end")
        assert all(b.client.request("status")["state"] == "RUNNING" for b in booted)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for b in booted:
            _teardown(b)
    assert [line for b in booted for line in host_mounts_under(b.dir)] == []


def test_zygote_ends_with_its_owner(tmp_path: Path) -> None:
    owner = subprocess.Popen(["sleep", "60"])
    path = tmp_path / "owned.sock"
    proc = start_zygote(path, owner=owner.pid)
    try:
        assert path.exists()
        owner.kill()
        owner.wait()
        assert proc.wait(timeout=10) == 0
        assert not path.exists()
    finally:
        owner.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_zygote_refuses_bad_requests_clearly(zygote: Path) -> None:
    def ask(line: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(zygote))
            s.sendall(line)
            reply: dict[str, object] = json.loads(s.makefile("rb").readline())
            return reply

    def error(reply: dict[str, object]) -> str:
        assert reply["ok"] is False, reply
        return str(reply["error"]["message"])  # type: ignore[index]

    assert ask(b"ping {}\n")["ok"] is True
    assert "unknown command 'dance'" in error(ask(b"dance {}\n"))
    assert "bad request" in error(ask(b"namespaces not json\n"))
    # A spawn's arguments are read by the forked child, which answers.
    assert "bad request" in error(ask(b"spawn not json\n"))
    assert "spec must be an object" in error(ask(b'spawn {"spec": 3}\n'))
    spec = {"name": "x", "rootfs": "/", "control_socket": "/nonexistent/x.sock", "ttys": 99}
    line = f"spawn {json.dumps({'spec': spec})}\n".encode()
    assert "ttys must be 0..64, got 99" in error(ask(line))
    # The zygote still serves, and the children that answered are gone.
    pid = int(spawn_request(zygote, {"cmd": "ping"})["pid"])  # type: ignore[call-overload]
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    wait_for(lambda: kids.read_text().split() == [], 5, "the zygote's children to be reaped")


def test_zygote_memory_is_mergeable(zygote: Path) -> None:
    # Many pages every monitor writes end up equal to the zygote's again:
    # ksmd folds them together only if the zygote's are marked as well.
    pid = int(spawn_request(zygote, {"cmd": "ping"})["pid"])  # type: ignore[call-overload]
    text = Path(f"/proc/{pid}/smaps").read_text()
    heap = text.partition("[heap]")[2].partition("VmFlags:")[2].split("\n")[0].split()
    assert "mg" in heap, heap
