"""The zygote: a small fork server that makes monitors cheap.

Started once (`python3 -I -S`, stdlib plus lxpy's runtime only), it imports
everything a monitor needs, moves those objects out of the garbage
collector's reach with gc.freeze() (so collections in the children do not
write to, and so un-share, the pages they live on), and then forks one
monitor per request on its unix socket. A forked monitor shares the
zygote's pages copy-on-write: it costs a fraction of a fresh interpreter
and starts in about a millisecond. Whenever the zygote is idle, one spare
monitor waits forked ahead, its start's page copies made (_fork_spare),
and the next spawn goes to it instead.

Each monitor calls setsid(), so neither the zygote's nor lxpyd's death
touches it.

Protocol (one request per connection: a line of the command's name, a
space and its arguments as a JSON object; see encode_request; each answer
is one JSON object on a line):
`spawn {"spec": {...LaunchSpec...}}` is answered by the forked monitor
itself, `{"ok": true, "monitor_pid": N, "init_pid": N}` once init runs, or
`{"ok": false, "error": {...}}`; `ping {}` answers `{"ok": true, "pid": N}`;
`namespaces {"userns": PATH|"", "uid_map": TEXT, "gid_map": TEXT,
"netns": PATH|""}` makes a container's namespaces and binds them on the
paths (no user namespace when "userns" is empty, no network namespace when
"netns" is), answering `{"ok": true}`.

Why the name comes first: a spawn forks before its arguments are parsed
(see _spawn), and the zygote must know it is one without parsing them.
"""

from __future__ import annotations

import _socket
import gc
import json
import os
import select
import signal
import socket
import sys

from lxpy.errors import InvalidArgument, LxpyError
from lxpy.kernel import ksm, namespaces, pages, seccomp
from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import hierarchies, hierarchy_ids
from lxpy.model.units import parse_signal
from lxpy.runtime import monitor
from lxpy.runtime.control import check_reply
from lxpy.runtime.spec import LaunchSpec

# For annotations only: typing and pathlib (with what pathlib imports) cost
# the zygote, and so every monitor it forks, ~1.1 MB together.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn

SPAWN_TIMEOUT = monitor.LAUNCH_TIMEOUT + 10


def _warm_up() -> None:
    """Run once, here, the code paths every monitor runs.

    Why: first calls fill lazy caches (compiled regular expressions, enum
    lookups, the json encoder, attribute caches). Done in each child they
    allocate fresh, unshared memory in every monitor; done here they are
    shared copy-on-write.
    """
    spec = LaunchSpec.from_json(
        {"name": "warm-up", "rootfs": "/", "control_socket": "/nonexistent/warm-up.sock"}
    )
    spec.halt_signum()
    spec.reboot_signum()
    for sig in ("SIGUSR2", "SIGTERM", "SIGRTMIN+3", "SIGPWR", "SIGINT", "9"):
        parse_signal(sig)
    for status in (signal.SIGHUP, signal.SIGINT, signal.SIGKILL, 0):
        monitor._why(status)
    mon = monitor.Monitor(spec)
    json.loads(json.dumps({"event": "state", **mon.status()}))
    mon.cg.pids()
    mon.poll.register(0, select.POLLIN)
    mon.poll.unregister(0)
    try:
        seccomp.build_filter(seccomp.default_policy())
    except LxpyError:
        pass  # no syscall table for this machine: each launch says so


def _reap(*_: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            # A monitor killed under its container: say so where lxpyd logs.
            name = signal.Signals(os.WTERMSIG(status)).name
            print(f"lxpy-zygote: monitor {pid} was killed by {name}", file=sys.stderr)


def _spawn(listener: socket.socket, conn: _socket.socket, args: bytes | None = None) -> None:
    """Fork a monitor for the spawn request on `conn` (its arguments read
    already when `args` is given); the monitor reads and parses it and
    answers on `conn` itself.

    Why: the answer comes once init runs, which takes milliseconds to
    seconds. Handing the connection to the monitor leaves the zygote free
    to fork the next one at once, so fifty starts run side by side instead
    of queueing behind each other.

    Why the monitor reads its spec and not the zygote: each fork leaves
    every page the zygote then writes to be copied on write, and whatever
    it writes between two forks sets the next monitor apart from the last.
    Forking first keeps both small: the zygote costs fewer page faults per
    start, and monitors start from near-identical memory, which ksmd then
    folds into one copy (lxpy.kernel.ksm).
    """
    if os.fork() == 0:
        try:
            listener.close()
            _detach()
            _monitor(conn, args)
        finally:
            os._exit(1)


def _detach() -> None:
    # A session of its own: no terminal, no process group of the caller's.
    # One fork, not the daemons' usual two: a second costs a start about
    # half a millisecond, and the pages the middle process wrote would stay
    # with the monitor. A session leader gets a controlling terminal by
    # opening one, so the monitor opens ttys only with O_NOCTTY (openpty
    # does too). It stays our child: _reap collects it, or the host's init
    # once we end.
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)


