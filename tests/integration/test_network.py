"""Managed networks for real: bridges, veths, bound namespaces, dnsmasq, nftables.

Every test uses its own network names and lets lxpy pick free subnets (or
picks one from 10.213.0.0/16 that the host does not use). Traffic goes only
between the host's bridge and the namespaces the test made: DHCP clients,
DNS queries and pings are aimed at the bridge or at those namespaces.
A finaliser removes anything a test may leave, also on failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lxpy.daemon.networks import Networks
from lxpy.daemon.nics import NetnsHandle
from lxpy.errors import Busy, NotFound, Unsupported
from lxpy.model.network import root_id, veth_name
from lxpy.model.paths import RunPaths
from lxpy.network import links, nftables
from tests.conftest import Daemon, alive, start_daemon, stop_daemon

pytestmark = pytest.mark.integration

# Resolved once: a test runs lxpy with a PATH that lacks them.
IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"

# <linux/in.h>; the socket module does not name it.
IP_FREEBIND = 15

_counter = iter(range(1000))


def net_name() -> str:
    """A network (bridge) name no other test or test run uses at once."""
    return f"lxt{os.getpid() % 100000}x{next(_counter)}"


def free_subnet() -> str:
    used = links.used_subnets()
    for third in range(256):
        cand = ipaddress.IPv4Network(f"10.213.{(os.getpid() + third) % 256}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return str(cand)
    raise AssertionError("no free 10.213.x.0/24")


def scrub(root: Path, containers: tuple[str, ...] = ()) -> list[str]:
    """Remove whatever lxpy made for `root`; returns what was found left over."""
    rid, run = root_id(str(root)), RunPaths.of(root)
    left: list[str] = []
    for pid_file in run.networks.glob("*/dnsmasq.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if f"--pid-file={pid_file}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(f"dnsmasq {pid}")
                os.kill(pid, signal.SIGKILL)
    out = subprocess.run([IP, "-j", "link", "show"], capture_output=True, text=True).stdout
    for link in json.loads(out or "[]"):
        if str(link.get("ifalias", "")).startswith(f"lxpy:{rid}:"):
            left.append(f"bridge {link['ifname']}")
            subprocess.run([IP, "link", "del", link["ifname"]], check=False)
    for c in containers:
        for i in range(2):
            v = veth_name(str(root), c, i)
            if links.existing_links([v]):
                left.append(f"veth {v}")
                links.delete_links([v])
    for ns in run.netns_dir.glob("*"):
        left.append(f"netns {ns}")
        links.remove_netns(ns)
    table = nftables.table_name(rid)
    for family in ("inet", "bridge"):
        listed = subprocess.run([NFT, "list", "table", family, table], capture_output=True)
        if listed.returncode == 0:
            left.append(f"table {family} {table}")
            subprocess.run([NFT, "delete", "table", family, table], check=False)
    shutil.rmtree(run.dir, ignore_errors=True)
    return left


@pytest.fixture
def clean_daemon(daemon: Daemon) -> Iterator[Daemon]:
    """The conftest daemon, with everything networked scrubbed afterwards."""
    try:
        yield daemon
    finally:
        stop_daemon(daemon)
        scrub(daemon.root)


def bridge_exists(name: str) -> bool:
    return bool(links.existing_links([name]))


def table_text(root: Path) -> str:
    table = nftables.table_name(root_id(str(root)))
    res = subprocess.run([NFT, "list", "table", "inet", table], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


# -- CLI and daemon ----------------------------------------------------------------


def test_network_create_list_info_delete(clean_daemon: Daemon) -> None:
    d = clean_daemon
    name = net_name()
    out = d.cli("network", "create", name, "--format", "json").stdout
    net = json.loads(out)
    subnet = ipaddress.IPv4Network(net["subnet"])
    assert net["status"] == "running" and net["nat"] is True
    assert net["gateway"] == str(subnet.network_address + 1)
    assert bridge_exists(name)
    show = [IP, "-4", "-o", "addr", "show", "dev", name]
    addrs = subprocess.run(show, capture_output=True, text=True).stdout
    assert f"{net['gateway']}/{subnet.prefixlen}" in addrs
    rules = table_text(d.root)
    assert f"ip saddr {subnet}" in rules and "masquerade" in rules
    pid = net["dnsmasq_pid"]
    assert alive(pid)
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"

    listing = d.cli("network", "list").stdout
    assert name in listing and str(subnet) in listing
    info = d.cli("network", "info", name).stdout
    assert "status:   running" in info and str(subnet) in info

    again = d.cli("network", "create", name, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr

    # A second one without NAT has no masquerade rule of its own.
    other = net_name()
    sub2 = free_subnet()
    d.cli("network", "create", other, "--subnet", sub2, "--no-nat")
    rules = table_text(d.root)
    assert f"ip saddr {sub2}" not in rules and f'iifname "{other}"' in rules

    d.cli("network", "delete", other)
    assert d.cli("network", "delete", name).stdout == f"deleted network {name}\n"
    assert not bridge_exists(name) and not bridge_exists(other)
    assert table_text(d.root) == ""
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    missing = d.cli("network", "info", name, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_preflight_errors_leave_nothing(clean_daemon: Daemon) -> None:
    d = clean_daemon
    # Port 53 on the new bridge's address taken by another process: the
    # test's socket, bound there before the address exists (IP_FREEBIND),
    # not on every address, where a real dnsmasq on this host may hold 53.
    busy = net_name()
    subnet = ipaddress.IPv4Network(free_subnet())
    gateway = str(next(subnet.hosts()))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        listener.bind((gateway, 53))
        listener.listen(1)
        res = d.cli("network", "create", busy, "--subnet", str(subnet), check=False)
    finally:
        listener.close()
    assert res.returncode == 1 and f"port 53/tcp on {gateway}" in res.stderr, res.stderr
    assert f"pid {os.getpid()}" in res.stderr
    assert not bridge_exists(busy) and f'"{busy}"' not in table_text(d.root)

    first = net_name()
    net = json.loads(d.cli("network", "create", first, "--format", "json").stdout)

    # A subnet overlapping a host route (the first network's).
    clash = net_name()
    res = d.cli("network", "create", clash, "--subnet", net["subnet"], check=False)
    assert res.returncode == 1 and "overlaps" in res.stderr and "hint:" in res.stderr
    assert not bridge_exists(clash)

    # A bridge name already used by a link lxpy did not make.
    taken = net_name()
    subprocess.run([IP, "link", "add", taken, "type", "bridge"], check=True)
    try:
        res = d.cli("network", "create", taken, check=False)
        assert res.returncode == 1 and "is not lxpy's bridge" in res.stderr
        assert bridge_exists(taken)  # left as it was
    finally:
        subprocess.run([IP, "link", "del", taken], check=False)

    res = d.cli("network", "create", net_name(), "--subnet", "300.1.2.0/24", check=False)
    assert res.returncode == 1 and "not an IPv4 subnet" in res.stderr
    res = d.cli("network", "create", "a-name-far-too-long", check=False)
    assert res.returncode == 1 and "at most 15" in res.stderr

    listing = json.loads(d.cli("network", "list", "--format", "json").stdout)
    assert [n["name"] for n in listing] == [first]
    d.cli("network", "delete", first)


def test_restart_and_sigkill_recreate_networks(clean_daemon: Daemon) -> None:
    d = clean_daemon
    name = net_name()
    net = json.loads(d.cli("network", "create", name, "--format", "json").stdout)
    old_pid = net["dnsmasq_pid"]

    # SIGKILL: dnsmasq serves on; the next lxpyd adopts it.
    d.proc.kill()
    d.proc.wait()
    assert alive(old_pid)
    # The killed daemon's socket file stays; start_daemon waits for a new one.
    d.socket.unlink()
    settings = (d.root.parent / f"{d.root.name}-lxpyd.toml").read_text()
    again = start_daemon(d.root, d.socket, d.log, settings=settings)
    try:
        info = json.loads(again.cli("network", "info", name, "--format", "json").stdout)
        assert info["status"] == "running" and info["subnet"] == net["subnet"]
        assert info["dnsmasq_pid"] == old_pid
        # Graceful stop and start: the same network (and dnsmasq) comes back.
        stop_daemon(again)
        assert alive(old_pid)
        again = start_daemon(d.root, d.socket, d.log, settings=settings)
        info = json.loads(again.cli("network", "info", name, "--format", "json").stdout)
        assert info["status"] == "running" and bridge_exists(name)
        assert info["dnsmasq_pid"] == old_pid
        again.cli("network", "delete", name)
        assert not bridge_exists(name) and not alive(old_pid)
    finally:
        stop_daemon(again)
        d.proc = again.proc


# -- the service with "containers": namespaces that run a DHCP client -----------

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook: configure only what the lease says, inside the namespace.
case "$1" in
  bound|renew)
    busybox ip addr flush dev "$interface"
    busybox ip addr add "$ip/${mask:-24}" dev "$interface"
    ;;
esac
exit 0
"""


