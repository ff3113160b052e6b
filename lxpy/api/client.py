"""Synchronous client of lxpyd's HTTP/JSON API (docs/api.md) for the CLI.

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
from lxpy.errors import DaemonUnavailable, InvalidArgument, LxpyError, from_json

# typing costs import time the CLI does not need at run time: the
# annotations are strings (see the __future__ import) that only mypy reads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import IO, Any

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
# RFC 3986 unreserved characters minus '.', so that a name such as '..'
# reaches the daemon as a name to reject, never as a path step.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")


def resolve_socket(path: str | os.PathLike[str] | None = None) -> str:
    """The socket to use: `path`, else $LXPY_SOCKET, else the default."""
    if path:
        return os.fspath(path)
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def quote(segment: str, what: str = "name") -> str:
    """Percent-encode one path segment.

    Raises:
        InvalidArgument: for an empty segment, which would change the path's meaning.
    """
    if not segment:
        raise InvalidArgument(f"{what} must not be empty")
    return "".join(
        chr(b) if b in _SAFE else f"%{b:02X}" for b in segment.encode("utf-8", "surrogateescape")
    )


def _query_string(query: Mapping[str, object] | None) -> str:
    if not query:
        return ""
    parts = []
    for key, value in query.items():
        if value is None or value is False:
            continue
        text = "1" if value is True else str(value)
        parts.append(f"{quote(key)}={quote(text) if text else ''}")
    return "?" + "&".join(parts) if parts else ""


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
        f"{method} {path}{_query_string(query)} HTTP/1.1",
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


class Client:
    """A connection-per-request client of lxpyd.

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

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
    ) -> Any:
        """One API call: the parsed JSON answer.

        Args:
            method: HTTP method.
            path: absolute path under /1.0 (segments already quoted).
            body: JSON-able request body, or None.
            query: query parameters; True is sent as 1, None/False are left out.

        Raises:
            LxpyError: the subclass the daemon's error code names.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        resp = self.open(method, path, body, query)
        try:
            if resp.status >= 400:
                raise resp.error()
            return resp.json()
        finally:
            resp.close()

    def stream(self, path: str, query: Mapping[str, object] | None = None) -> Iterator[Any]:
        """The JSON objects of an NDJSON stream, each as soon as its line arrives.

        The connection closes when the iterator is exhausted or closed.

        Raises:
            LxpyError: for an error answer or a line that is not JSON.
            DaemonUnavailable: when the daemon cannot be reached.
        """
        resp = self.open("GET", path, None, query)
        try:
            if resp.status >= 400:
                raise resp.error()
            pending = b""
            for chunk in resp.chunks():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield self._decode_line(line)
            if pending.strip():
                yield self._decode_line(pending)
        finally:
            resp.close()

    def _decode_line(self, line: bytes) -> Any:
        try:
            return wire.loads(line)
        except ValueError:
            raise LxpyError(
                f"lxpyd at {self.socket_path} sent a stream line that is not JSON: {line[:80]!r}"
            ) from None

    # -- endpoints (docs/api.md) ---------------------------------------------

    def server_info(self) -> dict[str, Any]:
        return self.request("GET", "/1.0")

    def templates(self) -> list[dict[str, Any]]:
        return self.request("GET", "/1.0/templates")

    def template(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/1.0/templates/{quote(name, 'template name')}")

    # -- images and remotes -------------------------------------------------
    def remotes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/1.0/remotes")

    def add_remote(self, name: str, url: str, protocol: str = "simplestreams") -> dict[str, Any]:
        body = {"name": name, "url": url, "protocol": protocol}
        return self.request("POST", "/1.0/remotes", body)

    def remove_remote(self, name: str) -> None:
        self.request("DELETE", f"/1.0/remotes/{quote(name, 'remote name')}")

    def remote_images(
        self, remote: str, filter: str = "", refresh: bool = False
    ) -> list[dict[str, Any]]:
        path = f"/1.0/remotes/{quote(remote, 'remote name')}/images"
        query = {"filter": filter, "refresh": refresh}
        return self.request("GET", path, query=query)

    def images(self) -> list[dict[str, Any]]:
        return self.request("GET", "/1.0/images")

    def image(self, ref: str) -> dict[str, Any]:
        return self.request("GET", image_path(ref))

    def delete_image(self, ref: str) -> None:
        self.request("DELETE", image_path(ref))

    def update_image_aliases(
        self, ref: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"add_aliases": list(add or ()), "remove_aliases": list(remove or ())}
        return self.request("PATCH", image_path(ref), body)

    def pull_image(self, image: str) -> dict[str, Any]:
        """Start downloading REMOTE:ALIAS: the operation (`success` when cached)."""
        return self.request("POST", "/1.0/images/pull", {"image": image})

    def publish(
        self,
        container: str,
        snapshot: str | None = None,
        aliases: list[str] | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        body = {
            "container": container,
            "snapshot": snapshot,
            "aliases": list(aliases or ()),
            "description": description,
        }
        return self.request("POST", "/1.0/images", body)

    def build_template(self, name: str, refresh: bool = False) -> dict[str, Any]:
        """Start a template build: the operation (already `success` when cached).
        `refresh` builds afresh from the mirror (current packages), even when
        the template is up to date and its build is cached."""
        path = f"/1.0/templates/{quote(name, 'template name')}/build"
        return self.request("POST", path, {"refresh": refresh})

    def delete_template(self, name: str) -> None:
        self.request("DELETE", f"/1.0/templates/{quote(name, 'template name')}")

    def containers(self, stats: bool = False) -> list[dict[str, Any]]:
        """Every container; with `stats`, the running ones' resource use."""
        return self.request("GET", "/1.0/containers", query={"stats": stats})

    def container(self, name: str) -> dict[str, Any]:
        return self.request("GET", _ct(name))

    def create_container(
        self,
        name: str,
        template: str | None,
        config: Mapping[str, object] | None = None,
        image: str | None = None,
    ) -> dict[str, Any]:
        """Create from `template`, or from `image` (REMOTE:ALIAS, an alias,
        a fingerprint) when `template` is None."""
        body: dict[str, object] = {"name": name, "config": dict(config or {})}
        body.update({"template": template} if image is None else {"image": image})
        return self.request("POST", "/1.0/containers", body)

    def delete_container(self, name: str, force: bool = False) -> None:
        self.request("DELETE", _ct(name), query={"force": force})

    def start_container(
        self, name: str, wait: bool = False, wait_timeout: float | None = None
    ) -> dict[str, Any]:
        """Start `name`; with `wait`, return once it is ready (README, "Waiting
        for a container"), else once its init runs."""
        body = wait_fields(wait, wait_timeout)
        return self.request("POST", _ct(name) + "/start", body)

    def stop_container(
        self, name: str, timeout: float | None = None, force: bool = False
    ) -> dict[str, Any]:
        body: dict[str, object] = {"force": force}
        if timeout is not None:
            body["timeout"] = timeout
        return self.request("POST", _ct(name) + "/stop", body)

    def restart_container(
        self,
        name: str,
        timeout: float | None = None,
        wait: bool = False,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Stop `name` (`timeout`: as for stop_container) and start it again;
        `wait`: as for start_container."""
        body = wait_fields(wait, wait_timeout)
        if timeout is not None:
            body["timeout"] = timeout
        return self.request("POST", _ct(name) + "/restart", body)

    def container_stats(self, name: str) -> dict[str, Any] | None:
        """Resource use of a running container (None when it is not running)."""
        return self.request("GET", _ct(name) + "/stats")

    def stop_all(self, timeout: float | None = None) -> dict[str, Any]:
        """Stop every running container in boot.stop_priority order:
        `{"stopped": [...], "errors": {name: message}}`."""
        body = {} if timeout is None else {"timeout": timeout}
        return self.request("POST", "/1.0/containers/stop-all", body)

    def freeze_container(self, name: str) -> dict[str, Any]:
        return self.request("POST", _ct(name) + "/freeze")

    def unfreeze_container(self, name: str) -> dict[str, Any]:
        return self.request("POST", _ct(name) + "/unfreeze")

    def console_log(self, name: str) -> str:
        """The console output kept since boot (text)."""
        resp = self.open("GET", _ct(name) + "/console/log")
        try:
            if resp.status >= 400:
                raise resp.error()
            return resp.read().decode("utf-8", "replace")
        finally:
            resp.close()

    def update_config(
        self,
        name: str,
        set_: Mapping[str, object] | None = None,
        unset: list[str] | None = None,
    ) -> dict[str, Any]:
        body = {"set": dict(set_ or {}), "unset": list(unset or [])}
        return self.request("PATCH", _ct(name) + "/config", body)

    def rename_container(self, name: str, new: str) -> dict[str, Any]:
        return self.request("POST", _ct(name) + "/rename", {"name": new})

    def copy_container(self, source: str, dest: str, instance_only: bool = False) -> dict[str, Any]:
        body = {"name": dest, "instance_only": instance_only}
        return self.request("POST", _ct(source) + "/copy", body)

    def export_container(
        self,
        name: str,
        out: IO[bytes],
        instance_only: bool = False,
        optimized: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Write the backup file of container `name` to `out` (docs/backup.md)."""
        from lxpy.api import transfer

        return transfer.export(self, name, out, instance_only, optimized, progress)

    def import_container(
        self,
        src: IO[bytes],
        name: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Make a container of the backup file `src` (named `name`, else as in it)."""
        from lxpy.api import transfer

        return transfer.import_(self, src, name, progress)

    def snapshots(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", _ct(name) + "/snapshots")

    def create_snapshot(self, name: str, snapshot: str | None = None) -> dict[str, Any]:
        body = {} if snapshot is None else {"name": snapshot}
        return self.request("POST", _ct(name) + "/snapshots", body)

    def restore_snapshot(
        self, name: str, snapshot: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """Restore a container to a snapshot; a running one is stopped (killed
        after `timeout` s), restored and started again."""
        body = None if timeout is None else {"timeout": timeout}
        return self.request("POST", _snap(name, snapshot) + "/restore", body)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self.request("DELETE", _snap(name, snapshot))

    def devices(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", _ct(name) + "/devices")

    def device(self, name: str, device: str) -> dict[str, Any]:
        return self.request("GET", _dev(name, device))

    def add_device(
        self, name: str, device: str, type_: str, config: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Add a device; a running container gets it at once."""
        body = {"name": device, "type": type_, "config": dict(config or {})}
        return self.request("POST", _ct(name) + "/devices", body)

    def remove_device(self, name: str, device: str) -> None:
        self.request("DELETE", _dev(name, device))

    def volumes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/1.0/volumes")

    def volume(self, name: str) -> dict[str, Any]:
        return self.request("GET", _vol(name))

    def create_volume(self, name: str) -> dict[str, Any]:
        return self.request("POST", "/1.0/volumes", {"name": name})

    def delete_volume(self, name: str) -> None:
        self.request("DELETE", _vol(name))

    def operations(self) -> list[dict[str, Any]]:
        return self.request("GET", "/1.0/operations")

    def operation(self, op_id: str) -> dict[str, Any]:
        return self.request("GET", _op(op_id))

    def wait_operation(self, op_id: str, timeout: float | None = None) -> dict[str, Any]:
        query = None if timeout is None else {"timeout": timeout}
        return self.request("GET", _op(op_id) + "/wait", query=query)

    def operation_stream(self, op_id: str) -> Iterator[dict[str, Any]]:
        """`{"log": ...}`, `{"progress": ..., "stage": ...}`, then `{"operation": ...}`."""
        return self.stream(_op(op_id) + "/stream")

    def cancel_operation(self, op_id: str) -> None:
        self.request("DELETE", _op(op_id))

    def events(self, types: list[str] | None = None) -> Iterator[dict[str, Any]]:
        query = {"type": ",".join(types)} if types else None
        return self.stream("/1.0/events", query)

    def networks(self) -> list[dict[str, Any]]:
        return self.request("GET", "/1.0/networks")

    def network(self, name: str) -> dict[str, Any]:
        return self.request("GET", _net(name))

    def create_network(
        self, name: str, subnet: str | None = None, nat: bool = True
    ) -> dict[str, Any]:
        """Create a managed network; `subnet` None picks a free /24."""
        body: dict[str, object] = {"name": name, "nat": nat}
        if subnet is not None:
            body["subnet"] = subnet
        return self.request("POST", "/1.0/networks", body)

    def delete_network(self, name: str) -> None:
        self.request("DELETE", _net(name))


def wait_fields(wait: bool, wait_timeout: float | None) -> dict[str, object]:
    """The body fields of a start or restart that waits until the container
    is ready (`wait_timeout` None: the daemon's default)."""
    body: dict[str, object] = {"wait": True} if wait else {}
    if wait_timeout is not None:
        body["wait_timeout"] = wait_timeout
    return body


def _ct(name: str) -> str:
    return "/1.0/containers/" + quote(name, "container name")


def _snap(name: str, snapshot: str) -> str:
    return f"{_ct(name)}/snapshots/{quote(snapshot, 'snapshot name')}"


def _dev(name: str, device: str) -> str:
    return f"{_ct(name)}/devices/{quote(device, 'device name')}"


def _vol(name: str) -> str:
    return "/1.0/volumes/" + quote(name, "volume name")


def _op(op_id: str) -> str:
    return "/1.0/operations/" + quote(op_id, "operation id")


def _net(name: str) -> str:
    return "/1.0/networks/" + quote(name, "network name")


def image_path(ref: str) -> str:
    """The API path of image `ref` (an alias may hold '/')."""
    return f"/1.0/images/{quote(ref, 'image')}"
