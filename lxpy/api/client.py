"""Synchronous client of lxpyd's HTTP/JSON API (docs/api.md) for the CLI.

Its API methods (`start_container`, `images`, ...) come from
lxpy.api.calls, which the asyncio client shares; this module is the
transport, and the HTTP/1.1 encoding and answer parsing both clients use.

It speaks just enough HTTP/1.1 over a unix socket: one connection per
request (`Connection: close`), bodies framed by Content-Length, chunked
transfer coding or the end of the connection. http.client is not used
because its import alone costs about 25 ms, and `lxpy list` must start, ask
and print in well under 150 ms; the socket and JSON come from lxpy.api.wire
for the same reason.
"""

from __future__ import annotations

import errno
import os
import sys

from lxpy.api import wire
from lxpy.api.calls import Call, Calls, query_string
from lxpy.errors import DaemonUnavailable, LxpyError, from_json

# typing costs import time the CLI does not need at run time: the
# annotations are strings (see the __future__ import) that only mypy reads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import Any, TypeVar

    from lxpy.api.calls import Object

    T = TypeVar("T")

# Same default as lxpy.model.paths.DEFAULT_SOCKET, spelled out here so the
# CLI does not import the daemon-side settings parser (and tomllib) to start.
DEFAULT_SOCKET = "/run/lxpy/lxpy.sock"
SOCKET_ENV = "LXPY_SOCKET"

# Where `lxpyd --daemon` logs unless told otherwise (lxpy.daemon.background).
DAEMON_LOG = "/var/log/lxpy/lxpyd.log"
PERMISSION_HINT = (
    "an administrator adds you to group `lxpy-user` (your own unprivileged containers: "
    "`adduser $USER lxpy-user`) or `lxpy` (root-equivalent), then you log in again; "
    "or run as root"
)
LOST_HINT = (
    f"the daemon may have stopped; check its log (`journalctl -u lxpy`, or {DAEMON_LOG} "
    "when it runs with --daemon)"
)

# Bounds on what the daemon may send in a status line and headers, so a
# confused peer cannot make the client buffer without end.
_MAX_LINE = 65536
_MAX_HEADERS = 100


def resolve_socket(path: str | os.PathLike[str] | None = None) -> str:
    """The socket to use: `path`, else $LXPY_SOCKET, else the default."""
    if path:
        return os.fspath(path)
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def encode_request(
    method: str,
    path: str,
    body: object = None,
    query: Mapping[str, object] | None = None,
    upgrade: str = "",
) -> bytes:
    """One HTTP/1.1 request to lxpyd, as bytes (both clients send these);
    with `upgrade`, one asking to switch to that protocol (lxpy.api.streams)."""
    payload = b"" if body is None else wire.dumps(body).encode()
    head = [
        f"{method} {path}{query_string(query)} HTTP/1.1",
        "Host: lxpyd",
        *(("Connection: Upgrade", f"Upgrade: {upgrade}") if upgrade else ("Connection: close",)),
        "Accept: application/json",
    ]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


# -- reading a response, whatever reads the bytes (both clients use these) ---


def lost(where: str, what: str) -> DaemonUnavailable:
    return DaemonUnavailable(f"lost connection to lxpyd at {where}: {what}", LOST_HINT)


def unreachable(where: str, e: OSError) -> DaemonUnavailable:
    """The error for a failed connect to the socket at `where`."""
    msg = f"cannot reach lxpyd at {where}: {e.strerror or e}"
    denied = e.errno in (errno.EACCES, errno.EPERM)
    return DaemonUnavailable(msg, hint=PERMISSION_HINT if denied else start_hint(where))


def start_hint(where: str) -> str:
    """How to start a daemon that serves `where`, in the background."""
    daemon = f"{_lxpyd()} --daemon"
    if where != DEFAULT_SOCKET:
        return (
            f"start it in the background with `{daemon} --socket {where}` "
            f"(log: {DAEMON_LOG}), or point --socket/LXPY_SOCKET at a running daemon"
        )
    return (
        f"start it: `systemctl start lxpy` where the package is installed, else `{daemon}` "
        f"(it goes to the background; log: {DAEMON_LOG}); "
        "or point --socket/LXPY_SOCKET at a running daemon"
    )


def _lxpyd() -> str:
    # The lxpyd beside the running program (a checkout's .venv/bin/) when
    # that is not the one on PATH: the command the user can paste.
    here = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0] or ".")), "lxpyd")
    if not os.access(here, os.X_OK):
        return "lxpyd"
    import shutil  # only on this error path

    found = shutil.which("lxpyd")
    if found is not None and os.path.realpath(found) == os.path.realpath(here):
        return "lxpyd"
    return here


def timed_out(where: str, timeout: float | None) -> DaemonUnavailable:
    return DaemonUnavailable(f"lxpyd at {where} did not answer within {timeout} s", LOST_HINT)


