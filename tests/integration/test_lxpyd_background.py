"""`lxpyd --daemon`: a real daemon that goes to the background, serves its
socket, logs where it says and stops on SIGTERM from its pid file."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.api.client import Client
from tests.conftest import VENV_BIN, alive, forget_host_ids, stop_containers, unmount_all_under

pytestmark = pytest.mark.integration

SETTINGS = 'pool_size = "3GiB"\ndefault_network = ""\nlxcfs = "off"\n'


def lxpyd(tmp_path: Path, root: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`lxpyd --daemon` on tmp_path/ROOT with its own socket; returns once it has."""
    (tmp_path / root).mkdir(exist_ok=True)
    conf = tmp_path / "lxpyd.toml"
    conf.write_text(SETTINGS)
    args = ["--root", str(tmp_path / root), "--socket", str(tmp_path / f"{root}.sock")]
    return subprocess.run(
        [str(VENV_BIN / "lxpyd"), "--daemon", "--config", str(conf), *args, *extra],
        capture_output=True,
        text=True,
        timeout=180,
    )


def wait_gone(pid: int) -> None:
    """Until process `pid` (not our child) has ended."""
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], 60)[0], f"lxpyd {pid} did not stop"
    finally:
        os.close(fd)


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[list[int]]:
    """Pids to kill at the end (daemons that outlived a failed test), then
    what they left: containers, host ID records, mounts."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
    for root in ("root", "other"):
        if (tmp_path / root).is_dir():
            stop_containers(tmp_path / root)
            forget_host_ids(tmp_path / root)
    unmount_all_under(tmp_path)


def test_lxpyd_daemon_detaches_serves_and_logs_where_it_says(
    tmp_path: Path, cleanup: list[int]
) -> None:
    log = tmp_path / "log" / "lxpyd.log"
    pid_file = tmp_path / "run" / "lxpyd.pid"
    sock = tmp_path / "root.sock"
    res = lxpyd(tmp_path, "root", "--log-file", str(log), "--pid-file", str(pid_file))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    pid = int(pid_file.read_text())
    cleanup.append(pid)

    # It answers as soon as the command has returned.
    assert Client(sock, timeout=30).containers() == []
    assert alive(pid)
    # Detached: a session of its own that it does not lead (so it can never
    # get a terminal back), no controlling terminal, stdin from /dev/null,
    # stdout and stderr into the log.
    assert os.getsid(pid) not in (os.getsid(0), pid)
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    assert stat[4] == "0", stat  # tty_nr
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
    assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
    text = log.read_text()
    assert re.search(
        rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d lxpyd: lxpyd ready: root {tmp_path / 'root'}, "
        rf"socket {sock}$",
        text,
        re.M,
    ), text
    assert "<6>" not in text

    # A second one on the same root does not start, and says why and where
    # the log is.
    res = lxpyd(tmp_path, "root", "--log-file", str(log), "--pid-file", str(tmp_path / "2.pid"))
    assert res.returncode == 1
    assert f"error: another lxpyd is already running for {tmp_path / 'root'} (pid {pid})" in (
        res.stderr
    )
    assert res.stderr.endswith(f"error: lxpyd did not start; its log is {log}\n")
    assert not (tmp_path / "2.pid").exists()
    # One on another root does not take over the running one's pid file.
    res = lxpyd(tmp_path, "other", "--log-file", str(log), "--pid-file", str(pid_file))
    assert res.returncode == 1
    assert f"error: pid file {pid_file} belongs to another lxpyd (pid {pid})" in res.stderr
    assert int(pid_file.read_text()) == pid
    assert Client(sock, timeout=30).containers() == []

    # SIGTERM to the pid in the pid file stops it, and it removes the pid
    # file and its socket.
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not pid_file.exists() and not sock.exists()
    assert log.read_text().rstrip().endswith("lxpyd: lxpyd stopped")


def test_lxpyd_daemon_refuses_what_it_cannot_do_in_the_foreground(tmp_path: Path) -> None:
    # A log file it cannot open: said at once, nothing forked.
    res = lxpyd(tmp_path, "root", "--log-file", "/proc/no-such/lxpyd.log")
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot open the log file /proc/no-such/lxpyd.log: ")
    assert not (tmp_path / "root.sock").exists()
    assert list((tmp_path / "root").iterdir()) == []
    # --log-file and --pid-file mean nothing without --daemon.
    res = subprocess.run(
        [str(VENV_BIN / "lxpyd"), "--log-file", str(tmp_path / "x.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "--log-file and --pid-file go with --daemon" in res.stderr
    assert not (tmp_path / "x.log").exists()
