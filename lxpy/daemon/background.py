"""`lxpyd --daemon`: run in the background on a host without systemd.

The classic Unix way, as dnsmasq and sshd do it: fork, start a new session,
fork again (so the daemon is no session leader and can never get a
controlling terminal back), stdin from /dev/null, stdout and stderr into
the log file. The command that started it waits until the daemon serves
its socket and exits 0, or prints what the daemon logged and exits 1, so
`lxpyd --daemon && lxpy list` works and a failed start is seen at once.
Under systemd none of this is wanted: the unit runs lxpyd in the foreground.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from lxpy.errors import Busy

DEFAULT_LOG_FILE = Path("/var/log/lxpy/lxpyd.log")
# How much of the log a failed start shows.
TAIL_LINES = 20
READY = b"ready\n"


def open_log(path: Path) -> int:
    """The log file, opened for appending (its directory made if missing).

    Raises:
        OSError: it cannot be opened.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def log_to(fd: int) -> None:
    """Send stdout and stderr to `fd` (the log file), stdin from /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def detach(log_path: Path) -> int:
    """Go to the background; returns, in the daemon, the descriptor to write
    READY to once it serves (then close it).

    In the calling process it never returns: that process waits for the
    daemon's word and exits 0, or 1 with the log's last lines.

    Raises:
        OSError: the log file cannot be opened (before anything forked).
    """
    log_fd = open_log(log_path)
    start = os.fstat(log_fd).st_size
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid > 0:
        os.close(w)
        os._exit(_wait_ready(r, pid, log_path, start))
    # The first child: a session of its own, then the daemon forked from it.
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    log_to(log_fd)
    os.close(log_fd)
    return w


def _wait_ready(r: int, child: int, log_path: Path, start: int) -> int:
    """In the starting process: the exit status, once the daemon is ready
    (it says so on `r`) or gone (`r` ends without a word)."""
    os.waitpid(child, 0)  # the first child ends at once
    word = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(r, 64):
            word += chunk
            if word.endswith(READY):
                break
    os.close(r)
    if word.endswith(READY):
        return 0
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines[-TAIL_LINES:]:
        print(line, file=sys.stderr)
    print(f"error: lxpyd did not start; its log is {log_path}", file=sys.stderr)
    return 1


def write_pid_file(path: Path) -> None:
    """Write this process's pid to `path`.

    Raises:
        Busy: the file names another lxpyd that is running (a daemon on
            another root with the same pid file).
        OSError: it cannot be written.
    """
    try:
        other = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        other = 0
    if other and other != os.getpid() and _is_lxpyd(other):
        raise Busy(
            f"pid file {path} belongs to another lxpyd (pid {other})",
            hint="give this one a pid file of its own (--pid-file)",
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pid_file(path: Path) -> None:
    """Remove `path` if it still names this process."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()


def _is_lxpyd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a) == b"lxpyd" for a in args[:2])
