"""lxpy.network.dnsmasq's process side: finding the dnsmasq of a network by
its pid file and command line, ending it, its log, and the DHCPRELEASE it
is sent. Stand-in processes carry a dnsmasq-like command line."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.network import dnsmasq
from tests.conftest import wait_for

CODE = "import time; time.sleep(60)"


@pytest.fixture
def paths(tmp_path: Path) -> dnsmasq.Paths:
    return dnsmasq.Paths(
        tmp_path / "leases", tmp_path / "hosts", tmp_path / "dnsmasq.pid", tmp_path / "log"
    )


@pytest.fixture
def served(paths: dnsmasq.Paths) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """A process whose command line serves `paths` (as dnsmasq's would), its
    pid in the pid file; and that command line."""
    cmd = [sys.executable, "-c", CODE, f"--pid-file={paths.pid}", "--interface=br9"]
    proc = subprocess.Popen(cmd)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    wait_for(lambda: cmd[-1].encode() in cmdline.read_bytes(), 10, "the stand-in's exec")
    paths.pid.write_text(f"{proc.pid}\n")
    try:
        yield proc, cmd
    finally:
        proc.kill()
        proc.wait()


def test_found_by_pid_file_and_command_line(
    paths: dnsmasq.Paths, served: tuple[subprocess.Popen[bytes], list[str]]
) -> None:
    proc, cmd = served
    found = dnsmasq.find(paths)
    assert found is not None and found[0] == proc.pid
    os.close(found[1])
    assert dnsmasq.runs(proc.pid, cmd)
    # Another configuration, or another binary, is not what lxpyd would run.
    assert not dnsmasq.runs(proc.pid, [*cmd[:-1], "--interface=br8"])
    assert not dnsmasq.runs(proc.pid, ["/usr/sbin/dnsmasq", *cmd[1:]])


def test_a_pid_file_naming_another_process_finds_none(paths: dnsmasq.Paths) -> None:
    assert dnsmasq.find(paths) is None  # no pid file
    paths.pid.write_text(f"{os.getpid()}\n")  # a process not serving these files
    assert dnsmasq.find(paths) is None
    paths.pid.write_text("")  # cut short
    assert dnsmasq.find(paths) is None


def test_kill_stale_ends_it(
    paths: dnsmasq.Paths, served: tuple[subprocess.Popen[bytes], list[str]]
) -> None:
    proc, _ = served
    dnsmasq.kill_stale(paths)
    assert proc.wait(timeout=10) == -15
    dnsmasq.kill_stale(paths)  # none left: nothing to do


def test_the_log_is_cut_past_its_limit(
    paths: dnsmasq.Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnsmasq, "LOG_MAX", 10)
    dnsmasq.rotate_log(paths.log)  # none yet
    paths.log.write_text("short\n")
    dnsmasq.rotate_log(paths.log)
    assert paths.log.read_text() == "short\n"
    paths.log.write_text("a longer line\n")
    with paths.log.open("a") as writer:  # as dnsmasq holds it: appending
        dnsmasq.rotate_log(paths.log)
        writer.write("next\n")
    assert paths.log.with_name("log.1").read_text() == "a longer line\n"
    assert paths.log.read_text() == "next\n"


def test_the_release_packet_is_a_dhcprelease_of_the_lease() -> None:
    pkt = dnsmasq.release_packet("10.87.5.9", "02:11:22:33:44:55", "10.87.5.1")
    op, htype, hlen, hops = pkt[:4]
    assert (op, htype, hlen, hops) == (1, 1, 6, 0)
    assert socket.inet_ntoa(pkt[12:16]) == "10.87.5.9"  # ciaddr
    assert pkt[16:28] == bytes(12)  # yiaddr, siaddr, giaddr
    assert pkt[28:44] == bytes.fromhex("021122334455") + bytes(10)  # chaddr
    assert struct.unpack("!I", pkt[236:240])[0] == 0x63825363
    # Message type 7 (DHCPRELEASE), server identifier, end; no client id.
    assert pkt[240:] == bytes([53, 1, 7, 54, 4, 10, 87, 5, 1, 255])
