"""Layer 2 on a managed bridge: attacks from one container on the others.

Real lxpyd, busybox containers on a network the test makes (the `lab` of
test_network_e2e.py: its own bridge and 10.212.x.0/24, no NAT, everything
removed afterwards). Container A attacks B and the gateway from inside with
busybox (arping, udhcpd, udhcpc, ip, ping); two attacks busybox cannot
craft (a DHCP request carrying another client's hardware address, an IPv6
router advertisement) are sent by a small Python program run in A's network
namespace, as root inside A could run one. Each attack is tried with A's
filtering on (the default: it must fail) and, turned off live with
`security.mac_filtering=false` and `security.ipv4_filtering=false`, again
(it must succeed, so the test shows the attack is real). All traffic stays
between the test's bridge and its containers; the host's side is only read
(its neighbour table, a raw socket on the test's bridge).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.model.network import mac_address, root_id, veth_name
from lxpy.network import l2filter, links, nftables
from tests.conftest import Daemon, wait_for
from tests.integration.test_network_e2e import IP, NFT, NSENTER, Lab, host_ping, lab_on

pytestmark = pytest.mark.integration

# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 300

OPT_OUT = ("security.mac_filtering", "security.ipv4_filtering")


@pytest.fixture
def lab(daemon: Daemon, tmp_path: Path) -> Iterator[Lab]:
    with lab_on(daemon, tmp_path) as lab:
        lab.make_network(nat=False)
        lab.d.cli("template", "build", "busybox")
        yield lab


def sh(lab: Lab, name: str, script: str) -> str:
    """`sh -c SCRIPT` as root in container `name`; its output, stderr included."""
    return lab.run_in(name, "sh", "-c", "exec 2>&1\n" + script).stdout


def mac_of(lab: Lab, name: str) -> str:
    return mac_address(str(lab.d.root), name, 0)


def bridge_mac(lab: Lab) -> str:
    return Path(f"/sys/class/net/{lab.net}/address").read_text().strip()


def neighbour(lab: Lab, name: str | None, address: str) -> str | None:
    """The MAC that container `name` (None: the host, on the test's bridge)
    has in its neighbour table for `address`."""
    if name is None:
        out = subprocess.run(
            [IP, "neigh", "show", address, "dev", lab.net], capture_output=True, text=True
        ).stdout
    else:
        out = sh(lab, name, "ip neigh show dev eth0")
    for line in out.splitlines():
        words = line.split()
        if words[:1] == [address] and "lladdr" in words:
            return words[words.index("lladdr") + 1].lower()
    return None


def set_filtering(lab: Lab, name: str, on: bool) -> None:
    """Both filtering keys of running container `name`, changed live."""
    for key in OPT_OUT:
        lab.cli("config", "set", name, key, "true" if on else "false")


def ruleset() -> str:
    return subprocess.run([NFT, "list", "ruleset"], capture_output=True, text=True).stdout


def bridge_table(lab: Lab) -> str:
    """`nft list table bridge lxpy-ID` of the test's daemon ("" when absent)."""
    table = nftables.table_name(root_id(str(lab.d.root)))
    res = subprocess.run(
        [NFT, "list", "table", "bridge", table], capture_output=True, text=True, check=False
    )
    return res.stdout if res.returncode == 0 else ""


def port_chains(lab: Lab, name: str) -> int:
    """How many chains the ruleset has for container `name`'s port."""
    chain = l2filter.chain_name(veth_name(str(lab.d.root), name, 0))
    return len(re.findall(rf"^\s*chain {re.escape(chain)} \{{", ruleset(), re.M))


def _uncounted(text: str) -> str:
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


def lxpy_in_ruleset(lab: Lab, names: tuple[str, ...]) -> list[str]:
    """Lines of the whole ruleset naming the test's daemon, network or ports."""
    table = nftables.table_name(root_id(str(lab.d.root)))
    words = [table, lab.net, *(veth_name(str(lab.d.root), n, 0) for n in names)]
    return [line for line in ruleset().splitlines() if any(w in line for w in words)]


@contextlib.contextmanager
def echo_requests(lab: Lab) -> Iterator[list[tuple[str, str, int]]]:
    """ICMP echo requests reaching the host over the test's bridge, as
    (source, destination, last payload byte); read them with `drain`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, lab.net.encode())
    s.setblocking(False)
    seen: list[tuple[str, str, int]] = []
    _sockets[id(seen)] = s
    try:
        yield seen
    finally:
        del _sockets[id(seen)]
        s.close()


_sockets: dict[int, socket.socket] = {}


def drain(seen: list[tuple[str, str, int]], until: tuple[str, int]) -> None:
    """Read echo requests into `seen` until one from `until` (source,
    payload byte) is there: whatever was sent before it has arrived."""
    s = _sockets[id(seen)]

    def read() -> bool:
        with contextlib.suppress(BlockingIOError):
            while True:
                pkt = s.recv(4096)
                ihl = (pkt[0] & 0x0F) * 4
                if pkt[ihl] == 8 and len(pkt) > ihl + 8:  # echo request with data
                    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
                    # The last byte: busybox ping's data starts with a time stamp.
                    seen.append((src, dst, pkt[-1]))
        return any((src, byte) == until for src, _, byte in seen)

    wait_for(read, 10, f"an echo request from {until[0]}")


def netns_python(lab: Lab, name: str, code: str, *args: str) -> None:
    """Run Python `code` in container `name`'s network namespace."""
    pid = lab.info(name)["init_pid"]
    res = subprocess.run(
        [NSENTER, "-t", str(pid), "-n", sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr


# DHCPREQUESTs in the INIT-REBOOT state (no server id: dnsmasq, being
# authoritative, acks a free address), from the sender's own IP and MAC,
# each with a made-up client hardware address (or all with argv[3]'s).
FORGED_DHCP = """
import socket, struct, sys
first = [int(x) for x in sys.argv[1].split(".")]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", 68))
own = bytes.fromhex(sys.argv[3].replace(":", "")) if sys.argv[3:] else None
for i in range(int(sys.argv[2])):
    chaddr = own or bytes([2, 0, 0x5E, 0x10, 0, i])
    want = bytes(first[:3] + [first[3] + i % 100])
    msg = struct.pack("!BBBBIHHIIII", 1, 1, 6, 0, 0x4C580000 + i, 0, 0, 0, 0, 0, 0)
    msg += chaddr + bytes(10) + bytes(192) + bytes([99, 130, 83, 99])
    msg += bytes([53, 1, 3, 50, 4]) + want + bytes([255])
    s.sendto(msg, ("255.255.255.255", 67))
"""

# The same requests from argv[3] (A's own address) as two IP fragments:
# the first holds the UDP header alone, so a rule that reads into the DHCP
# message finds nothing to read in it; the host reassembles the whole.
FRAGMENTED_DHCP = (
    FORGED_DHCP.replace(
        '    s.sendto(msg, ("255.255.255.255", 67))',
        """    udp = struct.pack("!HHHH", 68, 67, 8 + len(msg), 0)
    for off, flags, part in ((0, 0x2000, udp), (1, 0, msg)):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0x4C00 + i, flags | off, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton("255.255.255.255"))
        raw.sendto(ip + part, ("255.255.255.255", 0))""",
    )
    .replace(
        "own = bytes.fromhex",
        "src = sys.argv.pop(3)\n"
        "raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
        "raw.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
        "own = bytes.fromhex",
    )
    .replace("0x5E, 0x10", "0x5E, 0x11")
)

# A router advertisement for `prefix`/64 (on-link, autonomous) to all
# nodes, with a router lifetime of 0 (no default route).
ROUTER_ADVERT = """
import socket, struct, sys
idx = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
pio = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 600, 600, 0)
pio += socket.inet_pton(socket.AF_INET6, sys.argv[1])
for _ in range(3):
    s.sendto(ra + pio, ("ff02::1", 0, 0, idx))
"""


# -- the attacks ----------------------------------------------------------------------


def spoof_gateway(lab: Lab, a: str, b: str, b_addr: str) -> str | None:
    """A announces the gateway's address as its own (gratuitous ARP); returns
    the MAC B then has for the gateway."""
    # B knows the gateway first (its entry is what a spoof would replace).
    sh(lab, b, f"ip neigh flush dev eth0; ping -c1 -W2 {lab.gw}")
    assert neighbour(lab, b, lab.gw) == bridge_mac(lab)
    sh(
        lab,
        a,
        "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind\n"
        f"arping -U -c 2 -I eth0 -s {lab.gw} {lab.gw}\n"
        # B answers this after it has seen the ARP sent before it.
        f"ping -c1 -W2 {b_addr}",
    )
    return neighbour(lab, b, lab.gw)


def take_address(lab: Lab, a: str, b_addr: str) -> tuple[str | None, bool]:
    """A adds B's address to its eth0, announces it and pings the gateway
    from it. Returns the MAC the host then has for B's address, and whether
    any of A's pings from it reached the host."""
    assert host_ping(b_addr)
    a_addr = lab.info(a)["addresses"][0]
    with echo_requests(lab) as seen:
        sh(
            lab,
            a,
            f"ip addr add {b_addr}/32 dev eth0\n"
            f"arping -U -c 2 -I eth0 -s {b_addr} {b_addr}\n"
            f"ping -c2 -W1 -p 5a -I {b_addr} {lab.gw}\n"
            f"ip addr del {b_addr}/32 dev eth0\n"
            f"ping -c1 -W2 -p a5 {lab.gw}",
        )
        drain(seen, (a_addr, 0xA5))
    spoofed = any(src == b_addr and byte == 0x5A for src, _, byte in seen)
    held = neighbour(lab, None, b_addr)
    # Whatever A made the host believe goes: the bridge is the test's.
    subprocess.run([IP, "neigh", "flush", "dev", lab.net], check=True)
    return held, spoofed


@contextlib.contextmanager
def dnsmasq_paused(lab: Lab) -> Iterator[None]:
    """The network's dnsmasq stopped (SIGSTOP), so that only a rogue
    server can answer; continued afterwards."""
    pid = lab.network()["dnsmasq_pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def rogue_dhcp(lab: Lab, a: str, b: str) -> str:
    """A runs a DHCP server; B asks for a lease (with the network's dnsmasq
    paused). Returns udhcpc's report in B."""
    a_addr = lab.info(a)["addresses"][0]
    pool = lab.subnet.network_address
    conf = "\n".join(
        [
            "interface eth0",
            f"start {pool + 200}",
            f"end {pool + 210}",
            "lease_file /tmp/rogue.leases",
            "pidfile /tmp/rogue.pid",
            f"opt router {a_addr}",
            f"opt dns {a_addr}",
            "opt subnet 255.255.255.0",
        ]
    )
    sh(lab, a, f"printf '%s\\n' '{conf}' > /tmp/rogue.conf; touch /tmp/rogue.leases")
    # Without -f it goes to the background itself.
    sh(lab, a, "udhcpd -a 50 /tmp/rogue.conf </dev/null >/dev/null 2>&1")
    wait_for(lambda: "udhcpd" in sh(lab, a, "cat /proc/$(cat /tmp/rogue.pid)/comm"), 10, "udhcpd")
    try:
        with dnsmasq_paused(lab):
            return sh(lab, b, "udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/true")
    finally:
        sh(lab, a, "kill $(cat /tmp/rogue.pid)")


def starve_pool(lab: Lab, a: str, rounds: int) -> int:
    """A asks for leases under made-up MACs (its eth0's changed each time),
    then with its own MAC and made-up client ids, then with made-up client
    hardware addresses inside the requests, whole and in fragments. Returns how many leases dnsmasq
    has afterwards beyond those it had."""
    before = len(lab.network()["leases"])
    mac = mac_of(lab, a)
    ask = "udhcpc -i eth0 -n -q -t 1 -T 1 -s /bin/true"
    sh(
        lab,
        a,
        f"for i in $(seq 10 {9 + rounds}); do\n"
        f"  ip link set eth0 address 02:00:5e:00:00:$i; {ask}\n"
        "done\n"
        f"ip link set eth0 address {mac}\n"
        f"for i in $(seq 10 {9 + rounds}); do {ask} -x 0x3d:01beef000000$i; done",
    )
    netns_python(lab, a, FORGED_DHCP, str(lab.subnet.network_address + 100), str(rounds))
    own = lab.info(a)["addresses"][0]
    netns_python(lab, a, FRAGMENTED_DHCP, str(lab.subnet.network_address + 150), str(rounds), own)
    # The last request has been answered (or dropped) when one more from
    # A's own MAC is: dnsmasq handles them in order.
    sh(lab, a, ask)
    return len(lab.network()["leases"]) - before


def dhcp_flood(lab: Lab, a: str, count: int) -> int:
    """A sends `count` DHCP requests at once, with its own MAC; returns how
    many its port's rate limit has dropped so far."""
    addr = str(lab.subnet.network_address + 100)
    netns_python(lab, a, FORGED_DHCP, addr, str(count), mac_of(lab, a))
    chain = l2filter.chain_name(veth_name(str(lab.d.root), a, 0))
    table = nftables.table_name(root_id(str(lab.d.root)))
    out = subprocess.run(
        [NFT, "list", "chain", "bridge", table, chain], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"limit rate over .* counter packets (\d+)", out)
    assert found, out
    return int(found.group(1))


def advertise_router(lab: Lab, a: str, b: str, prefix: str) -> tuple[bool, bool]:
    """A sends an IPv6 router advertisement; returns whether B and whether
    the host's bridge then have an address in `prefix`/64."""

    def link_local() -> bool:
        # Sent from it: usable once duplicate address detection is done.
        out = sh(lab, a, "ip -6 addr show dev eth0")
        return "scope link" in out and "tentative" not in out

    wait_for(link_local, 10, f"an IPv6 link-local address in {a}")
    netns_python(lab, a, ROUTER_ADVERT, prefix)
    net = prefix.rstrip(":")

    def has(out: str) -> bool:
        return f"inet6 {net}:" in out

    def host() -> str:
        return subprocess.run(
            [IP, "-6", "addr", "show", "dev", lab.net], capture_output=True, text=True
        ).stdout

    # B answers a ping after it has seen what A sent before it.
    sh(lab, a, f"ping -c1 -W2 {lab.info(b)['addresses'][0]}")
    return has(sh(lab, b, "ip -6 addr show dev eth0")), has(host())


# -- the tests -------------------------------------------------------------------------


def test_spoofing_from_a_container_fails_and_succeeds_with_the_opt_out(lab: Lab) -> None:
    a, b = lab.names("a", "b")
    lab.create(a, "busybox")
    lab.create(b, "busybox")
    a_addr = lab.start(a)
    b_addr = lab.start(b)
    b_mac = mac_of(lab, b)

    # Filtering is on by default: every attack fails.
    assert spoof_gateway(lab, a, b, b_addr) == bridge_mac(lab)
    assert take_address(lab, a, b_addr) == (b_mac, False)
    assert host_ping(b_addr)
    offer = rogue_dhcp(lab, a, b)
    assert "no lease" in offer and "obtained" not in offer, offer
    filtered = starve_pool(lab, a, rounds=6)
    assert filtered <= 1
    # Requests beyond the rate limit's burst are dropped, even well-formed.
    dropped = dhcp_flood(lab, a, 200)
    print(f"of 200 DHCP requests sent at once, {dropped} dropped by the rate limit")
    assert dropped >= 200 - l2filter.DHCP_BURST - 20
    # `lxpy info` says what each port is held to.
    assert lab.info(a)["filtering"] == f"mac, ipv4: eth0 {mac_of(lab, a)} {a_addr}"
    assert port_chains(lab, a) == port_chains(lab, b) == 1

    # Turned off live: each attack works, so the ones above were real.
    set_filtering(lab, a, False)
    assert lab.info(a)["filtering"] == "off"
    assert port_chains(lab, a) == 0 and port_chains(lab, b) == 1
    assert spoof_gateway(lab, a, b, b_addr) == mac_of(lab, a)
    assert take_address(lab, a, b_addr) == (mac_of(lab, a), True)
    offer = rogue_dhcp(lab, a, b)
    assert f"obtained from {a_addr}" in offer, offer
    unfiltered = starve_pool(lab, a, rounds=6)
    print(f"new leases from 24 forged requests: {filtered} filtered, {unfiltered} unfiltered")
    assert unfiltered >= 10

    # And on again, live.
    set_filtering(lab, a, True)
    assert port_chains(lab, a) == 1
    assert spoof_gateway(lab, a, b, b_addr) == bridge_mac(lab)


def test_router_advertisements_from_a_container_are_dropped(lab: Lab) -> None:
    a, b = lab.names("a", "b")
    lab.create(a, "busybox")
    lab.create(b, "busybox")
    lab.start(a)
    lab.start(b)
    # 2001:db8::/32 is for documentation: nothing routes it anywhere.
    assert advertise_router(lab, a, b, "2001:db8:4c58::") == (False, False)
    set_filtering(lab, a, False)
    # B takes it (the attack is real); the host's bridge never does.
    b_took = wait_for(lambda: advertise_router(lab, a, b, "2001:db8:4c59::")[0], 10, "B's SLAAC")
    assert b_took
    assert advertise_router(lab, a, b, "2001:db8:4c5a::")[1] is False


def test_normal_traffic_passes_the_filters(lab: Lab) -> None:
    a, b = lab.names("a", "b")
    lab.create(a, "busybox")
    lab.create(b, "busybox")
    addrs = {a: lab.start(a), b: lab.start(b)}
    # DHCP: each holds the address its port is held to, and renews it.
    for name, addr in addrs.items():
        assert lab.info(name)["filtering"].endswith(f" {addr}")
        out = sh(lab, name, "udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/true")
        assert f"lease of {addr} obtained from {lab.gw}" in out, out
    # DNS through the gateway's dnsmasq, ping both ways and to the gateway.
    for src, dst in ((a, b), (b, a)):
        out = sh(lab, src, f"nslookup {dst}.lxpy {lab.gw}")
        assert addrs[dst] in out.split(f"{dst}.lxpy", 1)[-1], out
        assert lab.ping(src, addrs[dst]).returncode == 0
        assert lab.ping(src, lab.gw).returncode == 0
    # TCP between the containers, and to a listener on the gateway.
    sh(lab, b, "nc -l -p 7777 -e echo from-b </dev/null >/dev/null 2>&1 &")
    out = wait_for(
        lambda: "from-b" in (o := sh(lab, a, f"nc -w 2 {addrs[b]} 7777 </dev/null")) and o,
        10,
        "a TCP answer from B",
    )
    assert "from-b" in out
    with socket.create_server((lab.gw, 0)) as srv:
        srv.settimeout(10)
        port = srv.getsockname()[1]
        sender = subprocess.Popen(
            [*lab._lxpy(), "exec", a, "--", "sh", "-c", f"echo from-a | nc -w 2 {lab.gw} {port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            conn, peer = srv.accept()
            with conn:
                conn.settimeout(10)
                assert conn.recv(100) == b"from-a\n" and peer[0] == addrs[a]
        finally:
            sender.wait(timeout=30)


def test_rules_follow_the_nic_and_survive_lxpyd(lab: Lab) -> None:
    a, b, off = lab.names("a", "b", "off")
    lab.create(a, "busybox")
    lab.create(b, "busybox")
    lab.create(off, "busybox", *(f"{k}=false" for k in OPT_OUT))
    for name in (a, b, off):
        lab.start(name)
    assert lab.info(off)["filtering"] == "off"
    assert (port_chains(lab, a), port_chains(lab, b), port_chains(lab, off)) == (1, 1, 0)
    # Bad values are refused with the key named; the rules stay.
    res = lab.cli("config", "set", a, "security.mac_filtering", "maybe", check=False)
    assert res.returncode == 1 and "security.mac_filtering: expected true or false" in res.stderr
    # Only one key off: MAC filtering stays (IPv4 filtering needs it).
    lab.cli("config", "set", b, "security.mac_filtering", "false")
    assert lab.info(b)["filtering"].startswith("mac (security.ipv4_filtering needs it), ipv4:")
    assert "ether saddr !=" in bridge_table(lab)
    lab.cli("config", "unset", b, "security.mac_filtering")

    # lxpyd stopped, or killed, and started again: each port's rules once
    # (their counters start again from zero).
    before = _uncounted(bridge_table(lab))
    lab.restart_daemon()
    assert _uncounted(bridge_table(lab)) == before
    lab.restart_daemon(kill=True)
    assert (port_chains(lab, a), port_chains(lab, b), port_chains(lab, off)) == (1, 1, 0)
    assert take_address(lab, a, lab.info(b)["addresses"][0])[1] is False

    # B dies while lxpyd is away: its rules go when lxpyd comes back.
    stat = Path(f"/proc/{lab.info(b)['init_pid']}/stat").read_text()
    monitor = int(stat.rpartition(")")[2].split()[1])  # init's parent
    lab.kill_daemon()
    os.kill(monitor, signal.SIGKILL)
    lab.restart_daemon()
    assert lab.info(b)["state"] == "ERROR"
    assert port_chains(lab, b) == 0 and port_chains(lab, a) == 1
    assert not links.existing_links([veth_name(str(lab.d.root), b, 0)])

    # A stop takes a port's rules; the last filtered port takes the table.
    lab.cli("stop", a)
    assert port_chains(lab, a) == 0 and bridge_table(lab) == ""
    lab.start(a)
    assert port_chains(lab, a) == 1
    for name in (a, b, off):
        lab.cli("destroy", "--force", name)
    lab.cli("network", "delete", lab.net)
    assert lxpy_in_ruleset(lab, (a, b, off)) == []
