"""The framed stream of console and exec (docs/api.md), client side.

After `101 Switching Protocols` both sides send frames: one byte of type,
four bytes of payload length (big endian), the payload. This module holds
the codec (lxpyd uses it too: it is the wire format, stdlib only), the
upgrade handshake on a plain socket, and what `lxpy console` and `lxpy
exec` do with the local terminal: raw mode (restored on every way out),
stdin to stdin frames, output frames to stdout and stderr, SIGWINCH to
resize frames, and for the console the `Ctrl-a q` escape.

One poll() loop with a non-blocking socket and an outgoing buffer: stdin is
read only while the buffer is drained, so a command that floods its output
while we feed it input (`cat` of a large file) cannot deadlock the two
directions against each other.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import sys

from lxpy.api import wire
from lxpy.api.calls import container_path
from lxpy.api.client import encode_request, lost, parse_status_line
from lxpy.errors import DaemonUnavailable, InvalidArgument, LxpyError, from_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator
    from typing import Any

    from lxpy.api.client import Client

STDIN, STDOUT, STDERR, EXIT, RESIZE, ERROR = range(6)
FRAME_NAMES = ("stdin", "stdout", "stderr", "exit", "resize", "error")
PROTOCOL = "lxpy-stream"
HEADER = struct.Struct(">BI")
# A frame larger than this is a broken peer, not data: refuse it rather
# than buffer it.
MAX_PAYLOAD = 16 * 1024 * 1024
# What one read from stdin or the terminal sends as one frame.
CHUNK = 65536

CTRL_A = 0x01
DETACH_HINT = "type Ctrl-a q to detach"


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame on the wire."""
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: int, obj: object) -> bytes:
    return frame(kind, wire.dumps(obj).encode())


class FrameDecoder:
    """Turns received bytes into (type, payload) frames, whatever their split."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Add `data`; yield every frame now complete.

        Raises:
            InvalidArgument: for an unknown frame type or an oversized frame.
        """
        self._buf += data
        while len(self._buf) >= HEADER.size:
            kind, size = HEADER.unpack_from(self._buf)
            if kind >= len(FRAME_NAMES):
                raise InvalidArgument(f"unknown frame type {kind}")
            if size > MAX_PAYLOAD:
                raise InvalidArgument(f"frame of {size} bytes exceeds {MAX_PAYLOAD}")
            end = HEADER.size + size
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            yield kind, payload

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def parse_json(payload: bytes, what: str) -> dict[str, object]:
    """The JSON object of an exit, resize or error frame.

    Raises:
        InvalidArgument: when the payload is not a JSON object.
    """
    try:
        data = wire.loads(payload)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what} frame is not a JSON object: {payload[:80]!r}")
    return data


# -- the upgrade handshake ------------------------------------------------------


def open_stream(client: Client, method: str, path: str, body: object = None) -> tuple[Any, bytes]:
    """Ask lxpyd to upgrade `method path` to a framed stream.

    Returns:
        The connected socket (blocking, no timeout) and the bytes received
        after the 101 head (the start of the first frames, if any).

    Raises:
        LxpyError: the error the daemon answered instead of 101.
        DaemonUnavailable: when the daemon cannot be reached or hangs up.
    """
    request = encode_request(method, path, body, upgrade=PROTOCOL)
    sock = client._connect()
    try:
        sock.settimeout(client.timeout if client.timeout is not None else 60)
        sock.sendall(request)
        status, headers, rest = _read_head(sock, client.socket_path)
        if status != 101:
            raise _error_answer(sock, status, headers, rest, client.socket_path)
        sock.settimeout(None)
        return sock, rest
    except TimeoutError:
        sock.close()
        raise DaemonUnavailable(f"lxpyd at {client.socket_path} did not answer in time") from None
    except OSError as e:
        sock.close()
        raise lost(client.socket_path, e.strerror or str(e)) from None
    except BaseException:
        sock.close()
        raise


