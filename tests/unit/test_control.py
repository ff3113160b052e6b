"""A monitor that ends with a request unanswered (its container stopped on
its own meanwhile): both clients of its control socket say so as
DaemonUnavailable, which a stop takes as "it ended" (lifecycle.stop_locked).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lxpy.daemon.monitors import monitor_request
from lxpy.errors import DaemonUnavailable
from lxpy.runtime.control import MonitorClient


@pytest.fixture(params=["read, then close", "close unread"])
def ending_monitor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A control socket whose monitor closes each connection unanswered:
    after reading the request (the client sees EOF), or with the request
    still unread (the client's read fails with ECONNRESET)."""
    path = tmp_path / "monitor.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    read_first = request.param == "read, then close"

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if read_first:
                    conn.recv(65536)
                else:
                    # The request is in the queue once its line arrived.
                    conn.recv(1, socket.MSG_PEEK)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        t.join(5)


def test_the_sync_client_says_the_monitor_is_gone(ending_monitor: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="closed the connection before answering"):
        MonitorClient(str(ending_monitor)).request("kill", wait=5)


def test_lxpyd_says_the_monitor_is_gone(ending_monitor: Path) -> None:
    async def main() -> None:
        await monitor_request(ending_monitor, "kill", wait=5)

    with pytest.raises(DaemonUnavailable, match="before answering 'kill'"):
        trio.run(main)
