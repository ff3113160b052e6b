"""Trying to get out: an unprivileged and a privileged Debian container, attacked from inside.

Every attempt runs through `lxpy exec` as root inside a real container booted
by a real lxpyd, and must fail for the reason docs/security.md gives:
EPERM from the syscall filter (where the unfiltered host answers something
else), a capability the container lacks, a device the cgroup refuses, a
path that is masked or absent, a process that is not visible. This kernel
has no modules, kexec, sysrq or /proc/kcore: those show up as "absent" on
the host and as the filter's EPERM inside.

A root shell has no compiler or busybox in Debian's minbase, but it has
perl: `syscall()` makes the raw calls, and the host's static busybox is
copied in for mknod and mount.
"""

from __future__ import annotations

import errno
import grp
import os
import platform
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, Daemon, assert_loopback_only, info, push

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's"),
]

DEBIAN = "debian-bookworm"
BUSYBOX = "/usr/local/bin/busybox"

# x86_64 numbers: (name, number, arguments).
SYSCALLS = {
    "init_module": (175, "0, 0, 0"),
    "finit_module": (313, "-1, 0, 0"),
    "delete_module": (176, "$name, 0"),
    "kexec_load": (246, "0, 0, 0, 0"),
    "open_by_handle_at": (304, "0, 0, 0"),
    "settimeofday": (164, "0, 0"),
    "syslog": (103, "3, 0, 0"),
}


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    def expired(*_: object) -> None:
        raise TimeoutError("test took longer than 240 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(240)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sh(d: Daemon, name: str, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`sh -c SCRIPT` as root inside, stdout and stderr together."""
    sets = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    res = subprocess.run(
        [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "exec", name, *sets]
        + ["--", "sh", "-c", "exec 2>&1\n" + script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res


def errno_of(d: Daemon | None, name: str, call: str) -> int:
    """The errno of a raw syscall made by perl (0: it succeeded), inside
    the container, or on the host when `d` is None."""
    nr, args = SYSCALLS[call]
    # perl passes a string variable as a pointer (a literal is read-only).
    code = f'my $name = "loop"; $r = syscall({nr}, {args}); print $r < 0 ? $!+0 : 0'
    if d is None:
        out = subprocess.run(["perl", "-e", code], capture_output=True, text=True, timeout=10)
        return int(out.stdout)
    return int(sh(d, name, f"perl -e '{code}'").stdout)


def perl_open(d: Daemon, name: str, path: str, mode: str = "<") -> int:
    """errno of opening `path` inside (0: it opened)."""
    code = f'open(my $f, "{mode}", "{path}") or do {{ print $!+0; exit }}; print 0'
    return int(sh(d, name, f"perl -e '{code}'").stdout)


def boot(d: Daemon, name: str, *sets: str) -> int:
    """Create and start a Debian container; wait until systemd runs; its init pid."""
    d.cli("template", "build", DEBIAN, timeout=1800)
    args = [a for s in sets for a in ("--set", s)]
    d.cli("create", name, "-t", DEBIAN, *args)
    d.cli("start", name)
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        lines = sh(d, name, "systemctl is-system-running").stdout.strip().splitlines()
        state = lines[-1] if lines else ""
        if state in ("running", "degraded"):
            break
        time.sleep(0.2)
    assert state == "running", sh(d, name, "systemctl --failed --no-legend").stdout
    # Tools a minbase rootfs lacks: the host's static busybox.
    push(d, name, "/bin/busybox", BUSYBOX, mode="755")
    return int(info(d, name)["init_pid"])


def host_root_device() -> tuple[str, int, int]:
    src = subprocess.run(
        ["findmnt", "-no", "SOURCE", "/"], capture_output=True, text=True, check=True
    ).stdout.strip()
    rdev = os.stat(src).st_rdev
    return src, os.major(rdev), os.minor(rdev)


@pytest.fixture
def host_sleeper() -> Iterator[int]:
    """A host process for the container to try to kill."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def common_attempts(d: Daemon, name: str, sleeper: int) -> None:
    """What must fail the same way in both kinds of container."""
    # Modules, kexec, open_by_handle_at, the host clock and log: the
    # filter's EPERM, where the unfiltered host answers differently
    # (ENOSYS: no modules or kexec in this kernel; EFAULT/EBADF/0 for
    # calls that exist and got junk arguments).
    for call in SYSCALLS:
        inside = errno_of(d, name, call)
        host = errno_of(None, name, call)
        assert inside == errno.EPERM, (call, inside)
        assert host != errno.EPERM, f"{call}: the host says EPERM too; the test proves nothing"
    status = sh(d, name, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status").stdout
    assert "Seccomp:\t2" in status

    # sysrq-trigger and kcore: absent from this kernel, and masked where
    # they exist (an empty bind of /dev/null); either way nothing to write.
    for path in ("/proc/sysrq-trigger", "/proc/kcore"):
        if os.path.exists(path):
            assert perl_open(d, name, path, "<") == 0  # /dev/null: reads nothing
            assert sh(d, name, f"wc -c < {path}").stdout.strip() == "0"
        else:
            assert perl_open(d, name, path, ">") == errno.ENOENT
    assert sh(d, name, "ls -A /sys/firmware | wc -l").stdout.strip() == "0"

    # A disk node cannot be made: the devices cgroup allows no block node
    # (and a user namespace refuses device nodes altogether).
    _src, major, minor = host_root_device()
    mk = sh(d, name, f"{BUSYBOX} mknod /root/disk b {major} {minor}; echo rc=$?").stdout
    assert "Operation not permitted" in mk and "rc=1" in mk, mk

    # No host device nodes: only the minimal /dev (no block device at all).
    listing = sh(d, name, "ls -l /dev").stdout
    assert not [ln for ln in listing.splitlines() if ln.startswith("b")], listing
    names = set(sh(d, name, "ls /dev").stdout.split())
    assert {"null", "zero", "console", "ptmx", "pts"} <= names
    assert not names & {"vda", "sda", "mem", "kmsg", "port", "loop0", "btrfs-control"}

    # A host process: not visible, so neither signalable nor readable.
    kill = sh(d, name, f"kill -9 {sleeper}; echo rc=$?").stdout
    assert "No such process" in kill and "rc=1" in kill, kill
    assert os.path.exists(f"/proc/{sleeper}")
    assert perl_open(d, name, f"/proc/{sleeper}/root/etc/shadow") == errno.ENOENT
    # PID 1 inside is the container's init: /proc/1/root is its own rootfs.
    assert sh(d, name, "readlink /proc/1/exe").stdout.strip().endswith("systemd")

    # The hostname: the container's own changes, the host's stays.
    host_name = platform.node()
    assert sh(d, name, "hostname evil-twin && hostname").stdout.strip() == "evil-twin"
    assert platform.node() == host_name
    # The clock: sys_time is gone and the filter refuses the calls.
    assert "Operation not permitted" in sh(d, name, f"{BUSYBOX} date -s 2001-01-01").stdout

    # lxpyd's socket and run dir are nowhere inside.
    assert perl_open(d, name, str(d.socket)) == errno.ENOENT
    assert perl_open(d, name, "/run/lxpy") == errno.ENOENT
    assert "lxpy" not in sh(d, name, "cat /proc/self/mountinfo").stdout.replace(
        "container-manager", ""
    )


def test_unprivileged_container_holds(daemon: Daemon, host_sleeper: int) -> None:
    d = daemon
    pid = boot(d, "unpriv")
    ct = info(d, "unpriv")
    idmap = ct["idmap"]
    assert isinstance(idmap, dict) and idmap["method"] == "idmapped"
    assert str(ct["security"]).startswith("unprivileged")
    base = int(idmap["uid_base"])
    assert base >= 65536
    # Root inside is an ordinary host ID.
    assert os.stat(f"/proc/{pid}").st_uid == base
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(base), "65536"]
    # On no network its launch made that namespace: lxpyd pinned none.
    from lxpy.model.paths import RunPaths

    assert not RunPaths.of(d.root).userns("unpriv").exists()
    assert sh(d, "unpriv", "id -u").stdout.strip() == "0"
    assert sh(d, "unpriv", "systemctl --failed --no-legend").stdout.strip() == ""

    common_attempts(d, "unpriv", host_sleeper)

    # Mounting the host's disk: refused by the kernel (only host root may
    # mount a block device), and so is a devtmpfs with every host node.
    src, major, minor = host_root_device()
    out = sh(
        d,
        "unpriv",
        f"mkdir -p /mnt/x; {BUSYBOX} mknod /root/disk b {major} {minor}; "
        f"{BUSYBOX} mount -t ext4 /root/disk /mnt/x; echo disk=$?; "
        f"{BUSYBOX} mount -t devtmpfs none /mnt/x; echo devtmpfs=$?",
    ).stdout
    assert "disk=1" in out and "devtmpfs=1" in out and "permission denied" in out, out
    # Read-only host knobs: /proc/sys is a read-only mount; the container
    # may remount it (it made that mount in its own namespace), but the
    # files belong to host root, so still no write.
    assert perl_open(d, "unpriv", "/proc/sys/kernel/ctrl-alt-del", ">") == errno.EROFS
    out = sh(
        d,
        "unpriv",
        f"{BUSYBOX} mount -o remount,rw /proc/sys; "
        'perl -e \'open(my $f, ">", "/proc/sys/kernel/ctrl-alt-del") or print $!+0\'',
    ).stdout
    assert out.strip().endswith(str(errno.EACCES)), out
    assert perl_open(d, "unpriv", "/sys/kernel/lxpy-escape", ">") == errno.EROFS
    rw = sh(d, "unpriv", f"{BUSYBOX} mount -o remount,rw /sys; echo rc=$?").stdout
    assert "rc=1" in rw, rw
    # /etc/shadow of the host: its /proc/1 is not the host's init.
    assert "systemd-network" in sh(d, "unpriv", "cat /proc/1/root/etc/shadow").stdout

    # Files made by root inside: the mapped host ID in the container's
    # view, uid 0 on disk (idmapped mount), as docs/security.md says.
    sh(d, "unpriv", "touch /root/made-by-root")
    assert os.stat(f"/proc/{pid}/root/root/made-by-root").st_uid == base
    raw = Path(str(ct["path"])) / "root/made-by-root"
    assert os.stat(raw).st_uid == 0 and os.stat(raw).st_gid == 0


def test_a_nesting_container_holds(daemon: Daemon, host_sleeper: int) -> None:
    """security.nesting relaxes what docs/security.md says (unmasked proc
    and sysfs views, FUSE, TUN, delegated cgroups) and nothing that keeps
    the container off the host."""
    d = daemon
    pid = boot(d, "nest", "security.nesting=true")
    ct = info(d, "nest")
    assert "nesting on" in str(ct["security"]) and str(ct["security"]).startswith("unprivileged")
    base = int(ct["idmap"]["uid_base"])
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(base), "65536"]

    common_attempts(d, "nest", host_sleeper)
    names = set(sh(d, "nest", "ls /dev /dev/net").stdout.split())
    assert {"fuse", "tun"} <= names

    # The unmasked views: the host's knobs are still host root's files
    # (EACCES), /sys still read-only, and no host disk or devtmpfs mounts.
    assert perl_open(d, "nest", "/dev/.lxc/proc/sys/kernel/ctrl-alt-del", ">") == errno.EACCES
    assert perl_open(d, "nest", "/dev/.lxc/proc/sysrq-trigger", ">") in (
        errno.ENOENT,
        errno.EACCES,
    )
    assert perl_open(d, "nest", "/dev/.lxc/sys/kernel/lxpy-escape", ">") == errno.EROFS
    out = sh(
        d,
        "nest",
        f"{BUSYBOX} mount -o remount,rw /dev/.lxc/sys; echo sys=$?; "
        f"{BUSYBOX} mount -o remount,rw /sys; echo sys2=$?; "
        'perl -e \'open(my $f, ">", "/dev/.lxc/sys/kernel/uevent_helper") or print $!+0\'; '
        f"echo; mkdir -p /mnt/x; {BUSYBOX} mknod /root/disk b 8 0; "
        f"{BUSYBOX} mount -t devtmpfs none /mnt/x; echo devtmpfs=$?",
    ).stdout
    assert "sys=1" in out and "sys2=1" in out and "devtmpfs=1" in out, out
    # uevent_helper (the path run as host root on a uevent): read-only.
    assert str(errno.EROFS) in out.split(), out
    # A fresh proc in a nested namespace (what nesting is for) is no way
    # around them either.
    out = sh(
        d,
        "nest",
        f"{BUSYBOX} unshare -U -r -m -p -f --mount-proc sh -c "
        "'echo pid=$$; perl -e \"open(my \\$f, q{>}, q{/proc/sys/kernel/ctrl-alt-del}) "
        "or print \\$!+0\"'",
    ).stdout
    assert "pid=1" in out and out.strip().endswith(str(errno.EACCES)), out

    # Its cgroups are its own below the host's: it makes children, but
    # cannot widen a devices list or lift its own memory limit.
    write = (
        'for my $p ("/sys/fs/cgroup/devices/x/devices.allow", '
        '"/sys/fs/cgroup/devices/devices.allow", "/sys/fs/cgroup/memory/memory.limit_in_bytes") '
        '{ if (open(my $f, ">", $p)) { print((defined syswrite($f, "a") ? 0 : $!+0), " ") } '
        'else { print $!+0, " " } }'
    )
    out = sh(d, "nest", f"mkdir -p /sys/fs/cgroup/devices/x; perl -e '{write}'").stdout
    codes = out.split()
    assert codes[0] == str(errno.EPERM), out
    assert codes[1:] == [str(errno.EACCES)] * 2, out
    sh(d, "nest", "rmdir /sys/fs/cgroup/devices/x")


def test_privileged_container_holds_what_it_claims(daemon: Daemon, host_sleeper: int) -> None:
    d = daemon
    pid = boot(d, "priv", "security.privileged=true")
    ct = info(d, "priv")
    assert str(ct["security"]).startswith("privileged")
    assert os.stat(f"/proc/{pid}").st_uid == 0
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", "0", "4294967295"]
    assert_loopback_only(d, "priv", pid)
    # LXC's capability drops.
    bnd = int(
        sh(d, "priv", "grep CapBnd /proc/self/status").stdout.split()[1],
        16,
    )
    for cap in (16, 17, 25, 32, 33):  # sys_module, sys_rawio, sys_time, mac_override, mac_admin
        assert not bnd >> cap & 1, cap
    assert bnd >> 21 & 1  # sys_admin stays: systemd needs it

    common_attempts(d, "priv", host_sleeper)

    # Its devices list cannot be widened from inside: the kernel checks a
    # change against the parent cgroup's list, which is lxpy's own.
    write = (
        'for my $r ("a", "b *:* rwm", "c 1:1 rwm") { open(my $f, ">", "/mnt/dc/devices.allow") '
        'or die; print((defined syswrite($f, $r) ? 0 : $!+0), " ") }'
    )
    out = sh(
        d,
        "priv",
        f"mkdir -p /mnt/dc; {BUSYBOX} mount -t cgroup -o devices none /mnt/dc; echo mount=$?; "
        f"perl -e '{write}'; echo; {BUSYBOX} umount /mnt/dc",
    ).stdout
    assert "mount=0" in out, out
    assert out.split("\n")[1].split() == [str(errno.EPERM)] * 3, out

    # Not a boundary against root inside, as docs/security.md says:
    # CAP_SYS_ADMIN may remount /proc/sys read-write. Pinned here so that
    # the docs and the behaviour change together.
    out = sh(d, "priv", f"{BUSYBOX} mount -o remount,rw /proc/sys; echo rc=$?").stdout
    assert "rc=0" in out, out
    # A devtmpfs shows every host node, but the devices cgroup still
    # refuses opening the host's disk through it.
    src, _major, _minor = host_root_device()
    node = "/mnt/dt/" + os.path.basename(src)
    out = sh(
        d,
        "priv",
        f"mkdir -p /mnt/dt; {BUSYBOX} mount -t devtmpfs none /mnt/dt; echo rc=$?",
    ).stdout
    assert "rc=0" in out, out
    assert perl_open(d, "priv", node) == errno.EPERM
    sh(d, "priv", f"{BUSYBOX} umount /mnt/dt")


def test_security_keys_are_checked_and_shown(daemon: Daemon) -> None:
    d = daemon
    d.cli("create", "bb", "-t", "busybox")
    ct = info(d, "bb")
    assert ct["idmap"]["isolated"] is True
    bad = d.cli("config", "set", "bb", "security.syscalls.deny", "no_such_call", check=False)
    assert bad.returncode != 0 and "no_such_call" in bad.stderr
    bad = d.cli("config", "set", "bb", "security.idmap.size", "10", check=False)
    assert bad.returncode != 0 and "security.idmap.size" in bad.stderr
    # A second isolated container gets a range of its own.
    d.cli("create", "bb2", "-t", "busybox")
    a, b = info(d, "bb")["idmap"], info(d, "bb2")["idmap"]
    assert a["uid_base"] != b["uid_base"]
    # Shared: both non-isolated containers use one range.
    d.cli("create", "s1", "-t", "busybox", "--set", "security.idmap.isolated=false")
    d.cli("create", "s2", "-t", "busybox", "--set", "security.idmap.isolated=false")
    assert info(d, "s1")["idmap"] == info(d, "s2")["idmap"]
    # A denied extra syscall is refused inside, and only in that container.
    d.cli("config", "set", "bb", "security.syscalls.deny", "sethostname")
    d.cli("start", "bb")
    d.cli("start", "bb2")
    out = subprocess.run(
        [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "exec", "bb", "--"]
        + ["hostname", "other"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "not permitted" in out.stderr, out
    # Permitted in the other one (d.cli checks the exit status). Not read
    # back: busybox's boot script may set the hostname from /etc/hostname
    # again at any moment around here.
    d.cli("exec", "bb2", "--", "hostname", "other")
    text = d.cli("info", "bb").stdout
    assert "security:" in text and "unprivileged" in text


def test_api_refuses_users_outside_the_lxpy_group(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    # The socket is 0600 without a group `lxpy`; opened to everyone here,
    # so that only the daemon's own check stands between.
    os.chmod(d.socket, 0o666)
    dirs = [p for p in (tmp_path, *tmp_path.parents) if p != Path("/")]
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in dirs}
    try:
        for p, mode in modes.items():
            os.chmod(p, mode | 0o005)
        _check_access(d)
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)


def _check_access(d: Daemon) -> None:
    cmd = [str(VENV_BIN / "lxpy"), "--socket", str(d.socket), "list"]

    def as_user(*groups: str) -> subprocess.CompletedProcess[str]:
        opts = [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", *opts, *cmd],
            capture_output=True,
            text=True,
            timeout=30,
        )

    res = as_user()
    assert res.returncode != 0
    assert "uid 65534 may not use lxpyd" in res.stderr and "group 'lxpy'" in res.stderr
    assert "refused uid 65534" in d.log.read_text()

    # A member of `lxpy` (a supplementary group) gets in. The group is made
    # for this test only when the host has none.
    made = False
    try:
        gid = grp.getgrnam("lxpy").gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", "lxpy"], check=True, timeout=30)
        made = True
        gid = grp.getgrnam("lxpy").gr_gid
    try:
        res = as_user(str(gid))
        assert res.returncode == 0, res.stderr
    finally:
        if made:
            subprocess.run(["groupdel", "lxpy"], check=True, timeout=30)
    # Root's changes are logged with who made them.
    d.cli("create", "logged", "-t", "busybox")
    log = d.log.read_text()
    assert "uid 0 pid" in log and "POST /1.0/containers" in log
