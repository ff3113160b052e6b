"""Published ports (`proxy` devices): addresses, the host port and the DNAT table.

A proxy listens on the host (`listen=tcp:ADDR:PORT` or `udp:ADDR:PORT`)
and forwards to an address inside the container (`connect=tcp:ADDR:PORT`).
Two paths carry the traffic:

* **DNAT** (nftables, in a table of this daemon root's own,
  `inet lxpy-<root id>-proxy`): connections to a host address other than
  loopback are rewritten to the container's address on its managed network,
  in `prerouting` (from outside) and `output` (from the host itself). The
  client's source address is kept: the container sees who connected.
* **Userspace** (lxpy.daemon.proxyd): the listening socket bound on the
  host; it takes what DNAT cannot rewrite, i.e. connections to 127.0.0.1
  (the kernel never routes loopback traffic out of the host), and every
  connection when the target is the container's own loopback
  (`connect=tcp:127.0.0.1:PORT`) or when the container has no address on a
  managed network. It connects from inside the container's network
  namespace, so the container sees its own address (or 127.0.0.1) as the
  client.

The listening socket is made whichever path carries the traffic: it holds
the port, so a port already bound on the host is refused when the proxy is
added or started, and nothing else can bind it while the proxy exists.

Like lxpy.network.nftables, the table is replaced whole in one transaction.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lxpy.errors import Busy, InvalidArgument
from lxpy.kernel import syscalls as sc
from lxpy.network.links import in_own_thread
from lxpy.network.nftables import run_script

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Endpoint:
    """One side of a proxy: protocol, IPv4 address, port."""

    proto: str
    addr: str
    port: int

    def __str__(self) -> str:
        return f"{self.proto}:{self.addr}:{self.port}"

    @property
    def loopback(self) -> bool:
        return ipaddress.IPv4Address(self.addr).is_loopback

    @property
    def wildcard(self) -> bool:
        return self.addr == "0.0.0.0"

    @property
    def sock_type(self) -> int:
        return socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM


def parse_endpoint(key: str, value: str) -> Endpoint:
    """`tcp:ADDR:PORT` or `udp:ADDR:PORT` (IPv4) as an Endpoint.

    Raises:
        InvalidArgument: naming `key` and the value, for any other form.
    """
    hint = f"write {key}=tcp:ADDR:PORT or {key}=udp:ADDR:PORT, e.g. {key}=tcp:0.0.0.0:8080"
    parts = value.split(":")
    if len(parts) != 3:
        raise InvalidArgument(f"bad {key} {value!r}: not PROTO:ADDR:PORT", hint=hint)
    proto, addr, port_s = parts
    if proto not in PROTOCOLS:
        raise InvalidArgument(
            f"bad {key} {value!r}: protocol {proto!r} is not tcp or udp", hint=hint
        )
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise InvalidArgument(
            f"bad {key} {value!r}: {addr!r} is not an IPv4 address", hint=hint
        ) from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise InvalidArgument(f"bad {key} {value!r}: port {port_s!r} is not 1-65535", hint=hint)
    return Endpoint(proto, addr, int(port_s))


def parse_pair(listen: str, connect: str) -> tuple[Endpoint, Endpoint]:
    """The two endpoints of a proxy device, checked together.

    Raises:
        InvalidArgument: a bad endpoint, protocols that differ, or a
            `connect` address that cannot be the container's (0.0.0.0).
    """
    lst = parse_endpoint("listen", listen)
    con = parse_endpoint("connect", connect)
    if lst.proto != con.proto:
        raise InvalidArgument(
            f"listen is {lst.proto} but connect is {con.proto}",
            hint="a proxy forwards one protocol: use tcp on both sides or udp on both",
        )
    if con.wildcard:
        raise InvalidArgument(
            f"bad connect {connect!r}: 0.0.0.0 is not an address to connect to",
            hint="give the container's address, or 127.0.0.1 for its loopback",
        )
    return lst, con


def bind(listen: Endpoint) -> socket.socket:
    """The host's listening socket for `listen` (bound; a TCP one listening),
    non-blocking and close-on-exec.

    Raises:
        Busy: the port is already bound on the host (by anything).
        InvalidArgument: the address is not one of the host's.
    """
    s = socket.socket(socket.AF_INET, listen.sock_type | socket.SOCK_CLOEXEC)
    try:
        if listen.proto == "tcp":
            # A port in TIME_WAIT from this proxy's last run is not "taken";
            # a bound or listening one still is (SO_REUSEADDR does not
            # share a port that a live socket holds on Linux).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((listen.addr, listen.port))
        if listen.proto == "tcp":
            s.listen(128)
        s.setblocking(False)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise Busy(
                f"port {listen} is already in use on the host",
                hint="pick another listen port, or stop what holds it (`ss -lntup`)",
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(
                f"listen address {listen.addr} is not an address of this host",
                hint="give one of the host's addresses (`ip -4 addr`), or 0.0.0.0",
            ) from None
        raise
    return s


def sockets_in_netns(
    netns: str | os.PathLike[str], sock_type: int, count: int = 1
) -> list[socket.socket]:
    """`count` new IPv4 sockets that live in the network namespace at
    `netns` (a bound namespace or /proc/PID/ns/net), non-blocking.

    Why a thread: setns(CLONE_NEWNET) moves only the calling thread, and a
    socket stays in the namespace it was made in; the thread ends there.

    Raises:
        OSError: the namespace cannot be entered.
    """

    def work() -> list[socket.socket]:
        sc.setns_path(netns, sc.CLONE_NEWNET)
        out = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, sock_type | socket.SOCK_CLOEXEC)
            s.setblocking(False)
            out.append(s)
        return out

    return in_own_thread("lxpy-proxy-sock", work)


# -- DNAT ----------------------------------------------------------------------


@dataclass(frozen=True)
class Dnat:
    """One proxy's DNAT rule: traffic to `listen` goes to `target`:`port`
    (the container's address on its managed network, and the connect port)."""

    container: str
    device: str
    listen: Endpoint
    target: str
    port: int


def dnat_possible(connect: Endpoint) -> bool:
    """Whether DNAT can carry a proxy to `connect`: not to the container's
    loopback, which no packet from outside its namespace may reach."""
    return not connect.loopback


def table_name(root_id: str) -> str:
    """The proxies' table of a daemon root (beside lxpy.network.nftables')."""
    return f"lxpy-{root_id}-proxy"


def _match(d: Dnat) -> str:
    # Loopback is left out: those packets never leave the host's loopback
    # interface, and the userspace listener takes them.
    if d.listen.wildcard:
        dst = "fib daddr type local ip daddr != 127.0.0.0/8"
    elif d.listen.loopback:
        return ""
    else:
        dst = f"ip daddr {d.listen.addr}"
    return f"{dst} {d.listen.proto} dport {d.listen.port}"


def render(table: str, rules: Iterable[Dnat]) -> str:
    """The nft script that makes `table` hold exactly the DNAT of `rules`
    (or removes it when there are none)."""
    rows = sorted((r for r in rules if _match(r)), key=lambda r: (r.container, r.device))
    lines = [f"table inet {table} {{}}", f"delete table inet {table}"]
    if not rows:
        return "\n".join(lines) + "\n"
    lines.append(f"table inet {table} {{")
    for chain, hook, prio in (("prerouting", "prerouting", "dstnat"), ("output", "output", -100)):
        lines.append(f"  chain {chain} {{")
        lines.append(f"    type nat hook {hook} priority {prio}; policy accept;")
        for r in rows:
            comment = f'comment "{r.container}/{r.device}"'
            lines.append(f"    {_match(r)} dnat ip to {r.target}:{r.port} {comment}")
        lines.append("  }")
    # The rewritten packets are forwarded to the bridge: accepted here
    # whatever this table's neighbours decide for new flows of their own.
    lines.append("  chain forward {")
    lines.append("    type filter hook forward priority filter; policy accept;")
    lines.append("    ct status dnat accept")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(table: str, rules: Iterable[Dnat], nft: str = "nft") -> None:
    """Replace `table` with the DNAT of `rules` in one transaction.

    Raises:
        Unsupported: no nft.
        LxpyError: nft refused the script.
    """
    run_script(
        render(table, rules),
        f"the published ports' table {table}",
        "check that the kernel has nf_tables with nat and fib (`nft list tables`)",
        nft,
    )


def netns_of(pid: int) -> Path:
    """The network namespace of process `pid` (a container's init)."""
    return Path(f"/proc/{pid}/ns/net")
