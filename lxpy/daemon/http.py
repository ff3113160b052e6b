"""A small HTTP/1.1 server for lxpyd's API: h11 over trio streams.

One task per connection, keep-alive, JSON bodies with Content-Length, and
chunked NDJSON streams that end when the client hangs up. Handlers raise
lxpy errors; the server turns them into the documented error format.

What a client may send is bounded (lxpy.daemon.httpread): the URL, the
header fields and the body by size, and the time a connection may sit idle
or take to send one request. Past a bound the client gets its 4xx and the
connection closes; no bound applies once a request is in, so answers that
take long (a wait, a build) and streams (events, console, exec) are never
cut.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from lxpy.daemon import peers
from lxpy.daemon.httpread import MAX_HEAD, Limits, Reader, Refused
from lxpy.errors import Forbidden, InvalidArgument, LxpyError, NotFound

log = logging.getLogger("lxpyd.http")

# After refusing a request whose body may still be coming, how long and how
# much of it is read and dropped before closing (see _refuse).
_LINGER_SECONDS = 5.0
_LINGER_BYTES = 64 * 1024 * 1024
JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"
TEXT_TYPE = "text/plain; charset=utf-8"
# Requests that change something: logged with who asked.
_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Connections one uid that is not an admin may hold open at once.
MAX_CONNECTIONS_PER_USER = 64


class MethodNotAllowed(InvalidArgument):
    """A known path asked with a method it does not serve (405, invalid_argument)."""

    status = 405

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message, hint="allowed: " + ", ".join(allowed))
        # For the Allow header the answer must carry.
        self.allowed = allowed


class UnsupportedMediaType(InvalidArgument):
    """A body that is not sent as JSON (415, invalid_argument)."""

    status = 415


Send = Callable[[object], Awaitable[None]]


class Stream:
    """An NDJSON response: `produce(send)` awaits `send(obj)` once per line.

    The server cancels `produce` when the client hangs up, so a stream that
    follows something forever needs no end condition of its own.
    """

    def __init__(
        self,
        produce: Callable[[Send], Awaitable[None]],
        close: Callable[[], None] | None = None,
    ) -> None:
        self.produce = produce
        # Called when the response is over (or never started), to release
        # what the handler set up before answering, such as a subscription.
        self.close = close or (lambda: None)


@dataclass(frozen=True)
class Text:
    """A `text/plain; charset=utf-8` answer (a console log) instead of JSON."""

    text: str


class Upgrade:
    """A `101 Switching Protocols` answer (console, exec).

    After the 101, `run(stream, early)` owns the raw connection; `early` is
    what the client sent after its request and h11 already read. `close()`
    is called once the exchange is over, or when the 101 could not be sent.
    """

    def __init__(
        self,
        run: Callable[[trio.abc.Stream, bytes], Awaitable[None]],
        close: Callable[[], None] | None = None,
        protocol: str = "lxpy-stream",
    ) -> None:
        self.run = run
        self.close = close or (lambda: None)
        self.protocol = protocol


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Header names in lower case (h11 gives them so).
    headers: dict[str, str] = field(default_factory=dict)
    # Who asks (its tier decided at connect()).
    caller: peers.Caller = peers.INTERNAL

    def json(self) -> dict[str, object]:
        """The body as a JSON object ({} for an empty body).

        Raises:
            UnsupportedMediaType: a body not sent as application/json.
            InvalidArgument: the body is not JSON, or not an object.
        """
        if not self.body.strip():
            return {}
        ctype = self.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != JSON_TYPE:
            raise UnsupportedMediaType(
                f"request body sent as {ctype or 'no Content-Type'}: only JSON is accepted",
                hint=f"send the body as a JSON object with `Content-Type: {JSON_TYPE}`",
            )
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(
                "request body must be a JSON object", hint='send e.g. {"name": "web"}'
            )
        try:
            # A \\uXXXX escape may carry half of a UTF-16 pair alone: no
            # Unicode text, and nothing a record, a name or an argument
            # could hold. Refused here rather than failing deep inside.
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError as e:
            bad = e.object[e.start : e.end].encode("unicode_escape").decode()
            raise InvalidArgument(
                f"request body is not valid JSON text: it holds {bad}, half of a UTF-16 "
                "surrogate pair, alone",
                hint="send the character itself, or both halves of its pair",
            ) from None
        return data

    def flag(self, name: str) -> bool:
        """A boolean query parameter: present as 1/true/yes/on."""
        return self.query.get(name, "").lower() in ("1", "true", "yes", "on")


Handler = Callable[[Request], Awaitable[object]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: Handler
    summary: str
    status: int = 200
    # JSON schema of the request body, and of the answer (for openapi.json).
    body: dict[str, object] | None = None
    response: dict[str, object] | None = None
    # (name, description) of query parameters.
    query: tuple[tuple[str, str], ...] = ()
    stream: bool = False
    # The answer's media type when it is not JSON (a Text answer).
    media: str | None = None
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = []
        for seg in self.pattern.strip("/").split("/"):
            m = re.fullmatch(r"\{(\w+)\}", seg)
            parts.append(f"(?P<{m.group(1)}>[^/]+)" if m else re.escape(seg))
        object.__setattr__(self, "regex", re.compile("/" + "/".join(parts)))


class Router:
    """Method + path pattern (`/1.0/containers/{name}`) → handler.

    `groups` name who may connect at all (lxpy.daemon.peers); `authorize`,
    when set, judges each matched request before its handler runs and
    raises to refuse it (lxpy.daemon.policy).
    """

    def __init__(
        self, groups: peers.Groups = peers.DEFAULT_GROUPS, limits: Limits | None = None
    ) -> None:
        self.routes: list[Route] = []
        self.groups = groups
        self.limits = limits or Limits()
        self.authorize: Callable[[Route, Request], None] | None = None
        # Open connections by uid, of callers that are not admins.
        self.connections: dict[int, int] = {}

    def add(self, method: str, pattern: str, handler: Handler, summary: str, **kw: object) -> None:
        self.routes.append(Route(method, pattern, handler, summary, **kw))  # type: ignore[arg-type]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for `method path` and its path parameters.

        Raises:
            NotFound: no route has this path.
            MethodNotAllowed: the path exists but not with this method.
        """
        allowed = []
        for route in self.routes:
            m = route.regex.fullmatch(path)
            if not m:
                continue
            if route.method == method:
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(f"method {method} is not allowed on {path}", allowed)
        raise NotFound(f"no such API path: {path}", hint="GET /1.0/openapi.json lists them all")


