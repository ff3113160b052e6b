"""Supervision of the managed networks' dnsmasq processes.

Each network's dnsmasq is a daemon of its own (lxpy.network.dnsmasq has
its command line, files and process), not lxpyd's child: like the
containers' monitors, it keeps serving DHCP and DNS while lxpyd is stopped,
restarting or gone. `supervise` is a long-lived task per network: it
adopts the dnsmasq it finds serving the network with the command line
lxpyd would give it (`find`; one with another is ended and replaced),
starts one otherwise, watches it through a pidfd (it is not our child),
restarts it with backoff when it dies, and keeps its log in bounds. Under
systemd, each one is moved into a scope unit of its own, so lxpy.service
holds lxpyd alone. Cancelled, the supervision ends and dnsmasq serves on;
`stop` (network delete) ends both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

import trio

from lxpy.errors import LxpyError
from lxpy.kernel import systemd
from lxpy.model.network import DOMAIN, Network
from lxpy.network import dnsmasq

log = logging.getLogger("lxpyd.networks")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
# How often the log's size is looked at.
LOG_CHECK = 600.0


@dataclass(frozen=True)
class Spec:
    """What one network's dnsmasq runs: its command line, files and scope."""

    cmd: list[str]
    paths: dnsmasq.Paths
    unit: str  # its systemd scope unit; "" for none


@dataclass
class DnsmasqState:
    """The supervision state of one network's dnsmasq."""

    net: Network
    # The dnsmasq serving now (found, or started), and a pidfd of it.
    pid: int | None = None
    pidfd: int = -1
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    restarts: int = 0
    error: str | None = None
    # Set by `stop`: the dnsmasq ends with its supervision.
    end: bool = False


def scope_unit(root_id: str, network: str) -> str:
    """The scope unit of network `network`'s dnsmasq (a `.` keeps it apart
    from every container's, lxpy-ROOTID-NAME.scope)."""
    return f"lxpy-{root_id}-net.{network}.scope"


def find(spec: Spec, name: str) -> tuple[int, int] | None:
    """The dnsmasq that serves network `name` as `spec` says, to adopt: its
    pid and a pidfd. One serving it otherwise (older settings, a binary an
    upgrade replaced) is ended. Blocking."""
    found = dnsmasq.find(spec.paths)
    if found is None or dnsmasq.runs(found[0], spec.cmd):
        return found
    log.info(
        "dnsmasq of network %s (pid %d) runs another configuration: replacing it", name, found[0]
    )
    try:
        dnsmasq.terminate(found[1])
    finally:
        os.close(found[1])
    return None


