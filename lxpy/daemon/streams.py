"""Console and exec for running containers: lxpyd's side of the framed stream.

Both are set up before the `101` (so a refusal is an ordinary HTTP error:
a second console is `busy`, an unknown user is `not_found`), then relayed:

* console: the monitor hands over the console pty master (`attach`) and
  stops logging it while our connection to it stays open. We relay master
  <-> frames; closing our end gives the console back to the monitor's log.
* exec: we make the stdio (three pipes, or with a tty a socketpair on which
  the command's pty master comes back from inside the container) and send
  it to the monitor's `exec`, which forks the command into the container and
  later answers its exit status. If the client hangs up first, closing our
  monitor connection makes the monitor kill the command.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from lxpy.api.streams import (
    ERROR,
    EXIT,
    PROTOCOL,
    RESIZE,
    STDERR,
    STDIN,
    STDOUT,
    FrameDecoder,
    frame,
    json_frame,
    parse_json,
)
from lxpy.daemon.http import Request, Router, Upgrade
from lxpy.daemon.state import Daemon
from lxpy.errors import InvalidArgument, LxpyError
from lxpy.runtime.attach import ExecSpec
from lxpy.runtime.control import MonitorClient, check_reply

# How long the monitor may take to fork and exec the command.
EXEC_START_TIMEOUT = 30.0
# After the command ended, how long output still in flight is waited for.
# Output ends at once (EOF) unless a background child kept the pipe or the
# terminal open; such a child must not hold the answer for ever.
DRAIN_TIMEOUT = 2.0
CHUNK = 65536


def require_upgrade(req: Request) -> None:
    """Refuse a console or exec request that does not ask for the framed stream.

    Raises:
        InvalidArgument: without `Upgrade: lxpy-stream`.
    """
    if req.headers.get("upgrade", "").strip().lower() != PROTOCOL:
        raise InvalidArgument(
            f"this endpoint needs `Connection: Upgrade` and `Upgrade: {PROTOCOL}`",
            hint="use `lxpy console` or `lxpy exec`, or see docs/api.md",
        )


def _monitor_socket(d: Daemon, name: str) -> Path:
    d.table.require(name)
    run = d.running.get(name)
    if run is None:
        raise InvalidArgument(
            f"container {name!r} is not running", hint=f"start it with `lxpy start {name}`"
        )
    return run.socket


class _Frames:
    """Frames to the client, one at a time (several tasks send)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)


async def _client_frames(
    stream: trio.abc.Stream, early: bytes, handle: Callable[[int, bytes], Awaitable[None]]
) -> None:
    """Feed every frame the client sends to `handle` until it hangs up."""
    decoder = FrameDecoder()
    data = early
    while True:
        for kind, payload in decoder.feed(data):
            await handle(kind, payload)
        try:
            data = bytes(await stream.receive_some(CHUNK))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return