def parse_status_line(line: bytes, where: str) -> tuple[int, str]:
    """(status, reason) of an HTTP status line.

    Raises:
        DaemonUnavailable: no line (the peer hung up), or not HTTP.
    """
    if not line:
        raise lost(where, "no answer")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise lost(where, f"not an HTTP answer: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


def parse_header_line(line: bytes, where: str) -> tuple[str, str] | None:
    """(lower-cased name, value) of a header line; None for the blank line
    ending the headers.

    Raises:
        DaemonUnavailable: the peer hung up inside the headers, or a bad line.
    """
    if line in (b"\r\n", b"\n"):
        return None
    if not line:
        raise lost(where, "connection closed inside the headers")
    name, sep, value = line.decode("latin-1").partition(":")
    if not sep:
        raise lost(where, f"malformed header {line[:80]!r}")
    return name.strip().lower(), value.strip()


def body_length(headers: Mapping[str, str], where: str) -> int | None:
    """How the body is framed: -1 chunked, N bytes (Content-Length), or
    None when it ends with the connection."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return -1
    if "content-length" not in headers:
        return None
    try:
        return int(headers["content-length"])
    except ValueError:
        raise lost(where, "bad Content-Length") from None


def parse_chunk_size(line: bytes, where: str) -> int:
    """The size on a chunk-size line (0: the last chunk)."""
    if not line:
        raise lost(where, "connection closed inside a chunked body")
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise lost(where, f"bad chunk size line {line[:80]!r}") from None


def decode_json(body: bytes, where: str) -> Any:
    """A body parsed as JSON (None for an empty body)."""
    if not body.strip():
        return None
    try:
        return wire.loads(body)
    except ValueError:
        raise LxpyError(f"lxpyd at {where} sent a body that is not JSON: {body[:80]!r}") from None


def response_error(status: int, reason: str, body: bytes, where: str) -> LxpyError:
    """The error a 4xx/5xx response carries."""
    try:
        data = decode_json(body, where)
    except LxpyError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return from_json(data["error"])
    return LxpyError(f"lxpyd answered {status} {reason}".rstrip())


class LineDecoder:
    """The JSON objects of an NDJSON stream, whatever its split into chunks."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._pending = b""

    def feed(self, chunk: bytes) -> list[Any]:
        """Add `chunk`; the objects of every line now complete.

        Raises:
            LxpyError: for a line that is not JSON.
        """
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        return [self._decode(line) for line in lines if line.strip()]

    def end(self) -> list[Any]:
        """The object of a last line the stream did not end with a newline."""
        line, self._pending = self._pending, b""
        return [self._decode(line)] if line.strip() else []

    def _decode(self, line: bytes) -> Any:
        try:
            return wire.loads(line)
        except ValueError:
            raise LxpyError(
                f"lxpyd at {self._where} sent a stream line that is not JSON: {line[:80]!r}"
            ) from None


class _Reader:
    """Buffered reads from a socket: what Response reads of a file."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        self._buf += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readline(self, limit: int) -> bytes:
        """Up to and with the next newline, at most `limit` bytes (fewer at EOF)."""
        while (end := self._buf.find(b"\n", 0, limit)) < 0:
            if len(self._buf) >= limit or not self._fill():
                return self._take(limit)
        return self._take(end + 1)

    def read1(self, n: int) -> bytes:
        """At most `n` bytes, with at most one read from the socket (b"" at EOF)."""
        if not self._buf:
            return self._sock.recv(n)
        return self._take(n)

    def read(self, n: int) -> bytes:
        """`n` bytes, fewer only at EOF."""
        while len(self._buf) < n and self._fill():
            pass
        return self._take(n)

    def close(self) -> None:
        self._buf.clear()


class Response:
    """A response whose body is read as it arrives."""

    def __init__(self, sock: Any, rfile: _Reader, where: str) -> None:
        self._sock = sock
        self._rfile = rfile
        self._where = where
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._read_head()

    def _line(self) -> bytes:
        try:
            line = self._rfile.readline(_MAX_LINE + 1)
        except OSError as e:
            raise lost(self._where, e.strerror or str(e)) from None
        if len(line) > _MAX_LINE:
            raise lost(self._where, "header line too long")
        return line

    def _read_head(self) -> None:
        self.status, self.reason = parse_status_line(self._line(), self._where)
        for _ in range(_MAX_HEADERS):
            header = parse_header_line(self._line(), self._where)
            if header is None:
                return
            self.headers[header[0]] = header[1]
        raise lost(self._where, "too many headers")

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces as they arrive, whatever its framing."""
        left = body_length(self.headers, self._where)
        try:
            if left == -1:
                yield from self._chunked()
            elif left is not None:
                while left > 0:
                    data = self._rfile.read1(min(left, 65536))
                    if not data:
                        raise lost(self._where, "body shorter than its Content-Length")
                    left -= len(data)
                    yield data
            else:
                # HTTP/1.0 style: the body ends with the connection.
                while data := self._rfile.read1(65536):
                    yield data
        except OSError as e:
            raise lost(self._where, e.strerror or str(e)) from None

    def _chunked(self) -> Iterator[bytes]:
        while size := parse_chunk_size(self._line(), self._where):
            data = self._rfile.read(size)
            if len(data) < size:
                raise lost(self._where, "connection closed inside a chunk")
            self._line()  # the CRLF after the chunk data
            yield data
        # Trailers (ignored) up to the blank line ending the body.
        while self._line() not in (b"\r\n", b"\n", b""):
            pass

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks())

    def json(self) -> Any:
        """The body parsed as JSON (None for an empty body)."""
        return decode_json(self.read(), self._where)

    def error(self) -> LxpyError:
        """The error this (4xx/5xx) response carries."""
        try:
            body = self.read()
        except LxpyError:
            body = b""
        return response_error(self.status, self.reason, body, self._where)

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


