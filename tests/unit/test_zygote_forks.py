"""The zygote forks every monitor from the same state.

CPython 3.11 stamps every dict it makes or changes with the next value of
one global counter. Had the zygote made or changed dicts between two forks,
each monitor would carry other stamps in every dict it writes later, and
pages that are otherwise alike across monitors could not be merged by ksmd.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The zygote's own serve loop, with a _spawn that forks as the real one
# does and has the child report the counter (a new dict's stamp, at offset
# 24 of a PyDictObject in CPython 3.11) instead of running a monitor.
_ZYGOTE = f"""
import ctypes, os, sys
sys.path.insert(0, {str(ROOT)!r})
from lxpy.runtime import zygote

def _spawn(listener, conn, args=None):
    if os.fork() == 0:
        stamp = ctypes.c_uint64.from_address(id({{}}) + 24).value
        conn.sendall(str(stamp).encode() + b"\\n")
        os._exit(0)

zygote._spawn = _spawn
zygote.serve(sys.argv[1])
"""


def _stamp(path: Path) -> int:
    deadline = time.monotonic() + 10
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        while True:
            try:
                s.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                # Not listening yet: the zygote warms up first.
                assert time.monotonic() < deadline
                time.sleep(0.01)
        s.sendall(b'spawn {"spec": {}}\n')
        return int(s.makefile().readline())


def test_every_fork_starts_from_the_same_dict_counter(tmp_path: Path) -> None:
    path = tmp_path / "z.sock"
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _ZYGOTE, str(path)])
    try:
        stamps = [_stamp(path) for _ in range(5)]
    finally:
        proc.kill()
        proc.wait()
    assert len(set(stamps)) == 1, stamps