def leaf_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one, else `exc`.

    trio's nurseries wrap even a single failure in a group; the API wants
    the lxpy error inside it.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error_body(err: LxpyError) -> dict[str, object]:
    return {"error": err.to_json()}


def _request(event: h11.Request, body: bytes) -> Request:
    url = urlsplit(event.target.decode("ascii", "replace"))
    return Request(
        method=event.method.decode("ascii", "replace"),
        # Matched raw, so an escaped "/" inside a name cannot split a segment;
        # the router unquotes the parameters.
        path=url.path,
        query=dict(parse_qsl(url.query)),
        body=body,
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers},
    )


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Cancelled" if status == 499 else b""


async def _send_json(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    body: object,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    if isinstance(body, Text):
        data, ctype = body.text.encode(), TEXT_TYPE
    else:
        data, ctype = json.dumps(body).encode() + b"\n", JSON_TYPE
    headers = [("Content-Type", ctype), ("Content-Length", str(len(data))), *(extra or ())]
    head = h11.Response(status_code=status, headers=headers, reason=_reason(status))
    await stream.send_all(conn.send(head))
    await stream.send_all(conn.send(h11.Data(data=data)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _answer(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    limits: Limits,
    status: int,
    body: object,
    extra: list[tuple[str, str]] | None = None,
) -> bool:
    """Send a whole (non-stream) answer; False when the client did not take
    it within the request timeout (a client that sends and never reads)."""
    with trio.move_on_after(limits.request) as sending:
        await _send_json(conn, stream, status, body, extra)
    return not sending.cancelled_caught


async def _refuse(
    conn: h11.Connection, stream: trio.abc.Stream, limits: Limits, refused: Refused
) -> None:
    """Answer a request refused before the router saw it, and end."""
    log.debug("refused a request: %s %s", refused.status, refused.err.message)
    try:
        body, close = _error_body(refused.err), [("Connection", "close")]
        sent = await _answer(conn, stream, limits, refused.status, body, close)
    except h11.LocalProtocolError:
        return  # nothing of a request came: there is no one to answer
    if not sent or not refused.linger:
        return
    # What the client still sends (a body too large, the rest of a head) is
    # read and dropped, for a while, so that the answer reaches a client
    # which sends all before it reads: closing with unread data would
    # reset the connection under it.
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    dropped = 0
    with trio.move_on_after(_LINGER_SECONDS):
        while dropped < _LINGER_BYTES and (data := await stream.receive_some(65536)):
            dropped += len(data)


async def _send_stream(conn: h11.Connection, stream: trio.abc.Stream, body: Stream) -> None:
    # A stream owns the connection to its end (Connection: close): the client
    # sends nothing more, so a read that returns EOF means it hung up.
    headers = [
        ("Content-Type", NDJSON_TYPE),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
    ]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))

    async def send(obj: object) -> None:
        line = json.dumps(obj).encode() + b"\n"
        await stream.send_all(conn.send(h11.Data(data=line)))

    async def watch_hangup(scope: trio.CancelScope) -> None:
        try:
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_hangup, nursery.cancel_scope)
        try:
            try:
                await body.produce(send)
            except LxpyError as e:
                # The status line is gone already: report in-band, then end.
                await send(_error_body(e))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up: nothing to finish
        nursery.cancel_scope.cancel()