def _monitor(conn: _socket.socket, args: bytes | None) -> NoReturn:
    """In a forked child: read the spawn request on `conn` (unless its
    arguments `args` were read already), run its monitor, and exit."""
    code = 1
    try:
        if args is None:
            args = _read_line(conn).partition(b" ")[2]
        ready = conn.detach()
        try:
            spec_data = json.loads(args).get("spec")
            if not isinstance(spec_data, dict):
                raise InvalidArgument("spawn: spec must be an object")
            spec = LaunchSpec.from_json(spec_data)
        except (ValueError, AttributeError) as e:
            monitor.report(ready, InvalidArgument(f"bad request: {e}"))
        except LxpyError as e:
            monitor.report(ready, e)
        else:
            code = monitor.run(spec, ready_fd=ready)
    finally:
        os._exit(code)


# -- the spare ---------------------------------------------------------------

# How long the zygote waits without a request before it forks the next
# spare: never beside a run of starts, whose monitors it forks directly.
SPARE_IDLE = 0.05


def _fork_spare(listener: socket.socket, pages_path: str) -> _socket.socket | None:
    """Fork a spare monitor; returns our end of the socket that hands it
    a spawn's connection (None if the fork failed).

    Why: a forked monitor's start writes some 800 pages it shares with the
    zygote, and each first write is a page fault that copies the page;
    with the fork itself that was a third of the time from the request to
    a running init. A spare is forked while the zygote is idle and copies
    those pages in ahead (lxpy.kernel.pages), so the next start skips both.
    Which pages: the ones the monitors before it wrote in their starts,
    which each spare-made monitor saves to `pages_path` once its init runs
    (monitor.LEARN). Their contents stay the zygote's, so ksmd folds them
    back into one copy if the spare waits long.
    """
    ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    zygote = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid:
        theirs.close()
        return ours
    try:
        listener.close()
        ours.close()
        _spare(theirs, zygote, pages_path)
    finally:
        os._exit(1)


def _spare(sock: _socket.socket, zygote: int, pages_path: str) -> NoReturn:
    # A spare dies with the zygote; a monitor must outlive it.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:
        os._exit(0)
    try:
        sc.set_process_name("lxpy-spare")
    except OSError:
        pass
    _detach()
    known = pages.load(pages_path)
    pages.prefault(known)
    conn = None
    try:
        _msg, ancdata, _flags, _addr = sock.recvmsg(1, _FD_SPACE)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
                conn = _socket.socket(fileno=int.from_bytes(data[:4], sys.byteorder))
    except OSError:
        pass
    if conn is None:
        os._exit(0)  # the zygote closed its end: it ends, or wants no spare
    sc.prctl(sc.PR_SET_PDEATHSIG, 0)
    sock.close()
    conn.settimeout(SPAWN_TIMEOUT)
    monitor.LEARN = (pages_path, pages.total(known), zygote)
    _monitor(conn, None)


_FD_SPACE = socket.CMSG_SPACE(4)


def _hand_to_spare(spare: _socket.socket, conn: _socket.socket) -> bool:
    """Pass spawn connection `conn` to the spare; False if it is gone."""
    try:
        fd = conn.fileno().to_bytes(4, sys.byteorder)
        spare.sendmsg([b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd)])
    except OSError:
        return False
    return True