async def supervise(
    st: DnsmasqState, spec: Spec, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep the network's dnsmasq serving: the one in `st` (from `find`), or
    one started here; restarted with backoff when it dies. Reports started
    once one serves; a first start that fails raises (the caller undoes the
    network). Cancelled, it leaves dnsmasq serving, unless `stop` ends it."""
    first = True
    backoff = BACKOFF_FIRST
    try:
        with st.scope:
            while True:
                began = trio.current_time()
                if await _serve(st, spec, first):
                    if first:
                        first = False
                        task_status.started()
                    await _watch(st, spec.paths)
                    st.error = f"dnsmasq (pid {st.pid}) ended"
                    _forget(st)
                    st.restarts += 1
                if trio.current_time() - began > 30:
                    backoff = BACKOFF_FIRST
                log.warning("network %s: %s; again in %.1f s", st.net.name, st.error, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
    finally:
        with trio.CancelScope(shield=True):
            if st.pidfd >= 0 and st.end:
                await trio.to_thread.run_sync(dnsmasq.terminate, st.pidfd)
            elif st.pidfd >= 0:
                log.info(
                    "dnsmasq of network %s left running (pid %d): it serves the network's "
                    "containers until the next lxpyd adopts it",
                    st.net.name,
                    st.pid,
                )
            _forget(st)
            st.done.set()


async def stop(st: DnsmasqState) -> None:
    """End the supervision of `st` and its dnsmasq; returns once both have."""
    st.end = True
    st.scope.cancel()
    with trio.CancelScope(shield=True):
        await st.done.wait()


def forget(st: DnsmasqState) -> None:
    """Let go of a found dnsmasq that `supervise` never took over (it runs on)."""
    if not st.done.is_set():
        _forget(st)


def reload(st: DnsmasqState) -> None:
    """Have a serving dnsmasq re-read its hosts file (static leases)."""
    if st.pidfd >= 0:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(st.pidfd, signal.SIGHUP)


async def release(st: DnsmasqState, leases: Path, macs: Set[str], container: str) -> None:
    """Have the dnsmasq of `st` drop the leases (in file `leases`) of the
    MACs `macs`, which were container `container`'s (lxpy.network.dnsmasq.
    release). Logged, never raised."""
    name = st.net.name
    try:
        now = await trio.to_thread.run_sync(dnsmasq.read_leases, leases)
        held = [le for le in now if le.mac in macs]
        what = ", ".join(le.ipv4 for le in held)
        if held and st.pid is None:
            log.warning(
                "network %s: lease of %s (%s) kept: dnsmasq is not running; it expires by itself",
                name,
                container,
                what,
            )
            return
        if held:
            gateway = str(st.net.gateway)
            if await trio.to_thread.run_sync(dnsmasq.release, gateway, leases, held):
                log.warning("network %s: lease of %s (%s) not released", name, container, what)
            else:
                log.info("network %s: lease of %s (%s) released", name, container, what)
    except OSError as e:
        log.warning("network %s: leases of %s not released: %s", name, container, e)


def resolved_link_dns(net: Network) -> None:
    """Where systemd-resolved runs, have the host resolve NAME.lxpy through
    the bridge's dnsmasq (per-link DNS, as systemd-networkd sets it up).
    Best effort: without resolved, point a resolver at the gateway by hand.
    Blocking."""
    if not Path("/run/systemd/resolve").is_dir():
        return
    exe = shutil.which("resolvectl")
    if exe is None:
        return
    for args in (["dns", net.name, str(net.gateway)], ["domain", net.name, f"~{DOMAIN}"]):
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            log.warning("resolvectl %s: %s", " ".join(args), res.stderr.strip())


async def _serve(st: DnsmasqState, spec: Spec, first: bool) -> bool:
    # The dnsmasq found (st.pidfd) adopted, or one started: whether one
    # serves. A failed first start raises; a later one is in st.error.
    how = "adopted"
    if st.pidfd >= 0:
        # Its hosts file was written again since it read it.
        reload(st)
    else:
        how = "started"
        try:
            st.pid, st.pidfd = await trio.to_thread.run_sync(
                dnsmasq.start, spec.cmd, st.net, spec.paths
            )
        except LxpyError as e:
            if first:
                raise
            st.error = e.message
            return False
    if spec.unit:
        await trio.to_thread.run_sync(_into_scope, spec.unit, st)
    st.error = None
    log.info("dnsmasq of network %s %s (pid %d)", st.net.name, how, st.pid)
    return True


def _forget(st: DnsmasqState) -> None:
    if st.pidfd >= 0:
        os.close(st.pidfd)
    st.pid, st.pidfd = None, -1


async def _watch(st: DnsmasqState, paths: dnsmasq.Paths) -> None:
    # Returns when the dnsmasq has ended (its pidfd turns readable).
    while True:
        with trio.move_on_after(LOG_CHECK):
            await trio.lowlevel.wait_readable(st.pidfd)
            return
        await trio.to_thread.run_sync(dnsmasq.rotate_log, paths.log)


def _into_scope(unit: str, st: DnsmasqState) -> None:
    # Out of lxpy.service (where it started, or where an lxpyd killed
    # before this step left it) into a scope of its own: stopping or
    # restarting the service leaves no process of it behind.
    if st.pid is None:
        return
    try:
        if systemd.unit_cgroup(st.pid) != "/" + systemd.scope_cgroup(unit, systemd.SYSTEM_SLICE):
            description = f"lxpy network {st.net.name}: dnsmasq"
            systemd.start_scope(unit, st.pid, description, slice_=systemd.SYSTEM_SLICE)
    except (LxpyError, OSError) as e:
        msg = e.message if isinstance(e, LxpyError) else str(e)
        log.warning("dnsmasq of network %s stays in lxpyd's unit: %s", st.net.name, msg)
