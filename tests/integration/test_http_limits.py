"""What lxpyd's HTTP server does with clients that send too much, the wrong
thing, or too slowly: 413, 414, 431, 405 with Allow, 415, capped config
values, and idle and slow (slowloris) connections closed while other
clients, and long-lived streams, are served.

Requests are raw bytes on the socket, as a careless or hostile client
would send them; the `lxpy` command shows that well-behaved clients are
unaffected.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import VENV_BIN, Daemon, daemon_in
from tests.integration.test_daemon import NDJSON, _UnixConnection

pytestmark = pytest.mark.integration

TIMEOUT = 60
# Short bounds, so that a test sees them pass; what is waited for is the
# server closing, never a sleep.
IDLE, REQUEST = 2, 3
HASTY = f"http_idle_timeout = {IDLE}\nhttp_request_timeout = {REQUEST}\n"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """lxpyd with the default bounds, the busybox template built and `c1` made."""
    with daemon_in(tmp_path_factory.mktemp("plain"), 'default_network = ""\n') as d:
        d.cli("template", "build", "busybox")
        d.cli("create", "c1", "-t", "busybox")
        yield d


@pytest.fixture(scope="module")
def hasty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """lxpyd with short idle and request timeouts, and `c1` running."""
    with daemon_in(tmp_path_factory.mktemp("hasty"), 'default_network = ""\n' + HASTY) as d:
        d.cli("template", "build", "busybox")
        d.cli("create", "c1", "-t", "busybox")
        d.cli("start", "c1")
        yield d
        d.cli("stop", "c1", "--force")


def _connect(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(str(d.socket))
    return s


def _read_answer(s: socket.socket) -> tuple[int, dict[str, str], Any]:
    """One answer off `s`: status, header fields (lower-case names), JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers["content-length"]):
        chunk = s.recv(65536)
        assert chunk, "closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


