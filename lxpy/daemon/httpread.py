"""Reading one HTTP request off a connection, within bounds of size and time.

lxpy.daemon.http serves the API; this is the part that faces what a client
sends before the router sees it. A client may not make lxpyd hold a
connection or memory without end: the URL, the header fields and the body
are bounded in size, and a connection in time, both while it sits idle and
while a request trickles in (slowloris). A request past a bound is refused
(Refused) with the status HTTP gives it: 408, 413, 414 or 431.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import h11
import trio

from lxpy.errors import InvalidArgument

# The largest body, URL (request target) and header fields a request may
# have. Bodies are JSON objects of a few KiB (a container's config is
# capped at 64 KiB, lxpy.model.config); the API's longest URL is some 150
# bytes. The head bounds are those of common servers: nginx's 8 KiB request
# line and a 16 KiB header block.
MAX_BODY = 4 * 1024 * 1024
MAX_TARGET = 8 * 1024
MAX_HEADERS = 16 * 1024
# What h11 may buffer of a head not yet complete: both of the above.
MAX_HEAD = MAX_TARGET + MAX_HEADERS + 64
_RECEIVE = 65536


@dataclass(frozen=True)
class Limits:
    """How long a client may take (settings http_idle_timeout and
    http_request_timeout): `idle` seconds with no request under way (before
    the first, between keep-alive requests), `request` seconds from the
    first byte of a request to its last, and to take a (non-stream) answer."""

    idle: float = 60.0
    request: float = 30.0


class Refused(Exception):
    """A request refused before it reached the router: answer `status` with
    `err`, then close."""

    def __init__(self, status: int, err: InvalidArgument, linger: bool = True) -> None:
        super().__init__(err.message)
        self.status = status
        self.err = err
        # Whether what the client still sends is read and dropped before
        # closing, so that one which sends its whole request before reading
        # (most do) gets the answer rather than a reset. Not for a client
        # too slow to wait for.
        self.linger = linger


class _Idle(Exception):
    """No request began within the idle timeout."""


def _too_large(status: int, what: str, size: str, limit: int, hint: str) -> Refused:
    message = f"{what} is {size} bytes long: at most {limit} bytes are accepted"
    return Refused(status, InvalidArgument(message, hint=hint))


def _uri_too_long(size: str) -> Refused:
    hint = "the API's paths are short; send data in the body, not the query string"
    return _too_large(414, "request URL", size, MAX_TARGET, hint)


def _headers_too_large(size: str) -> Refused:
    hint = "send fewer or shorter header fields"
    return _too_large(431, "request header block", size, MAX_HEADERS, hint)


def _body_too_large(size: str) -> Refused:
    hint = "the API's bodies are small JSON objects"
    return _too_large(413, "request body", size, MAX_BODY, hint)


class Reader:
    """Reads one request at a time off a connection for lxpy.daemon.http."""

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream, limits: Limits) -> None:
        self.conn = conn
        self.stream = stream
        self.limits = limits
        # When the request being read must be all in; None until its first
        # byte arrives.
        self.deadline: float | None = None

    async def request(self) -> tuple[h11.Request, bytes] | None:
        """The next request's head and body; None when the client hung up
        or sent nothing within the idle timeout.

        Raises:
            Refused: a request that breaks HTTP or a bound.
        """
        # What came behind the last request (pipelined) is this one begun:
        # its time runs from now.
        begun = bool(self.conn.trailing_data[0])
        self.deadline = trio.current_time() + self.limits.request if begun else None
        try:
            event = await self._next_event()
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not isinstance(event, h11.Request):
                raise Refused(400, InvalidArgument(f"bad HTTP request: unexpected {event!r}"))
            self._check_head(event)
            body = await self._body()
        except _Idle:
            return None
        except h11.RemoteProtocolError as e:
            raise self._broken(e) from None
        return None if body is None else (event, body)

    def _check_head(self, event: h11.Request) -> None:
        if len(event.target) > MAX_TARGET:
            raise _uri_too_long(str(len(event.target)))
        size = sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > MAX_HEADERS:
            raise _headers_too_large(str(size))
        for name, value in event.headers:
            # h11 has checked that it is a number.
            if name == b"content-length" and int(value) > MAX_BODY:
                raise _body_too_large(str(int(value)))

    async def _body(self) -> bytes | None:
        if self.conn.client_is_waiting_for_100_continue:
            # The client waits for a go before it sends its body (curl does
            # for large ones): give it, the head being acceptable.
            go = h11.InformationalResponse(status_code=100, headers=[])
            await self.stream.send_all(self.conn.send(go))
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _body_too_large(f"at least {len(body)}")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                return None

    async def _next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def _receive(self) -> None:
        if self.deadline is None:
            deadline = trio.current_time() + self.limits.idle
        else:
            deadline = self.deadline
        with trio.move_on_at(deadline) as waiting:
            data = bytes(await self.stream.receive_some(_RECEIVE))
        if waiting.cancelled_caught:
            if self.deadline is None:
                raise _Idle
            raise self._timed_out()
        if self.deadline is None:
            self.deadline = trio.current_time() + self.limits.request
        # b"" (EOF) tells h11 the peer closed; it then yields ConnectionClosed.
        self.conn.receive_data(data)

    def _timed_out(self) -> Refused:
        if self.conn.our_state is h11.IDLE:
            # The head is not all in, and h11 lets a server answer only a
            # request, or one it found broken: ending the input here makes
            # it the latter.
            self.conn.receive_data(b"")
            with contextlib.suppress(h11.RemoteProtocolError):
                self.conn.next_event()
        return Refused(
            408,
            InvalidArgument(
                f"request not received within {self.limits.request:g} s",
                hint="send the whole request at once",
            ),
            linger=False,
        )

    def _broken(self, e: h11.RemoteProtocolError) -> Refused:
        if e.error_status_hint != 431:
            return Refused(e.error_status_hint, InvalidArgument(f"bad HTTP request: {e}"))
        # h11's buffer outgrew MAX_HEAD before the head ended: the request
        # line, or the header fields after it, are too long.
        head = self.conn.trailing_data[0]
        line, newline, _rest = head.partition(b"\n")
        parts = line.split(b" ")
        if not newline:
            return _uri_too_long(f"at least {len(line)}")
        if len(parts) > 1 and len(parts[1]) > MAX_TARGET:
            return _uri_too_long(str(len(parts[1])))
        return _headers_too_large(f"at least {len(head) - len(line)}")
