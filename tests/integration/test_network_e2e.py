"""Networking end to end: booted containers on a managed network.

Real lxpyd (the conftest `daemon` fixture, which has no default network),
real Debian (systemd-networkd) and busybox (udhcpc) containers. Each test
makes a network of its own, named after the test run, on a free
10.212.x.0/24. Traffic goes only between the host, the test's bridge and
the containers on it: addresses of that subnet and names in the `lxpy`
domain, which the bridge's dnsmasq answers itself (it never forwards them).
The networks are made without NAT where nothing needs it, so no check can
depend on traffic leaving the host.

The `lab` fixture's finaliser stops and destroys the test's containers,
deletes its network, stops lxpyd, and then fails the test when a bridge,
veth, namespace, nftables table or dnsmasq of the test is still there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxpy.model.network import root_id, veth_name
from lxpy.model.paths import RunPaths
from lxpy.network import links, nftables
from tests.conftest import VENV_BIN, Daemon, alive, start_again, stop_daemon, wait_for
from tests.integration.test_network import scrub

pytestmark = pytest.mark.integration

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
HOST_BUSYBOX = "/bin/busybox"
# Where the Debian containers get the host's static busybox (minbase has
# no ping and no nslookup).
BB_IN_DEBIAN = "/usr/local/bin/busybox"
# How long a container may take to hold its DHCP address after `lxpy start`
# before the test gives up (how long it takes: bench/bench_dhcp.py).
DHCP_WAIT = 15.0

_counter = iter(range(1000))


# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 240


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.212.0.0/16 that no host route or interface uses, chosen
    from the pid so that parallel test runs start apart."""
    used = links.used_subnets()
    for third in range(256):
        cand = ipaddress.IPv4Network(f"10.212.{(os.getpid() + third) % 256}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise AssertionError("no free 10.212.x.0/24 on this host")


def host_ping(address: str) -> bool:
    res = subprocess.run([HOST_BUSYBOX, "ping", "-c1", "-W2", address], capture_output=True)
    return res.returncode == 0


def ipv4_of(pid: int) -> str | None:
    """The IPv4 address on eth0 in the network namespace of `pid`."""
    try:
        per_if = links.netns_ipv4(Path(f"/proc/{pid}/ns/net"))
    except OSError:
        return None
    found = per_if.get("eth0", [])
    return found[0].split("/")[0] if found else None


def leftovers(root: Path, network: str, containers: set[str]) -> list[str]:
    """What of this test's networking is still on the host (nothing is removed)."""
    rid = root_id(str(root))
    left: list[str] = []
    names = {network} | {veth_name(str(root), c, i) for c in containers for i in range(2)}
    out = subprocess.run([IP, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        ifname = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if ifname in names:
            left.append(f"link {ifname}")
    tables = subprocess.run([NFT, "list", "tables"], capture_output=True, text=True).stdout
    if nftables.table_name(rid) in tables.split():
        left.append(f"nftables table {nftables.table_name(rid)}")
    left += [f"netns {p}" for p in RunPaths.of(root).netns_dir.glob("*")]
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dnsmasq") and f"--interface={network}".encode() in argv:
            left.append(f"dnsmasq {p.name}")
    return left


class Lab:
    """One test's daemon, network and containers, driven by the real CLI."""

    def __init__(self, daemon: Daemon, tmp_path: Path) -> None:
        self.d = daemon
        self._fixture_daemon = daemon
        self.tmp = tmp_path
        self.net = f"lxe{os.getpid() % 100000}x{next(_counter)}"
        self.subnet = free_subnet()
        self.gw = str(self.subnet.network_address + 1)
        self.containers: set[str] = set()
        self.debian: set[str] = set()
        self._restarts = 0

    def make_network(self, nat: bool = False) -> dict[str, Any]:
        flag = "--nat" if nat else "--no-nat"
        out = self.cli("network", "create", self.net, "--subnet", str(self.subnet), flag)
        assert out.returncode == 0
        return self.network()

    def network(self) -> dict[str, Any]:
        res = self.cli("network", "info", self.net, "--format", "json")
        return json.loads(res.stdout)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.d.cli(*args, check=check)

    def names(self, *short: str) -> tuple[str, ...]:
        """Container names for this test run: container cgroups are named
        after the container host-wide, so names carry the pid."""
        return tuple(f"{s}-{os.getpid() % 100000}" for s in short)

    def info(self, name: str) -> dict[str, Any]:
        return json.loads(self.cli("info", name, "--format", "json").stdout)

    def create(self, name: str, template: str, *config: str) -> None:
        sets = [a for kv in (f"network={self.net}", *config) for a in ("--set", kv)]
        self.containers.add(name)
        self.cli("create", name, "-t", template, *sets)
        if template != "busybox":
            self.debian.add(name)

    def start(self, name: str) -> str:
        """`lxpy start NAME`, then wait until eth0 holds an IPv4 address of
        the test's subnet, and return it."""
        self.cli("start", name)
        pid = self.info(name)["init_pid"]
        addr = wait_for(lambda: ipv4_of(pid), DHCP_WAIT, f"a DHCP address in {name}")
        assert ipaddress.IPv4Address(addr) in self.subnet
        return str(addr)

    def busybox(self, name: str) -> str:
        """The path of a busybox inside container `name`."""
        return BB_IN_DEBIAN if name in self.debian else "/bin/busybox"

    def install_busybox(self, name: str) -> None:
        """Copy the host's static busybox into a running Debian container,
        through `lxpy exec` with the file on stdin."""
        script = f"cat > {BB_IN_DEBIAN}.tmp && chmod 755 {BB_IN_DEBIAN}.tmp && "
        script += f"mv {BB_IN_DEBIAN}.tmp {BB_IN_DEBIAN}"
        with open(HOST_BUSYBOX, "rb") as stdin:
            res = subprocess.run(
                [*self._lxpy(), "exec", name, "--", "sh", "-c", script],
                stdin=stdin,
                capture_output=True,
                timeout=60,
            )
        assert res.returncode == 0, res.stderr
        assert self.run_in(name, BB_IN_DEBIAN, "true").returncode == 0

    def _lxpy(self) -> list[str]:
        return [str(VENV_BIN / "lxpy"), "--socket", str(self.d.socket)]

    def run_in(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.cli("exec", name, "--", *argv, check=False)

    def ping(self, src: str, target: str) -> subprocess.CompletedProcess[str]:
        return self.run_in(src, self.busybox(src), "ping", "-c1", "-W2", target)

    def kill_daemon(self) -> None:
        """SIGKILL lxpyd (its containers, monitors and dnsmasq stay)."""
        self.d.proc.kill()
        self.d.proc.wait(timeout=10)
        # The killed daemon's socket file stays; start_daemon waits for a new one.
        self.d.socket.unlink()

    def restart_daemon(self, kill: bool = False) -> None:
        """Start lxpyd again on the same root, after a SIGKILL (`kill`) or
        SIGTERM to the running one; nothing to end when it is gone already."""
        if self.d.proc.poll() is None and kill:
            self.kill_daemon()
        elif self.d.proc.poll() is None:
            stop_daemon(self.d)
        self._restarts += 1
        self.d = start_again(self.d, self.tmp / f"lxpyd{self._restarts}.log")
        # The conftest finaliser stops the daemon it knows: the new one.
        self._fixture_daemon.proc = self.d.proc

    def close(self) -> list[str]:
        """Remove the test's containers and network through lxpyd, stop it,
        and return what of the test's networking is still left."""
        if self.d.proc.poll() is None:
            for c in sorted(self.containers):
                self.cli("destroy", "--force", c, check=False)
            self.cli("network", "delete", self.net, check=False)
            stop_daemon(self.d)
        # dnsmasq ends a moment after lxpyd saw the network deleted.
        deadline = time.monotonic() + 5
        left = leftovers(self.d.root, self.net, self.containers)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = leftovers(self.d.root, self.net, self.containers)
        return left


@contextlib.contextmanager
def lab_on(daemon: Daemon, tmp_path: Path) -> Iterator[Lab]:
    """A Lab on `daemon`; at the end its containers and network go, and
    anything of them still left fails the test."""
    lab = Lab(daemon, tmp_path)
    left: list[str] = []
    try:
        yield lab
    finally:
        try:
            left = lab.close()
        finally:
            # Whatever the orderly removal missed goes now, so the next
            # test starts clean; the leftovers still fail this one.
            scrub(lab.d.root, tuple(lab.containers))
    assert left == [], f"left behind after the test: {left}"


@pytest.fixture
def lab(daemon: Daemon, tmp_path: Path) -> Iterator[Lab]:
    with lab_on(daemon, tmp_path) as lab:
        yield lab


def _templates(lab: Lab, *names: str) -> None:
    # Debian comes from the suite's build cache (bootstrapped once per machine).
    for t in names:
        lab.d.cli("template", "build", t, timeout=1800)


def test_dhcp_dns_and_reachability(lab: Lab) -> None:
    lab.make_network(nat=False)
    _templates(lab, "busybox", "debian-bookworm")
    deb_a, deb_b, bb = lab.names("deb-a", "deb-b", "bb")
    lab.create(deb_a, "debian-bookworm")
    lab.create(deb_b, "debian-bookworm")
    lab.create(bb, "busybox")
    addrs: dict[str, str] = {}
    for name in (deb_a, deb_b, bb):
        addrs[name] = lab.start(name)
    assert len(set(addrs.values())) == 3
    listing = lab.cli("list").stdout
    for name, addr in addrs.items():
        assert lab.info(name)["addresses"] == [addr]
        assert re.search(rf"^{name}\s.*{re.escape(addr)}", listing, re.M), listing
        # The host reaches each container over the test's bridge only.
        route = subprocess.run([IP, "route", "get", addr], capture_output=True, text=True)
        assert f" dev {lab.net} " in route.stdout, route.stdout
        assert host_ping(addr), f"host cannot ping {name} at {addr}"
    # The host asks the bridge's dnsmasq for containers by name.
    res = subprocess.run(
        [HOST_BUSYBOX, "nslookup", f"{deb_a}.lxpy", lab.gw], capture_output=True, text=True
    )
    assert addrs[deb_a] in res.stdout.split(f"{deb_a}.lxpy", 1)[-1], res.stdout + res.stderr

    for name in (deb_a, deb_b):
        lab.install_busybox(name)
        # Debian resolves through systemd-resolved, which networkd pointed at
        # the bridge's dnsmasq (the DNS server of the lease).
        stub = lab.run_in(name, "readlink", "/etc/resolv.conf").stdout
        assert "stub-resolv.conf" in stub
        dns = lab.run_in(name, "resolvectl", "dns", "eth0").stdout
        assert lab.gw in dns, dns
    for src in addrs:
        for dst, addr in addrs.items():
            if dst == src:
                continue
            res = lab.ping(src, addr)
            assert res.returncode == 0, f"{src} -> {dst} ({addr}): {res.stdout}{res.stderr}"
            res = lab.ping(src, f"{dst}.lxpy")
            assert res.returncode == 0, f"{src} -> {dst}.lxpy: {res.stdout}{res.stderr}"
            assert addr in res.stdout, res.stdout
    # glibc's resolver (nss "dns" -> resolved's stub -> dnsmasq), and the
    # search domain from the lease.
    for name in (bb, deb_b):
        found = lab.run_in(deb_a, "getent", "hosts", f"{name}.lxpy").stdout.split()
        assert found[:1] == [addrs[name]], found
    assert lab.run_in(deb_a, "getent", "hosts", bb).stdout.split()[:1] == [addrs[bb]]
    # busybox's own resolver straight at the bridge's dnsmasq, from both kinds.
    for src, dst in ((deb_b, bb), (bb, deb_b)):
        res = lab.run_in(src, lab.busybox(src), "nslookup", f"{dst}.lxpy", lab.gw)
        assert addrs[dst] in res.stdout.split(f"{dst}.lxpy", 1)[-1], res.stdout + res.stderr


def test_pinned_address_across_restarts(lab: Lab) -> None:
    lab.make_network(nat=True)
    _templates(lab, "debian-bookworm")
    pin, thief = lab.names("pin", "thief")
    pinned = str(lab.subnet.network_address + 50)
    lab.create(pin, "debian-bookworm", f"ipv4.address={pinned}")
    assert lab.start(pin) == pinned
    # Stop and start.
    lab.cli("stop", pin)
    assert lab.start(pin) == pinned
    # lxpyd restarts while the container runs: it keeps its address.
    lab.restart_daemon()
    assert lab.info(pin)["addresses"] == [pinned]
    assert host_ping(pinned)
    # ... and while it is stopped: the next start gets the pinned address.
    lab.cli("stop", pin)
    lab.restart_daemon()
    assert lab.start(pin) == pinned
    # Another container cannot pin an address a running one holds: refused
    # when it is set, so no start of it can find the address taken.
    sets = ("--set", f"network={lab.net}", "--set", f"ipv4.address={pinned}")
    res = lab.cli("create", thief, "-t", "debian-bookworm", *sets, check=False)
    assert res.returncode == 1 and "held by" in res.stderr and pin in res.stderr, res.stderr
    assert lab.cli("info", thief, check=False).returncode == 1
    # A changed pin is taken at the next start, and the old one is free.
    moved = str(lab.subnet.network_address + 51)
    lab.cli("config", "set", pin, "ipv4.address", moved)
    lab.cli("stop", pin)
    assert lab.start(pin) == moved
    lab.create(thief, "debian-bookworm", f"ipv4.address={pinned}")
    assert lab.start(thief) == pinned


def test_dnsmasq_killed_is_healed(lab: Lab) -> None:
    first = lab.make_network()["dnsmasq_pid"]
    _templates(lab, "busybox")
    (bb,) = lab.names("bb")
    lab.create(bb, "busybox")
    addr = lab.start(bb)
    os.kill(first, signal.SIGKILL)
    net = wait_for(
        lambda: (n := lab.network())["dnsmasq_pid"] not in (None, first) and n,
        5,
        "a new dnsmasq",
    )
    assert net["status"] == "running" and net["dnsmasq_restarts"] == 1 and alive(net["dnsmasq_pid"])
    assert not alive(first)
    # The new one serves the running container's name, and a restarted
    # container gets its lease again.
    res = lab.run_in(bb, "nslookup", f"{bb}.lxpy", lab.gw)
    assert addr in res.stdout.split(f"{bb}.lxpy", 1)[-1], res.stdout + res.stderr
    lab.cli("stop", bb)
    assert lab.start(bb) == addr
    assert [le["ipv4"] for le in lab.network()["leases"]] == [addr]


def test_daemon_sigkill_keeps_networking(lab: Lab) -> None:
    old_dnsmasq = lab.make_network()["dnsmasq_pid"]
    _templates(lab, "busybox", "debian-bookworm")
    deb, bb, late = lab.names("deb", "bb", "late")
    lab.create(deb, "debian-bookworm")
    lab.create(bb, "busybox")
    addrs = {name: lab.start(name) for name in (deb, bb)}
    lab.install_busybox(deb)
    pids = {name: lab.info(name)["init_pid"] for name in addrs}
    table = nftables.table_name(root_id(str(lab.d.root)))

    lab.kill_daemon()
    # Without lxpyd the containers still talk (entered from the host).
    res = subprocess.run(
        [NSENTER, "-t", str(pids[bb]), "-a", "/bin/busybox", "ping", "-c1", "-W2", addrs[deb]],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lab.restart_daemon()

    for name, addr in addrs.items():
        ct = lab.info(name)
        assert ct["state"] == "RUNNING" and ct["init_pid"] == pids[name], ct
        assert ct["addresses"] == [addr]
    net = lab.network()
    new_dnsmasq = net["dnsmasq_pid"]
    assert net["status"] == "running" and alive(new_dnsmasq)
    # Replaced (or adopted): one dnsmasq serves the network.
    assert new_dnsmasq == old_dnsmasq or not alive(old_dnsmasq)
    assert net["used_by"] == sorted(addrs)
    rules = subprocess.run([NFT, "list", "table", "inet", table], capture_output=True, text=True)
    assert rules.returncode == 0 and f'iifname "{lab.net}"' in rules.stdout
    for src, dst in ((bb, deb), (deb, bb)):
        for target in (addrs[dst], f"{dst}.lxpy"):
            res = lab.ping(src, target)
            assert res.returncode == 0, f"{src} -> {target}: {res.stdout}{res.stderr}"
    assert all(host_ping(a) for a in addrs.values())
    # A container started by the new lxpyd joins them.
    lab.create(late, "busybox")
    late_addr = lab.start(late)
    assert lab.ping(late, f"{deb}.lxpy").returncode == 0
    assert lab.ping(deb, f"{late}.lxpy").returncode == 0
    assert late_addr not in addrs.values()
    # Stopping an adopted container removes its veth.
    lab.cli("stop", bb)
    assert not links.existing_links([veth_name(str(lab.d.root), bb, 0)])


def test_delete_network_in_use_is_refused(lab: Lab) -> None:
    lab.make_network()
    _templates(lab, "busybox")
    user1, user2 = lab.names("user1", "user2")
    lab.create(user1, "busybox")
    lab.create(user2, "busybox")
    lab.start(user1)
    res = lab.cli("network", "delete", lab.net, check=False)
    assert res.returncode == 1 and user1 in res.stderr and "hint:" in res.stderr, res.stderr
    assert user2 not in res.stderr
    assert links.existing_links([lab.net])
    lab.cli("stop", user1)
    # Stopped, they still name it in their config.
    res = lab.cli("network", "delete", lab.net, check=False)
    assert res.returncode == 1 and f"{user1}, {user2}" in res.stderr, res.stderr
    lab.cli("destroy", user1)
    lab.cli("config", "set", user2, "network", "")
    lab.cli("network", "delete", lab.net)
    assert not links.existing_links([lab.net])
    res = lab.cli("network", "info", lab.net, check=False)
    assert res.returncode == 1 and "not found" in res.stderr