def _closed(s: socket.socket) -> bool:
    """Whether the server ends the connection: reads until EOF."""
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _exchange(d: Daemon, raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Send `raw` whole (before reading, as most clients do) and read the answer."""
    with _connect(d) as s:
        s.sendall(raw)
        return _read_answer(s)


def _invalid(body: Any, *words: str) -> str:
    assert body["error"]["code"] == "invalid_argument", body
    message: str = body["error"]["message"]
    for word in words:
        assert word in message, message
    return message


def _serves(d: Daemon) -> None:
    """The daemon still answers, and the `lxpy` command works."""
    status, _, body = _exchange(d, b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body["api_version"] == "1.0"
    assert "c1" in d.cli("list").stdout


# -- sizes --------------------------------------------------------------------


def test_a_body_too_large_is_413_even_to_a_client_that_sends_it_all(plain: Daemon) -> None:
    big = json.dumps({"name": "c2", "template": "busybox", "pad": "x" * (5 << 20)}).encode()
    # http.client sends its whole body before it reads the answer.
    conn = _UnixConnection(plain.socket, TIMEOUT)
    try:
        conn.request(
            "POST", "/1.0/containers", body=big, headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 413
        assert resp.getheader("Connection") == "close"
        _invalid(json.loads(resp.read()), f"body is {len(big)} bytes", "at most 4194304 bytes")
    finally:
        conn.close()
    # Chunked, so that no Content-Length tells in advance: 413 when the
    # body passes the bound.
    chunk = b"x" * (1 << 20)
    head = (
        b"POST /1.0/containers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
    status, headers, answer = _exchange(plain, head + body)
    assert status == 413 and headers["connection"] == "close"
    _invalid(answer, "at most 4194304 bytes")
    assert "c2" not in plain.cli("list").stdout
    _serves(plain)


@pytest.mark.parametrize("length", [10_000, 200_000])
def test_a_url_too_long_is_414(plain: Daemon, length: int) -> None:
    # 10 kB comes in one read; 200 kB outgrows what is buffered of a head.
    path = b"/1.0/containers/c1?pad=" + b"x" * length
    status, headers, body = _exchange(plain, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and headers["connection"] == "close"
    _invalid(body, "request URL is", "at most 8192 bytes")
    _serves(plain)


@pytest.mark.parametrize("length", [20_000, 200_000])
def test_header_fields_too_large_are_431(plain: Daemon, length: int) -> None:
    pad = b"X-Pad: " + b"y" * length + b"\r\n"
    status, headers, body = _exchange(plain, b"GET /1.0 HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n")
    assert status == 431 and headers["connection"] == "close"
    _invalid(body, "request header block is", "at most 16384 bytes")
    _serves(plain)


def test_a_config_value_too_large_is_refused_and_not_stored(plain: Daemon) -> None:
    res = plain.cli("config", "set", "c1", "user.big", "v" * 100_000, check=False)
    assert res.returncode != 0
    assert "user.big: the value is 100000 bytes long, at most 8192" in res.stderr
    res = plain.cli(
        "create", "c3", "-t", "busybox", "--set", "user." + "k" * 300 + "=1", check=False
    )
    assert res.returncode != 0 and "characters long, at most 256" in res.stderr, res.stderr
    res = plain.cli("config", "unset", "c1", "user." + "k" * 300, check=False)
    assert res.returncode != 0 and "characters long, at most 256" in res.stderr, res.stderr
    assert "user.big" not in plain.cli("config", "show", "c1").stdout
    assert "c3" not in plain.cli("list").stdout
    plain.cli("config", "set", "c1", "user.fine", "v" * 8192)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/1.0/containers/c1/config", rb'{"set": {"user.x": "a\ud800"}}'),
        ("/1.0/containers/c1/config", rb'{"set": {"description": "\udfff"}}'),
        (
            "/1.0/containers",
            rb'{"name": "c5", "template": "busybox", "config": {"user.y": "\ud800"}}',
        ),
    ],
)
def test_half_a_surrogate_pair_is_refused(plain: Daemon, path: str, body: bytes) -> None:
    # JSON's \uXXXX escapes can carry half of a UTF-16 pair, which is no text.
    method = "PATCH" if path.endswith("config") else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    raw = head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
    status, _, answer = _exchange(plain, raw)
    assert status == 400
    _invalid(answer, "not valid JSON text", "half of a UTF-16 surrogate pair")
    config = plain.cli("config", "show", "c1").stdout
    assert "user.x" not in config and "description" not in config
    assert "c5" not in plain.cli("list").stdout


# -- methods and media types ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/1.0/containers", "GET, POST"),
        ("DELETE", "/1.0", "GET"),
        ("GET", "/1.0/containers/c1/rename", "POST"),
        ("PATCH", "/1.0/containers/c1", "GET, DELETE"),
    ],
)
def test_a_method_a_path_does_not_serve_is_405_with_allow(
    plain: Daemon, method: str, path: str, allowed: str
) -> None:
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    status, headers, body = _exchange(plain, raw)
    assert status == 405
    assert headers["allow"] == allowed
    _invalid(body, f"method {method} is not allowed")


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_a_body_not_sent_as_json_is_415(plain: Daemon, ctype: str | None) -> None:
    body = json.dumps({"name": "c4", "template": "busybox"}).encode()
    head = "POST /1.0/containers HTTP/1.1\r\nHost: x\r\n"
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n"
    raw = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    status, _, answer = _exchange(plain, raw)
    assert status == 415
    _invalid(answer, ctype or "no Content-Type", "only JSON")
    assert "c4" not in plain.cli("list").stdout


def test_json_with_parameters_is_json(plain: Daemon) -> None:
    body = json.dumps({"set": {"user.charset": "yes"}}).encode()
    raw = (
        b"PATCH /1.0/containers/c1/config HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: Application/JSON; charset=utf-8\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    status, _, answer = _exchange(plain, raw)
    assert status == 200 and answer["config"]["user.charset"] == "yes"


# -- time -----------------------------------------------------------------------


class Trickle:
    """Sends `data` a byte at a time, a byte every `every` seconds, from a
    thread, until the server closes or stop()."""

    def __init__(self, s: socket.socket, data: bytes, every: float = 0.1) -> None:
        self.s = s
        self.stopping = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, args=(data, every), daemon=True)
        self.thread.start()

    def _run(self, data: bytes, every: float) -> None:
        for i in range(len(data)):
            try:
                self.s.send(data[i : i + 1])
            except OSError:
                return
            self.sent += 1
            # The pace of the attack, well inside the idle timeout.
            if self.stopping.wait(every):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(TIMEOUT)


def test_idle_connections_are_closed(hasty: Daemon) -> None:
    with _connect(hasty) as fresh, _connect(hasty) as used:
        used.sendall(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_answer(used)[0] == 200
        # Neither sends anything more: both are closed, without an answer.
        assert _closed(fresh) and _closed(used)
    _serves(hasty)


@pytest.mark.parametrize("part", ["head", "body"])
def test_slow_requests_are_cut_while_others_are_served(hasty: Daemon, part: str) -> None:
    head = b"PATCH /1.0/containers/c1/config HTTP/1.1\r\nHost: x\r\n"
    body = json.dumps({"set": {"user.slow": "x" * 200}}).encode()
    head += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    slows = []
    try:
        for _ in range(3):
            s = _connect(hasty)
            if part == "body":
                s.sendall(head)
            slows.append((s, Trickle(s, head + body if part == "head" else body)))
        # Other clients are served meanwhile.
        for _ in range(3):
            _serves(hasty)
        for s, trickle in slows:
            status, headers, answer = _read_answer(s)
            assert status == 408 and headers["connection"] == "close"
            _invalid(answer, f"request not received within {REQUEST} s")
            assert _closed(s)
            trickle.stop()
            # Cut before it was all in, though every byte came well within
            # the idle timeout of the one before.
            assert trickle.sent < len(head + body)
    finally:
        for s, trickle in slows:
            trickle.stop()
            s.close()
    assert "user.slow" not in hasty.cli("config", "show", "c1").stdout


def test_streams_outlive_the_timeouts(hasty: Daemon) -> None:
    events = NDJSON(hasty.socket, "/1.0/events?type=lifecycle", timeout=TIMEOUT)
    cmd = [str(VENV_BIN / "lxpy"), "--socket", str(hasty.socket), "exec", "c1", "--"]
    exe = subprocess.Popen(
        [*cmd, "sh", "-c", "echo ready; read x; echo got $x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert exe.stdout is not None and exe.stdin is not None
        assert exe.stdout.readline() == "ready\n"
        # A connection made after both is closed idle, and another cut slow:
        # both timeouts have passed over the stream and the exec.
        with _connect(hasty) as idle:
            assert _closed(idle)
        with _connect(hasty) as slow:
            trickle = Trickle(slow, b"GET /1.0 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"z" * 1000)
            assert _read_answer(slow)[0] == 408
            trickle.stop()
        hasty.cli("config", "set", "c1", "user.after", "1")
        got = events.until(lambda e: e.get("action") == "container-updated")
        assert got["resource"] == "containers/c1"
        out, _ = exe.communicate("hello\n", timeout=TIMEOUT)
        assert out == "got hello\n" and exe.returncode == 0
    finally:
        events.close()
        if exe.poll() is None:
            exe.kill()
            exe.wait()
