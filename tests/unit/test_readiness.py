"""The two ways a container says it has booted (lxpy.runtime.readiness), on
real sockets and FIFOs: what counts as READY, and from whom."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lxpy.runtime import readiness


def test_ready_is_a_whole_assignment_line() -> None:
    assert readiness.says_ready(b"READY=1")
    assert readiness.says_ready(b"STATUS=Startup finished in 1s.\nREADY=1\n")
    assert not readiness.says_ready(b"READY=0\n")
    assert not readiness.says_ready(b"NOTREADY=1\n")
    assert not readiness.says_ready(b"STATUS=READY=1\n")
    assert not readiness.says_ready(b"")


def _endpoints(tmp_path: Path) -> tuple[socket.socket, Path]:
    # A directory deeper than a socket path may be long: the endpoints are
    # made from within it.
    host = tmp_path / ("d" * 100) / "run" / "host"
    host.mkdir(parents=True)
    sock = readiness.notify_socket()
    readiness.make_endpoints(str(host), sock.fileno())
    return sock, host


def test_only_init_counts_on_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, host = _endpoints(tmp_path)
    with sock:
        assert oct((host / "notify").stat().st_mode & 0o777) == oct(0o600)
        monkeypatch.chdir(host)  # the path is too long to name whole
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"READY=1\n", "notify")
            # Sent by this process: READY from anyone but init is no boot.
            assert not readiness.read_socket(sock, init_pid=os.getpid() + 1)
            sender.sendto(b"STATUS=booting\n", "notify")
            assert not readiness.read_socket(sock, init_pid=os.getpid())
            sender.sendto(b"READY=1\nSTATUS=Startup finished\n", "notify")
            assert readiness.read_socket(sock, init_pid=os.getpid())
        # Nothing left: a read finds nothing and says so.
        assert not readiness.read_socket(sock, init_pid=os.getpid())


def test_the_fifo_takes_a_ready_line_from_anyone(tmp_path: Path) -> None:
    sock, host = _endpoints(tmp_path)
    sock.close()
    fifo = host / "ready"
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert not readiness.read_fifo(fd)  # nothing written yet: no block
        # A writer opens and closes, as `echo READY=1 > /run/host/ready` does.
        with open(fifo, "w") as w:
            w.write("hello\n")
        assert not readiness.read_fifo(fd)
        with open(fifo, "w") as w:
            w.write("READY=1\n")
        assert readiness.read_fifo(fd)
    finally:
        os.close(fd)
