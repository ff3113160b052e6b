"""Managed networks: names, subnets, and the stable per-container identities
(MAC address, host-side veth name) derived from a daemon root and a container.

Pure data: no pyroute2, no trio. A network is stored as
`ROOT/networks/NAME.toml`; its bridge carries the network's name.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lxpy.errors import InvalidArgument
from lxpy.model import tomlw
from lxpy.model.names import validate_name

DEFAULT_NETWORK = "lxpybr0"
# Linux interface names are at most IFNAMSIZ-1 = 15 bytes, and the bridge
# carries the network's name.
MAX_IFNAME = 15
DOMAIN = "lxpy"
VETH_PREFIX = "lxpy-"
# Where the automatic subnet search starts: 10.87.0.0/24, 10.87.1.0/24, ...
# then 10.88.0.0/24 and on, up to 10.99.255.0/24.
AUTO_FIRST = ipaddress.IPv4Network("10.87.0.0/24")
AUTO_LAST = ipaddress.IPv4Network("10.99.255.0/24")


def validate_network_name(name: object) -> str:
    """Return `name` when it can name a network (and its bridge).

    Raises:
        InvalidArgument: naming what is wrong with it.
    """
    text = validate_name(name, "network")
    if len(text) > MAX_IFNAME:
        raise InvalidArgument(
            f"network name {text!r} is {len(text)} characters long; at most {MAX_IFNAME} "
            "are allowed (it names the bridge interface)"
        )
    return text


def parse_subnet(value: object, key: str = "subnet") -> ipaddress.IPv4Network:
    """Parse an IPv4 subnet with room for a gateway and clients (`10.87.0.0/24`).

    The gateway is the first host address; a host part given (10.87.0.1/24)
    is accepted and dropped.

    Raises:
        InvalidArgument: not an IPv4 CIDR, or a prefix outside /8../29.
    """
    try:
        net = ipaddress.IPv4Network(str(value), strict=False)
    except ValueError:
        raise InvalidArgument(
            f"{key}: {value!r} is not an IPv4 subnet", hint="write it like 10.87.0.0/24"
        ) from None
    if not 8 <= net.prefixlen <= 29:
        raise InvalidArgument(
            f"{key}: prefix /{net.prefixlen} of {value!r} is out of range",
            hint="use a prefix between /8 and /29 (usually /24)",
        )
    return net


def parse_ipv4(key: str, value: object) -> str:
    """A config value holding one IPv4 host address (`ipv4.address`).

    Raises:
        InvalidArgument: naming the key and the bad value.
    """
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise InvalidArgument(f"{key}: {value!r} is not an IPv4 address") from None


def parse_network_list(key: str, value: object) -> list[str]:
    """A config value naming networks: a list, or "a,b" / "a b" on the command
    line; empty means no network at all (a container with lo only).

    Raises:
        InvalidArgument: naming the key and the bad name.
    """
    if isinstance(value, str):
        items = [v for v in value.replace(",", " ").split() if v]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise InvalidArgument(f"{key}: expected a list of network names, got {value!r}")
    out: list[str] = []
    for item in items:
        try:
            name = validate_network_name(item)
        except InvalidArgument as e:
            raise InvalidArgument(f"{key}: {e.message}", e.hint) from None
        if name in out:
            raise InvalidArgument(f"{key}: network {name!r} is named twice")
        out.append(name)
    return out


@dataclass(frozen=True)
class Network:
    """One managed network: a bridge with an IPv4 subnet, DHCP/DNS, and NAT."""

    name: str
    subnet: ipaddress.IPv4Network
    nat: bool = True

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address: the subnet's first host."""
        return self.subnet.network_address + 1

    @property
    def dhcp_range(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """First and last address dnsmasq hands out (after the gateway,
        before the broadcast address)."""
        return self.gateway + 1, self.subnet.broadcast_address - 1

    def check_pinned(self, address: str) -> ipaddress.IPv4Address:
        """`address` when it can be pinned on this network.

        Raises:
            InvalidArgument: outside the subnet, or the gateway/network/broadcast.
        """
        ip = ipaddress.IPv4Address(address)
        first, last = self.dhcp_range
        if ip not in self.subnet or not first <= ip <= last:
            raise InvalidArgument(
                f"ipv4.address {address} is not usable on network {self.name} ({self.subnet})",
                hint=f"pick an address from {first} to {last}",
            )
        return ip

    def pick_address(self, taken: Iterable[str], prefer: Iterable[str] = ()) -> str | None:
        """An address of the DHCP range for a NIC whose address lxpy fixes
        (a static lease): the first of `prefer` (say, the lease it holds)
        that is in the range and not in `taken`, else the lowest free one.
        None when every address is taken."""
        used = {ipaddress.IPv4Address(a) for a in taken}
        first, last = self.dhcp_range
        for a in prefer:
            ip = ipaddress.IPv4Address(a)
            if first <= ip <= last and ip not in used:
                return str(ip)
        for value in range(int(first), int(last) + 1):
            if ipaddress.IPv4Address(value) not in used:
                return str(ipaddress.IPv4Address(value))
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "nat": self.nat,
            "domain": DOMAIN,
        }

    def to_toml(self) -> str:
        return tomlw.dumps({"name": self.name, "subnet": str(self.subnet), "nat": self.nat})

    @classmethod
    def from_toml(cls, text: str, source: str = "network") -> Network:
        """Parse a network record.

        Raises:
            InvalidArgument: naming `source` and what is wrong.
        """
        data = tomlw.loads(text, source)
        try:
            name = validate_network_name(data["name"])
            subnet = parse_subnet(data["subnet"])
        except KeyError as e:
            raise InvalidArgument(f"{source}: missing key {e.args[0]!r}") from None
        except InvalidArgument as e:
            raise InvalidArgument(f"{source}: {e.message}", e.hint) from None
        nat = data.get("nat", True)
        if not isinstance(nat, bool):
            raise InvalidArgument(f"{source}: nat must be true or false, got {nat!r}")
        return cls(name=name, subnet=subnet, nat=nat)


def auto_subnets() -> Iterator[ipaddress.IPv4Network]:
    """The candidate /24s for a network created without a subnet, in order."""
    first = int(AUTO_FIRST.network_address)
    last = int(AUTO_LAST.network_address)
    for value in range(first, last + 1, 256):
        yield ipaddress.IPv4Network((value, 24))


def first_free_subnet(
    used: Iterable[ipaddress.IPv4Network],
) -> ipaddress.IPv4Network | None:
    """The first candidate /24 that overlaps none of `used`, or None."""
    taken = list(used)
    for cand in auto_subnets():
        if not any(cand.overlaps(u) for u in taken):
            return cand
    return None


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def root_id(root: str) -> str:
    """A short stable id of a daemon root: names its run dir, nftables table
    and bridge marks, so two daemons on one host never collide."""
    return _digest("root", root).hex()[:8]


def veth_name(root: str, container: str, index: int = 0) -> str:
    """The host end of a container's NIC `index`: `lxpy-` + 10 hex digits (15 chars)."""
    return VETH_PREFIX + _digest("veth", root, container, str(index)).hex()[:10]


def mac_address(root: str, container: str, index: int = 0) -> str:
    """A stable, locally administered unicast MAC for a container's NIC `index`."""
    raw = bytearray(_digest("mac", root, container, str(index))[:6])
    # Locally administered (bit 1 set), unicast (bit 0 clear).
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def network_list(value: object) -> list[str]:
    """The network names a container's `network` key holds: a list, or
    names separated by commas or spaces ("" or none: no network)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []
