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

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]

# The zygote's own serve loop, forking monitors (directly, or as spares
# when argv[2] is "spares"), with a child that reports the counter (a new
# dict's stamp, at offset 24 of a PyDictObject in CPython 3.11) where it
# would run its monitor, and says whether it was a spare.
_ZYGOTE = f"""
import ctypes, os, sys
sys.path.insert(0, {str(ROOT)!r})
from lxpy.runtime import zygote
from lxpy.kernel import syscalls

def _monitor(conn, args):
    stamp = ctypes.c_uint64.from_address(id({{}}) + 24).value
    with open(f"/proc/{{os.getpid()}}/comm") as f:
        comm = f.read().strip()
    conn.sendall(f"{{stamp}} {{comm}}\\n".encode())
    os._exit(0)

zygote._monitor = _monitor
zygote.serve(sys.argv[1], spares=sys.argv[2] == "spares")
"""


def _ask(path: Path, line: bytes) -> str:
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
        s.sendall(line)
        return s.makefile().readline().strip()


def _spare(zygote: int, used: set[int]) -> int:
    """A live spare the zygote has forked and no spawn has taken yet, or 0."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in used:
            continue
        try:
            comm, _, rest = (p / "stat").read_text().partition(" (")[2].rpartition(") ")
        except OSError:
            continue
        state, ppid = rest.split()[:2]
        if comm == "lxpy-spare" and int(ppid) == zygote and state != "Z":
            return int(p.name)
    return 0


def _stamps(tmp_path: Path, mode: str) -> list[str]:
    path = tmp_path / "z.sock"
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _ZYGOTE, str(path), mode])
    try:
        # Once it answers it serves from its loop: any wait from here on
        # is one the zygote is idle in.
        assert '"ok": true' in _ask(path, b"ping {}\n")
        stamps: list[str] = []
        used: set[int] = set()
        for _ in range(5):
            if mode == "spares":
                # Idle, it forks a spare: each spawn goes to one.
                used.add(wait_for(lambda u=used: _spare(proc.pid, u), 10, "a spare"))  # type: ignore[misc]
            stamps.append(_ask(path, b'spawn {"spec": {}}\n'))
    finally:
        proc.kill()
        proc.wait()
    return stamps


def test_every_fork_starts_from_the_same_dict_counter(tmp_path: Path) -> None:
    stamps = _stamps(tmp_path, "no-spares")
    assert len(set(stamps)) == 1, stamps
    assert stamps[0].endswith(" lxpy-zygote"), stamps  # forked on request


def test_every_spare_starts_from_the_same_dict_counter(tmp_path: Path) -> None:
    stamps = _stamps(tmp_path, "spares")
    assert len(set(stamps)) == 1, stamps
    assert stamps[0].endswith(" lxpy-spare"), stamps
