"""The `lxpy` CLI and its HTTP client, without root and without lxpyd.

The daemon's side is a test double: a thread on a unix socket that answers
canned HTTP responses (Content-Length, chunked, close-delimited, NDJSON
streams) and records what it was asked, so the client's parsing, the error
output and the exit statuses are checked on real sockets.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lxpy import cli
from lxpy.api.calls import quote
from lxpy.api.client import Client, resolve_socket
from lxpy.errors import DaemonUnavailable, InvalidArgument, LxpyError, NotFound

VENV_BIN = Path(sys.executable).parent
LXPY = [sys.executable, "-m", "lxpy.cli"]

# A response is the raw bytes to send, or a list of pieces sent with a short
# pause between them (to cross the client's read boundaries), or a callable
# given the connection for anything else.
Answer = bytes | list[bytes] | Callable[[socket.socket], None]


def http(status: int, body: object, reason: str = "OK", headers: str = "") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{headers}\r\n"
    )
    return head.encode() + data


def chunked(pieces: list[bytes], content_type: str = "application/x-ndjson") -> list[bytes]:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    out = [head]
    for p in pieces:
        out.append(b"%x;ext=1\r\n%s\r\n" % (len(p), p))
    out.append(b"0\r\n\r\n")
    return out


def error(status: int, code: str, message: str, hint: str | None = None) -> bytes:
    return http(status, {"error": {"code": code, "message": message, "hint": hint}}, "Err")


class FakeDaemon:
    """Answers `METHOD /path?query` from a table; records each request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: dict[str, Answer] = {}
        self.requests: list[tuple[str, str, object]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            f = conn.makefile("rb")
            method, target, _ = f.readline().decode().split(" ", 2)
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = json.loads(f.read(length)) if length else None
            key = f"{method} {target}"
            self.requests.append((method, target, body))
            answer = self.routes.get(key, error(404, "not_found", f"no route {key}"))
            try:
                if callable(answer):
                    answer(conn)
                elif isinstance(answer, list):
                    for piece in answer:
                        conn.sendall(piece)
                        time.sleep(0.01)
                else:
                    conn.sendall(answer)
            except OSError:
                pass  # the client hung up: fine for a test double

    def close(self) -> None:
        self.stopping = True
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(tmp_path / "fake.sock")
    try:
        yield d
    finally:
        d.close()


def run(fake: FakeDaemon, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["--socket", str(fake.path), *args])
    out, err = capsys.readouterr()
    return status, out, err


CT: dict[str, Any] = {
    "name": "web",
    "template": "busybox",
    "state": "STOPPED",
    "created_at": "2026-11-27T20:00:00Z",
    "config": {"hostname": "web", "init.args": ["-v", "x"], "user.flag": "on"},
    "snapshots": ["snap0"],
    "path": "/var/lib/lxpy/pool/containers/web",
}


# -- the client's HTTP -------------------------------------------------------------


def test_content_length_response(fake: FakeDaemon) -> None:
    fake.routes["GET /1.0/containers"] = http(200, [CT])
    assert Client(fake.path, timeout=5).containers() == [CT]
    assert fake.requests == [("GET", "/1.0/containers", None)]


def test_chunked_response_split_anywhere(fake: FakeDaemon) -> None:
    body = json.dumps([CT, {**CT, "name": "db"}]).encode()
    fake.routes["GET /1.0/containers"] = chunked([body[:3], body[3:50], body[50:]], "x/json")
    assert [c["name"] for c in Client(fake.path, timeout=5).containers()] == ["web", "db"]


def test_body_ended_by_close(fake: FakeDaemon) -> None:
    fake.routes["GET /1.0"] = b'HTTP/1.1 200 OK\r\n\r\n{"api_version": "1.0"}'
    assert Client(fake.path, timeout=5).server_info() == {"api_version": "1.0"}


def test_ndjson_stream_lines_across_chunks(fake: FakeDaemon) -> None:
    lines = b'{"log": "one"}\n{"progress": 0.5, "stage": "s"}\n{"operation": {"id": "x"}}\n'
    fake.routes["GET /1.0/operations/x/stream"] = chunked([lines[:5], lines[5:40], lines[40:]])
    got = list(Client(fake.path, timeout=5).operation_stream("x"))
    assert got == [{"log": "one"}, {"progress": 0.5, "stage": "s"}, {"operation": {"id": "x"}}]


def test_stream_delivers_each_line_before_the_stream_ends(fake: FakeDaemon) -> None:
    release = threading.Event()

    def slow(conn: socket.socket) -> None:
        conn.sendall(chunked([b'{"log": "first"}\n'])[0] + b'11\r\n{"log": "first"}\n\r\n')
        release.wait(5)
        conn.sendall(b"0\r\n\r\n")

    fake.routes["GET /1.0/events"] = slow
    it = Client(fake.path, timeout=5).events()
    assert next(it) == {"log": "first"}
    release.set()
    assert list(it) == []


def test_error_body_maps_to_the_error_class(fake: FakeDaemon) -> None:
    fake.routes["GET /1.0/containers/nope"] = error(404, "not_found", "no container 'nope'", "ls")
    with pytest.raises(NotFound) as info:
        Client(fake.path, timeout=5).container("nope")
    assert (info.value.message, info.value.hint) == ("no container 'nope'", "ls")


def test_error_without_error_body(fake: FakeDaemon) -> None:
    fake.routes["GET /1.0"] = http(502, b"bad gateway", "Bad Gateway")
    with pytest.raises(LxpyError, match="lxpyd answered 502 Bad Gateway"):
        Client(fake.path, timeout=5).server_info()


def test_daemon_hanging_up_is_daemon_unavailable(fake: FakeDaemon) -> None:
    fake.routes["GET /1.0"] = lambda conn: None
    with pytest.raises(DaemonUnavailable, match="lost connection to lxpyd"):
        Client(fake.path, timeout=5).server_info()


def test_truncated_body_is_daemon_unavailable(fake: FakeDaemon) -> None:
    fake.routes["GET /1.0"] = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}"
    with pytest.raises(DaemonUnavailable, match="shorter than its Content-Length"):
        Client(fake.path, timeout=5).server_info()