class Client(Calls):
    """A connection-per-request client of lxpyd. Its API methods come from
    lxpy.api.calls.Calls.

    Args:
        socket_path: the daemon's socket; None for $LXPY_SOCKET or the default.
        timeout: seconds to wait for the daemon on each request; None waits
            as long as it takes (a create may wait for a template build).
    """

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, timeout: float | None = None
    ) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout

    # -- transport ---------------------------------------------------------

    def _connect(self) -> Any:
        sock = wire.unix_stream()
        # A live daemon accepts at once; only the answer may take long.
        sock.settimeout(10 if self.timeout is None else self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            raise unreachable(self.socket_path, e) from None
        sock.settimeout(self.timeout)
        return sock

    def open(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
    ) -> Response:
        """Send one request and return the response once its head is read.

        The caller reads the body and closes the response.

        Raises:
            DaemonUnavailable: when the daemon cannot be reached or hangs up.
        """
        data = encode_request(method, path, body, query)
        sock = self._connect()
        try:
            sock.sendall(data)
            return Response(sock, _Reader(sock), self.socket_path)
        except TimeoutError:
            sock.close()
            raise timed_out(self.socket_path, self.timeout) from None
        except OSError as e:
            sock.close()
            raise lost(self.socket_path, e.strerror or str(e)) from None
        except BaseException:
            sock.close()
            raise

    def run(self, call: Call[T]) -> T:
        """Send `call` and read its answer (JSON, or text for a text call).

        Raises:
            LxpyError: the subclass the daemon's error code names.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        resp = self.open(call.method, call.path, call.body, call.query)
        try:
            if resp.status >= 400:
                raise resp.error()
            # The call's T says what its answer is: text or JSON.
            answer: Any = resp.read().decode("utf-8", "replace") if call.text else resp.json()
            return answer
        finally:
            resp.close()

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
    ) -> Any:
        """One call the API methods do not name: the parsed JSON answer.

        Args:
            method: HTTP method.
            path: absolute path under /1.0 (segments already quoted).
            body: JSON-able request body, or None.
            query: query parameters; True is sent as 1, None/False are left out.

        Raises:
            LxpyError: the subclass the daemon's error code names.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        return self.run(Call(method, path, body, query))

    def stream(self, call: Call[Object]) -> Iterator[Object]:
        """The JSON objects of the NDJSON stream `call` opens, each as soon as
        its line arrives. The connection closes when the iterator is
        exhausted or closed.

        Raises:
            LxpyError: for an error answer or a line that is not JSON.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        resp = self.open(call.method, call.path, call.body, call.query)
        try:
            if resp.status >= 400:
                raise resp.error()
            lines = LineDecoder(self.socket_path)
            for chunk in resp.chunks():
                yield from lines.feed(chunk)
            yield from lines.end()
        finally:
            resp.close()

    # -- the backup stream (docs/backup.md) ---------------------------------

    def export_container(
        self,
        name: str,
        write: Callable[[bytes], object],
        instance_only: bool = False,
        optimized: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Object:
        """The backup file of container `name`, a piece at a time to `write`;
        lxpyd's summary (size, snapshots). `progress` is told the bytes
        moved so far.

        Raises:
            LxpyError: what lxpyd refused or what failed, in its words.
            DaemonUnavailable: lost the connection before the end.
        """
        from lxpy.api import transfer

        return transfer.export(self, name, write, instance_only, optimized, progress)

    def import_container(
        self,
        chunks: Iterable[bytes],
        name: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Object:
        """Make a container of the backup file given as `chunks` (named
        `name`, else as in it); the container. `progress` is told the bytes
        moved so far.

        Raises:
            LxpyError: what lxpyd refused (a name in use, a damaged file), in
                its words; nothing was made.
            DaemonUnavailable: lost the connection before the answer.
        """
        from lxpy.api import transfer

        return transfer.import_(self, chunks, name, progress)
