"""NICs added to and removed from running containers: a second NIC on a
second managed network getting its DHCP address from that network's
dnsmasq, and macvlans on a parent the test makes (lxpy.network.links;
lxpy.daemon.nicplug's checks).

Real lxpyd and busybox containers on managed networks of the test's own
(no NAT); the macvlans' parent is one end of a veth pair the test makes,
so nothing they send leaves the host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.daemon.nicplug import check_hwaddr, check_name
from lxpy.errors import AlreadyExists, InvalidArgument, NotFound
from lxpy.model.network import mac_address, veth_name
from lxpy.model.paths import RootPaths, RunPaths
from lxpy.network import links
from lxpy.network.dnsmasq import read_leases
from lxpy.network.links import Nic
from tests.conftest import wait_for
from tests.integration.test_network_e2e import IP, Lab, free_subnet, lab  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

TIME_BOUND = 240
DHCP = "udhcpc -i {ifname} -n -q -t 10 -T 1 -s /usr/share/udhcpc/default.script"


def netns(it: Lab, name: str) -> Path:
    return RunPaths.of(it.d.root).netns(name)


def addr_on(it: Lab, name: str, ifname: str) -> str | None:
    out = it.run_in(name, "ip", "-o", "-4", "addr", "show", "dev", ifname).stdout.split()
    return out[out.index("inet") + 1].split("/")[0] if "inet" in out else None


@contextlib.contextmanager
def second_network(it: Lab) -> Iterator[tuple[str, ipaddress.IPv4Network]]:
    """Another managed network (no NAT) beside the lab's, with its name and
    subnet; at the end the lab's containers and it go."""
    second = f"{it.net}b"
    subnet2 = next(
        s
        for s in (free_subnet(), *ipaddress.IPv4Network("10.218.0.0/16").subnets(8))
        if s != it.subnet and not any(s.overlaps(u) for u in links.used_subnets())
    )
    it.cli("network", "create", second, "--subnet", str(subnet2), "--no-nat")
    try:
        yield second, subnet2
    finally:
        for c in sorted(it.containers):
            it.cli("destroy", "--force", c, check=False)
        it.cli("network", "delete", second, check=False)


def started(it: Lab, short: str) -> str:
    """A running busybox container on the lab's network; its name."""
    (name,) = it.names(short)
    it.create(name, "busybox")
    it.start(name)
    return name


def test_second_nic_gets_dhcp_from_second_network(lab: Lab) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    with second_network(lab) as (second, subnet2):
        name = started(lab, "two")
        path = netns(lab, name)
        root = str(lab.d.root)
        nic = Nic(
            network=second,
            bridge=second,
            host=veth_name(root, name, 1),
            peer="eth1",
            mac=mac_address(root, name, 1),
        )
        links.add_nics(path, [nic])
        assert links.links_in(path)["eth1"] == nic.mac
        res = lab.run_in(name, "sh", "-c", DHCP.format(ifname="eth1"))
        assert res.returncode == 0, res.stderr
        got = wait_for(lambda: addr_on(lab, name, "eth1"), 15, "an address on eth1")
        assert ipaddress.IPv4Address(got) in subnet2
        # The second network's dnsmasq handed it out.
        leases = read_leases(RootPaths(lab.d.root).network(second) / "leases")
        assert (nic.mac, got) in {(le.mac, le.ipv4) for le in leases}
        # The first NIC is as it was.
        assert ipaddress.IPv4Address(addr_on(lab, name, "eth0")) in lab.subnet
        # Removed live: both ends gone.
        links.remove_link_in(path, "eth1")
        assert "eth1" not in links.links_in(path)
        assert not links.existing_links([nic.host])
        links.remove_link_in(path, "eth1")  # idempotent


@pytest.fixture
def dummy() -> Iterator[str]:
    """A parent for the macvlans: one end of a veth pair the test makes (this
    kernel has no dummy driver); the other end, up, goes nowhere."""
    name = f"lxpmd{os.getpid() % 100000}"
    subprocess.run([IP, "link", "del", name], capture_output=True)
    subprocess.run(
        [IP, "link", "add", name, "type", "veth", "peer", "name", f"lxpmp{os.getpid() % 100000}"],
        check=True,
    )
    for ifname in (name, f"lxpmp{os.getpid() % 100000}"):
        subprocess.run([IP, "link", "set", ifname, "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run([IP, "link", "del", name], capture_output=True)


def test_macvlan_on_dummy_parent(lab: Lab, dummy: str) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    a, b = lab.names("mva", "mvb")
    for c in (a, b):
        lab.create(c, "busybox")
        lab.start(c)
    lan = ipaddress.IPv4Network("10.219.77.0/24")
    macs = {a: "02:00:00:77:00:0a", b: "02:00:00:77:00:0b"}
    for i, c in enumerate((a, b)):
        links.add_macvlan(netns(lab, c), "lan0", dummy, macs[c])
        assert links.links_in(netns(lab, c))["lan0"] == macs[c]
        ip = f"{lan.network_address + 10 + i}/24"
        assert lab.run_in(c, "ip", "addr", "add", ip, "dev", "lan0").returncode == 0
    # It never appeared in the host's namespace.
    assert not links.existing_links(["lan0"])
    # Bridge mode: the two containers reach each other through the parent.
    res = lab.run_in(a, "ping", "-c1", "-W2", str(lan.network_address + 11))
    assert res.returncode == 0, res.stdout + res.stderr
    # Refused, with nothing changed: a parent that does not exist, a name
    # the container has.
    before = links.links_in(netns(lab, a))
    with pytest.raises(NotFound, match="parent interface nosuch0 does not exist"):
        links.add_macvlan(netns(lab, a), "lan1", "nosuch0", "02:00:00:77:00:0c")
    with pytest.raises(AlreadyExists, match="interface eth0 exists in the container"):
        links.add_macvlan(netns(lab, a), "eth0", dummy, "02:00:00:77:00:0c")
    assert links.links_in(netns(lab, a)) == before
    # Removed live.
    links.remove_link_in(netns(lab, a), "lan0")
    assert "lan0" not in links.links_in(netns(lab, a))
    assert lab.run_in(b, "ping", "-c1", "-W1", str(lan.network_address + 10)).returncode != 0


def test_bad_nic_values_refused() -> None:
    for bad in ("", "a" * 16, "eth 1", "../x", "eth1/x"):
        with pytest.raises(InvalidArgument, match="bad NIC name"):
            check_name(bad)
    for bad in ("01:00:00:00:00:01", "02:00:00:00:00", "zz:00:00:00:00:01"):
        with pytest.raises(InvalidArgument, match="bad hwaddr"):
            check_hwaddr(bad)
    assert check_hwaddr("02:AA:00:00:00:01") == "02:aa:00:00:00:01"
