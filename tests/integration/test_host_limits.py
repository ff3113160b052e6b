"""One container cannot exhaust host-wide tables: ptys, inotify, PIDs, the pool.

Each attack runs inside a real container booted by a real lxpyd, until the
kernel refuses it, and the test then checks that another container and the
host still get what they ask for. Holders of ptys and inotify instances are
`lxpy exec` commands: ending the client kills them (the monitor does), and
each also ends itself after HOLD seconds (perl's alarm), so an exhaustion
never outlives its test, even when the test itself fails. The fork bomb is
stopped as soon as it has met its limit, or passed it.

The pool test runs its own lxpyd on a small btrfs filesystem of its own,
filled from the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    VENV_BIN,
    Daemon,
    daemon_in,
    forget_host_ids,
    info,
    make_btrfs,
    start_daemon,
    stop_containers,
    stop_daemon,
    unmount_all_under,
    wait_for,
)
from tests.integration.test_escape import boot, sh

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's"),
]

TIME_BOUND = 420
# Longest an exhaustion may last, whatever happens to the test.
HOLD = 45
NR_INOTIFY_INIT = 253
# linux/nsfs.h: _IO(0xb7, 0x4)
NS_GET_OWNER_UID = 0xB704
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Iterator[Daemon]:
    """lxpyd with two running unprivileged Debian containers, `a` and `b`."""
    tmp = tmp_path_factory.mktemp("host-limits")
    settings = f'pool_size = "4GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
    with daemon_in(tmp, settings) as d:
        boot(d, "a")
        boot(d, "b")
        yield d


def lxpy(d: Daemon, *args: str) -> list[str]:
    return [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), *args]


@contextlib.contextmanager
def holding(d: Daemon, name: str, perl: str) -> Iterator[tuple[int, int]]:
    """Run perl code inside that takes what it can, prints "COUNT ERRNO"
    and holds it; yields (count, errno) while it holds, then ends it."""
    code = f"$| = 1; alarm {HOLD}; {perl}; sleep {HOLD};"
    proc = subprocess.Popen(
        lxpy(d, "exec", name, "-T", "--", "perl", "-e", code),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"\d+ \d+\n", line), line
        count, err = line.split()
        yield int(count), int(err)
    finally:
        # The monitor kills an exec'd command whose client went away.
        proc.kill()
        proc.wait()


def devpts_options(d: Daemon, name: str) -> str:
    mounts = sh(d, name, "cat /proc/self/mountinfo").stdout
    for line in mounts.splitlines():
        fields = line.split()
        if fields[4] == "/dev/pts":
            return fields[-1]
    raise AssertionError(f"no /dev/pts in {name}:\n{mounts}")


# -- ptys -------------------------------------------------------------------


def test_one_container_cannot_take_every_pty(pair: Daemon) -> None:
    d = pair
    take = (
        'my @p; while (open(my $f, "+<", "/dev/ptmx")) { push @p, $f } '
        'print scalar(@p), " ", $!+0, "\\n"'
    )
    with holding(d, "a", take) as (count, err):
        # Meanwhile another container's `lxpy exec -t` gets a pty...
        res = subprocess.run(
            lxpy(d, "exec", "b", "-t", "--", "tty"), capture_output=True, text=True, timeout=30
        )
        # ...and so does the host.
        master, slave = os.openpty()
        os.close(master)
        os.close(slave)
        assert res.returncode == 0 and "/dev/pts/" in res.stdout, res.stdout + res.stderr
        assert err == errno.ENOSPC
        assert count <= 1024, f"container a opened {count} ptys"
    # Each instance is held to limits.pty (default 1024, as LXC).
    assert "max=1024" in devpts_options(d, "a").split(","), devpts_options(d, "a")
    # limits.pty sets another size, in privileged containers too.
    d.cli("template", "build", "busybox")
    d.cli("create", "p", "-t", "busybox", "--set", "security.privileged=true")
    d.cli("config", "set", "p", "limits.pty", "8")
    d.cli("start", "p")
    try:
        assert "max=8" in devpts_options(d, "p").split(",")
        # Ten holders, eight ptys.
        held = sh(
            d,
            "p",
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 20 <>/dev/ptmx & done; sleep 1; "
            "ls /dev/pts | grep -c '^[0-9]'",
        ).stdout
        assert held.strip().splitlines()[-1] == "8", held
    finally:
        d.cli("stop", "p", "--force")
        d.cli("destroy", "p")


# -- inotify ----------------------------------------------------------------


def host_inotify_init() -> int:
    """0 when host root can make an inotify instance, else the errno."""
    fd = _libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def test_one_container_cannot_take_every_inotify_instance(pair: Daemon) -> None:
    d = pair
    per_user = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    take = f'my $n = 0; $n++ while syscall({NR_INOTIFY_INIT}) >= 0; print "$n ", $!+0, "\\n"'
    with holding(d, "a", take) as (count, err):
        # Host root and the other container still make instances.
        host = host_inotify_init()
        check = f"perl -e 'print syscall({NR_INOTIFY_INIT}) >= 0 ? \"ok\" : $!+0'"
        other = sh(d, "b", check).stdout.strip()
        assert host == 0, f"host root: {os.strerror(host)}"
        assert other == "ok", f"container b: {other}"
        assert err == errno.EMFILE
        assert 0 < count <= per_user
    # Inside, the user namespace's own limit is the host's per-user one.
    assert sh(d, "a", "cat /proc/sys/user/max_inotify_instances").stdout.strip() == str(per_user)


def owner_uid(ns: str | int) -> int:
    """The host UID owning a user namespace (ioctl NS_GET_OWNER_UID)."""
    fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC) if isinstance(ns, str) else ns
    try:
        return int.from_bytes(fcntl.ioctl(fd, NS_GET_OWNER_UID, bytes(4)), sys.byteorder)
    finally:
        os.close(fd)


def test_every_container_user_namespace_is_owned_by_its_root(pair: Daemon, tmp_path: Path) -> None:
    from lxpy.kernel import idranges, namespaces

    # Cloned with init (a container on no network), as `a` was.
    rec = info(pair, "a")["idmap"]
    assert owner_uid(f"/proc/{info(pair, 'a')['init_pid']}/ns/user") == rec["uid_base"]
    # Made and bound by the zygote's helper (a container on a network).
    ids = idranges.IdMap(3_100_000, 3_200_000, 65536)
    pinned = str(tmp_path / "userns")
    namespaces.pin_new_namespaces(pinned, ids.uid_map(), ids.gid_map(), "")
    try:
        assert owner_uid(pinned) == 3_100_000
    finally:
        namespaces.unpin_ns(pinned)
    # create_userns (lxpyd's probe).
    assert owner_uid(namespaces.create_userns(ids)) == 3_100_000


def test_inotify_keys_set_the_container_limits(pair: Daemon) -> None:
    d = pair
    knob = Path("/proc/sys/fs/inotify/max_user_instances")
    before = knob.read_text()
    watches = Path("/proc/sys/fs/inotify/max_user_watches").read_text()
    more = int(before) + 72
    d.cli("template", "build", "busybox")
    d.cli("create", "c", "-t", "busybox")
    d.cli("config", "set", "c", "limits.kernel.max_inotify_instances", str(more))
    d.cli("config", "set", "c", "limits.kernel.max_inotify_watches", "5000")
    try:
        d.cli("start", "c")
        # Raised on the host (the ceiling of every container's root ID),
        # and set in the container's own namespace.
        assert int(knob.read_text()) == more
        own = sh(
            d, "c", "cat /proc/sys/user/max_inotify_instances /proc/sys/user/max_inotify_watches"
        )
        assert own.stdout.split() == [str(more), "5000"]
        assert Path("/proc/sys/fs/inotify/max_user_watches").read_text() == watches
    finally:
        knob.write_text(before)
        d.cli("stop", "c", "--force", check=False)
        d.cli("destroy", "c", check=False)


# -- processes --------------------------------------------------------------


def test_a_fork_bomb_is_held_to_the_default_process_limit(pair: Daemon) -> None:
    from lxpy.kernel.limits import controller_dir

    d = pair
    # docs/limits.md: 15% of the host's PIDs, as systemd's DefaultTasksMax.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    threads = int(Path("/proc/sys/kernel/threads-max").read_text())
    limit = int(min(pid_max, threads) * 0.15)
    d.cli("template", "build", "busybox")
    d.cli("create", "bomb", "-t", "busybox")
    d.cli("start", "bomb")
    bomb: subprocess.Popen[bytes] | None = None
    try:
        found = controller_dir(d.cgroup("bomb"), "pids")
        assert found is not None
        pids = Path(found[1])

        def hits() -> int:
            return int((pids / "pids.events").read_text().split()[1])

        before = hits()
        bomb = subprocess.Popen(
            lxpy(d, "exec", "bomb", "--", "sh", "-c", "b() { b | b & }; b"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak, host, met = 0, None, 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = int((pids / "pids.current").read_text())
            peak = max(peak, now)
            if now > limit:
                break  # no limit held: stop it before the host suffers
            if not met and hits() > before:
                met = time.monotonic()
                # While it pushes at its limit, the host still forks.
                host = subprocess.run(["true"], timeout=10).returncode
            if met and time.monotonic() - met > 1:
                break  # and it stays below it
            time.sleep(0.01)
        d.cli("stop", "bomb", "--force")
        assert peak <= limit, f"{peak} processes in the container, limit {limit}"
        assert met, f"the bomb never met its limit (peak {peak})"
        assert host == 0

        # A container without the key gets the default at every start
        # (lxpy info shows it); max lifts it and unset restores it, at once.
        d.cli("start", "bomb")
        assert (pids / "pids.max").read_text().strip() == str(limit)
        assert info(d, "bomb")["stats"]["processes_limit"] == limit
        assert f"(limit {limit})" in d.cli("info", "bomb").stdout
        d.cli("config", "set", "bomb", "limits.processes", "max")
        assert (pids / "pids.max").read_text().strip() == "max"
        d.cli("config", "unset", "bomb", "limits.processes")
        assert (pids / "pids.max").read_text().strip() == str(limit)
    finally:
        d.cli("stop", "bomb", "--force", check=False)
        if bomb is not None:
            bomb.kill()
            bomb.wait()
        d.cli("destroy", "bomb", check=False)


# -- a full pool ------------------------------------------------------------

FULL = "error: storage pool is full"


@contextlib.contextmanager
def small_pool(tmp_path: Path) -> Iterator[Daemon]:
    """lxpyd whose root (records, logs and pool) is a 300 MiB btrfs of its
    own, with the busybox template built and container `c1` made."""
    root = tmp_path / "root"
    make_btrfs(tmp_path / "small.img", root, "300M")
    d = None
    try:
        d = start_daemon(
            root, tmp_path / "lxpy.sock", tmp_path / "lxpyd.log", settings='default_network = ""\n'
        )
        d.cli("template", "build", "busybox")
        d.cli("create", "c1", "-t", "busybox", "--set", "user.a=1")
        yield d
    finally:
        if d is not None:
            stop_daemon(d)
        stop_containers(root)
        forget_host_ids(root)
        unmount_all_under(tmp_path)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Daemon]:
    """small_pool() with container `c1` running."""
    with small_pool(tmp_path) as d:
        d.cli("start", "c1")
        yield d


def fill(where: Path) -> None:
    """Fill the filesystem of `where` from the host: data, then metadata."""
    where.mkdir()
    chunk = bytes(1 << 20)
    fd = os.open(where / "data", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    try:
        for i in range(500_000):
            os.close(os.open(where / f"m{i}", os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    else:
        raise AssertionError("half a million empty files and still room")


def free(where: Path) -> None:
    shutil.rmtree(where)
    # Deleted extents come back once the transaction commits.
    subprocess.run(["btrfs", "filesystem", "sync", str(where.parent)], check=True, timeout=60)
    wait_for(
        lambda: shutil.disk_usage(where.parent).free > 100 << 20, 30, "the pool to have space again"
    )


def test_a_full_pool_says_so_loses_nothing_and_recovers(small: Daemon) -> None:
    d = small
    record = d.paths.record("c1")
    kept = record.read_bytes()
    d.cli("exec", "c1", "--", "sh", "-c", "echo BEFORE-FULL > /dev/console")
    fill(d.root / "hog")

    def refused(*args: str) -> str:
        res = d.cli(*args, check=False)
        out = res.stdout + res.stderr
        assert res.returncode != 0 and FULL in out, f"lxpy {' '.join(args)}: {out}"
        assert "internal error" not in out
        return out

    refused("create", "c2", "-t", "busybox")
    refused("copy", "c1", "c3")
    refused("config", "set", "c1", "user.b", "2")
    refused("template", "build", "busybox", "--force")
    # A snapshot needs no data space on btrfs: it may be taken, or refused
    # as above.
    snap = d.cli("snapshot", "create", "c1", "s1", check=False)
    assert snap.returncode == 0 or FULL in snap.stderr, snap.stderr
    assert "internal error" not in snap.stderr
    d.cli("exec", "c1", "--", "sh", "-c", "echo WHILE-FULL > /dev/console")

    # Nothing already written was lost, nothing half made is left.
    assert record.read_bytes() == kept
    assert [c["name"] for c in d_list(d)] == ["c1"]
    assert sorted(os.listdir(d.paths.pool.containers)) == ["c1"]
    assert "busybox" in d.cli("template", "list").stdout

    free(d.root / "hog")
    d.cli("create", "c2", "-t", "busybox")
    d.cli("copy", "c1", "c3")
    d.cli("config", "set", "c1", "user.b", "2")
    d.cli("template", "build", "busybox", "--force")
    d.cli("snapshot", "create", "c1", "s2")
    d.cli("exec", "c1", "--", "sh", "-c", "echo AFTER-FREE > /dev/console")
    d.cli("stop", "c1", "--force")
    log = d.cli("console", "c1", "--log").stdout
    assert "BEFORE-FULL" in log and "AFTER-FREE" in log, log
    # What the full pool kept out of the log is either there or noted.
    assert "WHILE-FULL" in log or re.search(r"\d+ bytes of console output were not logged", log)
    assert {c["name"] for c in d_list(d)} == {"c1", "c2", "c3"}
    config = d.cli("config", "show", "c1").stdout
    assert "user.a" in config and "user.b" in config


def d_list(d: Daemon) -> list[dict[str, object]]:
    import json

    return json.loads(d.cli("list", "--format", "json").stdout)