def _read_head(sock: Any, where: str) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise lost(where, "no answer")
        buf += chunk
        if len(buf) > 1 << 20:
            raise lost(where, "answer head too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    first, *lines = head.split(b"\r\n")
    status, _reason = parse_status_line(first, where)
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _error_answer(
    sock: Any, status: int, headers: dict[str, str], body: bytes, where: str
) -> LxpyError:
    try:
        want = int(headers.get("content-length", "0"))
    except ValueError:
        want = 0
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    try:
        data = wire.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return from_json(data["error"])
    return LxpyError(f"lxpyd at {where} answered {status} instead of switching protocols")


# -- the local terminal -----------------------------------------------------------


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(width, height) of the terminal on `fd`, or None when it is not one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    # A new pty reports 0x0 until someone sets it: that is "unknown".
    if not size.columns or not size.lines:
        return None
    return size.columns, size.lines


class RawTerminal:
    """Context manager: the terminal on `fd` in raw mode, restored on exit.

    Does nothing when `fd` is not a terminal.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> RawTerminal:
        import termios
        import tty

        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        if self._saved is not None:
            # TCSADRAIN: what we wrote last reaches the screen in the mode it
            # was written for.
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class _Winch:
    """SIGWINCH as a readable fd for the poll loop (restored on close)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self._old = signal.signal(signal.SIGWINCH, lambda *_: None)

    def drain(self) -> bool:
        """Whether SIGWINCH arrived since the last call."""
        try:
            data = os.read(self.r, 512)
        except BlockingIOError:
            return False
        return bytes([signal.SIGWINCH]) in data

    def close(self) -> None:
        signal.signal(signal.SIGWINCH, self._old)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self.r)
        os.close(self.w)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


class Escape:
    """lxc-console's escape: Ctrl-a q detaches, Ctrl-a Ctrl-a is a literal Ctrl-a.

    Ctrl-a followed by any other key sends both.
    """

    def __init__(self) -> None:
        self.pending = False
        self.detached = False

    def filter(self, data: bytes) -> bytes:
        """What of the typed `data` goes to the console (sets `detached`)."""
        out = bytearray()
        for byte in data:
            if self.pending:
                self.pending = False
                if byte in (ord("q"), ord("Q")):
                    self.detached = True
                    break
                if byte != CTRL_A:
                    out.append(CTRL_A)
                out.append(byte)
            elif byte == CTRL_A:
                self.pending = True
            else:
                out.append(byte)
        return bytes(out)


