"""dnsmasq for one managed network: its command line, static leases (the
hosts file) and its lease file.

One dnsmasq serves each bridge: DHCP for the subnet, DNS for the `lxpy`
domain (a container is NAME.lxpy), forwarding other names upstream. It runs
in the foreground under lxpyd, which supervises it.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lxpy.model.network import DOMAIN, Network

LEASE_TIME = "1h"


@dataclass(frozen=True)
class Paths:
    """Files of one network's dnsmasq."""

    leases: Path  # under the state dir: survives reboots, as lxc-net's
    hosts: Path  # under the run dir: readable after dnsmasq drops root
    pid: Path

    def as_tuple(self) -> tuple[Path, Path, Path]:
        return self.leases, self.hosts, self.pid


def command(binary: str, net: Network, paths: Paths) -> list[str]:
    """The dnsmasq command line for `net` (no config file is read)."""
    first, last = net.dhcp_range
    return [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--log-facility=-",
        "--strict-order",
        "--bind-interfaces",
        "--except-interface=lo",
        f"--interface={net.name}",
        f"--listen-address={net.gateway}",
        f"--dhcp-range={first},{last},{net.subnet.netmask},{LEASE_TIME}",
        "--dhcp-no-override",
        # No ping before an offer: dnsmasq waits up to 3 s for an answer, and
        # nothing but dnsmasq hands out addresses on lxpy's bridge.
        "--no-ping",
        # Two packets instead of four for clients that ask (systemd-networkd).
        "--dhcp-rapid-commit",
        "--dhcp-authoritative",
        f"--dhcp-leasefile={paths.leases}",
        f"--dhcp-hostsfile={paths.hosts}",
        f"--pid-file={paths.pid}",
        f"--domain={DOMAIN}",
        f"--local=/{DOMAIN}/",
        "--expand-hosts",
    ]


@dataclass(frozen=True)
class Host:
    """A static DHCP entry: the container's MAC gets its name (and address)."""

    mac: str
    name: str
    ipv4: str | None = None

    def line(self) -> str:
        return ",".join([self.mac, *([self.ipv4] if self.ipv4 else []), self.name])


def write_hosts(path: Path, hosts: Iterable[Host]) -> None:
    """Replace the hosts file (atomically: dnsmasq may read it at any time)."""
    text = "".join(h.line() + "\n" for h in sorted(hosts, key=lambda h: h.name))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Lease:
    mac: str
    ipv4: str
    hostname: str
    expires: int


def read_leases(path: Path) -> list[Lease]:
    """The leases in a dnsmasq lease file (missing file: none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out: list[Lease] = []
    for line in text.splitlines():
        parts = line.split()
        # expiry mac ip hostname client-id; IPv6 lines have a duid header.
        if len(parts) < 4 or parts[0] == "duid" or ":" in parts[2]:
            continue
        try:
            expires = int(parts[0])
        except ValueError:
            continue
        out.append(Lease(parts[1].lower(), parts[2], parts[3], expires))
    return out


def stale_pid(paths: Paths) -> int | None:
    """The pid of a dnsmasq still serving these files (left by a daemon that
    was killed), or None. Checked by its command line, so a recycled pid of
    an unrelated process is never taken for it."""
    try:
        pid = int(paths.pid.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if f"--pid-file={paths.pid}".encode() in cmdline:
        return pid
    return None


def kill_stale(paths: Paths) -> None:
    """SIGTERM a stale dnsmasq of these files and wait briefly for it to go."""
    pid = stale_pid(paths)
    if pid is None:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        # A pidfd turns readable when the process has ended.
        select.select([fd], [], [], 5)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
