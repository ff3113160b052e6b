"""When lxpyd takes a dnsmasq it started as ready: its pid in its pid file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from lxpy.daemon import dnsmasqd


@pytest.mark.trio
async def test_an_empty_or_partial_pid_file_is_not_ready_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dnsmasq creates the file before it writes its pid: read in between,
    # the file is empty (which once made a network create fail with an
    # internal error) or holds a prefix of the pid.
    monkeypatch.setattr(dnsmasqd, "READY_TIMEOUT", 0.3)
    pidfile = tmp_path / "dnsmasq.pid"
    proc = await trio.lowlevel.open_process(["sleep", "30"], stdout=subprocess.DEVNULL)
    try:
        for text in ("", "\n", str(proc.pid)[:-1] + "\n"):
            pidfile.write_text(text)
            assert await dnsmasqd.wait_ready(proc, pidfile) is False
        pidfile.write_text(f"{proc.pid}\n")
        assert await dnsmasqd.wait_ready(proc, pidfile) is True
    finally:
        proc.kill()
        await proc.wait()
