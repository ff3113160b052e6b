"""Published ports end to end: a busybox httpd in a real container on a
managed network of the test's own, reached through the proxy mechanisms
(lxpy.network.proxy: the host's port and the DNAT table; lxpy.daemon.proxyd:
the userspace forwarder).

"Outside the host" is a network namespace the test makes, joined to the
host by a veth pair on a subnet of its own: no traffic leaves the host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import trio

from lxpy.daemon.proxyd import Forwarder
from lxpy.errors import Busy, InvalidArgument
from lxpy.model.network import root_id
from lxpy.network import links, proxy
from tests.conftest import wait_for
from tests.integration.test_network_e2e import IP, NFT, NSENTER, Lab, lab  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

TIME_BOUND = 240
CURL = "/usr/bin/curl"
UDP_ECHO = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(65535)\n"
    "    s.sendto(data.strip() + b' from ' + peer[0].encode(), peer)\n"
)
# Asks host:port (argv) once a second until an answer comes (or 10 s).
UDP_ASK = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.settimeout(1)\n"
    "for _ in range(10):\n"
    "    s.sendto(b'ping-udp', (sys.argv[1], int(sys.argv[2])))\n"
    "    try:\n"
    "        print(s.recv(100).decode())\n"
    "        break\n"
    "    except TimeoutError:\n"
    "        pass\n"
)
CGI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "from=$REMOTE_ADDR"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def port_free(port: int, proto: str = "tcp") -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":
            # As any server binds (connections of the proxy's last run may
            # linger in TIME_WAIT on it).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class Outside:
    """A namespace standing for a machine outside the host: `client` in it,
    `host` the host's end of the veth pair joining them."""

    def __init__(self, tag: str) -> None:
        third = (os.getpid() + 7) % 256
        net = ipaddress.IPv4Network(f"10.215.{third}.0/24")
        used = links.used_subnets()
        while any(net.overlaps(u) for u in used):
            third = (third + 1) % 256
            net = ipaddress.IPv4Network(f"10.215.{third}.0/24")
        self.ns = f"lxpxo{tag}"
        self.veth = f"lxpxh{tag}"
        self.host = str(net.network_address + 1)
        self.client = str(net.network_address + 2)

    def make(self) -> None:
        run = self.ip
        run("netns", "add", self.ns)
        run("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        run("addr", "add", f"{self.host}/24", "dev", self.veth)
        run("link", "set", self.veth, "up")
        run("-n", self.ns, "addr", "add", f"{self.client}/24", "dev", "eth0")
        run("-n", self.ns, "link", "set", "eth0", "up")
        run("-n", self.ns, "link", "set", "lo", "up")
        run("-n", self.ns, "route", "add", "default", "via", self.host)

    def remove(self) -> None:
        subprocess.run([IP, "link", "del", self.veth], capture_output=True)
        subprocess.run([IP, "netns", "del", self.ns], capture_output=True)

    @staticmethod
    def ip(*args: str) -> None:
        subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)

    def curl(self, url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [IP, "netns", "exec", self.ns, CURL, "-sS", "--max-time", "5", url],
            capture_output=True,
            text=True,
            timeout=20,
        )


@pytest.fixture
def outside() -> Iterator[Outside]:
    o = Outside(f"{os.getpid() % 100000}")
    o.remove()
    o.make()
    try:
        yield o
    finally:
        o.remove()


def client_of(res: subprocess.CompletedProcess[str]) -> str:
    """The client address the CGI saw (busybox httpd listens on IPv6 and
    writes IPv4 clients as [::ffff:A.B.C.D])."""
    return res.stdout.strip().replace("[::ffff:", "").rstrip("]")


def curl(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CURL, "-sS", "--max-time", "5", url], capture_output=True, text=True, timeout=20
    )


@contextlib.contextmanager
def forwarding(listen: str, connect: str, pid: int) -> Iterator[Forwarder]:
    """A Forwarder for the proxy `listen` -> `connect` into the network
    namespace of `pid`, run by trio on a thread of its own; closed at the end."""
    lst, con = proxy.parse_pair(listen, connect)
    sock = proxy.bind(lst)
    fwd = Forwarder("test", sock, con, str(proxy.netns_of(pid)))
    ready = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as n:
            await n.start(fwd.run)
            ready.set()

    t = threading.Thread(target=trio.run, args=(main,), daemon=True)
    t.start()
    assert ready.wait(10), "the forwarder did not start"
    try:
        yield fwd
    finally:
        trio.from_thread.run_sync(fwd.close, trio_token=token[0])
        t.join(10)
        assert not t.is_alive()


def _web(it: Lab, name: str) -> tuple[str, int]:
    """A started busybox container `name` serving /www on port 80 (with a
    CGI that answers the client's address); its address and init pid."""
    it.create(name, "busybox")
    addr = it.start(name)
    script = (
        "mkdir -p /www/cgi-bin && echo hello-from-container > /www/index.html && "
        f"printf '%s' '{CGI}' > /www/cgi-bin/ip && chmod 755 /www/cgi-bin/ip && "
        "httpd -p 80 -h /www"
    )
    assert it.run_in(name, "sh", "-c", script).returncode == 0
    return addr, int(it.info(name)["init_pid"])