def test_request_bodies_and_query(fake: FakeDaemon) -> None:
    fake.routes["DELETE /1.0/containers/web?force=1"] = http(200, {})
    fake.routes["PATCH /1.0/containers/web/config"] = http(200, CT)
    c = Client(fake.path, timeout=5)
    c.delete_container("web", force=True)
    c.update_config("web", {"hostname": "h"}, ["user.flag"])
    assert fake.requests[1] == (
        "PATCH",
        "/1.0/containers/web/config",
        {"set": {"hostname": "h"}, "unset": ["user.flag"]},
    )


def test_names_are_one_path_segment() -> None:
    assert quote("../x") == "%2E%2E%2Fx"
    assert quote("a b") == "a%20b"
    assert quote("debian-bookworm") == "debian-bookworm"
    with pytest.raises(InvalidArgument, match="container name must not be empty"):
        Client("/nonexistent").container("")


def test_socket_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LXPY_SOCKET", raising=False)
    assert resolve_socket(None) == "/run/lxpy/lxpy.sock"
    monkeypatch.setenv("LXPY_SOCKET", "/env.sock")
    assert resolve_socket(None) == "/env.sock"
    assert resolve_socket("/arg.sock") == "/arg.sock"


# -- the CLI ---------------------------------------------------------------------


def test_list_table_and_json(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    long = {**CT, "name": "a-much-longer-name", "state": "RUNNING", "snapshots": []}
    fake.routes["GET /1.0/containers"] = http(200, [CT, long])
    status, out, err = run(fake, capsys, "list")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "ADDRESSES", "TEMPLATE", "SNAPSHOTS", "CREATED"]
    assert lines[1].split() == [
        "a-much-longer-name",
        "RUNNING",
        "-",
        "busybox",
        "0",
        CT["created_at"],
    ]
    assert lines[2].split()[:5] == ["web", "STOPPED", "-", "busybox", "1"]
    # Aligned: every column starts at the same offset on every line.
    assert len({line.index("busybox") for line in lines[1:]}) == 1
    assert lines[0].index("TEMPLATE") == lines[1].index("busybox")

    status, out, _ = run(fake, capsys, "list", "--format", "json")
    assert status == 0 and json.loads(out) == [CT, long]
    # Into a pipe, one line; on a terminal, indented for a reader.
    assert out.count("\n") == 1
    with monkeypatch.context() as m:
        m.setattr(sys.stdout, "isatty", lambda: True)
        status, out, _ = run(fake, capsys, "list", "--format", "json")
    assert out == json.dumps([CT, long], indent=2) + "\n"


