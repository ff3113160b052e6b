"""Checks made before a network is set up, each failing with what to do.

A failed check leaves nothing behind because it runs before (binaries,
names, subnets) or right after the one step it depends on (ports, once the
bridge holds its address), and the caller undoes that step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from lxpy.errors import Busy, Unsupported
from lxpy.model.paths import NETWORKS_LOCK

BINARIES = {
    "dnsmasq": "install dnsmasq-base (`apt install dnsmasq-base`)",
    "nft": "install nftables (`apt install nftables`)",
}


def find_binaries() -> dict[str, str]:
    """Paths of dnsmasq and nft on $PATH (plus /usr/sbin, /sbin).

    Raises:
        Unsupported: one is missing, with the package to install.
    """
    path = os.environ.get("PATH", "")
    found: dict[str, str] = {}
    for name, hint in BINARIES.items():
        exe = shutil.which(name, path=path)
        if exe is None:
            raise Unsupported(f"{name} is not installed (not found on PATH={path})", hint=hint)
        found[name] = exe
    return found


def check_subnet_free(
    subnet: ipaddress.IPv4Network, used: Iterable[ipaddress.IPv4Network], what: str
) -> None:
    """Raise Busy when `subnet` overlaps a host route or address.

    Raises:
        Busy: naming the overlapping network.
    """
    for u in used:
        if subnet.overlaps(u):
            raise Busy(
                f"subnet {subnet} of {what} overlaps {u}, which the host already uses",
                hint="pick another subnet with --subnet, or leave it out to get a free one",
            )


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Serialize subnet choice and bridge creation between daemons."""
    NETWORKS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(NETWORKS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _local_address(column: str) -> tuple[str, int]:
    # /proc/net/{tcp,udp}: "0100007F:0035", the address as a 32-bit number
    # printed in host byte order.
    addr, _, port = column.partition(":")
    return socket.inet_ntoa(struct.pack("=I", int(addr, 16))), int(port, 16)


def socket_owner(address: str, port: int, protos: Iterable[str]) -> str:
    """`pid N (comm)` of a process holding a socket that a bind to
    `address`:`port` collides with (that address, or any when either is
    0.0.0.0), or ''.

    Why the address counts: every bridge's dnsmasq holds port 53 on its
    own gateway; the one in the way is the one on this address.
    """
    inodes: set[str] = set()
    for proto in protos:
        with contextlib.suppress(OSError), open(f"/proc/net/{proto}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                held, held_port = _local_address(cols[1])
                if held_port == port and (held == address or "0.0.0.0" in (address, held)):
                    inodes.add(cols[9])
    if not inodes:
        return ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"pid {pid} ({comm})"
    return ""


def check_ports(address: ipaddress.IPv4Address, bridge: str) -> None:
    """Raise Busy when DNS (53 udp/tcp on `address`) or DHCP (67 udp) cannot
    be bound as dnsmasq will bind them.

    Raises:
        Busy: naming the port and, when it can be found, the process.
    """
    probes = [
        (socket.SOCK_DGRAM, str(address), 53, "udp", ("udp",)),
        (socket.SOCK_STREAM, str(address), 53, "tcp", ("tcp",)),
        (socket.SOCK_DGRAM, "0.0.0.0", 67, "udp", ("udp",)),
    ]
    for kind, host, port, proto, tables in probes:
        s = socket.socket(socket.AF_INET, kind)
        try:
            # As dnsmasq does: other dnsmasqs on other bridges share 67.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            if kind == socket.SOCK_STREAM:
                s.listen(1)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            owner = socket_owner(host, port, tables) or "another process"
            raise Busy(
                f"port {port}/{proto} on {host} (bridge {bridge}) is taken by {owner}",
                hint=f"stop that service or make it not listen on {host} "
                "(e.g. bind it to specific addresses), then retry",
            ) from None
        finally:
            s.close()
