"""What the port filters of a container's NICs hold, for Networks.

The keys `security.mac_filtering` and `security.ipv4_filtering` (both on by
default) become flags on each of a container's NICs; the rules themselves
are lxpy.network.l2filter's. IPv4 filtering needs the container's address
before the container asks for it, so a NIC without a pinned address
(`ipv4.address`) is given one here, which becomes its static DHCP lease, as
Incus allocates one for its `security.ipv4_filtering`.

Pure functions of the daemon's state: Networks calls them between awaits,
so that the choice of an address and its claim are one step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from lxpy.errors import Busy, InvalidArgument
from lxpy.model.network import Network, network_list
from lxpy.model.security import SecurityConfig
from lxpy.network.dnsmasq import Lease
from lxpy.network.l2filter import filtered
from lxpy.network.links import Nic


def taken_addresses(
    container: str,
    attached: Mapping[str, Iterable[Nic]],
    configs: Mapping[str, Mapping[str, object]],
) -> dict[str, set[str]]:
    """network -> the addresses other containers hold (their running
    NICs, `attached`) or pin (`ipv4.address` on their first network, in
    `configs`): none of them can be given to `container`."""
    taken: dict[str, set[str]] = {}
    for other, nics in attached.items():
        for n in nics:
            if other != container and n.ipv4:
                taken.setdefault(n.network, set()).add(n.ipv4)
    for other, cfg in configs.items():
        pinned, names = cfg.get("ipv4.address"), network_list(cfg.get("network"))
        if other != container and pinned and names:
            taken.setdefault(names[0], set()).add(str(pinned))
    return taken


def flagged(nics: Iterable[Nic], sec: SecurityConfig) -> tuple[Nic, ...]:
    """`nics` with the filtering flags a container's security settings
    `sec` ask for."""
    return tuple(
        replace(n, mac_filtering=sec.filters_mac, ipv4_filtering=sec.ipv4_filtering) for n in nics
    )


def fix_addresses(
    container: str,
    nics: tuple[Nic, ...],
    nets: Mapping[str, Network],
    taken: Mapping[str, set[str]],
    leases: Mapping[str, list[Lease]],
) -> tuple[Nic, ...]:
    """`nics`, each IPv4-filtered one given an address if it has none: the
    one its MAC holds a lease for when that is free, else the lowest free
    one of its network's DHCP range.

    Args:
        taken: per network, the addresses other containers hold or pin.
        leases: per network, its live leases.

    Raises:
        Busy: a network has no free address left.
    """
    out: list[Nic] = []
    for nic in nics:
        if nic.ipv4_filtering and nic.ipv4 is None:
            net = nets[nic.network]
            live = leases.get(nic.network, [])
            used = taken.get(nic.network, set()) | {le.ipv4 for le in live if le.mac != nic.mac}
            addr = net.pick_address(used, [le.ipv4 for le in live if le.mac == nic.mac])
            if addr is None:
                raise Busy(
                    f"network {net.name} ({net.subnet}) has no free address left for "
                    f"container {container!r}",
                    hint="stop containers on it, or use a network with a larger subnet",
                )
            nic = replace(nic, ipv4=addr)
        out.append(nic)
    return tuple(out)


def describe(config: Mapping[str, object], nics: Iterable[Nic]) -> str:
    """One line for `lxpy info`: which filtering a container's NICs have
    (from `config`), and the MAC and address each port of `nics` (its
    running NICs) is held to."""
    try:
        sec = SecurityConfig.from_config(config)
    except InvalidArgument as e:
        return f"invalid: {e.message}"
    on = []
    if sec.filters_mac:
        on.append("mac" if sec.mac_filtering else "mac (security.ipv4_filtering needs it)")
    if sec.ipv4_filtering:
        on.append("ipv4")
    text = ", ".join(on) or "off"
    held = [
        f"{n.peer} {n.mac}" + (f" {n.ipv4}" if n.ipv4_filtering and n.ipv4 else "")
        for n in nics
        if filtered(n)
    ]
    return f"{text}: {', '.join(held)}" if held else text