async def _switch(conn: h11.Connection, stream: trio.abc.Stream, up: Upgrade) -> None:
    # h11 lets a server switch only when the request asked for it
    # (Connection: Upgrade plus Upgrade:); anything else is a client error.
    if conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
        err = InvalidArgument(
            "this endpoint answers only an upgrade to a framed stream",
            hint=f"send `Connection: Upgrade` and `Upgrade: {up.protocol}`",
        )
        await _send_json(conn, stream, err.status, _error_body(err))
        return
    headers = [("Upgrade", up.protocol), ("Connection", "Upgrade")]
    await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
    early, _closed = conn.trailing_data
    await up.run(stream, bytes(early))


async def _dispatch(router: Router, req: Request) -> tuple[int, object, list[tuple[str, str]]]:
    """The status, body and extra header fields of the answer to `req`."""
    try:
        route, req.params = router.match(req.method, req.path)
        if router.authorize is not None:
            router.authorize(route, req)
        result = await route.handler(req)
        return route.status, result, []
    except Exception as exc:
        e = leaf_error(exc)
        if isinstance(e, MethodNotAllowed):
            # A 405 must say what the path does serve.
            return e.status, _error_body(e), [("Allow", ", ".join(e.allowed))]
        if isinstance(e, Forbidden):
            log.warning("refused %s: %s %s: %s", req.caller, req.method, req.path, e.message)
            return e.status, _error_body(e), []
        if isinstance(e, LxpyError):
            log.debug("%s %s: %s", req.method, req.path, e.message)
            return e.status, _error_body(e), []
        log.exception("%s %s failed", req.method, req.path)
        err = LxpyError(f"internal error: {type(e).__name__}: {e}", hint="see lxpyd's log")
        return 500, _error_body(err), []


def _outsider(peer: peers.Peer, groups: peers.Groups) -> Forbidden:
    tiers = [f"group {groups.admin!r}"] if groups.admin else []
    if groups.user:
        tiers.append(f"(restricted) group {groups.user!r}")
    if not tiers:
        return Forbidden(f"uid {peer.uid} may not use lxpyd: only root may")
    # The restricted group first: the other is root-equivalent.
    join = groups.user or groups.admin
    return Forbidden(
        f"uid {peer.uid} may not use lxpyd: only root and members of {' or '.join(tiers)} may",
        hint=f"ask an administrator to add you to group {join!r} (then log in again)",
    )


async def serve_connection(stream: trio.abc.Stream, router: Router) -> None:
    """Serve HTTP requests on one connection until either side closes it,
    or the client breaks a bound (lxpy.daemon.httpread)."""
    limits = router.limits
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    reader = Reader(conn, stream, limits)
    counted: int | None = None
    try:
        # Who connected, as the kernel recorded it at connect(): its tier is
        # decided once per connection, and logged with every change it asks for.
        peer = peers.peer_of(stream.socket) if isinstance(stream, trio.SocketStream) else None
        caller = peers.admit(peer, router.groups)
        if peer is not None and (caller is None or caller.restricted):
            # Why: every connection holds a file descriptor and a task in
            # lxpyd; one that is not an admin's may not hold them without
            # bound (a flood of idle connections would exhaust lxpyd's
            # descriptors for everyone). Closed at once: h11 cannot answer
            # before a request, and the cap is far above any client's use.
            held = router.connections.get(peer.uid, 0)
            if held >= MAX_CONNECTIONS_PER_USER:
                log.warning("refused %s: %d connections of its uid are open already", peer, held)
                return
            counted = peer.uid
            router.connections[counted] = held + 1
        while True:
            try:
                got = await reader.request()
            except Refused as refused:
                await _refuse(conn, stream, limits, refused)
                return
            if got is None:
                return
            req = _request(*got)
            if caller is None:
                assert peer is not None
                log.warning("refused %s: %s %s", peer, req.method, req.path)
                denied = _outsider(peer, router.groups)
                await _answer(conn, stream, limits, denied.status, _error_body(denied))
                return
            req.caller = caller
            if req.method in _CHANGING and peer is not None:
                log.info("%s: %s %s", caller, req.method, req.path)
            status, result, extra = await _dispatch(router, req)
            log.debug("%s %s → %s", req.method, req.path, status)
            if isinstance(result, Stream):
                try:
                    await _send_stream(conn, stream, result)
                finally:
                    result.close()
                return
            if isinstance(result, Upgrade):
                try:
                    await _switch(conn, stream, result)
                finally:
                    result.close()
                return
            if not await _answer(conn, stream, limits, status, result, extra):
                return
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except Exception as exc:
        # One connection's trouble must never reach the server's nursery.
        if not isinstance(leaf_error(exc), trio.BrokenResourceError | trio.ClosedResourceError):
            log.exception("connection failed")
    finally:
        if counted is not None:
            router.connections[counted] -= 1
            if not router.connections[counted]:
                del router.connections[counted]
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def serve(
    listener: trio.abc.Listener[trio.abc.Stream],
    router: Router,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on `listener` forever, one task each."""

    async def handle(stream: trio.abc.Stream) -> None:
        await serve_connection(stream, router)

    async with trio.open_nursery() as nursery:
        task_status.started()
        await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