class Session:
    """Relays between the local stdio and one framed stream until it ends.

    Args:
        sock: the upgraded connection.
        early: bytes already received after the 101 head.
        stdin: the fd to read input from (None: send no input).
        escape: the console's Ctrl-a escape, or None.
        resize_fd: a terminal whose size changes are sent as resize frames.
    """

    def __init__(
        self,
        sock: Any,
        early: bytes,
        stdin: int | None,
        escape: Escape | None = None,
        resize_fd: int | None = None,
    ) -> None:
        self.sock = sock
        self.early = early
        self.stdin = stdin
        self.escape = escape
        self.resize_fd = resize_fd
        self.out = bytearray()
        self.exit_code: int | None = None
        self.error: LxpyError | None = None
        self.closed = False
        self.on_output: Callable[[int, bytes], None] = self._output

    @staticmethod
    def _output(kind: int, data: bytes) -> None:
        _write_all(1 if kind == STDOUT else 2, data)

    def send(self, data: bytes) -> None:
        self.out += data

    def send_resize(self) -> None:
        if self.resize_fd is not None and (size := terminal_size(self.resize_fd)):
            self.send(json_frame(RESIZE, {"width": size[0], "height": size[1]}))

    def _on_frames(self, decoder: FrameDecoder, data: bytes) -> None:
        for kind, payload in decoder.feed(data):
            if kind in (STDOUT, STDERR):
                self.on_output(kind, payload)
            elif kind == EXIT:
                code = parse_json(payload, "exit").get("code")
                self.exit_code = code if isinstance(code, int) else 255
            elif kind == ERROR:
                self.error = from_json(parse_json(payload, "error"))

    def _read_stdin(self) -> None:
        assert self.stdin is not None
        try:
            data = os.read(self.stdin, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a hung-up terminal is the end of input
        if not data:
            self.stdin = None
            if self.escape is not None:
                # The console's input ran out (a script piped into it): that
                # is a detach, or we would hang on its output for ever.
                self.escape.detached = True
                return
            self.send(frame(STDIN, b""))
            return
        if self.escape is not None:
            data = self.escape.filter(data)
        if data:
            self.send(frame(STDIN, data))

    def run(self) -> None:
        """Relay until the daemon ends the stream, or the user detaches."""
        decoder = FrameDecoder()
        self._on_frames(decoder, self.early)
        winch = _Winch() if self.resize_fd is not None else None
        self.sock.setblocking(False)
        try:
            while not self._over():
                poller = select.poll()
                sock_events = select.POLLIN | (select.POLLOUT if self.out else 0)
                poller.register(self.sock, sock_events)
                # Input is read only when what we have is on its way: the
                # daemon's pace throttles us, never the other way round.
                if self.stdin is not None and not self.out:
                    poller.register(self.stdin, select.POLLIN)
                if winch is not None:
                    poller.register(winch.r, select.POLLIN)
                for fd, ev in poller.poll():
                    if fd == self.sock.fileno():
                        if ev & select.POLLOUT and self.out:
                            self._flush()
                        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                            self._receive(decoder)
                    elif winch is not None and fd == winch.r:
                        if winch.drain():
                            self.send_resize()
                    elif fd == self.stdin:
                        self._read_stdin()
        finally:
            if winch is not None:
                winch.close()
            self.sock.close()

    def _over(self) -> bool:
        if self.closed or self.exit_code is not None or self.error is not None:
            return True
        return self.escape is not None and self.escape.detached

    def _flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            # The daemon is gone; what it said last is still to be read.
            self.out.clear()
            return
        del self.out[:n]

    def _receive(self, decoder: FrameDecoder) -> None:
        try:
            data = self.sock.recv(CHUNK * 4)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self._on_frames(decoder, data)


# -- the CLI commands ---------------------------------------------------------------


def interactive_console(client: Client, args: argparse.Namespace) -> int:
    """`lxpy console NAME`: attach the local terminal to the container's console.

    Returns:
        0 after a detach (Ctrl-a q), 1 when the daemon ended the console.

    Raises:
        LxpyError: when the console cannot be attached (not running, busy).
    """
    sock, early = open_stream(client, "GET", container_path(args.name) + "/console")
    interactive = os.isatty(0)
    print(f"Connected to the console of {args.name}; {DETACH_HINT}", file=sys.stderr)
    session = Session(sock, early, 0, Escape(), resize_fd=0 if interactive else None)
    # The console pty has its own size; make it ours from the start.
    session.send_resize()
    with RawTerminal(0):
        session.run()
    if session.error is not None:
        raise session.error
    if session.escape is not None and session.escape.detached:
        print(f"\r\nDetached from the console of {args.name}.", file=sys.stderr)
        return 0
    print(f"\r\nThe console of {args.name} was closed by lxpyd.", file=sys.stderr)
    return 1


def exec_request(args: argparse.Namespace, tty: bool) -> dict[str, object]:
    """The body of POST .../exec for `lxpy exec` arguments.

    Raises:
        InvalidArgument: for an --env without `=`, or no command.
    """
    env: dict[str, str] = {}
    if tty:
        # The local terminal's type is the one thing of our environment the
        # command needs to draw on it.
        env["TERM"] = os.environ.get("TERM") or "xterm"
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--env: expected KEY=VALUE, got {item!r}")
        env[key] = value
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidArgument(
            "no command given", hint="put the command after --: lxpy exec NAME -- sh -l"
        )
    body: dict[str, object] = {"command": command, "env": env, "tty": tty}
    if args.cwd:
        body["cwd"] = args.cwd
    if args.user:
        body["user"] = args.user
    if tty and (size := terminal_size(0) or terminal_size(1)):
        body["width"], body["height"] = size
    return body


def run_exec(client: Client, args: argparse.Namespace) -> int:
    """`lxpy exec NAME [-t|-T] ... -- CMD ...`: the command's exit status.

    Raises:
        LxpyError: when the command cannot be started, or the stream breaks.
    """
    tty = args.tty if args.tty is not None else os.isatty(0)
    body = exec_request(args, tty)
    sock, early = open_stream(client, "POST", container_path(args.name) + "/exec", body)
    interactive = tty and os.isatty(0)
    session = Session(sock, early, 0, resize_fd=0 if interactive else None)
    with RawTerminal(0) if interactive else contextlib.nullcontext():
        session.run()
    if session.error is not None:
        raise session.error
    if session.exit_code is None:
        raise LxpyError(
            "the connection to lxpyd ended before the command's exit status came",
            hint="the container may have stopped, or lxpyd was restarted",
        )
    return session.exit_code