def _namespaces(req: dict[str, Any]) -> dict[str, object]:
    """Make and bind a container's user and network namespaces (see
    namespaces.pin_new_namespaces); the answer says whether it worked.

    Why here: the helper process forks from this small single-threaded
    process in a fraction of what a fork from lxpyd costs.
    """
    fields = ("userns", "uid_map", "gid_map", "netns")
    args = [req.get(k, "") for k in fields]
    if not all(isinstance(a, str) for a in args) or not (args[0] or args[3]):
        raise InvalidArgument(
            "namespaces: userns, uid_map, gid_map and netns are strings; userns or netns a path"
        )
    # Our SIGCHLD handler must not reap the helper before it is waited for.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        namespaces.pin_new_namespaces(*args)
    except OSError as e:
        return {
            "ok": False,
            "error": LxpyError(
                f"cannot make the namespaces of {args[3] or args[0]}: {e}"
            ).to_json(),
        }
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return {"ok": True}


def _read_line(conn: _socket.socket) -> bytes:
    """One request line from `conn`, without its newline (b"" at EOF)."""
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return buf.partition(b"\n")[0]


_SPAWN = b"spawn "


def _handle(conn: _socket.socket, listener: socket.socket) -> None:
    # A spawn is known by its first bytes, left in the socket for the
    # monitor to read (see _spawn).
    if conn.recv(len(_SPAWN), socket.MSG_PEEK) == _SPAWN:
        _spawn(listener, conn)
        return
    cmd, _, args = _read_line(conn).partition(b" ")
    if not cmd:
        return
    if cmd == b"spawn":  # its first bytes had not all arrived
        _spawn(listener, conn, args)
        return
    try:
        if cmd == b"ping":
            reply: dict[str, object] = {"ok": True, "pid": os.getpid()}
        elif cmd == b"namespaces":
            req = json.loads(args)
            if not isinstance(req, dict):
                raise InvalidArgument("namespaces: the arguments are a JSON object")
            reply = _namespaces(req)
        else:
            raise InvalidArgument(
                f"unknown command {cmd.decode(errors='replace')!r}",
                hint="spawn, namespaces or ping",
            )
    except ValueError as e:
        reply = {"ok": False, "error": InvalidArgument(f"bad request: {e}").to_json()}
    except LxpyError as e:
        reply = {"ok": False, "error": e.to_json()}
    conn.sendall((json.dumps(reply) + "\n").encode())


def serve(path: str, owner: int = 0, spares: bool = True) -> None:
    """Listen on `path` and fork monitors until killed, or until process
    `owner` (lxpyd) ends when it is given. With `spares`, a spare monitor
    waits for the next spawn whenever the zygote is idle (_fork_spare).

    Why the zygote ends with lxpyd: monitors do not need it (they run in
    sessions of their own and move on to the host's init), and a zygote
    outliving every lxpyd that could reach it would idle forever. The next
    lxpyd starts a new one.
    """
    try:
        sc.set_process_name("lxpy-zygote")
    except OSError:
        pass
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Monitors are our children, and what a dead monitor leaves behind (its
    # container's init) comes to us rather than to the host's init: we reap
    # them when they end; if the zygote dies they move on to init, unharmed.
    try:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass
    signal.signal(signal.SIGCHLD, _reap)
    pages_path = f"{path}.pages"
    for stale in (path, pages_path):
        if os.path.exists(stale):
            os.unlink(stale)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    # Read once here for every monitor forked later (monitor._hierarchies).
    monitor.HIERARCHIES = (hierarchy_ids(), hierarchies())
    _warm_up()
    # Everything imported so far is shared with every monitor: keep the
    # collector from touching (and so copying) those pages in the children.
    gc.collect()
    gc.freeze()
    # Pages that every monitor writes stop being shared with us; many of
    # them end up equal to ours again (a count raised, then lowered), and
    # ksmd can fold ours in with theirs only if ours are marked too.
    try:
        ksm.mark_mergeable()
    except OSError:
        pass
    poll = select.poll()
    poll.register(listener.fileno(), select.POLLIN)
    owner_fd = -1
    if owner:
        try:
            owner_fd = os.pidfd_open(owner)
        except OSError:
            return  # it is gone already
        poll.register(owner_fd, select.POLLIN)
    # The first spare too comes from the loop's idle wait, not from here:
    # every spare is then forked from the same state (see below).
    spare: _socket.socket | None = None
    idle_ms = round(SPARE_IDLE * 1000) if spares else -1
    while True:
        try:
            ready = [fd for fd, _ in poll.poll(-1 if spare is not None else idle_ms)]
        except InterruptedError:
            continue
        if not ready:
            spare = _fork_spare(listener, pages_path)
            continue
        if owner_fd in ready:
            if spare is not None:
                spare.close()
            for ours in (path, pages_path):
                try:
                    os.unlink(ours)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(os.path.dirname(path))  # lxpyd's run dir, once empty
            except OSError:
                pass
            return
        # Nothing here may make or change a dict between two forks: each
        # does in CPython 3.11 (a global version counter every dict
        # records), and a monitor forked after N of them would hold values
        # N apart from the last one's in every dict it writes: pages ksmd
        # could not fold. So the bare C socket from _accept(), not
        # socket.socket, whose instances keep attributes in a dict.
        try:
            fd, _addr = listener._accept()  # type: ignore[attr-defined]
        except OSError:
            continue
        conn = _socket.socket(-1, -1, -1, fd)
        conn.settimeout(SPAWN_TIMEOUT)
        try:
            if spare is not None and conn.recv(len(_SPAWN), socket.MSG_PEEK) == _SPAWN:
                handed = _hand_to_spare(spare, conn)
                spare.close()
                spare = None
                if handed:
                    continue
            _handle(conn, listener)
        except OSError:
            pass
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        print("usage: lxpy zygote SOCKET [OWNER-PID]", file=sys.stderr)
        return 2
    serve(argv[0], int(argv[1]) if len(argv) == 2 else 0)
    return 0


# -- the caller's side -------------------------------------------------------

# What the zygote's interpreter runs first: lxpy on sys.path, the deferred
# imports (lxpy.runtime.deferred_imports) in place before anything imports them.
_PRELUDE = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from lxpy.runtime import deferred_imports; deferred_imports.defer(); "
)
_BOOT = _PRELUDE + "from lxpy.runtime.zygote import main; sys.exit(main(sys.argv[1:]))"


