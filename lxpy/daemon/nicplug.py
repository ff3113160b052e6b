"""NICs added to and removed from running containers (`nic` devices).

Two kinds:

* `network=NAME` (a managed network): a veth pair like the NICs of the
  `network` key, its host end on the network's bridge, its peer made inside
  the container's network namespace with its name (`name=eth1`) and MAC
  (`hwaddr=`, else a stable one). It is recorded with the container's other
  NICs (Networks.attached and the NIC record in the run dir), so its host
  end is removed on stop, its port gets the container's filter rules, and
  its MAC has an entry in the network's dnsmasq hosts file: the container's
  DHCP client on that interface gets an address (`ipv4.address=` pins it,
  as a static lease).
* `nictype=macvlan parent=IFACE`: a macvlan of a host interface, made
  directly inside the namespace (it never appears in the host's). It lives
  and ends with the namespace; lxpy has nothing of it to remove on stop.

Both are applied to a running container by its network namespace path: the
bound one of a container on a managed network, or /proc/PID/ns/net of its
init.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import trio

from lxpy.daemon import portfilter
from lxpy.daemon.networks import Networks
from lxpy.errors import AlreadyExists, InvalidArgument, NotFound
from lxpy.model.network import mac_address, veth_name
from lxpy.model.security import SecurityConfig
from lxpy.network import links
from lxpy.network.links import Nic
from lxpy.revert import AsyncRevert

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# veth host ends a container may have (index 0 is the first NIC's).
MAX_NICS = 32


def check_name(name: str) -> str:
    """An interface name for inside the container.

    Raises:
        InvalidArgument: naming it.
    """
    if not _IFNAME.match(name) or name in (".", ".."):
        raise InvalidArgument(
            f"bad NIC name {name!r}", hint="give 1-15 letters, digits, '-', '_' or '.', e.g. eth1"
        )
    return name


def check_hwaddr(mac: str) -> str:
    """A unicast MAC address, lower case.

    Raises:
        InvalidArgument: naming it.
    """
    low = mac.lower()
    if not _MAC.match(low) or int(low[:2], 16) & 1:
        raise InvalidArgument(
            f"bad hwaddr {mac!r}: not a unicast MAC address",
            hint="give six hex pairs with an even first byte, e.g. 02:00:00:aa:bb:cc",
        )
    return low


def _free_index(nets: Networks, container: str, nics: tuple[Nic, ...]) -> int:
    used = {n.host for n in nics}
    root = str(nets.root)
    for i in range(MAX_NICS):
        if veth_name(root, container, i) not in used:
            return i
    raise InvalidArgument(
        f"container {container!r} has {MAX_NICS} NICs already", hint="remove one first"
    )


async def plug(
    nets: Networks,
    container: str,
    netns: Path,
    network: str,
    name: str,
    hwaddr: str | None = None,
    ipv4: str | None = None,
    config: Mapping[str, object] | None = None,
) -> Nic:
    """Add a NIC on managed network `network`, named `name` inside, to the
    running container `container` whose network namespace is `netns`.
    `config`: the container's (its security.* filtering keys apply to the
    new port). Nothing is left on failure.

    Raises:
        NotFound: no such network.
        AlreadyExists: `name` exists in the container.
        InvalidArgument: a bad name, hwaddr or ipv4.address.
        Busy: the pinned address is held by another running container.
        LxpyError: netlink refused a step.
    """
    check_name(name)
    net = await nets._network_for(network)
    if ipv4 is not None:
        nets.check_pinned(container, net, ipv4)
    inside = await trio.to_thread.run_sync(links.links_in, netns)
    if name in inside:
        raise AlreadyExists(
            f"interface {name} exists in container {container!r} already",
            hint="give the NIC another name=",
        )
    old = nets.nics(container)
    i = _free_index(nets, container, old)
    nic = Nic(
        network=net.name,
        bridge=net.name,
        host=veth_name(str(nets.root), container, i),
        peer=name,
        mac=check_hwaddr(hwaddr) if hwaddr else mac_address(str(nets.root), container, i),
        ipv4=ipv4,
    )
    (nic,) = portfilter.flagged([nic], SecurityConfig.from_config(config or {}))
    # Claimed before the first await, as Networks.attach claims its NICs.
    nets.attached[container] = (*old, nic)

    def work() -> None:
        nets._filter_new((nic,))
        links.add_nics(netns, [nic])
        nets._save_nics(container, nets.attached[container])

    async with AsyncRevert(f"NIC {name} of {container}") as rv:
        # Idempotent: it removes whatever of the claim, the rules, the veth
        # and the hosts entry is there.
        rv.undo(lambda: _forget(nets, container, nic), f"remove NIC {name} of {container}")
        await nets._run(work)
        await nets._update_hosts({nic.network})
    return nic


async def unplug(nets: Networks, container: str, name: str) -> Nic:
    """Remove the managed-network NIC named `name` inside running container
    `container` (its veth, its port rules, its hosts entry).

    Raises:
        NotFound: the container has no such NIC of lxpy's.
    """
    nic = next((n for n in nets.nics(container) if n.peer == name), None)
    if nic is None:
        raise NotFound(
            f"container {container!r} has no NIC {name} on a managed network",
            hint="`lxpy info` lists its NICs",
        )
    await _forget(nets, container, nic)
    return nic


async def _forget(nets: Networks, container: str, nic: Nic) -> None:
    rest = tuple(n for n in nets.nics(container) if n != nic)
    if rest:
        nets.attached[container] = rest
    else:
        nets.attached.pop(container, None)
    keep_table = nets._any_filtered()

    def work() -> None:
        links.delete_links([nic.host])
        if rest:
            nets._save_nics(container, rest)
        else:
            nets._nics_path(container).unlink(missing_ok=True)
        if nic.mac_filtering or nic.ipv4_filtering:
            nets._filter((), [nic.host], keep_table)

    await nets._run(work)
    await nets._update_hosts({nic.network})


async def plug_macvlan(netns: Path, name: str, parent: str, hwaddr: str | None = None) -> str:
    """Add a macvlan of host interface `parent`, named `name`, to the
    container whose network namespace is `netns`; returns its MAC.

    Raises:
        InvalidArgument: a bad name or hwaddr, or `parent` is a loopback.
        NotFound: `parent` does not exist.
        AlreadyExists: `name` exists in the container.
    """
    check_name(name)
    if parent == "lo":
        raise InvalidArgument("parent lo cannot carry a macvlan", hint="give a real interface")
    mac = check_hwaddr(hwaddr) if hwaddr else None
    await trio.to_thread.run_sync(
        lambda: links.add_macvlan(netns, name, parent, mac or _random_mac())
    )
    inside = await trio.to_thread.run_sync(links.links_in, netns)
    return inside[name]


async def unplug_macvlan(netns: Path, name: str) -> None:
    """Remove interface `name` (a macvlan) from the container (idempotent)."""
    await trio.to_thread.run_sync(links.remove_link_in, netns, name)


def _random_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)
