"""lxpyd's HTTP layer in process: routing, errors, keep-alive, streams."""

from __future__ import annotations

import json

import pytest
import trio

from lxpy.daemon.events import EventBus
from lxpy.daemon.http import MethodNotAllowed, Request, Router, Send, Stream, serve_connection
from lxpy.errors import Busy, NotFound
from tests.conftest import own_groups


def _router() -> Router:
    r = Router(own_groups())

    async def hello(req: Request) -> object:
        return {"name": req.params["name"], "q": req.query}

    async def echo(req: Request) -> object:
        return req.json()

    async def busy(req: Request) -> object:
        raise Busy("it is busy", hint="wait")

    async def boom(req: Request) -> object:
        raise RuntimeError("kaput")

    async def count(req: Request) -> object:
        async def produce(send: Send) -> None:
            for i in range(3):
                await send({"n": i})

        return Stream(produce)

    r.add("GET", "/1.0/things/{name}", hello, "hello")
    r.add("POST", "/1.0/echo", echo, "echo", status=201)
    r.add("GET", "/1.0/busy", busy, "busy")
    r.add("GET", "/1.0/boom", boom, "boom")
    r.add("GET", "/1.0/count", count, "count", stream=True)
    return r


def test_router_match() -> None:
    r = _router()
    route, params = r.match("GET", "/1.0/things/a%20b")
    assert route.summary == "hello" and params == {"name": "a b"}
    with pytest.raises(MethodNotAllowed):
        r.match("DELETE", "/1.0/things/x")
    with pytest.raises(NotFound):
        r.match("GET", "/1.0/things/x/y")


async def _exchange(raw: bytes, eof: bool = True) -> bytes:
    """Send raw request bytes to a server connection; everything it answers."""
    a, b = trio.socket.socketpair()
    server, client = trio.SocketStream(a), trio.SocketStream(b)
    out = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, _router())
        await client.send_all(raw)
        if eof:
            await client.send_eof()
        while data := await client.receive_some(65536):
            out += data
    await client.aclose()
    return bytes(out)


def _bodies(resp: bytes) -> list[tuple[int, object]]:
    out = []
    rest = resp
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append((status, json.loads(rest[:length])))
        rest = rest[length:]
    return out


@pytest.mark.trio
async def test_keepalive_and_errors() -> None:
    reqs = (
        b"GET /1.0/things/web?x=1 HTTP/1.1\r\nHost: l\r\n\r\n"
        b"POST /1.0/echo HTTP/1.1\r\nHost: l\r\nContent-Type: application/json\r\n"
        b'Content-Length: 10\r\n\r\n{"a": [1]}'
        b"POST /1.0/echo HTTP/1.1\r\nHost: l\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\n\r\n[1]"
        b"GET /1.0/busy HTTP/1.1\r\nHost: l\r\n\r\n"
        b"GET /1.0/boom HTTP/1.1\r\nHost: l\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: l\r\n\r\n"
        b"PUT /1.0/busy HTTP/1.1\r\nHost: l\r\n\r\n"
    )
    with trio.fail_after(10):
        got = _bodies(await _exchange(reqs))
    assert got[0] == (200, {"name": "web", "q": {"x": "1"}})
    assert got[1] == (201, {"a": [1]})
    assert got[2][0] == 400 and got[2][1]["error"]["code"] == "invalid_argument"  # type: ignore[index]
    assert got[3] == (409, {"error": {"code": "busy", "message": "it is busy", "hint": "wait"}})
    assert got[4][0] == 500 and "kaput" in got[4][1]["error"]["message"]  # type: ignore[index]
    assert got[5][0] == 404 and got[5][1]["error"]["code"] == "not_found"  # type: ignore[index]
    assert got[6][0] == 405 and got[6][1]["error"]["code"] == "invalid_argument"  # type: ignore[index]


@pytest.mark.trio
async def test_stream_is_chunked_ndjson() -> None:
    with trio.fail_after(10):
        resp = await _exchange(b"GET /1.0/count HTTP/1.1\r\nHost: l\r\n\r\n", eof=False)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"application/x-ndjson" in head and b"chunked" in head.lower()
    lines = [json.loads(x) for x in body.split(b"\r\n") if x.startswith(b"{")]
    assert lines == [{"n": 0}, {"n": 1}, {"n": 2}]


@pytest.mark.trio
async def test_slow_subscriber_is_dropped() -> None:
    bus = EventBus(buffer=2)
    slow = bus.subscribe()
    with bus.subscribe(["lifecycle"]) as fast:
        for i in range(3):
            bus.lifecycle("container-created", f"containers/c{i}")
            assert (await fast.channel.receive())["resource"] == f"containers/c{i}"
    # The slow one got what fit, then its stream ended.
    got = [e async for e in slow.channel]
    assert len(got) == 2