def start_zygote(
    path: str | Path, stderr: int | None = None, python: str | None = None, owner: int = 0
) -> Any:
    """Start a zygote listening on `path`; returns its subprocess.Popen.
    With `owner`, the zygote exits when that process ends.

    It runs as `python -I -S`: no site-packages, no environment, no user
    site, so a monitor carries nothing it does not need. Only the directory
    holding the lxpy package goes on sys.path.

    Raises:
        LxpyError: when the zygote exits or does not answer within 10 s.
    """
    import subprocess
    import time

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    args = [python or sys.executable, "-I", "-S", "-c", _BOOT.format(root=root), str(path)]
    if owner:
        args.append(str(owner))
    # stdout goes nowhere: a monitor outlives its starter and must not hold
    # the starter's pipes open (a caller reading them would never see EOF).
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LxpyError(f"the zygote exited with status {proc.returncode} at start")
        try:
            spawn_request(path, {"cmd": "ping"}, timeout=1)
            return proc
        except (OSError, LxpyError):
            time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise LxpyError(f"the zygote did not answer on {path} within 10 s")


def encode_request(req: dict[str, object]) -> bytes:
    """The line that asks the zygote `req` ({"cmd": NAME, ...arguments})."""
    args = {k: v for k, v in req.items() if k != "cmd"}
    return f"{req['cmd']} {json.dumps(args)}\n".encode()


def spawn_request(
    path: str | Path, req: dict[str, object], timeout: float = SPAWN_TIMEOUT
) -> dict[str, object]:
    """Send one request to a zygote and return its checked answer.

    Raises:
        OSError: when the zygote cannot be reached.
        LxpyError (or a subclass): the error the zygote or the monitor reported.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(encode_request(req))
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise LxpyError("the monitor ended before init ran (see lxpyd's log)")
            buf += chunk
    return check_reply(json.loads(buf.partition(b"\n")[0]))


def spawn_monitor(path: str | Path, spec: LaunchSpec) -> dict[str, object]:
    """Ask the zygote at `path` to start a monitor (and so the container).

    Returns:
        {"ok": true, "monitor_pid": N, "init_pid": N}.

    Raises:
        OSError: when the zygote cannot be reached.
        LxpyError (or a subclass): why the container did not start.
    """
    return spawn_request(path, {"cmd": "spawn", "spec": spec.to_json()})
