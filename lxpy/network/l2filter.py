"""Layer-2 filtering of container ports on lxpy's bridges (nftables, bridge family).

Each daemon root owns one table, `bridge lxpy-<root id>` (beside its `inet`
table of the same name), present while at least one port is filtered:

    table bridge lxpy-ID {
        map ports {
            type ifname : verdict
            elements = { "lxpy-0a1b2c3d4e" : jump port-lxpy-0a1b2c3d4e }
        }
        chain prerouting {
            type filter hook prerouting priority filter; policy accept;
            iifname vmap @ports
        }
        chain port-lxpy-0a1b2c3d4e { ... }   # one per filtered host veth
    }

Why the bridge family's prerouting hook: it sees each frame once, as it
enters the bridge from a port, before the bridge learns its source MAC and
whether it is then forwarded, flooded or delivered to the host (the gateway,
dnsmasq). The input and forward hooks (Incus's choice) see a flooded frame
once per port it leaves by, which would count one broadcast DHCP request
many times against the rate limit. A netdev ingress chain per host veth
would see the same frames as prerouting, but it is bound to its device: it
can only be made once the veth exists, so a port would be up for a moment
without rules. Here a port is matched by name: its rules are in place
before its veth is made, and do not depend on it.

Why a chain per port behind a verdict map: a container's start or stop is
one small transaction that touches no other port's chain (nor its rate
limit's state), and a frame finds its port's chain in one map lookup.

Every script is one `nft -f` transaction and idempotent: it declares what
it deletes first, and flushes what it fills, so running it twice, or after
a crash half way through a start, leaves the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxpy.network import nftables
from lxpy.network.links import Nic

# DHCP requests a port may send, over which they are dropped: a client
# sends two to four per lease (retries included), a pool-starving flood
# thousands.
DHCP_RATE = "4/second"
DHCP_BURST = 16

_HINT = (
    "the kernel needs nf_tables for the bridge family (`nft list tables bridge`); "
    "or turn the filtering off for this container (security.mac_filtering=false, "
    "security.ipv4_filtering=false)"
)


def chain_name(host: str) -> str:
    """The chain of the port whose host-side veth is `host`."""
    return f"port-{host}"


def filtered(nic: Nic) -> bool:
    return nic.mac_filtering or nic.ipv4_filtering


def port_rules(nic: Nic) -> list[str]:
    """The rules of `nic`'s port chain, in order (none when it is not filtered).

    MAC filtering (also on with IPv4 filtering, which relies on it): the
    frame's source, ARP's sender hardware address, DHCP's client hardware
    address and the link-layer address options of IPv6 neighbour discovery
    must be the NIC's MAC. IPv4 filtering: only ARP, IPv4 and IPv6 frames;
    no DHCP or DHCPv6 server replies, IPv6 router advertisements or
    redirects; DHCP requests rate-limited; ARP and IPv4 only from the NIC's
    address (or 0.0.0.0: DHCP before it has one, ARP probes).
    """
    if not filtered(nic):
        return []
    mac = nic.mac.lower()
    raw = "0x" + mac.replace(":", "")
    rules = [
        f"ether saddr != {mac} counter drop",
        f"arp saddr ether != {mac} counter drop",
        # A DHCP request in IP fragments: its first holds no chaddr for
        # the rule below to read (a rule that cannot read is skipped), and
        # the host reassembles the whole. DHCP is never that large.
        "udp dport 67 ip frag-off & 0x2000 != 0 counter drop",
        # BOOTP's chaddr, 28 bytes into the message after the 8-byte UDP
        # header: dnsmasq hands out a lease per client hardware address.
        f"udp dport 67 @th,288,48 != {raw} counter drop",
        # The source (1) or target (2) link-layer address option, first
        # after the 24-byte message: the ARP of IPv6.
        f"icmpv6 type nd-neighbor-solicit @th,192,8 1 @th,208,48 != {raw} counter drop",
        f"icmpv6 type nd-neighbor-advert @th,192,8 2 @th,208,48 != {raw} counter drop",
    ]
    if not nic.ipv4_filtering:
        return rules
    rules += [
        # VLAN-tagged frames (and other protocols) would carry IPv4 past
        # the checks below.
        "ether type != { arp, ip, ip6 } counter drop",
        # Only the host serves the network.
        "udp sport { 67, 547 } counter drop",
        "icmpv6 type { nd-router-advert, nd-redirect } counter drop",
        f"udp dport 67 limit rate over {DHCP_RATE} burst {DHCP_BURST} packets counter drop",
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return",
    ]
    if nic.ipv4 is None:
        # No address is known: DHCP above is all it may send.
        return [*rules, "arp saddr ip != 0.0.0.0 counter drop", "ether type ip counter drop"]
    return [
        *rules,
        f"arp saddr ip != {{ 0.0.0.0, {nic.ipv4} }} counter drop",
        f"ip saddr != {nic.ipv4} counter drop",
    ]


def _declare(table: str) -> list[str]:
    return [
        f"add table bridge {table}",
        f"add map bridge {table} ports {{ type ifname : verdict; }}",
        f"add chain bridge {table} prerouting"
        " { type filter hook prerouting priority filter; policy accept; }",
        # The one dispatch rule, made anew rather than added once more.
        f"flush chain bridge {table} prerouting",
        f"add rule bridge {table} prerouting iifname vmap @ports",
    ]


def _set_port(table: str, nic: Nic) -> list[str]:
    chain = chain_name(nic.host)
    return [
        f"add chain bridge {table} {chain}",
        f"flush chain bridge {table} {chain}",
        *(f"add rule bridge {table} {chain} {rule}" for rule in port_rules(nic)),
        f'add element bridge {table} ports {{ "{nic.host}" : jump {chain} }}',
    ]


def _remove_port(table: str, host: str) -> list[str]:
    chain = chain_name(host)
    # Made first, so that the deletes hold whether they were there or not.
    return [
        f"add chain bridge {table} {chain}",
        f'add element bridge {table} ports {{ "{host}" : jump {chain} }}',
        f'delete element bridge {table} ports {{ "{host}" }}',
        f"delete chain bridge {table} {chain}",
    ]


def _drop_table(table: str) -> list[str]:
    return [f"add table bridge {table}", f"delete table bridge {table}"]


def update_script(
    table: str, nics: Iterable[Nic], gone: Iterable[str] = (), keep_table: bool = True
) -> str:
    """The script that gives each port of `nics` the rules its flags ask
    for (a port with none loses its chain) and removes the ports of the host
    veths `gone`. Without `keep_table` (no filtered port is left anywhere)
    it removes the whole table instead."""
    if not keep_table:
        return "\n".join(_drop_table(table)) + "\n"
    lines = _declare(table)
    for nic in nics:
        lines += _set_port(table, nic) if filtered(nic) else _remove_port(table, nic.host)
    for host in gone:
        lines += _remove_port(table, host)
    return "\n".join(lines) + "\n"


def sync_script(table: str, nics: Iterable[Nic]) -> str:
    """The script that makes the table hold exactly the ports of `nics`
    that are filtered (none: no table), whatever it held before."""
    lines = _drop_table(table)
    ports = [n for n in nics if filtered(n)]
    if ports:
        lines += _declare(table)
        for nic in ports:
            lines += _set_port(table, nic)
    return "\n".join(lines) + "\n"


def run(table: str, script: str, nft: str = "nft") -> None:
    """Run a script of this module.

    Raises:
        Unsupported: no nft binary.
        LxpyError: nft refused it (its message, and what to do).
    """
    nftables.run_script(script, f"the port filters in table bridge {table}", _HINT, nft)
