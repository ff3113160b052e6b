"""A fixed-data stand-in for lxpyd, for screens that must look the same on
every run (snapshot tests): the same containers, times and stats each time.

It speaks the wire of docs/api.md on a unix socket from a thread, so the
app under test uses its real client. Each instance starts from a copy of
the data below, which a test may change (`fake.containers`, ...); the event
stream stays open and quiet until a test sends an event with `emit()`.
Config changes are checked with lxpyd's own parsers (lxpy.model.config).
"""

from __future__ import annotations

import copy
import json
import queue
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lxpy.errors import LxpyError
from lxpy.model.config import parse_value

NOW = "2026-11-27T21:00:00Z"


def _ct(name: str, state: str, template: str = "busybox", **extra: Any) -> dict[str, Any]:
    running = state in ("RUNNING", "FROZEN")
    return {
        "name": name,
        "template": template,
        "state": state,
        "created_at": "2026-11-20T08:00:00Z",
        "config": {"hostname": name},
        "snapshots": [],
        "path": f"/var/lib/lxpy/pool/containers/{name}",
        "error": None,
        "init_pid": 4242 if running else None,
        "started_at": None,
        "last_exit": None,
        **extra,
    }


CONTAINERS = [
    _ct(
        "web",
        "RUNNING",
        "debian-bookworm",
        addresses=["10.87.0.12"],
        started_at="2026-11-27T18:55:30Z",
        stats={"cpu_percent": 3.2, "memory_bytes": 48_300_000},
        config={
            "hostname": "web",
            "boot.autostart": True,
            "limits.memory": "512MiB",
            "network": ["lxpybr0"],
            "init.args": ["--log-level", "info"],
            "limits.cpu.weight": 200,
        },
        snapshots=["before-upgrade", "snap1"],
        owner={"uid": 0, "restricted": False},
    ),
    _ct(
        "db",
        "RUNNING",
        "debian-bookworm",
        addresses=["10.87.0.13"],
        started_at="2026-11-25T07:12:00Z",
        stats={"cpu_percent": 12.5, "memory_bytes": 310_000_000},
    ),
    _ct(
        "cache",
        "FROZEN",
        addresses=["10.87.0.14"],
        started_at="2026-11-27T20:59:18Z",
        stats={"cpu_percent": 0.0, "memory_bytes": 2_100_000},
    ),
    _ct("builder", "STOPPED", "debian-bookworm"),
    _ct("scratch", "STOPPED"),
    {**_ct("broken", "ERROR"), "error": "record file unreadable: unexpected '=' at line 3"},
]

SNAPSHOTS = {
    "web": [
        {"name": "before-upgrade", "created_at": "2026-11-21T10:00:00Z"},
        {"name": "snap1", "created_at": "2026-11-26T16:30:00Z"},
    ]
}

# A Debian console as systemd writes it: colours, CR LF line ends, a status
# line redrawn after a lone CR, an erase-to-end-of-line sequence.
SYSTEMD_CONSOLE = (
    "systemd 252.39-1~deb12u2 running in system mode (+PAM +AUDIT +SELINUX +APPARMOR +IMA "
    "+SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS)\r\r\n"
    "\r\nWelcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!\r\n\r\r\n"
    + "".join(
        f"[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39munit{i}.service\x1b[0m - Unit {i}.\r\r\n"
        for i in range(1, 9)
    )
    + "[  ***] A start job is running for network.target\r"
    "[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mnetwork.target\x1b[0m.\x1b[K\r\n"
    "\r\nDebian GNU/Linux 12 web console\r\n\r\nweb login: "
)

CONSOLE = {"web": SYSTEMD_CONSOLE}

TEMPLATES = [
    {"name": "busybox", "description": "BusyBox", "kind": "busybox", "built": True, "stale": False},
    {
        "name": "debian-bookworm",
        "description": "Debian 12",
        "kind": "debootstrap",
        "built": False,
        "stale": False,
    },
]

NETWORKS = [{"name": "lxpybr0", "subnet": "10.87.0.0/24", "gateway": "10.87.0.1", "nat": True}]

INFO = {"api_version": "1.0", "version": "0.1.0", "root": "/var/lib/lxpy", "pid": 1}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: object, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _missing(self) -> None:
        self._send(404, {"error": {"code": "not_found", "message": "no such thing", "hint": None}})

    def _path(self) -> list[str]:
        return [unquote(p) for p in urlsplit(self.path).path.split("/") if p]

    def _events(self) -> None:
        # Subscribed before the answer begins, as lxpyd is: an event sent
        # once a client holds the stream reaches it.
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        fake = self.server.fake
        with fake.lock:
            fake.subscribers.append(events)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        while (event := events.get()) is not None:
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        path = self._path()
        fake = self.server.fake
        cts = {c["name"]: c for c in fake.containers}
        if path == ["1.0"]:
            self._send(200, INFO)
        elif path == ["1.0", "events"]:
            self._events()
        elif path == ["1.0", "containers"]:
            self._send(200, fake.containers)
        elif path == ["1.0", "networks"]:
            self._send(200, NETWORKS)
        elif path == ["1.0", "templates"]:
            self._send(200, fake.templates)
        elif len(path) == 3 and path[1] == "containers" and path[2] in cts:
            self._send(200, cts[path[2]])
        elif path[1:2] == ["containers"] and path[3:] == ["snapshots"] and path[2] in cts:
            self._send(200, fake.snapshots.get(path[2], []))
        elif path[1:2] == ["containers"] and path[3:] == ["console", "log"] and path[2] in cts:
            if path[2] in fake.console:
                self._send(200, fake.console[path[2]], "text/plain")
            else:
                self._missing()
        else:
            self._missing()

    def do_PATCH(self) -> None:
        path = self._path()
        cts = {c["name"]: c for c in self.server.fake.containers}
        if not (path[1:2] == ["containers"] and path[3:] == ["config"] and path[2] in cts):
            self._missing()
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            parsed = {k: parse_value(k, v) for k, v in body.get("set", {}).items()}
        except LxpyError as e:
            error = {"code": "invalid_argument", "message": e.message, "hint": e.hint}
            self._send(400, {"error": error})
            return
        config = cts[path[2]]["config"]
        config.update(parsed)
        for key in body.get("unset", []):
            config.pop(key, None)
        self._send(200, cts[path[2]])


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, fake: FakeLxpyd) -> None:
        self.fake = fake
        super().__init__(path, _Handler)


class FakeLxpyd:
    """Serve (a copy of) the fixed data on `socket` until stop().

    Args:
        socket: where to listen.
        containers: the containers to serve instead of CONTAINERS.
    """

    def __init__(self, socket: Path, containers: list[dict[str, Any]] | None = None) -> None:
        self.socket = socket
        self.containers = copy.deepcopy(CONTAINERS if containers is None else containers)
        self.snapshots = copy.deepcopy(SNAPSHOTS)
        self.console = dict(CONSOLE)
        self.templates = copy.deepcopy(TEMPLATES)
        self.lock = threading.Lock()
        self.subscribers: list[queue.Queue[dict[str, Any] | None]] = []
        self._server = _Server(str(socket), self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def container(self, name: str) -> dict[str, Any]:
        """The served object of container `name` (changes show at the next GET)."""
        return next(c for c in self.containers if c["name"] == name)

    def emit(self, event: dict[str, Any]) -> None:
        """Send `event` on every open event stream."""
        with self.lock:
            for events in self.subscribers:
                events.put(event)

    def start(self) -> FakeLxpyd:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            for events in self.subscribers:
                events.put(None)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.socket.unlink(missing_ok=True)
