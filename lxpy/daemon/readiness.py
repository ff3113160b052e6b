"""Waiting until a started container is ready (`lxpy start --wait`).

Ready means, in this order:

1. its init said that this boot is done (lxpy.runtime.readiness): systemd
   sends READY=1 on the container's notify socket once its boot
   transaction is over, so `systemctl is-system-running` answers
   `running` or `degraded` from then on; busybox init's boot script
   (lxpy's template) writes READY=1 to /run/host/ready as its last step.
   The monitor hears it and tells lxpyd, which keeps it in the container's
   run (lxpy.daemon.lifecycle);
2. on a network, its eth0 holds its address: the pinned or filtered one
   when lxpy fixed it, else one of the network's subnet. Seen from the
   host in the container's network namespace, woken by netlink address
   events, so nothing is polled.

Nothing here changes the container: a wait that times out leaves it
running, and a container that stops meanwhile ends the wait with why.
"""

from __future__ import annotations

import errno
import ipaddress

import trio

from lxpy.daemon.lifecycle import Lifecycle
from lxpy.daemon.networks import Networks
from lxpy.errors import LxpyError, TimedOut
from lxpy.model.network import Network
from lxpy.network import links
from lxpy.network.links import Nic

DEFAULT_WAIT_TIMEOUT = 120.0

_BOOT_HINT = (
    "the container still runs. systemd says so when `systemctl is-system-running` "
    "leaves `starting` (`lxpy exec {name} -- systemctl list-jobs` shows what it waits "
    "for); with another init, a boot script's last step has to write READY=1 to "
    "/run/host/ready (see README, Waiting for a container)"
)


def _holds(per_if: dict[str, list[str]], nic: Nic, net: Network | None) -> bool:
    for cidr in per_if.get(nic.peer, []):
        addr = ipaddress.IPv4Address(cidr.split("/")[0])
        if (nic.ipv4 and str(addr) == nic.ipv4) or (
            not nic.ipv4 and (net is None or addr in net.subnet)
        ):
            return True
    return False


def _wanted(nic: Nic, net: Network | None) -> str:
    if nic.ipv4:
        return f"its address {nic.ipv4}"
    return "an address" + (f" of {net.subnet}" if net is not None else "")


async def _address_held(nets: Networks, name: str, nic: Nic) -> None:
    path = nets.netns_path(name)
    net = nets.nets.get(nic.network)
    # Subscribed before the first look, so no change falls in between.
    sock = await trio.to_thread.run_sync(links.address_events, path, limiter=nets.limiter)
    with trio.socket.from_stdlib_socket(sock) as events:
        while True:
            per_if = await trio.to_thread.run_sync(links.netns_ipv4, path, limiter=nets.limiter)
            if _holds(per_if, nic, net):
                return
            try:
                await events.recv(65536)
            except OSError as e:
                if e.errno != errno.ENOBUFS:  # ENOBUFS: changes were missed; look again
                    raise


def _stopped(lifecycle: Lifecycle, name: str) -> LxpyError:
    why = lifecycle.last_exit.get(name) or {}
    detail = f" ({why['detail']})" if why.get("detail") else ""
    return LxpyError(
        f"container {name!r} stopped before it was ready{detail}",
        hint=f"see its console log: lxpy console {name} --log",
    )


async def wait_ready(lifecycle: Lifecycle, networks: Networks, name: str, seconds: float) -> None:
    """Return once running container `name` is ready (module docstring).

    Raises:
        TimedOut: not ready within `seconds`, naming what was not.
        LxpyError: it is not running, or stopped while booting, or its
            addresses could not be read.
    """
    run = lifecycle.runs.get(name)
    if run is None or run.ended.is_set():
        raise _stopped(lifecycle, name)
    nics = networks.nics(name)
    # eth0 only: the templates' network configuration (networkd, udhcpc)
    # asks for an address there and nowhere else.
    nic = nics[0] if nics else None
    pending = "its init did not say that it finished booting"
    failure: BaseException | None = None
    done = False
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:

            async def until_ended() -> None:
                await run.ended.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_ended)
            try:
                while not run.ready:
                    await run.changed.wait()
                if nic is not None:
                    net = networks.nets.get(nic.network)
                    pending = (
                        f"{nic.peer} does not hold {_wanted(nic, net)} on network {nic.network}"
                    )
                    await _address_held(networks, name, nic)
                done = True
            except OSError as e:
                failure = e
            nursery.cancel_scope.cancel()
    if done:
        return
    if run.ended.is_set():
        raise _stopped(lifecycle, name)
    if failure is not None:
        raise LxpyError(
            f"cannot tell whether container {name!r} is ready: {failure}",
            hint="the container still runs; see lxpyd's log",
        )
    raise TimedOut(
        f"container {name!r} was not ready within {seconds:g} s: {pending}",
        hint=_BOOT_HINT.format(name=name)
        if not run.ready
        else "the container still runs; "
        f"`lxpy exec {name} -- ip addr` shows its addresses, `lxpy network info "
        f"{nic.network if nic else ''}` the leases",
    )
