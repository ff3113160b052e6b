"""lxpyd always comes back: nothing a killed lxpyd leaves keeps the next one out.

A helper lxpyd forks (lxpy.kernel.namespaces: a process parked until lxpyd kills
it) dies with lxpyd and never holds the root's lock; and a lock, or an API
socket, held by leftovers of a killed lxpyd (helpers of an earlier version
did hold both) is taken over. A live lxpyd of the same root still keeps a
second one out, also when two start at once.

The "lxpyd" killed here is a small Python process that does what lxpyd
does with the lock (and, for the leftovers, what an earlier lxpyd did):
killed while its helper is parked, it leaves what a killed lxpyd leaves.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.model.paths import RootPaths
from tests.conftest import (
    REPO,
    VENV_BIN,
    Daemon,
    alive,
    forget_host_ids,
    start_daemon,
    stop_containers,
    stop_daemon,
    unmount_all_under,
    wait_for,
)

pytestmark = pytest.mark.integration

SETTINGS = 'pool_size = "3GiB"\ndefault_network = ""\nlxcfs = "off"\n'

# lxpyd's own lock, and a helper forked from a worker thread (as
# trio.to_thread runs lxpy.kernel.namespaces' calls) and parked, its pid printed.
PARKED_HELPER = """
import sys, threading
from pathlib import Path
from lxpy.daemon import rootlock
from lxpy.kernel import namespaces

rootlock.take(Path(sys.argv[1]))

def call():
    pid, r = namespaces._helper(lambda: None)
    namespaces._await_byte(r, pid, "helper")
    print(pid, flush=True)
    threading.Event().wait()  # mid-call when the kill comes

threading.Thread(target=call).start()
"""

# What an earlier lxpyd did: its lock and API socket, then a fork (no
# PDEATHSIG, nothing closed) parked for good; its pid printed.
EARLIER_LXPYD = """
import fcntl, os, signal, socket, sys
fd = os.open(sys.argv[1] + "/lxpyd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[2])
listener.listen(8)
pid = os.fork()
if pid == 0:
    while True:
        signal.pause()
print(pid, flush=True)
signal.pause()
"""


def _lxpyd_stand_in(script: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    """Run `script` as the stand-in lxpyd; returns it and the pid it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"stand-in lxpyd printed {line!r}"
    return proc, int(line)


def _sigkill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def _ended(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` ends within `timeout` seconds (waiting on a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _holds(pid: int, path: Path) -> bool:
    st = path.stat()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            other = fd.stat()
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


@contextlib.contextmanager
def a_root(tmp_path: Path) -> Iterator[tuple[Path, Path, list[Daemon]]]:
    """A root, socket path and a list for the daemons the test starts; at the
    end they, their containers and every mount under tmp_path go."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "root-lxpyd.toml").write_text(SETTINGS)
    daemons: list[Daemon] = []
    try:
        yield root, tmp_path / "lxpy.sock", daemons
    finally:
        for d in daemons:
            stop_daemon(d)
        stop_containers(root)
        forget_host_ids(root)
        unmount_all_under(tmp_path)


def _lxpyd_args(root: Path, sock: Path) -> list[str]:
    conf = root.parent / f"{root.name}-lxpyd.toml"
    return [str(VENV_BIN / "lxpyd"), "--root", str(root), "--socket", str(sock)] + [
        "--config",
        str(conf),
    ]


def test_a_helper_dies_with_lxpyd_and_never_holds_the_lock(tmp_path: Path) -> None:
    with a_root(tmp_path) as (root, sock, daemons):
        lxpyd, helper = _lxpyd_stand_in(PARKED_HELPER, str(root))
        try:
            assert alive(helper)
            # Forked while lxpyd held the lock, it does not hold it.
            assert not _holds(helper, RootPaths(root).lock)
            _sigkill(lxpyd)
            assert _ended(helper), f"helper {helper} outlived the killed lxpyd"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper, signal.SIGKILL)
            _sigkill(lxpyd)
        conf = str(tmp_path / "root-lxpyd.toml")
        d = start_daemon(root, sock, tmp_path / "lxpyd.log", "--config", conf)
        daemons.append(d)
        assert d.cli("list").returncode == 0
        assert "taking it over" not in d.log.read_text()


def test_leftovers_holding_the_lock_and_socket_are_taken_over(tmp_path: Path) -> None:
    with a_root(tmp_path) as (root, sock, daemons):
        earlier, leftover = _lxpyd_stand_in(EARLIER_LXPYD, str(root), str(sock))
        try:
            _sigkill(earlier)
            assert alive(leftover) and _holds(leftover, RootPaths(root).lock)
            # Two lxpyds start at once: one runs, the other is refused.
            logs = [tmp_path / f"lxpyd{i}.log" for i in range(2)]
            procs = []
            for log in logs:
                with log.open("ab") as f:
                    procs.append(
                        subprocess.Popen(
                            _lxpyd_args(root, sock), stdout=f, stderr=f, start_new_session=True
                        )
                    )
            try:
                refused = wait_for(
                    lambda: [i for i, p in enumerate(procs) if p.poll() is not None],
                    60,
                    "one of two lxpyds to be refused",
                )
                assert len(refused) == 1, [log.read_text() for log in logs]
                loser, winner = refused[0], 1 - refused[0]
                d = Daemon(root, sock, procs[winner], logs[winner])
                daemons.append(d)
                assert procs[loser].returncode == 1
                assert (
                    f"another lxpyd is already running for {root} (pid {procs[winner].pid})"
                    in logs[loser].read_text()
                )
                wait_for(lambda: d.cli("list", check=False).returncode == 0, 60, "lxpyd to serve")
            finally:
                for p in procs:
                    if p.poll() is None and all(p is not d.proc for d in daemons):
                        p.kill()
                        p.wait()
            text = d.log.read_text()
            assert f"held by process {leftover}, not by the lxpyd it names" in text, text
            assert (RootPaths(root).lock).read_text().strip() == str(d.proc.pid)
            # A real second lxpyd of the same root is refused.
            res = subprocess.run(
                _lxpyd_args(root, tmp_path / "2.sock"), capture_output=True, text=True, timeout=60
            )
            assert res.returncode == 1
            assert f"another lxpyd is already running for {root} (pid {d.proc.pid})" in res.stderr
            assert not (tmp_path / "2.sock").exists()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
            _sigkill(earlier)