def test_tcp_proxy_loopback_dnat_and_release(lab: Lab, outside: Outside) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    (name,) = lab.names("web")
    addr, pid = _web(lab, name)
    port = free_port()
    table = proxy.table_name(root_id(str(lab.d.root)))
    listen, connect = f"tcp:0.0.0.0:{port}", "tcp:" + addr + ":80"
    try:
        with forwarding(listen, connect, pid):
            assert not port_free(port)
            rule = proxy.Dnat(name, "http", proxy.parse_endpoint("listen", listen), addr, 80)
            proxy.apply(table, [rule])
            # Host loopback: the userspace path (from the container's side
            # the client is its own address: the socket was made in its ns).
            res = curl(f"http://127.0.0.1:{port}/")
            assert res.stdout.strip() == "hello-from-container", res.stderr
            res = curl(f"http://127.0.0.1:{port}/cgi-bin/ip")
            assert client_of(res) == f"from={addr}", res.stderr
            # The host's own non-loopback address: DNAT in output.
            res = curl(f"http://{outside.host}:{port}/cgi-bin/ip")
            assert client_of(res) == f"from={outside.host}", res.stderr
            # From outside: DNAT in prerouting, the client's address kept.
            res = outside.curl(f"http://{outside.host}:{port}/cgi-bin/ip")
            assert client_of(res) == f"from={outside.client}", res.stderr
            # A second proxy on the same port is refused, naming it.
            with pytest.raises(Busy, match=f"port tcp:0.0.0.0:{port} is already in use"):
                proxy.bind(proxy.parse_endpoint("listen", listen))
        # Stopped: the port is free, and nothing answers on it any more.
        proxy.apply(table, [])
        assert port_free(port)
        assert curl(f"http://127.0.0.1:{port}/").returncode != 0
        assert outside.curl(f"http://{outside.host}:{port}/").returncode != 0
        listed = subprocess.run([NFT, "list", "table", "inet", table], capture_output=True)
        assert listed.returncode != 0
    finally:
        proxy.apply(table, [])


def test_proxy_to_container_loopback(lab: Lab) -> None:  # noqa: F811
    # connect=127.0.0.1: only the userspace path can reach it.
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    (name,) = lab.names("lo")
    lab.create(name, "busybox")
    lab.start(name)
    pid = int(lab.info(name)["init_pid"])
    script = "mkdir -p /l && echo only-on-lo > /l/index.html && httpd -p 127.0.0.1:8081 -h /l"
    assert lab.run_in(name, "sh", "-c", script).returncode == 0
    assert not proxy.dnat_possible(proxy.parse_endpoint("connect", "tcp:127.0.0.1:8081"))
    port = free_port()
    with forwarding(f"tcp:127.0.0.1:{port}", "tcp:127.0.0.1:8081", pid):
        res = curl(f"http://127.0.0.1:{port}/")
        assert res.stdout.strip() == "only-on-lo", res.stderr
    assert port_free(port)


def test_udp_proxy(lab: Lab, outside: Outside) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    (name,) = lab.names("udp")
    lab.create(name, "busybox")
    addr = lab.start(name)
    pid = int(lab.info(name)["init_pid"])
    # A UDP echo server in the container's network namespace (busybox has
    # no UDP server applet): the host's python, entered with nsenter.
    echo_server = subprocess.Popen(
        [NSENTER, "-t", str(pid), "-n", sys.executable, "-c", UDP_ECHO, addr, "5353"]
    )
    port = free_port()
    with forwarding(f"udp:0.0.0.0:{port}", f"udp:{addr}:5353", pid):
        assert not port_free(port, "udp")

        def echo() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                s.sendto(b"ping-udp\n", ("127.0.0.1", port))
                try:
                    return s.recv(100)
                except TimeoutError:
                    return b""

        # From the host's loopback: the userspace path, from the container's
        # own address.
        want = f"ping-udp from {addr}".encode()
        assert wait_for(echo, 15, "a UDP echo through the proxy") == want
        # From outside, through DNAT: the server sees the client's address.
        table = proxy.table_name(root_id(str(lab.d.root)))
        listen = proxy.parse_endpoint("listen", f"udp:0.0.0.0:{port}")
        try:
            proxy.apply(table, [proxy.Dnat(name, "dns", listen, addr, 5353)])
            argv = [sys.executable, "-c", UDP_ASK, outside.host, str(port)]
            answer = subprocess.run(
                [IP, "netns", "exec", outside.ns, *argv], capture_output=True, text=True, timeout=30
            )
            assert answer.stdout.strip() == f"ping-udp from {outside.client}", answer.stderr
        finally:
            proxy.apply(table, [])
    assert port_free(port, "udp")
    echo_server.kill()
    echo_server.wait()


def test_bad_proxy_endpoints_refused() -> None:
    for listen, connect, what in (
        ("tcp:0.0.0.0:80x", "tcp:10.0.0.1:80", "port '80x'"),
        ("sctp:0.0.0.0:80", "tcp:10.0.0.1:80", "protocol 'sctp'"),
        ("tcp:0.0.0.0:80", "udp:10.0.0.1:80", "listen is tcp but connect is udp"),
        ("tcp:host:80", "tcp:10.0.0.1:80", "'host' is not an IPv4"),
        ("tcp:0.0.0.0:0", "tcp:10.0.0.1:80", "port '0'"),
        ("tcp:0.0.0.0:80", "tcp:0.0.0.0:80", "0.0.0.0 is not an address"),
        ("tcp:0.0.0.0", "tcp:10.0.0.1:80", "not PROTO:ADDR:PORT"),
    ):
        with pytest.raises(InvalidArgument, match=what):
            proxy.parse_pair(listen, connect)
    # An address the host does not have.
    with pytest.raises(InvalidArgument, match="192.0.2.77 is not an address of this host"):
        proxy.bind(proxy.parse_endpoint("listen", f"tcp:192.0.2.77:{free_port()}"))


def test_taken_port_refused() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(Busy, match=f"port tcp:0.0.0.0:{port} is already in use on the host"):
            proxy.bind(proxy.parse_endpoint("listen", f"tcp:0.0.0.0:{port}"))
