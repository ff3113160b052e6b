"""`lxpyd`: the daemon's entry point.

Reads settings (file, then flags), takes the root's lock so only one daemon
serves a root (lxpy.daemon.rootlock), opens the storage pool, binds the API
socket and serves until SIGTERM or SIGINT. Logs go to stderr in a form
journald understands; with --daemon it goes to the background and logs to a
file (lxpy.daemon.background).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket as pysocket
import struct
import sys
from dataclasses import replace
from pathlib import Path

import trio

from lxpy.daemon import background, http, rootlock
from lxpy.daemon.assemble import assemble
from lxpy.daemon.peers import DEFAULT_GROUPS, Groups, group_gid
from lxpy.daemon.routes import build_router
from lxpy.errors import Busy, LxpyError
from lxpy.kernel import acl
from lxpy.kernel.cgroups import remove_parent
from lxpy.model.paths import DEFAULT_PID_FILE, RunPaths
from lxpy.model.settings import LOG_LEVELS, Settings, load_settings

log = logging.getLogger("lxpyd")


class _Formatter(logging.Formatter):
    """Plain lines; with sd-daemon `<N>` priority prefixes when journald (or
    any non-terminal) reads stderr. No timestamps: journald adds its own.
    In a log file of lxpyd's own (--daemon), lines start with the time."""

    PRIORITY = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def __init__(self, journal: bool, stamped: bool = False) -> None:
        super().__init__("%(message)s")
        self.journal = journal and not stamped
        self.stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prefix = f"<{self.PRIORITY.get(record.levelno, 6)}>lxpyd: "
        elif record.levelno >= logging.WARNING:
            prefix = f"lxpyd: {record.levelname.lower()}: "
        else:
            prefix = "lxpyd: "
        if self.stamped:
            prefix = self.formatTime(record, "%Y-%m-%d %H:%M:%S") + " " + prefix
        # Each line (a traceback has many) carries the prefix, so journald
        # files every line with the right priority.
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def setup_logging(level: str, to_file: bool = False) -> None:
    """Log to stderr at `level`; `to_file`: stderr is lxpyd's log file."""
    journal = "JOURNAL_STREAM" in os.environ or not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal, stamped=to_file))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lxpyd", description="lxpy's system-container daemon (serves the lxpy API)."
    )
    p.add_argument("--config", type=Path, help="settings file (default: /etc/lxpy/lxpyd.toml)")
    p.add_argument("--root", type=Path, help="state directory (default: /var/lib/lxpy)")
    p.add_argument("--socket", type=Path, help="API socket (default: /run/lxpy/lxpy.sock)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="log level (default: info)")
    p.add_argument(
        "--daemon",
        action="store_true",
        help="run in the background (for hosts without systemd): return once the socket "
        "answers, log to --log-file, pid in --pid-file",
    )
    p.add_argument(
        "--log-file",
        type=Path,
        help=f"with --daemon: the log (default: {background.DEFAULT_LOG_FILE})",
    )
    p.add_argument(
        "--pid-file",
        type=Path,
        help=f"with --daemon: where its pid goes (default: {DEFAULT_PID_FILE})",
    )
    args = p.parse_args(argv)
    if not args.daemon and (args.log_file or args.pid_file):
        p.error("--log-file and --pid-file go with --daemon (in the foreground, logs go to stderr)")
    return args


def _fail(err: LxpyError, status: int) -> int:
    print(f"error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    return status


def _socket_in_use(path: Path) -> bool:
    s = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        # The credentials of whoever called listen(): a leftover that
        # inherited the listening socket of a killed daemon (its helper, say)
        # accepts connections into the backlog, but nobody serves them.
        creds = s.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
    except OSError:
        return False
    finally:
        s.close()
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.exists() or path.is_symlink():
        # Our root lock is held, but another root's daemon may use this path.
        if _socket_in_use(path):
            raise Busy(
                f"socket {path} is in use by another daemon",
                hint="stop it, or use another --socket",
            )
        path.unlink()


def _secure_and_publish(tmp: Path, path: Path, groups: Groups) -> None:
    # Root and the admin group by the mode (0660, 0600 without the group),
    # the restricted users' group by an ACL entry: connect() needs write
    # permission on the file. lxpyd checks each connection again
    # (lxpy.daemon.peers), and each request of a restricted user
    # (lxpy.daemon.policy).
    admin, user = group_gid(groups.admin), group_gid(groups.user)
    os.chmod(tmp, 0o600)
    if admin is not None:
        os.chown(tmp, -1, admin)
        os.chmod(tmp, 0o660)
    if user is not None:
        try:
            acl.set_access(str(tmp), 6, 6 if admin is not None else 0, 0, {user: 6})
        except OSError as e:
            # Failing closed: restricted users cannot connect, admins can.
            log.warning(
                "cannot give group %s access to %s (%s): its filesystem needs POSIX ACLs",
                groups.user,
                path,
                e.strerror or e,
            )
    # Renamed into place only now: no client ever sees it with looser modes.
    os.rename(tmp, path)


async def bind_socket(
    path: Path, groups: Groups = DEFAULT_GROUPS
) -> tuple[trio.SocketListener, int]:
    """Listen on the unix socket `path`; returns the listener and the socket file's inode.

    Raises:
        Busy: a live daemon answers on `path`.
    """
    await trio.to_thread.run_sync(_prepare_socket_path, path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    await trio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
    sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        await sock.bind(str(tmp))
        # Listening before the path appears: a client that sees the socket
        # file can connect at once.
        sock.listen(128)
        await trio.to_thread.run_sync(_secure_and_publish, tmp, path, groups)
    except BaseException:
        sock.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
        raise
    ino = (await trio.to_thread.run_sync(path.stat)).st_ino
    return trio.SocketListener(sock), ino


async def _watch_signals(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("stopping on %s", signal.Signals(signum).name)
            scope.cancel()
            return


async def run(settings: Settings, bound: list[int], ready: int = -1) -> None:
    """Serve until a stop signal; `bound` receives the socket file's inode.
    Once serving, READY is written to the descriptor `ready` (if not -1),
    which is then closed."""
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, nursery.cancel_scope)
        # A socket held by a live daemon fails the start before the pool is
        # opened (which can mean making a loop-file filesystem).
        await trio.to_thread.run_sync(_prepare_socket_path, settings.socket)
        services = await assemble(settings, nursery)
        router = build_router(services)
        listener, ino = await bind_socket(
            settings.socket, Groups(settings.admin_group, settings.user_group)
        )
        bound.append(ino)
        await nursery.start(http.serve, listener, router)
        log.info("lxpyd ready: root %s, socket %s", settings.root, settings.socket)
        if ready >= 0:
            # Whoever started `lxpyd --daemon` waits for this word.
            with contextlib.suppress(OSError):
                os.write(ready, background.READY)
            os.close(ready)


def _remove_socket(path: Path, ino: int) -> None:
    # Only our own socket: a daemon started after us may own the path now.
    with contextlib.suppress(OSError):
        if path.stat().st_ino == ino:
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run lxpyd; returns the exit status (0 after a clean stop)."""
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except LxpyError as e:
        return _fail(e, 2)
    over: dict[str, object] = {}
    if args.root is not None:
        over["root"] = args.root
    if args.socket is not None:
        over["socket"] = args.socket
    if args.log_level is not None:
        over["log_level"] = args.log_level
    settings = replace(settings, **over)  # type: ignore[arg-type]
    settings = replace(settings, root=settings.root.absolute(), socket=settings.socket.absolute())
    ready = -1
    pid_file: Path | None = None
    if args.daemon:
        log_file = (args.log_file or background.DEFAULT_LOG_FILE).absolute()
        pid_file = (args.pid_file or DEFAULT_PID_FILE).absolute()
        try:
            ready = background.detach(log_file)
        except OSError as e:
            print(f"error: cannot open the log file {log_file}: {e.strerror or e}", file=sys.stderr)
            return 1
    setup_logging(settings.log_level, to_file=args.daemon)
    try:
        lock_fd = rootlock.take(settings.root)
    except LxpyError as e:
        return _fail(e, 1)
    except OSError as e:
        print(
            f"error: cannot lock {settings.root}: {os.strerror(e.errno or errno.EIO)}",
            file=sys.stderr,
        )
        return 1
    if pid_file is not None:
        try:
            background.write_pid_file(pid_file)
        except LxpyError as e:
            rootlock.release(lock_fd)
            return _fail(e, 1)
        except OSError as e:
            rootlock.release(lock_fd)
            print(f"error: cannot write {pid_file}: {e.strerror or e}", file=sys.stderr)
            return 1
    bound: list[int] = []
    try:
        trio.run(run, settings, bound, ready)
    except Exception as exc:
        err = http.leaf_error(exc)
        if isinstance(err, LxpyError):
            return _fail(err, 1)
        if isinstance(err, OSError):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise
    finally:
        if bound:
            _remove_socket(settings.socket, bound[0])
        # Still holding running containers (they outlive lxpyd), it stays.
        remove_parent(settings.cgroup_parent)
        # The zygote would end with us (and remove the run dir once it is
        # empty), but only a moment after: under systemd, a process still
        # in lxpy.service when lxpyd has exited is a "left-over" one. So it
        # is ended now, its spare monitor with it.
        _end_zygote(settings.paths.run)
        if pid_file is not None:
            background.remove_pid_file(pid_file)
        rootlock.release(lock_fd)
    log.info("lxpyd stopped")
    return 0


def _end_zygote(run: RunPaths) -> None:
    try:
        pid = int(run.zygote_pid.read_text())
        with open(f"/proc/{pid}/comm") as f:
            ours = f.read().strip() == "lxpy-zygote"
    except (OSError, ValueError):
        ours = False
    if ours:
        try:
            # It is our child: killing it by pid cannot hit a reused pid.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    # What the zygote removes itself when it sees lxpyd end.
    for path in (run.zygote_socket, run.zygote_pages, run.zygote_pid):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run.dir.rmdir()  # only once empty: networks may still hold files here


if __name__ == "__main__":
    sys.exit(main())
