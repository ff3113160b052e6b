"""lxcfs: container-sized /proc and /sys files (free, uptime, top, nproc).

The kernel's /proc/meminfo, /proc/uptime, /proc/cpuinfo ... describe the
host whatever cgroup or pid namespace reads them. lxcfs is a FUSE
filesystem whose files of the same names answer for the cgroups and the
pid namespace of the process that reads them: MemTotal is the memory
limit, uptime counts from the container's init, cpuinfo lists the pinned
CPUs (and, with --enable-cfs, as many CPUs as the CPU quota rounds up to).
A container sees them when its /proc/meminfo etc. are bind-mounted from
the lxcfs mount, which is what `bind_mounts()` lists for the launch path.

One lxcfs serves every container. It must outlive lxpyd (containers hold
bind mounts into it; if it died, reading /proc/meminfo inside them would
fail with ENOTCONN), so it runs in a session of its own and lxpyd adopts a
running one on start. docs/limits.md says what is virtualised without it.
"""

from __future__ import annotations

import os
import signal
import time

from lxpy.errors import LxpyError, Unsupported

SYSTEM_MOUNT = "/var/lib/lxcfs"
FSTYPE = "fuse.lxcfs"
# Files (and the one directory) lxcfs provides that a container should see
# instead of the host's, as paths inside the container.
VIRTUALISED = (
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/slabinfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/sys/devices/system/cpu",
)
# --enable-cfs: cpuinfo/stat/cpu online reflect a CPU quota, not only a
# pinned set. --enable-loadavg: per-container load average (one thread
# that samples every container cgroup every few seconds).
DEFAULT_ARGS = ("--enable-cfs", "--enable-loadavg")


def mounts() -> list[str]:
    """Mountpoints of lxcfs filesystems in the caller's mount namespace."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _sep, right = line.partition(" - ")
            if right.split(" ", 1)[0] == FSTYPE:
                found.append(left.split()[4].replace("\\040", " "))
    return found


def find_running(mountpoint: str | None = None) -> str | None:
    """A usable lxcfs mount: `mountpoint` if lxcfs is mounted there, else
    (with None) the system one at /var/lib/lxcfs, else any lxcfs mount."""
    found = mounts()
    if mountpoint is not None:
        return mountpoint if os.path.realpath(mountpoint) in found else None
    if SYSTEM_MOUNT in found:
        return SYSTEM_MOUNT
    return found[0] if found else None


def _usable(path: str) -> bool:
    # A mount whose lxcfs died stays in the table but answers ENOTCONN.
    try:
        with open(os.path.join(path, "proc/uptime")) as f:
            f.read()
        return True
    except OSError:
        return False


def ensure(
    mode: str = "auto",
    mountpoint: str = SYSTEM_MOUNT,
    *,
    reuse: bool = True,
    args: tuple[str, ...] = DEFAULT_ARGS,
    timeout: float = 10.0,
) -> str | None:
    """The lxcfs mount containers should bind from, starting lxcfs if needed.

    Args:
        mode: `auto` (use lxcfs when it can be had, else None), `on` (fail
            when it cannot), `off` (None, do nothing).
        mountpoint: where to mount lxcfs when none runs (created); its
            pid file is `mountpoint + ".pid"`, its log `mountpoint + ".log"`.
        reuse: use an lxcfs that is already mounted elsewhere (the Debian
            service's /var/lib/lxcfs) rather than starting one.
        args: extra lxcfs options.
        timeout: how long to wait for a started lxcfs to mount.

    Raises:
        Unsupported: with mode `on`, when lxcfs is not installed, the kernel
            has no FUSE, or lxcfs does not come up.
    """
    if mode == "off":
        return None
    if mode not in ("auto", "on"):
        raise LxpyError(f"lxcfs mode must be auto, on or off, got {mode!r}")
    running = find_running(None if reuse else mountpoint)
    if running is not None and _usable(running):
        return running
    try:
        return start(mountpoint, args=args, timeout=timeout)
    except Unsupported:
        if mode == "on":
            raise
        return None


def start(mountpoint: str, *, args: tuple[str, ...] = DEFAULT_ARGS, timeout: float = 10.0) -> str:
    """Start an lxcfs mounted at `mountpoint`, in a session of its own.

    Raises:
        Unsupported: lxcfs or FUSE missing, or lxcfs did not mount in time
            (the message quotes its log).
    """
    # Imported here: the launch path (in every monitor) imports this module
    # for bind_mounts() only, and subprocess is not small.
    import shutil
    import subprocess

    binary = shutil.which("lxcfs")
    if binary is None:
        raise Unsupported("lxcfs is not installed", hint="apt-get install lxcfs")
    if not os.path.exists("/dev/fuse"):
        raise Unsupported("the kernel has no /dev/fuse", hint="modprobe fuse")
    # A dead lxcfs leaves its mount behind, answering ENOTCONN: clear it.
    if os.path.realpath(mountpoint) in mounts():
        subprocess.run(["umount", "-l", mountpoint], check=False)
    os.makedirs(mountpoint, exist_ok=True)
    log = mountpoint.rstrip("/") + ".log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [binary, *args, "-p", mountpoint.rstrip("/") + ".pid", mountpoint],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            # Its own session: it must survive lxpyd's exit and its signals.
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if find_running(mountpoint) and _usable(mountpoint):
            return mountpoint
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    with open(log, errors="replace") as f:
        tail = f.read()[-500:]
    raise Unsupported(f"lxcfs did not mount {mountpoint}: {tail.strip()}", hint="see " + log)


def stop(mountpoint: str, timeout: float = 5.0) -> None:
    """Stop the lxcfs started by `start(mountpoint)` and remove its mount.

    Idempotent. Containers still bound to it lose their virtual files.
    """
    pidfile = mountpoint.rstrip("/") + ".pid"
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    # Unmount first: lxcfs sits in a read() on /dev/fuse and only notices
    # a SIGTERM at its next request, but ends at once when its mount goes.
    if find_running(mountpoint):
        import subprocess

        subprocess.run(["umount", "-l", mountpoint], check=False)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if not pid or _wait_gone(pid, timeout if sig is None else 2.0, sig):
            break
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass


def _wait_gone(pid: int, timeout: float, sig: signal.Signals | None) -> bool:
    if sig is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it when it is our own child (started by this process),
            # or it would linger as a zombie that kill(0) still finds.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


def bind_mounts(lxcfs_root: str) -> list[tuple[str, str]]:
    """(source on the host, target inside the container) for each file lxcfs
    virtualises, to bind read-only over the container's /proc and /sys after
    they are mounted. Files this lxcfs version lacks are left out."""
    out = []
    for target in VIRTUALISED:
        source = os.path.join(lxcfs_root, target.lstrip("/"))
        if os.path.exists(source):
            out.append((source, target))
    return out
