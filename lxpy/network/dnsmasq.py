"""dnsmasq for one managed network: its command line, static leases (the
hosts file), its lease file, and its process.

One dnsmasq serves each bridge: DHCP for the subnet, DNS for the `lxpy`
domain (a container is NAME.lxpy), forwarding other names upstream. It runs
as a daemon of its own, not as lxpyd's child (it forks away into a session
of its own and logs to a file beside its leases), so the network keeps
serving while lxpyd is stopped, restarting or gone: the next lxpyd finds it
by its pid file and command line (`find`, `runs`) and supervises it again.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lxpy.errors import Busy, LxpyError
from lxpy.model.network import DOMAIN, Network

LEASE_TIME = "1h"
# How long dnsmasq may take to bind its sockets and write its pid file.
START_TIMEOUT = 10.0
# The log is cut (copied to LOG.1) past this size.
LOG_MAX = 1 << 20


@dataclass(frozen=True)
class Paths:
    """Files of one network's dnsmasq."""

    leases: Path  # under the state dir: survives reboots, as lxc-net's
    hosts: Path  # under the run dir: readable after dnsmasq drops root
    pid: Path
    log: Path  # beside the leases: written by dnsmasq itself, whoever started it

    def as_tuple(self) -> tuple[Path, ...]:
        return self.leases, self.hosts, self.pid, self.log


def command(binary: str, net: Network, paths: Paths) -> list[str]:
    """The dnsmasq command line for `net` (no config file is read)."""
    first, last = net.dhcp_range
    return [
        binary,
        "--conf-file=/dev/null",
        f"--log-facility={paths.log}",
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


def live_leases(path: Path) -> list[Lease]:
    """The leases in a dnsmasq lease file that have not expired."""
    now = time.time()
    return [le for le in read_leases(path) if le.expires == 0 or le.expires > now]


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


def serving_pid(paths: Paths) -> int | None:
    """The pid of a dnsmasq serving these files (whoever started it), or
    None. Checked by its command line, so a recycled pid of an unrelated
    process is never taken for it."""
    try:
        pid = int(paths.pid.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if f"--pid-file={paths.pid}".encode() in cmdline:
        return pid
    return None


def find(paths: Paths) -> tuple[int, int] | None:
    """The dnsmasq serving these files: its pid and a pidfd (the caller
    closes it), or None."""
    pid = serving_pid(paths)
    if pid is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Checked again with the pidfd open: from now on it names this process.
    if serving_pid(paths) != pid:
        os.close(fd)
        return None
    return pid, fd


def runs(pid: int, cmd: list[str]) -> bool:
    """Whether dnsmasq `pid` runs command line `cmd` from the binary that
    is at cmd[0] now (not one an upgrade has replaced since)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return [a.decode(errors="replace") for a in argv[1:]] == cmd[1:] and exe == os.path.realpath(
        cmd[0]
    )


def start(cmd: list[str], net: Network, paths: Paths) -> tuple[int, int]:
    """Start dnsmasq with `cmd` (from `command`) and return its pid and a
    pidfd once it serves. It forks away from the caller into a session of
    its own: no child of ours, it outlives the caller. Blocking.

    Raises:
        Busy: its ports on the gateway are taken.
        LxpyError: it failed to start, with its own words.
    """
    paths.pid.unlink(missing_ok=True)
    rotate_log(paths.log)
    try:
        # dnsmasq's first process exits once the daemon it forked has bound
        # its sockets and written its pid file, with the daemon's error
        # (on stderr) and status when it could not.
        res = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=START_TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        kill_stale(paths)
        raise LxpyError(
            f"dnsmasq for network {net.name} did not start within {START_TIMEOUT:.0f} s",
            hint=f"see its log, {paths.log}",
        ) from None
    why = "; ".join(ln.strip().removeprefix("dnsmasq: ") for ln in res.stderr.splitlines() if ln)
    if res.returncode != 0:
        raise _start_error(net, why or f"exit status {res.returncode}", paths.log)
    found = find(paths)
    if found is None:
        raise LxpyError(
            f"dnsmasq for network {net.name} ended as soon as it started",
            hint=f"see its log, {paths.log}",
        )
    return found


def _start_error(net: Network, why: str, log: Path) -> LxpyError:
    if "Address already in use" in why:
        return Busy(
            f"dnsmasq for network {net.name} cannot bind its ports on {net.gateway}: {why}",
            hint="another DNS or DHCP server listens there; stop it or restrict it to "
            "its own addresses",
        )
    return LxpyError(
        f"dnsmasq for network {net.name} failed to start: {why}", hint=f"see its log, {log}"
    )


def terminate(pidfd: int, timeout: float = 5.0) -> None:
    """End the process of `pidfd`: SIGTERM, then SIGKILL after `timeout`
    seconds; returns once it has ended."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return
        # A pidfd turns readable when its process has ended.
        if select.select([pidfd], [], [], timeout)[0]:
            return


def kill_stale(paths: Paths) -> None:
    """End the dnsmasq serving these files, if one runs."""
    found = find(paths)
    if found is not None:
        try:
            terminate(found[1])
        finally:
            os.close(found[1])


def rotate_log(path: Path) -> None:
    """Past LOG_MAX bytes, copy the log to LOG.1 and empty it. dnsmasq
    keeps it open for appending, so it writes on at the new end; copied
    rather than renamed, as dnsmasq, no longer root, may not be able to
    open a new file there."""
    try:
        if path.stat().st_size <= LOG_MAX:
            return
        old = path.with_name(path.name + ".1")
        shutil.copyfile(path, old)
        os.truncate(path, 0)
    except FileNotFoundError:
        return


# -- giving a lease up (RFC 2131) -------------------------------------------
_BOOTREQUEST, _HTYPE_ETHER, _MAGIC = 1, 1, 0x63825363
_OPT_MSG_TYPE, _OPT_SERVER_ID, _OPT_END, _DHCPRELEASE = 53, 54, 255, 7


def release_packet(ipv4: str, mac: str, server: str) -> bytes:
    """A DHCPRELEASE of `ipv4` held by `mac`, for the server at `server`.
    No client identifier: dnsmasq then finds the lease by the MAC."""
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    fixed = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128sI",
        _BOOTREQUEST,
        _HTYPE_ETHER,
        6,
        0,
        int.from_bytes(os.urandom(4), "big"),  # xid
        0,
        0,
        socket.inet_aton(ipv4),  # ciaddr: the address given up
        bytes(4),
        bytes(4),
        bytes(4),
        chaddr,
        bytes(64),
        bytes(128),
        _MAGIC,
    )
    options = bytes([_OPT_MSG_TYPE, 1, _DHCPRELEASE, _OPT_SERVER_ID, 4])
    return fixed + options + socket.inet_aton(server) + bytes([_OPT_END])


def release(server: str, path: Path, leases: list[Lease], timeout: float = 2.0) -> list[Lease]:
    """Have the dnsmasq at `server` (the gateway) drop `leases` at once, by a
    DHCPRELEASE for each, sent from the host as their client would; it
    then no longer resolves their names either. Waits until its lease file
    `path` has dropped them. Returns those still there after `timeout`
    seconds. Blocking.

    Raises:
        OSError: the packets could not be sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for le in leases:
            # To the gateway's own address: dnsmasq takes it as come in on
            # the bridge that has that address.
            s.sendto(release_packet(le.ipv4, le.mac, server), (server, 67))
    gone = {(le.mac, le.ipv4) for le in leases}
    deadline = time.monotonic() + timeout
    while True:
        left = [le for le in read_leases(path) if (le.mac, le.ipv4) in gone]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)
