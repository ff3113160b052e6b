"""A fixed-data stand-in for lxpyd, for screens that must look the same on
every run (snapshot tests): the same containers, times and stats each time.

It speaks the wire of docs/api.md on a unix socket from a thread, so the
app under test uses its real client; the event stream stays open and quiet.
"""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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
        config={"hostname": "web", "autostart": True, "limits.memory": "512MiB"},
        snapshots=["before-upgrade", "snap1"],
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

CONSOLE = {"web": "".join(f"[  {i}.000000] boot step {i}\n" for i in range(1, 9)) + "web login: "}

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

    def do_GET(self) -> None:
        path = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        cts = {c["name"]: c for c in CONTAINERS}
        if path == ["1.0"]:
            self._send(200, INFO)
        elif path == ["1.0", "events"]:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            self.server.quit.wait()
            self.close_connection = True
        elif path == ["1.0", "containers"]:
            self._send(200, CONTAINERS)
        elif path == ["1.0", "networks"]:
            self._send(200, NETWORKS)
        elif path == ["1.0", "templates"]:
            self._send(200, TEMPLATES)
        elif len(path) == 3 and path[1] == "containers" and path[2] in cts:
            self._send(200, cts[path[2]])
        elif path[1:2] == ["containers"] and path[3:] == ["snapshots"] and path[2] in cts:
            self._send(200, SNAPSHOTS.get(path[2], []))
        elif path[1:2] == ["containers"] and path[3:] == ["console", "log"] and path[2] in cts:
            if path[2] in CONSOLE:
                self._send(200, CONSOLE[path[2]], "text/plain")
            else:
                self._missing()
        else:
            self._missing()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.quit = threading.Event()
        super().__init__(path, _Handler)


class FakeLxpyd:
    """Serve the fixed data on `socket` until stop()."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._server = _Server(str(socket))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeLxpyd:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.quit.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.socket.unlink(missing_ok=True)
