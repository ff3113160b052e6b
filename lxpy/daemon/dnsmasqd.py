"""Supervision of the managed networks' dnsmasq processes.

One dnsmasq per network runs in the foreground under lxpyd (its command
line, hosts file and leases are lxpy.network.dnsmasq's). `supervise` is a
long-lived task: it reports started once the first dnsmasq serves, restarts
it with backoff when it dies, and ends it when its scope is cancelled
(`stop`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trio

from lxpy.errors import Busy, LxpyError
from lxpy.model.network import Network
from lxpy.network import dnsmasq

log = logging.getLogger("lxpyd.networks")

READY_TIMEOUT = 10.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0


@dataclass
class DnsmasqState:
    """The supervision state of one network's dnsmasq."""

    net: Network
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    proc: trio.Process | None = None
    restarts: int = 0
    error: str | None = None


async def supervise(
    st: DnsmasqState,
    binary: str,
    paths: dnsmasq.Paths,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the network's dnsmasq; restart it with backoff when it dies.
    Reports started once the first one serves; a first start that fails
    raises (the caller undoes the network)."""
    cmd = dnsmasq.command(binary, st.net, paths)
    first = True
    backoff = BACKOFF_FIRST
    try:
        with st.scope:
            while True:
                began = trio.current_time()
                tail: collections.deque[str] = collections.deque(maxlen=10)
                ready = await _run_once(st, cmd, paths, tail, task_status if first else None)
                why = "; ".join(tail) or f"exit status {st.proc.returncode if st.proc else '?'}"
                if first and not ready:
                    raise _start_error(st.net, why)
                first = False
                st.restarts += 1
                st.error = why
                if trio.current_time() - began > 30:
                    backoff = BACKOFF_FIRST
                log.warning(
                    "dnsmasq of network %s ended (%s); restarting in %.1f s",
                    st.net.name,
                    why,
                    backoff,
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
    finally:
        st.proc = None
        st.done.set()


async def stop(st: DnsmasqState) -> None:
    """End the supervision (and the dnsmasq) of `st`; returns once it has."""
    st.scope.cancel()
    with trio.CancelScope(shield=True):
        await st.done.wait()


def reload(st: DnsmasqState) -> None:
    """Have a running dnsmasq re-read its hosts file (static leases)."""
    if st.proc is not None and st.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            st.proc.send_signal(signal.SIGHUP)


async def _run_once(
    st: DnsmasqState,
    cmd: list[str],
    paths: dnsmasq.Paths,
    tail: collections.deque[str],
    task_status: trio.TaskStatus[None] | None,
) -> bool:
    # Returns whether this dnsmasq became ready (before it ended).
    with contextlib.suppress(FileNotFoundError):
        paths.pid.unlink()
    proc = await trio.lowlevel.open_process(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    st.proc = proc
    ready = False
    try:
        async with trio.open_nursery() as n:
            n.start_soon(_pump_log, proc, tail, st.net.name)
            ready = await wait_ready(proc, paths.pid)
            if ready:
                st.error = None
                if task_status is not None:
                    task_status.started()
                log.info("dnsmasq of network %s serving (pid %d)", st.net.name, proc.pid)
            await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return ready


def _start_error(net: Network, why: str) -> LxpyError:
    if "Address already in use" in why:
        return Busy(
            f"dnsmasq for network {net.name} cannot bind its ports on {net.gateway}: {why}",
            hint="another DNS or DHCP server listens there; stop it or restrict it to "
            "its own addresses",
        )
    return LxpyError(
        f"dnsmasq for network {net.name} failed to start: {why}",
        hint="see lxpyd's log for dnsmasq's messages",
    )


async def wait_ready(proc: trio.Process, pidfile: Path) -> bool:
    """Whether `proc` (a dnsmasq) became ready within READY_TIMEOUT seconds."""
    # dnsmasq writes its pid file once its sockets are bound; an early
    # exit is a failure to start.
    with trio.move_on_after(READY_TIMEOUT):
        while proc.poll() is None:
            with contextlib.suppress(OSError):
                # Empty or cut short while dnsmasq is writing it: not yet.
                if (await trio.Path(pidfile).read_text()).split()[:1] == [str(proc.pid)]:
                    return True
            await trio.sleep(0.01)
    return False


async def _pump_log(proc: trio.Process, tail: collections.deque[str], name: str) -> None:
    assert proc.stderr is not None
    buf = b""
    while True:
        chunk = await proc.stderr.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if line:
                tail.append(line.removeprefix("dnsmasq: "))
                log.debug("dnsmasq[%s]: %s", name, line)
