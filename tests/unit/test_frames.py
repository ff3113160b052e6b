"""The framed stream's codec, the console escape, exec request checks, and
the HTTP upgrade in process (no root, no containers)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio

from lxpy.api.streams import (
    EXIT,
    MAX_PAYLOAD,
    RESIZE,
    STDIN,
    STDOUT,
    Escape,
    FrameDecoder,
    frame,
    json_frame,
    parse_json,
)
from lxpy.daemon.http import Request, Router, Upgrade, serve_connection
from lxpy.errors import InvalidArgument, NotFound
from lxpy.runtime.attach import ExecSpec, environment, exit_code, lookup_user
from tests.conftest import own_groups


def test_frame_layout() -> None:
    assert frame(STDOUT, b"hi") == b"\x01\x00\x00\x00\x02hi"
    assert frame(STDIN) == b"\x00\x00\x00\x00\x00"
    assert json_frame(EXIT, {"code": 3}) == b"\x03\x00\x00\x00\x0b" + b'{"code": 3}'


def test_decoder_reassembles_any_split() -> None:
    wire = frame(STDOUT, b"abc") + frame(STDIN) + json_frame(RESIZE, {"width": 1, "height": 2})
    for step in (1, 2, 3, 7, len(wire)):
        dec = FrameDecoder()
        got = []
        for i in range(0, len(wire), step):
            got += list(dec.feed(wire[i : i + step]))
        assert got == [(STDOUT, b"abc"), (STDIN, b""), (RESIZE, b'{"width": 1, "height": 2}')]
        assert dec.pending == 0


def test_decoder_refuses_garbage() -> None:
    with pytest.raises(InvalidArgument, match="unknown frame type"):
        list(FrameDecoder().feed(b"\x09\x00\x00\x00\x00"))
    with pytest.raises(InvalidArgument, match="exceeds"):
        list(FrameDecoder().feed(bytes([STDOUT]) + (MAX_PAYLOAD + 1).to_bytes(4, "big")))
    with pytest.raises(InvalidArgument):
        parse_json(b"[1]", "exit")


def test_console_escape() -> None:
    esc = Escape()
    assert esc.filter(b"ls\r") == b"ls\r"
    # Ctrl-a Ctrl-a is one literal Ctrl-a; Ctrl-a x sends both.
    assert esc.filter(b"\x01\x01") == b"\x01"
    assert esc.filter(b"a\x01xb") == b"a\x01xb"
    # The escape may straddle two reads.
    assert esc.filter(b"echo\x01") == b"echo" and not esc.detached
    assert esc.filter(b"q rest") == b"" and esc.detached


def test_exec_spec_validation() -> None:
    spec = ExecSpec.from_json({"command": ["sh", "-c", "x"], "user": 1000, "tty": True})
    assert spec.user == "1000" and spec.tty and (spec.width, spec.height) == (80, 24)
    assert ExecSpec.from_json(spec.to_json()) == spec
    bads: list[dict[str, object]] = [
        {"command": []},
        {"command": "sh"},
        {"command": [""]},
        {"command": ["sh"], "env": {"A=B": "1"}},
        {"command": ["sh"], "env": {"A": 1}},
        {"command": ["sh"], "cwd": "relative"},
        {"command": ["sh"], "user": "a:b"},
        {"command": ["sh"], "tty": "yes"},
        {"command": ["sh"], "width": 0},
    ]
    for bad in bads:
        with pytest.raises(InvalidArgument):
            ExecSpec.from_json(bad)


PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
alice:x:1234:100:Alice:/home/alice:/bin/sh
broken:x:no:0::/:/bin/sh
"""
GROUP = "users:x:100:\nwheel:x:10:alice,bob\naudio:x:29:bob\n"


def test_lookup_user() -> None:
    root = lookup_user("", PASSWD, GROUP)
    assert (root.name, root.uid, root.gid, root.home, root.groups) == ("root", 0, 0, "/root", (0,))
    alice = lookup_user("alice", PASSWD, GROUP)
    assert (alice.uid, alice.gid, alice.home, alice.groups) == (1234, 100, "/home/alice", (100, 10))
    assert lookup_user("1234", PASSWD, GROUP).name == "alice"
    stranger = lookup_user("4321", PASSWD, GROUP)
    assert (stranger.uid, stranger.gid, stranger.home) == (4321, 4321, "/")
    with pytest.raises(NotFound):
        lookup_user("mallory", PASSWD, GROUP)
    with pytest.raises(InvalidArgument):
        lookup_user("broken", PASSWD, GROUP)


def test_environment_is_clean() -> None:
    user = lookup_user("alice", PASSWD, GROUP)
    env = environment(ExecSpec(("sh",), {"LANG": "C", "HOME": "/x"}, tty=True), user)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/x",
        "USER": "alice",
        "LOGNAME": "alice",
        "container": "lxpy",
        "TERM": "xterm",
        "LANG": "C",
    }
    assert "TERM" not in environment(ExecSpec(("sh",)), user)


def test_exit_code_as_shells_report_it() -> None:
    for argv, want in (
        (["true"], 0),
        (["sh", "-c", "exit 3"], 3),
        (["sh", "-c", "kill -9 $$"], 128 + signal.SIGKILL),
    ):
        pid = os.fork()
        if pid == 0:
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        _pid, status = os.waitpid(pid, 0)
        assert exit_code(status) == want


# -- the HTTP upgrade, in process ------------------------------------------------


def _echo_router() -> Router:
    r = Router(own_groups())

    async def echo(req: Request) -> object:
        body = req.json()

        async def run(stream: trio.abc.Stream, early: bytes) -> None:
            # Echo stdin frames back as stdout, then an exit frame.
            dec = FrameDecoder()
            data = early
            while True:
                for kind, payload in dec.feed(data):
                    if kind == STDIN and not payload:
                        await stream.send_all(json_frame(EXIT, {"code": body.get("code", 0)}))
                        return
                    await stream.send_all(frame(STDOUT, payload))
                data = bytes(await stream.receive_some(4096))
                if not data:
                    return

        return Upgrade(run)

    r.add("POST", "/1.0/echo", echo, "echo", status=101)
    return r


async def _talk(raw: bytes) -> bytes:
    a, b = trio.socket.socketpair()
    server, client = trio.SocketStream(a), trio.SocketStream(b)
    out = bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server, _echo_router())
            await client.send_all(raw)
            while chunk := await client.receive_some(65536):
                out += chunk
            await client.aclose()
    return bytes(out)


@pytest.mark.trio
async def test_upgrade_hands_over_the_connection_with_early_bytes() -> None:
    body = json.dumps({"code": 4}).encode()
    head = (
        b"POST /1.0/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: lxpy-stream\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    # Frames sent right behind the request, before the 101: h11 has read
    # them already, and they must reach the stream handler.
    out = await _talk(head + body + frame(STDIN, b"ping") + frame(STDIN))
    status, _, rest = out.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: lxpy-stream" in status.lower()
    got = list(FrameDecoder().feed(rest))
    assert got == [(STDOUT, b"ping"), (EXIT, b'{"code": 4}')]


@pytest.mark.trio
async def test_upgrade_route_without_upgrade_headers_is_400() -> None:
    out = await _talk(
        b"POST /1.0/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"Upgrade" in out
