"""Running build tools as children of the trio daemon.

Every tool runs in a session of its own so that cancelling a build can kill
the whole tree it started (debootstrap forks wget/dpkg/chroot, mmdebstrap
forks apt and dpkg), not just the process we spawned.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from lxpy.errors import LxpyError
from lxpy.revert import AsyncRevert

# Lines can end in \n, \r\n or a bare \r (progress bars rewrite one line).
_EOL = re.compile(rb"[\r\n]")

# SIGTERM first lets mmdebstrap/debootstrap unmount what they mounted inside
# the target; after this many seconds the rest of the group gets SIGKILL.
TERM_GRACE = 5.0
# How long to wait for SIGKILLed processes to be gone.
KILL_WAIT = 5.0


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running. Zombies do not
    count: they hold no files, and whoever inherited them reaps them (on
    some hosts PID 1 does so only every second or so)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


async def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the group and wait until they are gone:
    the caller deletes the target next, and a dying process may still hold
    files or its working directory there."""
    _killpg(pgid, signal.SIGKILL)
    with trio.move_on_after(KILL_WAIT):
        # Members are children of other processes (or reparented to init),
        # so there is no pidfd to wait on; they die within milliseconds of
        # SIGKILL.
        while await trio.to_thread.run_sync(_group_alive, pgid):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def _stop_group(proc: trio.Process, grace: float) -> None:
    """Graceful then firm: SIGTERM the group, wait, SIGKILL what is left."""
    _killpg(proc.pid, signal.SIGTERM)
    with trio.move_on_after(grace):
        await proc.wait()
    # The leader may be gone while children it left in the group live on.
    _killpg(proc.pid, signal.SIGKILL)
    with trio.move_on_after(10):
        await proc.wait()
    await _kill_group(proc.pid)


async def run_logged(
    argv: Sequence[str | os.PathLike[str]],
    log: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    grace: float = TERM_GRACE,
    name: str = "",
) -> None:
    """Run `argv`, passing each line of its stdout and stderr to `log`;
    errors name it `name` (default: `argv[0]`; for a wrapper, what it runs).

    Cancellation kills the process and everything in its session (SIGTERM,
    then SIGKILL after `grace` seconds) before the cancellation propagates.

    Raises:
        LxpyError: the program does not exist, or it exited non-zero (the
            message names it and the exit status and carries its last lines).
    """
    name = name or os.fspath(argv[0])
    try:
        proc = await trio.lowlevel.open_process(
            [os.fspath(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError:
        raise LxpyError(f"cannot run {name}: program not found") from None
    tail: deque[str] = deque(maxlen=15)
    stdout = proc.stdout
    assert stdout is not None

    def emit(raw: bytes) -> None:
        if raw.strip():
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            log(line)

    async def read_lines() -> None:
        buf = b""
        while chunk := await stdout.receive_some(65536):
            buf += chunk
            *lines, buf = _EOL.split(buf)
            for raw in lines:
                emit(raw)
        emit(buf)

    try:
        async with AsyncRevert(f"run {name}") as rv:
            rv.undo(lambda: _stop_group(proc, grace), f"stop {name} and its session")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_lines)
                rc = await proc.wait()
                # A background child the tool left in its session may hold
                # the pipe open: kill it, or the reader would never see EOF.
                await _kill_group(proc.pid)
    finally:
        with trio.CancelScope(shield=True):
            await stdout.aclose()
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        last = "\n".join(tail)
        raise LxpyError(
            f"{os.path.basename(name)} {how}" + (f"; last output:\n{last}" if last else ""),
            hint="the full output is in the build log",
        )


async def capture(argv: Sequence[str | os.PathLike[str]]) -> str:
    """Run a short command and return its stdout.

    Raises:
        LxpyError: it could not run or exited non-zero (with its stderr).
    """
    try:
        res = await trio.run_process(
            [os.fspath(a) for a in argv], capture_stdout=True, capture_stderr=True, check=False
        )
    except FileNotFoundError:
        raise LxpyError(f"cannot run {os.fspath(argv[0])}: program not found") from None
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip()
        raise LxpyError(f"{os.fspath(argv[0])} exited with status {res.returncode}: {err}")
    return res.stdout.decode(errors="replace")


def _unescape_mount_path(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    base = os.path.realpath(root)
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = _unescape_mount_path(line.split()[1])
            if mnt.startswith(base + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


async def unmount_under(root: Path, log: Callable[[str], None]) -> None:
    """Lazily unmount whatever a killed bootstrap tool left mounted in `root`
    (proc, sys, dev binds), so the caller can delete the target."""
    for mnt in await trio.to_thread.run_sync(mounts_under, root):
        res = await trio.run_process(["umount", "--lazy", mnt], check=False, capture_stderr=True)
        if res.returncode == 0:
            log(f"unmounted leftover {mnt}")
        else:
            log(f"could not unmount leftover {mnt}: {res.stderr.decode(errors='replace').strip()}")