class Guest:
    """A bound namespace from Networks.attach, used like a container."""

    def __init__(self, path: str, script: Path) -> None:
        self.path = path
        self.script = script

    def run(self, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NSENTER, f"--net={self.path}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def dhcp(self, hostname: str) -> str:
        res = self.run(
            "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1",
            "-s", str(self.script), "-x", f"hostname:{hostname}",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        for line in res.stderr.splitlines():
            if "obtained" in line:
                return line.split("lease of ")[1].split()[0]
        raise AssertionError(res.stderr)

    def resolve(self, name: str, server: str) -> str:
        res = self.run("busybox", "nslookup", "-type=a", name, server)
        assert res.returncode == 0, res.stdout + res.stderr
        answer = res.stdout.split("Name:", 1)[1]
        return answer.split("Address:", 1)[1].split()[0]


def host_ping(address: str) -> bool:
    return (
        subprocess.run(["busybox", "ping", "-c1", "-W2", address], capture_output=True).returncode
        == 0
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "udhcpc.sh"
    p.write_text(UDHCPC_SCRIPT)
    p.chmod(0o755)
    return p


@pytest.mark.trio
async def test_guests_get_dhcp_dns_and_are_reachable(tmp_path: Path, script: Path) -> None:
    root = tmp_path / "root"
    guests = ("alpha", "beta", "gamma")
    name, subnet = net_name(), free_subnet()
    gw = str(ipaddress.IPv4Network(subnet).network_address + 1)
    pinned = str(ipaddress.IPv4Network(subnet).network_address + 77)
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nets = await Networks.open(root, nursery, default_network="")
                await nets.create(name, subnet)
                config = {"network": [name]}
                a = await nets.attach("alpha", config)
                b = await nets.attach("beta", {**config, "ipv4.address": pinned})
                c = await nets.attach("gamma", config)
                ga, gb, gc = (Guest(h.path, script) for h in (a, b, c))
                assert a.nics[0].peer == "eth0" and links.existing_links([a.nics[0].host])
                link = ga.run("busybox", "ip", "link", "show", "eth0").stdout
                assert a.nics[0].mac in link and "UP" in link

                addr_a = await trio.to_thread.run_sync(ga.dhcp, "alpha")
                addr_b = await trio.to_thread.run_sync(gb.dhcp, "beta")
                addr_c = await trio.to_thread.run_sync(gc.dhcp, "gamma")
                assert addr_b == pinned
                assert ipaddress.IPv4Address(addr_a) in ipaddress.IPv4Network(subnet)
                assert await nets.addresses("alpha") == [addr_a]
                assert len({addr_a, addr_b, addr_c}) == 3

                # By name through the bridge's dnsmasq, by address across the bridge.
                assert ga.resolve("beta.lxpy", gw) == pinned
                assert gc.resolve("alpha.lxpy", gw) == addr_a
                assert ga.run("busybox", "ping", "-c1", "-W2", addr_c).returncode == 0
                for addr in (addr_a, addr_b, addr_c):
                    assert await trio.to_thread.run_sync(host_ping, addr)

                info = await nets.info(name)
                assert info["used_by"] == list(guests)
                leases = info["leases"]
                assert isinstance(leases, list)
                assert {le["ipv4"] for le in leases} >= {addr_a, addr_b, addr_c}

                with pytest.raises(Busy, match="in use by running containers"):
                    await nets.delete(name)
                with pytest.raises(Busy, match="held by running container"):
                    await nets.attach("delta", {**config, "ipv4.address": pinned})
                with pytest.raises(NotFound, match="network 'nope' not found"):
                    await nets.attach("delta", {"network": ["nope"]})
                assert not (nets.netns_path("delta")).exists()

                # dnsmasq killed: healed, and serving again.
                old = int(info["dnsmasq_pid"])  # type: ignore[call-overload]
                os.kill(old, signal.SIGKILL)
                with trio.fail_after(10):
                    while True:
                        now = await nets.info(name)
                        if now["status"] == "running" and now["dnsmasq_pid"] != old:
                            break
                        await trio.sleep(0.05)
                assert now["dnsmasq_restarts"] == 1
                assert await trio.to_thread.run_sync(gc.dhcp, "gamma") == addr_c

                # The pinned address holds across a stop and start.
                await nets.detach("beta")
                assert not links.existing_links([b.nics[0].host])
                assert not await trio.Path(b.path).exists()
                hosts = await trio.Path(nets._paths(name).hosts).read_text()
                assert "beta" not in hosts and "alpha" in hosts
                b = await nets.attach("beta", {**config, "ipv4.address": pinned})
                assert await trio.to_thread.run_sync(Guest(b.path, script).dhcp, "beta") == pinned

                # lxpyd goes away (dnsmasq serves on) and comes back: the
                # running guests are adopted, their NICs kept, DHCP serves them.
                nursery.cancel_scope.cancel()
            async with trio.open_nursery() as nursery:
                nets = await Networks.open(root, nursery, default_network="")
                assert set(nets.attached) == set(guests)
                assert await trio.to_thread.run_sync(ga.dhcp, "alpha") == addr_a
                assert await trio.to_thread.run_sync(host_ping, addr_a)
                for g in guests:
                    await nets.detach(g)
                    await nets.detach(g)  # idempotent
                assert not list(nets.run.netns_dir.glob("*"))
                await nets.delete(name)
                nursery.cancel_scope.cancel()
        assert not bridge_exists(name)
        assert table_text(root) == ""
    finally:
        left = scrub(root, guests + ("delta",))
    assert left == []


@pytest.mark.trio
async def test_default_network_made_on_first_use(tmp_path: Path, script: Path) -> None:
    root = tmp_path / "root"
    name = net_name()
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nets = await Networks.open(root, nursery, default_network=name)
                assert nets.nets == {}
                h = await nets.attach("solo", {"network": [name]})
                net = nets.nets[name]
                assert str(net.subnet).startswith("10.") and net.subnet.prefixlen == 24
                addr = await trio.to_thread.run_sync(Guest(h.path, script).dhcp, "solo")
                assert ipaddress.IPv4Address(addr) in net.subnet
                # No network at all: nothing bound (the launch makes a
                # namespace with lo only), and the earlier one is gone.
                h = await nets.attach("solo", {"network": []})
                assert h == NetnsHandle("", ())
                assert not nets.netns_path("solo").exists()
                assert "solo" not in nets.attached
                await nets.detach("solo")
                await nets.delete(name)
                nursery.cancel_scope.cancel()
    finally:
        left = scrub(root, ("solo",))
    assert left == []


@pytest.mark.trio
async def test_missing_binary_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    name = net_name()
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nets = await Networks.open(root, nursery, default_network="")
                with pytest.raises(Unsupported, match="dnsmasq is not installed") as exc:
                    await nets.create(name, free_subnet())
                assert "apt install dnsmasq-base" in str(exc.value.hint)
                nursery.cancel_scope.cancel()
        assert not bridge_exists(name)
    finally:
        left = scrub(root)
    assert left == []