def test_start_stop_and_console_log(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    running = {**CT, "state": "RUNNING", "init_pid": 4242}
    stopped = {**CT, "last_exit": {"reason": "poweroff", "detail": "powered off"}}
    fake.routes["POST /1.0/containers/web/start"] = http(200, running)
    fake.routes["POST /1.0/containers/web/stop"] = http(200, stopped)
    log = b"web login: "
    fake.routes["GET /1.0/containers/web/console/log"] = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + f"Content-Length: {len(log)}\r\n\r\n".encode()
        + log
    )
    assert run(fake, capsys, "start", "web")[:2] == (0, "started web (init pid 4242)\n")
    status, out, _ = run(fake, capsys, "stop", "web", "--timeout", "5", "--force")
    assert status == 0 and "powered off" in out
    assert fake.requests[-1][2] == {"force": True, "timeout": 5.0}
    assert run(fake, capsys, "console", "web", "--log")[:2] == (0, "web login: \n")
    fake.routes["POST /1.0/containers/web/start"] = error(
        409, "busy", "container 'web' is already running (RUNNING)"
    )
    status, _, err = run(fake, capsys, "start", "web")
    assert status == 1 and "already running" in err


def test_info_and_config_show(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.routes["GET /1.0/containers/web"] = http(200, CT)
    status, out, _ = run(fake, capsys, "info", "web")
    assert status == 0
    assert "state:" in out and "STOPPED" in out and "snap0" in out and CT["path"] in out
    status, out, _ = run(fake, capsys, "config", "show", "web")
    assert out.splitlines() == ["hostname = web", "init.args = -v x", "user.flag = on"]
    status, out, _ = run(fake, capsys, "config", "show", "web", "--format", "json")
    assert json.loads(out) == CT["config"]
    status, out, _ = run(fake, capsys, "config", "show", "web", "hostname")
    assert (status, out) == (0, "web\n")
    status, _, err = run(fake, capsys, "config", "show", "web", "environment.TZ")
    assert status == 1 and "error: container 'web' has no config key 'environment.TZ'" in err


def test_create_sends_config(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.routes["POST /1.0/containers"] = http(201, CT, "Created")
    status, out, _ = run(
        fake, capsys, "create", "web", "-t", "busybox", "--set", "a=b=c", "--set", "user.x="
    )
    assert status == 0 and "created web" in out
    assert fake.requests[-1][2] == {
        "name": "web",
        "template": "busybox",
        "config": {"a": "b=c", "user.x": ""},
    }


def test_set_without_equals_is_a_usage_error(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(fake, capsys, "create", "web", "-t", "busybox", "--set", "hostname")
    assert status == 2 and out == ""
    assert "error: argument --set: expected KEY=VALUE, got 'hostname'" in err
    assert fake.requests == []


def test_config_set_unset_and_snapshots(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.routes["PATCH /1.0/containers/web/config"] = http(200, CT)
    fake.routes["POST /1.0/containers/web/snapshots"] = http(201, {"name": "snap1"})
    fake.routes["POST /1.0/containers/web/snapshots/s1/restore"] = http(200, CT)
    fake.routes["DELETE /1.0/containers/web/snapshots/s1"] = http(200, {})
    fake.routes["GET /1.0/containers/web/snapshots"] = http(
        200, [{"name": "snap0", "created_at": "t0"}, {"name": "s1", "created_at": "t1"}]
    )
    assert run(fake, capsys, "config", "set", "web", "hostname", "h")[0] == 0
    assert run(fake, capsys, "config", "unset", "web", "user.flag")[0] == 0
    assert run(fake, capsys, "snapshot", "create", "web")[1] == "created snapshot web/snap1\n"
    assert run(fake, capsys, "snapshot", "create", "web", "s1")[0] == 0
    assert run(fake, capsys, "snapshot", "restore", "web", "s1")[0] == 0
    assert run(fake, capsys, "snapshot", "delete", "web", "s1")[0] == 0
    out = run(fake, capsys, "snapshot", "list", "web")[1]
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "CREATED"],
        ["snap0", "t0"],
        ["s1", "t1"],
    ]
    bodies = [(m, p, b) for m, p, b in fake.requests if m != "GET"]
    assert bodies == [
        ("PATCH", "/1.0/containers/web/config", {"set": {"hostname": "h"}, "unset": []}),
        ("PATCH", "/1.0/containers/web/config", {"set": {}, "unset": ["user.flag"]}),
        ("POST", "/1.0/containers/web/snapshots", {}),
        ("POST", "/1.0/containers/web/snapshots", {"name": "s1"}),
        ("POST", "/1.0/containers/web/snapshots/s1/restore", None),
        ("DELETE", "/1.0/containers/web/snapshots/s1", None),
    ]


def test_daemon_error_prints_error_and_hint(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.routes["POST /1.0/containers/web/rename"] = error(
        409, "busy", "container 'web' is RUNNING", "stop it first"
    )
    status, out, err = run(fake, capsys, "rename", "web", "db")
    assert (status, out) == (1, "")
    assert err == "error: container 'web' is RUNNING\nhint: stop it first\n"


def test_bad_name_reaches_the_daemon_quoted(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(fake, capsys, "info", "../x")
    assert status == 1 and "error:" in err
    assert fake.requests == [("GET", "/1.0/containers/%2E%2E%2Fx", None)]


def test_template_list(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.routes["GET /1.0/templates"] = http(
        200,
        [
            {"name": "debian-bookworm", "built": False, "stale": False, "description": "Debian"},
            {"name": "busybox", "built": True, "stale": True, "description": "tiny"},
        ],
    )
    out = run(fake, capsys, "template", "list")[1]
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "BUILT", "STALE", "DESCRIPTION"],
        ["busybox", "yes", "yes", "tiny"],
        ["debian-bookworm", "no", "-", "Debian"],
    ]


def _op(status: str, **kw: object) -> dict[str, object]:
    return {"id": "op1", "kind": "template-build", "status": status, "stage": None, **kw}


def test_template_build_streams_log_and_progress(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.routes["POST /1.0/templates/busybox/build"] = http(202, _op("running"), "Accepted")
    fake.routes["GET /1.0/operations/op1/stream"] = chunked(
        [
            b'{"log": "copying busybox"}\n{"progress": 0.5, "stage": "post-build"}\n',
            b'{"log": "done"}\n',
            json.dumps({"operation": _op("success", stage="done")}).encode() + b"\n",
        ]
    )
    status, out, err = run(fake, capsys, "template", "build", "busybox", "--refresh", "-v")
    assert status == 0 and "built template busybox" in out
    assert err.splitlines() == ["copying busybox", "[ 50%] post-build", "done"]
    assert fake.requests[0][2] == {"refresh": True}
    # Without --verbose: the progress only. --force is the older name.
    status, out, err = run(fake, capsys, "template", "build", "busybox", "--force")
    assert status == 0 and "built template busybox" in out
    assert err.splitlines() == ["[ 50%] post-build"]
    posts = [r[2] for r in fake.requests if r[0] == "POST"]
    assert posts == [{"refresh": True}, {"refresh": True}]


def test_template_build_cached(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.routes["POST /1.0/templates/busybox/build"] = http(202, _op("success", stage="cached"))
    status, out, _ = run(fake, capsys, "template", "build", "busybox")
    assert (status, out) == (0, "template busybox is up to date\n")
    assert len(fake.requests) == 1


def test_template_build_failure_exits_non_zero(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = _op("failure", error={"code": "error", "message": "debootstrap failed", "hint": "h"})
    fake.routes["POST /1.0/templates/debian/build"] = http(202, _op("running"))
    fake.routes["GET /1.0/operations/op1/stream"] = chunked(
        [b'{"log": "E: no mirror"}\n', json.dumps({"operation": failed}).encode() + b"\n"]
    )
    status, out, err = run(fake, capsys, "template", "build", "debian")
    assert (status, out) == (1, "")
    # The end of the log, which the error does not quote (the fake daemon
    # knows no template to say where the log is).
    assert err.splitlines() == [
        "the end of the build log:",
        "  E: no mirror",
        "error: debootstrap failed",
        "hint: h",
    ]


def test_template_build_stream_cut_short_asks_for_the_outcome(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.routes["POST /1.0/templates/busybox/build"] = http(202, _op("running"))
    fake.routes["GET /1.0/operations/op1/stream"] = chunked([b'{"log": "x"}\n'])
    fake.routes["GET /1.0/operations/op1/wait"] = http(200, _op("cancelled"))
    status, _, err = run(fake, capsys, "template", "build", "busybox")
    assert status == 1 and "error: the build of template busybox was cancelled" in err


def test_ctrl_c_cancels_the_build_on_the_daemon(fake: FakeDaemon) -> None:
    stream_open = threading.Event()
    cancelled = threading.Event()

    def endless(conn: socket.socket) -> None:
        for piece in chunked([b'{"log": "working"}\n'])[:2]:
            conn.sendall(piece)
        stream_open.set()
        cancelled.wait(10)

    def cancel(conn: socket.socket) -> None:
        cancelled.set()
        conn.sendall(http(200, {}))

    fake.routes["POST /1.0/templates/busybox/build"] = http(202, _op("running"))
    fake.routes["GET /1.0/operations/op1/stream"] = endless
    fake.routes["DELETE /1.0/operations/op1"] = cancel
    proc = subprocess.Popen(
        [*LXPY, "--socket", str(fake.path), "template", "build", "busybox", "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert stream_open.wait(10)
        # The CLI shows the log line once it follows the stream: Ctrl-C then.
        assert proc.stderr is not None
        assert select.select([proc.stderr], [], [], 10)[0], "the CLI showed no log line"
        first = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=10)
        err = first + rest
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert cancelled.is_set()
    assert "working" in err and "error: interrupted; cancelled the build of template busybox" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["bogus"],
        ["create"],
        ["create", "web"],
        ["snapshot"],
        ["list", "--format", "yaml"],
    ):
        assert cli.main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and "error: " in err and "usage: lxpy" in err, argv


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lxpy ")
    assert cli.main(["template", "build", "--help"]) == 0
    assert "--force" in capsys.readouterr().out


def test_every_command_is_reachable() -> None:
    paths = {" ".join(c.path) for c in cli.COMMANDS}
    assert {
        "create",
        "list",
        "info",
        "destroy",
        "rename",
        "copy",
        "config show",
        "config set",
        "config unset",
        "snapshot create",
        "snapshot list",
        "snapshot restore",
        "snapshot delete",
        "template list",
        "template build",
        "template delete",
    } <= paths


# -- in a real process ------------------------------------------------------------


def test_no_daemon_says_how_to_start_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.sock"
    env = {**os.environ, "LXPY_SOCKET": str(missing)}
    res = subprocess.run([*LXPY, "list"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (
        f"error: cannot reach lxpyd at {missing}: No such file or directory\n"
        f"hint: start it in the background with `lxpyd --daemon --socket {missing}` "
        "(log: /var/log/lxpy/lxpyd.log), or point --socket/LXPY_SOCKET at a running daemon\n"
    )


def test_refused_connection_says_how_to_start_it(tmp_path: Path) -> None:
    # A socket file nobody listens on: what a crashed daemon leaves.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(DaemonUnavailable, match="Connection refused") as info:
        Client(stale).containers()
    # The lxpyd named is the one beside the running program (here pytest's
    # .venv/bin/lxpyd) when it is not the one on PATH.
    assert info.value.hint is not None and f"lxpyd --daemon --socket {stale}`" in info.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to try as another user")
def test_permission_denied_hints_at_the_group(tmp_path: Path) -> None:
    path = tmp_path / "private.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o755)
    # The interpreter lives under /root, which another user cannot exec: so
    # fork (no exec) and drop to nobody in the child.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            Client(path, timeout=5).containers()
            os.write(wfd, b"connected")
        except DaemonUnavailable as e:
            os.write(wfd, json.dumps([e.message, e.hint]).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    server.close()
    message, hint = json.loads(data)
    assert message == f"cannot reach lxpyd at {path}: Permission denied"
    # The restricted group first; the other is named as root-equivalent.
    assert "group `lxpy-user`" in hint and "`lxpy` (root-equivalent)" in hint


def test_cli_never_loads_daemon_side_modules() -> None:
    code = "import json, sys, lxpy.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    loaded = set(json.loads(out.stdout))
    forbidden = ("trio", "h11", "pyroute2", "btrfsutil", "textual", "lxpy.daemon")
    bad = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
    assert bad == []
    # Nor the costly stdlib HTTP stack the client was written to avoid.
    assert "http.client" not in loaded


def test_start_and_stop_take_several_names(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in ("a", "b"):
        fake.routes[f"POST /1.0/containers/{n}/start"] = http(200, {**CT, "init_pid": 7})
        fake.routes[f"POST /1.0/containers/{n}/stop"] = http(200, {**CT, "last_exit": None})
    status, out, _ = run(fake, capsys, "start", "a", "b")
    assert status == 0
    assert sorted(out.splitlines()) == ["started a (init pid 7)", "started b (init pid 7)"]
    assert sorted(r[1] for r in fake.requests) == [
        "/1.0/containers/a/start",
        "/1.0/containers/b/start",
    ]
    # One that fails is named; the others still happen.
    status, out, err = run(fake, capsys, "stop", "a", "bad")
    assert status == 1
    assert out == "stopped a\n"
    assert "error: bad: no route POST /1.0/containers/bad/stop" in err
    assert "error: 1 of 2 failed: bad" in err


def _commands(parser: Any) -> list[str]:
    """The top-level command names a parser knows."""
    return list(parser._subparsers._group_actions[0].choices)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["start", "a", "b"], "start"),
        (["--socket", "/x", "stop", "-f", "a"], "stop"),
        (["--socket=/x", "list", "--format", "json"], "list"),
        (["snapshot", "create", "web", "s1"], "snapshot"),
        (["config", "set", "web", "limits.cpu", "2"], "config"),
        (["exec", "web", "--", "ls", "--socket", "x"], "exec"),
    ],
)
def test_parser_for_the_named_command_parses_as_the_full_one(argv: list[str], command: str) -> None:
    lazy = cli.build_parser(argv)
    # Only the named command was built, and it parses as the full table does.
    assert _commands(lazy) == [command]
    assert vars(lazy.parse_args(argv)) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [[], ["-h"], ["--version"], ["nosuch"], ["--socket", "/x"]])
def test_no_known_command_builds_the_full_table(argv: list[str]) -> None:
    assert set(_commands(cli.build_parser(argv))) == {c.path[0] for c in cli.COMMANDS}


def test_a_group_without_a_known_subcommand_builds_the_whole_group(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["snapshot", "nosuch"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: unknown command 'snapshot nosuch'" in err
    # Nothing near it: the hint lists the whole group.
    assert "hint: `lxpy snapshot` has: create, list, restore, delete" in err


def _positional_words(command: cli.Command) -> list[str]:
    words: list[str] = []
    for flags, kw in command.args:
        if not flags[0].startswith("-"):
            words += ["a", "b"] if kw.get("nargs") in ("+", "*") else ["a"]
    return words


def _needs_argparse(command: cli.Command) -> bool:
    """A positional with a checked value (type, choices, everything after
    `--`), or a required option."""
    return any(
        kw.get("required")
        if flags[0].startswith("-")
        else set(kw) - {"nargs", "metavar", "help"} or kw.get("nargs") == cli.REMAINDER
        for flags, kw in command.args
    )


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: " ".join(c.path))
def test_fast_path_parses_as_argparse_does(command: cli.Command) -> None:
    argv = [*command.path, *_positional_words(command)]
    lines = [argv, ["--socket", "/x.sock", *argv], ["--socket=/x.sock", *argv]]
    if any(kw.get("nargs") == "?" for _, kw in command.args):
        lines.append(argv[:-1])  # the optional value left out
    for line in lines:
        fast = cli._fast_args(line)
        assert (fast is None) == _needs_argparse(command), line
        if fast is not None:
            assert vars(fast) == vars(cli.build_parser(line).parse_args(line)), line


def test_fast_path_leaves_options_help_and_mistakes_to_argparse() -> None:
    assert cli._fast_args(["start", "web", "db"]).names == ["web", "db"]
    for line in (
        ["stop", "web", "--force"],
        ["stop", "-t", "5", "web"],
        ["start"],  # NAME missing: argparse's usage error
        ["info", "a", "b"],  # one too many
        ["start", "--help"],
        ["nosuch", "x"],
        ["snapshot", "create"],
        [],
    ):
        assert cli._fast_args(line) is None, line


def test_a_plain_start_imports_no_argparse_json_or_socket() -> None:
    code = (
        "import sys; from lxpy.cli import main; "
        "main(['--socket', '/nonexistent/lxpy.sock', 'start', 'web']); "
        "print(sorted({'argparse', 'json', 'socket', 're', 'enum'} & set(sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    # Nor the packages lxpy.api.wire stands in for, which cost the CLI ~8 ms.
    assert res.stdout.strip() == "[]", res
    assert "cannot reach lxpyd" in res.stderr or "error:" in res.stderr


def test_the_command_ignores_pythonpath_and_site_customisation(tmp_path: Path) -> None:
    # A root tool must not import what the environment points it at; and
    # without site (scripts/write-launcher) it starts ~2.5 ms sooner.
    (tmp_path / "lxpy").mkdir()
    (tmp_path / "lxpy" / "__init__.py").write_text("print('hijacked lxpy')\n")
    (tmp_path / "sitecustomize.py").write_text("print('sitecustomize ran')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run(
        [str(VENV_BIN / "lxpy"), "--version"], capture_output=True, text=True, env=env, timeout=30
    )
    assert res.returncode == 0, res
    assert res.stdout.split() == ["lxpy", cli.__version__], res
    assert "site" not in res.stdout and "hijacked" not in res.stdout