async def _pump(src: trio.lowlevel.FdStream, kind: int, out: _Frames) -> None:
    """Output of the container to `kind` frames, until EOF (EIO for a pty)."""
    while True:
        try:
            data = await src.receive_some(CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        try:
            await out.send(frame(kind, data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client is gone; whoever reads its end notices


def _set_size(fd: int, payload: bytes) -> None:
    size = parse_json(payload, "resize")
    width, height = size.get("width"), size.get("height")
    if isinstance(width, int) and isinstance(height, int) and 0 < width < 65536:
        if 0 < height < 65536:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


# -- console --------------------------------------------------------------------


async def open_console(d: Daemon, req: Request) -> Upgrade:
    """GET /1.0/containers/NAME/console: attach, then relay the console.

    Raises:
        NotFound, InvalidArgument (not running), Busy (someone is attached).
    """
    require_upgrade(req)
    path = _monitor_socket(d, req.params["name"])
    mon, master = await trio.to_thread.run_sync(lambda: MonitorClient(str(path)).attach(0))
    held = {"master": master}

    async def run(stream: trio.abc.Stream, early: bytes) -> None:
        pty = trio.lowlevel.FdStream(held.pop("master"))
        await _relay_console(stream, early, pty, mon)

    def close() -> None:
        if "master" in held:
            os.close(held.pop("master"))
        mon.close()

    return Upgrade(run, close)


async def _relay_console(
    stream: trio.abc.Stream, early: bytes, pty: trio.lowlevel.FdStream, mon: socket.socket
) -> None:
    out = _Frames(stream)
    monitor = trio.SocketStream(trio.socket.from_stdlib_socket(mon.dup()))

    async def handle(kind: int, payload: bytes) -> None:
        if kind == STDIN and payload:
            await pty.send_all(payload)
        elif kind == RESIZE:
            _set_size(pty.fileno(), payload)

    async def watch_monitor() -> None:
        # The monitor closes our attach connection only when it exits: the
        # container ended, and so does the console.
        try:
            while await monitor.receive_some(1024):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def until(fn: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        try:
            await fn()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            cs = nursery.cancel_scope
            nursery.start_soon(until, lambda: _client_frames(stream, early, handle), cs)
            nursery.start_soon(until, lambda: _pump(pty, STDOUT, out), cs)
            nursery.start_soon(until, watch_monitor, cs)
    finally:
        with trio.CancelScope(shield=True):
            await pty.aclose()
            await monitor.aclose()


# -- exec -----------------------------------------------------------------------


class _Exec:
    """One command started through the monitor, with our ends of its stdio."""

    def __init__(self, monitor: trio.SocketStream, spec: ExecSpec) -> None:
        self.monitor = monitor
        self.spec = spec
        self.buf = bytearray()
        self.stdin: trio.lowlevel.FdStream | None = None
        self.outputs: list[tuple[trio.lowlevel.FdStream, int]] = []
        self.pty: trio.lowlevel.FdStream | None = None

    async def line(self) -> dict[str, object] | None:
        """The monitor's next JSON line, or None when it hung up."""
        while b"\n" not in self.buf:
            try:
                chunk = await self.monitor.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        raw, _, rest = bytes(self.buf).partition(b"\n")
        self.buf[:] = rest
        value = json.loads(raw)
        return value if isinstance(value, dict) else {"ok": False, "error": {"message": raw}}

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for s in {id(s): s for s in self._streams()}.values():
                await s.aclose()
            await self.monitor.aclose()

    def _streams(self) -> list[trio.lowlevel.FdStream]:
        found = [s for s, _k in self.outputs]
        if self.stdin is not None:
            found.append(self.stdin)
        if self.pty is not None:
            found.append(self.pty)
        return found


async def open_exec(d: Daemon, req: Request) -> Upgrade:
    """POST /1.0/containers/NAME/exec: start the command, then relay its stdio.

    Raises:
        InvalidArgument: a bad body, or the container is not running.
        NotFound: the user or working directory does not exist in the container.
        Busy: the container is frozen or stopping.
    """
    require_upgrade(req)
    spec = ExecSpec.from_json(req.json())
    path = _monitor_socket(d, req.params["name"])
    try:
        with trio.fail_after(EXEC_START_TIMEOUT):
            ex = await _start(path, spec)
    except trio.TooSlowError:
        raise LxpyError(
            f"the container's monitor did not start the command within {EXEC_START_TIMEOUT:g} s",
            hint="the container may be overloaded or stuck; see `lxpy info`",
        ) from None
    done = trio.Event()

    async def run(stream: trio.abc.Stream, early: bytes) -> None:
        try:
            await _relay_exec(stream, early, ex)
        finally:
            await ex.close()
            done.set()

    def close() -> None:
        if not done.is_set():
            # The 101 never went out: drop the command (the monitor kills it
            # when our connection closes) and our ends of its stdio.
            for s in ex._streams():
                s.close()
            ex.monitor.socket.close()

    return Upgrade(run, close)


async def _start(path: Path, spec: ExecSpec) -> _Exec:
    ours: list[int] = []
    theirs: list[int] = []
    back: socket.socket | None = None
    try:
        if spec.tty:
            back, give = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            theirs.append(give.detach())
        else:
            # stdin: they read, we write; stdout, stderr: we read.
            for their_end_is_read in (True, False, False):
                r, w = os.pipe2(os.O_CLOEXEC)
                theirs.append(r if their_end_is_read else w)
                ours.append(w if their_end_is_read else r)
        try:
            monitor = await trio.open_unix_socket(str(path))
        except OSError as e:
            raise LxpyError(
                f"no monitor answers on {path}: {e.strerror or e}",
                hint="the container may have just stopped",
            ) from None
        ex = _Exec(monitor, spec)
        request = (json.dumps({"cmd": "exec", **spec.to_json()}) + "\n").encode()
        try:
            await monitor.socket.sendmsg(
                [request],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs).tobytes())],
            )
        finally:
            for fd in theirs:
                os.close(fd)
            theirs = []
        try:
            reply = await ex.line()
            if reply is None:
                raise LxpyError("the monitor hung up before starting the command")
            check_reply(reply)
            if back is not None:
                ex.pty = trio.lowlevel.FdStream(await _receive_fd(back))
                ex.outputs = [(ex.pty, STDOUT)]
            else:
                ex.stdin = trio.lowlevel.FdStream(ours[0])
                ex.outputs = [
                    (trio.lowlevel.FdStream(ours[1]), STDOUT),
                    (trio.lowlevel.FdStream(ours[2]), STDERR),
                ]
                ours = []
        except BaseException:
            with trio.CancelScope(shield=True):
                await ex.close()
            raise
        return ex
    finally:
        for fd in ours + theirs:
            os.close(fd)
        if back is not None:
            back.close()


async def _receive_fd(sock: socket.socket) -> int:
    """The pty master the command's child sent back from the container."""
    tsock = trio.socket.from_stdlib_socket(sock.dup())
    try:
        size = socket.CMSG_SPACE(array.array("i").itemsize)
        _data, ancdata, _flags, _addr = await tsock.recvmsg(16, size, socket.MSG_CMSG_CLOEXEC)
    finally:
        tsock.close()
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
            for extra in fds[1:]:
                os.close(extra)
            if fds:
                return fds[0]
    raise LxpyError("the command's terminal did not come back from the container")


async def _relay_exec(stream: trio.abc.Stream, early: bytes, ex: _Exec) -> None:
    out = _Frames(stream)
    stdin = ex.pty or ex.stdin
    assert stdin is not None

    async def handle(kind: int, payload: bytes) -> None:
        nonlocal stdin
        if kind == STDIN and stdin is not None:
            if payload:
                try:
                    await stdin.send_all(payload)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    stdin = None  # the command closed its input; drop the rest
            elif ex.pty is not None:
                # End of input on a terminal is the EOF character.
                await stdin.send_all(b"\x04")
            else:
                await stdin.aclose()
                stdin = None
        elif kind == RESIZE and ex.pty is not None:
            _set_size(ex.pty.fileno(), payload)

    async def from_client(scope: trio.CancelScope) -> None:
        await _client_frames(stream, early, handle)
        # The client hung up: nothing more to do here; closing our monitor
        # connection then makes the monitor kill the command.
        scope.cancel()

    async def pump(src: trio.lowlevel.FdStream, kind: int, finished: trio.Event) -> None:
        try:
            await _pump(src, kind, out)
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(from_client, nursery.cancel_scope)
        drained = []
        for src, kind in ex.outputs:
            finished = trio.Event()
            drained.append(finished)
            nursery.start_soon(pump, src, kind, finished)
        event = await ex.line()
        with trio.move_on_after(DRAIN_TIMEOUT):
            for finished in drained:
                await finished.wait()
        if event is not None and event.get("event") == "exit":
            last = json_frame(EXIT, {"code": event.get("code")})
        else:
            err = LxpyError(
                "the container's monitor went away before the command ended",
                hint="the container stopped",
            )
            last = json_frame(ERROR, err.to_json())
        try:
            await out.send(last)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is gone
        nursery.cancel_scope.cancel()


# -- routes ---------------------------------------------------------------------

EXEC_BODY: dict[str, object] = {
    "type": "object",
    "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cwd": {"type": "string", "description": "default: the user's home, else /"},
        "user": {"type": "string", "description": "name or uid in the container; default root"},
        "tty": {"type": "boolean", "default": False},
        "width": {"type": "integer", "default": 80},
        "height": {"type": "integer", "default": 24},
    },
    "required": ["command"],
}
FRAMED: dict[str, object] = {
    "type": "string",
    "description": "after 101 (Upgrade: lxpy-stream), the framed stream of docs/api.md",
}


def add_stream_routes(r: Router, d: Daemon) -> None:
    """GET .../console and POST .../exec: upgrades to the framed stream."""
    C = "/1.0/containers/{name}"

    async def console(req: Request) -> object:
        return await open_console(d, req)

    async def exec_(req: Request) -> object:
        return await open_exec(d, req)

    r.add(
        "GET",
        C + "/console",
        console,
        "Attach to the console (Upgrade: lxpy-stream; one client at a time)",
        status=101,
        response=FRAMED,
    )
    r.add(
        "POST",
        C + "/exec",
        exec_,
        "Run a command in a running container (Upgrade: lxpy-stream)",
        status=101,
        body=EXEC_BODY,
        response=FRAMED,
    )
