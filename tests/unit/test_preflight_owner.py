"""Who holds a port, as the network preflight names it: the process on the
address the bridge needs, not any process on that port (every bridge's
dnsmasq holds 53 on its own gateway)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from lxpy.network.preflight import socket_owner

# Holds 127.0.0.2:PORT (argv[1]) until its stdin closes.
HOLDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.2", int(sys.argv[1])))
s.listen(1)
print("up", flush=True)
sys.stdin.read()
"""


def test_the_owner_is_the_one_on_that_address() -> None:
    mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    mine.bind(("127.0.0.3", 0))
    mine.listen(1)
    port = mine.getsockname()[1]
    other = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "up"
        assert socket_owner("127.0.0.3", port, ("tcp",)).startswith(f"pid {os.getpid()} (")
        assert socket_owner("127.0.0.2", port, ("tcp",)).startswith(f"pid {other.pid} (")
        # The wildcard collides with both; another address with neither.
        assert socket_owner("0.0.0.0", port, ("tcp",)) != ""
        assert socket_owner("127.0.0.4", port, ("tcp",)) == ""
    finally:
        mine.close()
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=10)
        other.stdout.close()  # type: ignore[union-attr]
