"""How a container tells its monitor that it has booted.

Two ways in, both made afresh in the container's /run/host at every launch
(a reboot inside gets new ones, and is not booted until it says so again):

* /run/host/notify: a datagram socket speaking sd_notify(3), named to init
  in $NOTIFY_SOCKET, as systemd-nspawn does. systemd as PID 1 sends
  `READY=1` there once its boot transaction is done: from then on
  `systemctl is-system-running` says `running` or `degraded`, never
  `starting`. Only init's message counts (the kernel tells us the
  sender's pid).
* /run/host/ready: a FIFO for inits that cannot send a datagram (busybox
  init, sysvinit): a boot script's last step writes `READY=1` into it.
  lxpy's busybox template does so at the end of /etc/init.d/rcS. The
  monitor holds it open for reading and writing, so a writer never
  blocks and the monitor never sees end of file.

Both belong to the container's root (0600). Stdlib only: the monitor
imports this module.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

from lxpy.kernel import syscalls as sc

# Inside the container; the launch makes them under its /run/host.
NOTIFY_SOCKET = "/run/host/notify"
READY_FIFO = "/run/host/ready"

# At most this much is read per wake-up: a container that writes without
# end costs its monitor no more than its console output does.
_CHUNK = 4096
_UCRED = struct.Struct("iII")
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS


def says_ready(data: bytes) -> bool:
    """Whether a notification (newline-separated assignments) holds READY=1."""
    return b"READY=1" in data.split(b"\n")


def notify_socket() -> socket.socket:
    """A datagram socket for one launch, not yet bound: the init-to-be,
    which inherits it, binds it inside the container (make_endpoints).
    Close-on-exec, so init itself never holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    # The sender's credentials come with every datagram, its pid seen
    # from our pid namespace.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def make_endpoints(host_dir: str, notify_fd: int) -> None:
    """Bind the inherited socket `notify_fd` at HOST_DIR/notify and make the
    FIFO HOST_DIR/ready (HOST_DIR: the container's /run/host, seen from
    the launch before pivot_root).

    Raises:
        OSError: with the kernel's errno.
    """
    # Relative names, from within the directory: a socket's path has room
    # for 107 bytes, and the host's path to a rootfs may be longer.
    back = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(fileno=notify_fd)
    try:
        os.chdir(host_dir)
        sock.bind("notify")
        os.chmod("notify", 0o600)
        os.mkfifo("ready", 0o600)
    finally:
        # The monitor owns the descriptor; this process only borrowed it.
        sock.detach()
        os.fchdir(back)
        os.close(back)


def open_fifo(init_pid: int) -> int:
    """The container's /run/host/ready, opened read-write and non-blocking
    through init's root, or -1 when it is not there as a FIFO (an init
    whose boot made it something else: it has no say then).

    Why through /proc/PID/root with RESOLVE_IN_ROOT: init has run, so the
    container may already have replaced a path component with a link.
    """
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fd = sc.openat2(
            root, READY_FIFO.lstrip("/"), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC, _RESOLVE
        )
    except OSError:
        return -1
    finally:
        os.close(root)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return -1
    return fd


def read_socket(sock: socket.socket, init_pid: int) -> bool:
    """Drain `sock`; whether init (`init_pid`, as we see it) sent READY=1."""
    ready = False
    for _ in range(64):
        try:
            data, anc, _flags, _addr = sock.recvmsg(_CHUNK, socket.CMSG_SPACE(_UCRED.size))
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if e.errno == errno.EAGAIN:
                break
            raise
        pid = 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        if pid == init_pid and says_ready(data):
            ready = True
    return ready


def read_fifo(fd: int) -> bool:
    """Drain the FIFO `fd`; whether a line READY=1 came."""
    data = b""
    for _ in range(64):
        try:
            chunk = os.read(fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        data += chunk
    return says_ready(data)
