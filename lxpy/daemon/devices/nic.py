"""`nic` devices: more network interfaces in a container.

    lxpy device add web lan nic network=backend name=eth1
    lxpy device add web lan nic network=backend name=eth1 ipv4.address=10.88.0.20
    lxpy device add web uplink nic nictype=macvlan parent=enp3s0 name=eth2

Keys (docs/devices.md): `nictype` (`bridged`, the default: a veth on a
managed network; or `macvlan`), `network` (bridged: the managed network),
`parent` (macvlan: the host interface), `name` inside (required), `hwaddr`,
and `ipv4.address` (bridged: a static lease on the network).

A bridged NIC is a veth like those of the `network` key, recorded with the
container's NICs (lxpy.daemon.nicplug): the network's dnsmasq answers its
DHCP requests and its host end goes on stop. A macvlan is made inside the
container's network namespace and ends with it. Both are set up once init
runs and are added to or removed from a running container at once (its
DHCP client must be told about a new interface: `udhcpc -i eth1`,
`networkctl reconfigure eth1`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import ClassVar

import trio

from lxpy.daemon import nicplug
from lxpy.daemon.devices.base import Dev, DeviceHost, DeviceType, Key, keyed
from lxpy.errors import InvalidArgument, NotFound
from lxpy.model.network import network_list
from lxpy.network import links, proxy

NICTYPES = ("bridged", "macvlan")


def _nictype(key: str, value: str) -> str:
    if value not in NICTYPES:
        raise InvalidArgument(
            f"{key}: expected one of {', '.join(NICTYPES)}, got {value!r}", hint="nictype=macvlan"
        )
    return value


def _ipv4(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InvalidArgument(
            f"{key}: expected an IPv4 address, got {value!r}", hint=f"{key}=10.87.0.20"
        ) from None


def _text(key: str, value: str) -> str:
    if not value or "/" in value or " " in value:
        raise InvalidArgument(f"{key}: expected an interface or network name, got {value!r}")
    return value


class NicDevice(DeviceType):
    NAME = "nic"
    DOC = "another network interface: a veth on a managed network, or a macvlan"
    HOTPLUG = True
    KEYS: ClassVar[Mapping[str, Key]] = {
        "nictype": Key(_nictype, "bridged (default: a managed network) or macvlan"),
        "network": Key(_text, "bridged: the managed network (`lxpy network list`)"),
        "parent": Key(_text, "macvlan: the host interface it shares"),
        "name": Key(
            keyed(nicplug.check_name), "the interface's name inside, e.g. eth1", required=True
        ),
        "hwaddr": Key(keyed(nicplug.check_hwaddr), "its MAC address (default: a stable one)"),
        "ipv4.address": Key(_ipv4, "bridged: its address, as a static DHCP lease"),
    }

    def check_options(self, dev: str, options: Mapping[str, str]) -> None:
        kind = options.get("nictype", "bridged")
        if kind == "bridged":
            if "network" not in options:
                raise InvalidArgument(
                    f"device {dev!r}: a bridged nic needs network=",
                    hint="network=NAME (`lxpy network list`), or nictype=macvlan parent=IFACE",
                )
            if "parent" in options:
                raise InvalidArgument(f"device {dev!r}: parent= is for nictype=macvlan")
        else:
            if "parent" not in options:
                raise InvalidArgument(
                    f"device {dev!r}: a macvlan nic needs parent=",
                    hint="parent=IFACE, a host interface (`ip link`)",
                )
            for key in ("network", "ipv4.address"):
                if key in options:
                    raise InvalidArgument(f"device {dev!r}: {key}= is for a bridged nic")

    def restricted_reason(self, options: Mapping[str, str]) -> str | None:
        if options.get("nictype") == "macvlan":
            return "macvlan nics put the container on a host interface's network"
        return "nic devices join networks beyond the container's own"

    def describe(self, dev: Dev) -> str:
        o = dev.options
        where = f"on {o['parent']} (macvlan)" if "parent" in o else f"on network {o['network']}"
        return f"{o['name']} {where}"

    async def check(self, h: DeviceHost, dev: Dev) -> None:
        o = dev.options
        record = h.d.table.require(dev.container)
        taken = {f"eth{i}" for i in range(len(network_list(record.config.get("network"))))}
        for other, oo in record.devices.items():
            if other != dev.name and oo.get("type") == self.NAME:
                taken.add(oo["name"])
        if o["name"] in taken:
            raise InvalidArgument(
                f"device {dev.name!r}: name: {o['name']} is another NIC's name in "
                f"container {dev.container!r}",
                hint="pick another name=, e.g. eth9",
            )
        if "network" in o:
            net = await h.networks._network_for(o["network"])
            if "ipv4.address" in o:
                h.networks.check_pinned(dev.container, net, o["ipv4.address"])
        else:
            found = await trio.to_thread.run_sync(links.existing_links, [o["parent"]])
            if not found:
                raise NotFound(
                    f"device {dev.name!r}: parent interface {o['parent']} does not exist",
                    hint="give a host interface (`ip link`)",
                )

    async def started(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        await self.plug(h, dev, pid)

    async def plug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        o = dev.options
        netns = proxy.netns_of(pid)
        if "parent" in o:
            await nicplug.plug_macvlan(netns, o["name"], o["parent"], o.get("hwaddr"))
            return
        record = h.d.records.get(dev.container)
        await nicplug.plug(
            h.networks,
            dev.container,
            netns,
            o["network"],
            o["name"],
            hwaddr=o.get("hwaddr"),
            ipv4=o.get("ipv4.address"),
            config=record.config if record is not None else None,
        )

    async def unplug(self, h: DeviceHost, dev: Dev, pid: int) -> None:
        o = dev.options
        if "parent" in o:
            await nicplug.unplug_macvlan(proxy.netns_of(pid), o["name"])
            return
        try:
            await nicplug.unplug(h.networks, dev.container, o["name"])
        except NotFound:
            # Not recorded (an lxpyd that crashed before it was): remove
            # whatever has the name inside.
            await trio.to_thread.run_sync(links.remove_link_in, proxy.netns_of(pid), o["name"])
