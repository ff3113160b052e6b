"""`proxy`, `unix-char`/`unix-block` and `nic` devices through the real
CLI and a real lxpyd (docs/devices.md): added to and removed from running
busybox containers, set up again at start, refused with nothing changed
when bad, and (for a proxy) made again after lxpyd is killed and started.

Networks, the "outside" namespace and the macvlan parent are the test's own
(tests/integration/test_proxy.py, test_nic_devices.py); no traffic leaves
the host.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from typing import Any

import pytest

from lxpy.daemon.crashpoint import CRASH_ENV
from lxpy.kernel.devices import devices_dir
from lxpy.model.network import root_id
from lxpy.model.paths import RootPaths, RunPaths
from lxpy.network import links, proxy
from tests.conftest import start_daemon, stop_daemon, wait_for
from tests.integration.test_network_e2e import Lab, ipv4_of, lab  # noqa: F401
from tests.integration.test_nic_devices import (  # noqa: F401
    DHCP,
    addr_on,
    dummy,
    second_network,
    started,
)
from tests.integration.test_proxy import (  # noqa: F401
    Outside,
    client_of,
    curl,
    free_port,
    outside,
    port_free,
)
from tests.integration.test_unix_devices import loopdev  # noqa: F401

pytestmark = pytest.mark.integration

TIME_BOUND = 300


def devices(it: Lab, name: str) -> dict[str, Any]:
    out = json.loads(it.cli("device", "list", name, "--format", "json").stdout)
    return {d["name"]: d for d in out}


def record(it: Lab, name: str) -> str:
    return RootPaths(it.d.root).record(name).read_text()


def refused(it: Lab, *args: str) -> str:
    res = it.cli(*args, check=False)
    assert res.returncode != 0, res
    return res.stderr


def proxy_refused(it: Lab, name: str, listen: str, connect: str) -> str:
    """Adding a proxy is refused and the record left as it was; the error."""
    before = record(it, name)
    res = add_proxy(it, name, "p2", listen, connect)
    assert res.returncode != 0, res
    assert record(it, name) == before
    return res.stderr


def add_proxy(
    it: Lab, name: str, dev: str, listen: str, connect: str
) -> subprocess.CompletedProcess[str]:
    return it.cli(
        "device", "add", name, dev, "proxy", f"listen={listen}", f"connect={connect}", check=False
    )


def web(it: Lab, short: str) -> tuple[str, str]:
    """A running busybox container serving /www on port 80 (with a CGI
    answering the client's address); its name and address."""
    (name,) = it.names(short)
    it.create(name, "busybox")
    addr = it.start(name)
    serve(it, name)
    return name, addr


def serve(it: Lab, name: str) -> None:
    cgi = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "from=$REMOTE_ADDR"\n'
    script = (
        "mkdir -p /www/cgi-bin && echo hello-from-container > /www/index.html && "
        f"printf '%s' '{cgi}' > /www/cgi-bin/ip && chmod 755 /www/cgi-bin/ip && "
        "httpd -p 80 -h /www"
    )
    assert it.run_in(name, "sh", "-c", script).returncode == 0


def test_proxy_device_live_at_start_and_after_lxpyd_restart(
    lab: Lab,  # noqa: F811
    outside: Outside,  # noqa: F811
) -> None:
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    name, addr = web(lab, "pxy")
    port = free_port()
    table = proxy.table_name(root_id(str(lab.d.root)))
    try:
        assert add_proxy(lab, name, "http", f"tcp:0.0.0.0:{port}", f"tcp:{addr}:80").returncode == 0
        assert devices(lab, name)["http"]["active"] is True
        # Live at once: loopback (userspace), the host's own address and a
        # client outside (DNAT, its address kept).
        assert curl(f"http://127.0.0.1:{port}/").stdout.strip() == "hello-from-container"
        assert client_of(curl(f"http://{outside.host}:{port}/cgi-bin/ip")) == (
            f"from={outside.host}"
        )
        assert client_of(outside.curl(f"http://{outside.host}:{port}/cgi-bin/ip")) == (
            f"from={outside.client}"
        )
        # A second proxy on the same port, in any container: refused, nothing saved.
        err = proxy_refused(lab, name, f"tcp:0.0.0.0:{port}", "tcp:127.0.0.1:81")
        assert f"listen tcp:0.0.0.0:{port} clashes with device 'http'" in err
        # lxpyd killed: the DNAT path carries on; the forwarder comes back
        # when the new lxpyd adopts the container.
        lab.restart_daemon(kill=True)
        assert client_of(outside.curl(f"http://{outside.host}:{port}/cgi-bin/ip")) == (
            f"from={outside.client}"
        )
        ok = wait_for(
            lambda: curl(f"http://127.0.0.1:{port}/").stdout.strip() == "hello-from-container",
            15,
            "the proxy's loopback path after the lxpyd restart",
        )
        assert ok
        # A reboot inside: a new init, the same network namespace; the
        # forwarder reaches the new httpd.
        pid = lab.info(name)["init_pid"]
        assert lab.run_in(name, "reboot").returncode == 0
        wait_for(lambda: lab.info(name)["init_pid"] not in (pid, None), 30, "a new init")
        wait_for(lambda: lab.info(name)["state"] == "RUNNING", 30, "RUNNING after the reboot")
        # Its DHCP client runs again at boot: the address is back first.
        new_pid = lab.info(name)["init_pid"]
        wait_for(lambda: ipv4_of(new_pid) == addr, 15, "the address after the reboot")
        serve(lab, name)
        res = curl(f"http://127.0.0.1:{port}/")
        assert res.stdout.strip() == "hello-from-container", res.stderr
        # Stopped: the port is free and the rule gone.
        lab.cli("stop", name)
        assert port_free(port)
        assert outside.curl(f"http://{outside.host}:{port}/").returncode != 0
        # Started again: published at start.
        lab.start(name)
        serve(lab, name)
        assert not port_free(port)
        res = curl(f"http://127.0.0.1:{port}/cgi-bin/ip")
        assert res.stdout.startswith("from="), res.stderr
        # Removed live: free again.
        lab.cli("device", "remove", name, "http")
        assert port_free(port)
        assert "http" not in devices(lab, name)
        listed = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True)
        assert listed.returncode != 0
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)


def test_proxy_taken_port_refused_when_added_and_at_start(lab: Lab) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    (name,) = lab.names("taken")
    lab.create(name, "busybox")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        err = proxy_refused(lab, name, f"tcp:0.0.0.0:{taken}", "tcp:127.0.0.1:80")
        assert f"port tcp:0.0.0.0:{taken} is already in use on the host" in err
        for bad, what in (
            ("tcp:0.0.0.0:99999", "port '99999'"),
            ("sctp:0.0.0.0:80", "protocol 'sctp'"),
            ("udp:0.0.0.0:8080", "listen is udp but connect is tcp"),
        ):
            assert what in proxy_refused(lab, name, bad, "tcp:1.2.3.4:80")
    # Added while free, then taken by someone else before the start.
    port = free_port()
    assert add_proxy(lab, name, "p", f"tcp:0.0.0.0:{port}", "tcp:127.0.0.1:80").returncode == 0
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", port))
        holder.listen(1)
        err = refused(lab, "start", name)
        assert f"port tcp:0.0.0.0:{port} is already in use on the host" in err
        assert lab.info(name)["state"] == "STOPPED"


def parent_list(it: Lab, name: str) -> str:
    """The v1 devices list of the cgroup above container `name`'s."""
    d = devices_dir(it.d.cgroup(name))
    assert d is not None, "this host has the v1 devices controller"
    with open(os.path.join(os.path.dirname(d), "devices.list")) as f:
        return f.read()


def test_block_device_given_and_taken_back(lab: Lab, loopdev: str) -> None:  # noqa: F811
    lab.d.cli("template", "build", "busybox")
    (name,) = lab.names("blk")
    lab.containers.add(name)
    lab.cli("create", name, "-t", "busybox")
    lab.cli("start", name)
    st = os.stat(loopdev)
    rule = f"b {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} rw"
    assert rule not in parent_list(lab, name)
    lab.cli("device", "add", name, "data", "unix-block", f"source={loopdev}", "path=/dev/xvdb")
    read = ["head", "-c", "17", "/dev/xvdb"]
    assert lab.run_in(name, *read).stdout == "LXPY-BLOCK-DEVICE"
    assert rule in parent_list(lab, name)
    # Stopped: the parent takes it back (no running container holds it).
    lab.cli("stop", name)
    assert rule not in parent_list(lab, name)
    lab.cli("start", name)
    got = wait_for(
        lambda: lab.run_in(name, *read).stdout == "LXPY-BLOCK-DEVICE", 15, "the disk after start"
    )
    assert got
    # Removed live: neither the container nor the parent allow it.
    lab.cli("device", "remove", name, "data")
    assert lab.run_in(name, "test", "-e", "/dev/xvdb").returncode != 0
    assert rule not in parent_list(lab, name)


def test_unix_devices_live_and_at_start(lab: Lab) -> None:  # noqa: F811
    lab.d.cli("template", "build", "busybox")
    (name,) = lab.names("nodes")
    lab.containers.add(name)
    lab.cli("create", name, "-t", "busybox")
    lab.cli("start", name)
    opened = "exec 3<>{0} && stat -c '%u %g %a' {0}"
    lab.cli(
        "device", "add", name, "fuse", "unix-char",
        "source=/dev/fuse", "uid=1000", "gid=100", "mode=0640",
    )  # fmt: skip
    lab.cli("device", "add", name, "tun", "unix-char", "source=/dev/net/tun")
    res = lab.run_in(name, "sh", "-c", opened.format("/dev/fuse"))
    assert res.returncode == 0 and res.stdout.strip() == "1000 100 640", res.stderr
    res = lab.run_in(name, "sh", "-c", opened.format("/dev/net/tun"))
    assert res.returncode == 0 and res.stdout.strip() == "0 0 660", res.stderr
    # At the next start they are there again.
    lab.cli("stop", name)
    lab.cli("start", name)
    res = wait_for(
        lambda: lab.run_in(name, "sh", "-c", opened.format("/dev/fuse")).returncode == 0,
        15,
        "/dev/fuse after a restart",
    )
    assert res
    # And after a reboot inside (a new init, in a new mount namespace).
    pid = lab.info(name)["init_pid"]
    assert lab.run_in(name, "reboot").returncode == 0
    wait_for(lambda: lab.info(name)["init_pid"] not in (pid, None), 30, "a new init")
    for node in ("/dev/fuse", "/dev/net/tun"):
        res = wait_for(
            lambda: lab.run_in(name, "sh", "-c", opened.format(node)).returncode == 0,  # noqa: B023
            15,
            f"{node} after a reboot inside",
        )
        assert res
    # Bad ones: refused, the record as it was.
    before = record(lab, name)
    for args, what in (
        (["source=/dev/no-such"], "does not exist"),
        (["source=/dev/fuse", "path=../x"], "is not an absolute path inside"),
        (["source=/dev/fuse", "mode=999"], "bad mode"),
        (["source=/dev/fuse", "path=/dev/net/tun"], "is the path of device 'tun'"),
    ):
        assert what in refused(lab, "device", "add", name, "x", "unix-char", *args)
    assert "is a character device" in refused(
        lab, "device", "add", name, "x", "unix-block", "source=/dev/fuse"
    )
    assert record(lab, name) == before
    # Removed live.
    lab.cli("device", "remove", name, "fuse")
    assert lab.run_in(name, "test", "-e", "/dev/fuse").returncode != 0
    assert lab.run_in(name, "test", "-e", "/dev/net/tun").returncode == 0


def test_nic_devices_live(lab: Lab, dummy: str) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    with second_network(lab) as (second, subnet2):
        name = started(lab, "nics")
        # Pinned: the network's dnsmasq hands out exactly that address.
        pinned = str(subnet2.network_address + 77)
        lab.cli(
            "device", "add", name, "lan", "nic",
            f"network={second}", "name=eth1", f"ipv4.address={pinned}",
        )  # fmt: skip
        res = lab.run_in(name, "sh", "-c", DHCP.format(ifname="eth1"))
        assert res.returncode == 0, res.stderr
        got = wait_for(lambda: addr_on(lab, name, "eth1"), 15, "a DHCP address on eth1")
        assert got == pinned
        lab.cli(
            "device", "add", name, "wire", "nic",
            "nictype=macvlan", f"parent={dummy}", "name=lan0", "hwaddr=02:00:00:78:00:01",
        )  # fmt: skip
        netns = RunPaths.of(lab.d.root).netns(name)
        assert links.links_in(netns)["lan0"] == "02:00:00:78:00:01"
        # Bad ones: refused, the record as it was.
        before = record(lab, name)
        for args, what in (
            (["network=nosuchnet", "name=eth5"], "nosuchnet"),
            ([f"network={second}", "name=eth0"], "eth0 is another NIC's name"),
            (["nictype=macvlan", "name=eth6"], "needs parent="),
            (["nictype=macvlan", "parent=nosuch0", "name=eth6"], "nosuch0 does not exist"),
            ([f"network={second}", "name=eth7", "hwaddr=01:00:00:00:00:01"], "bad hwaddr"),
        ):
            assert what in refused(lab, "device", "add", name, "x", "nic", *args)
        assert record(lab, name) == before
        # Removed live.
        lab.cli("device", "remove", name, "lan")
        lab.cli("device", "remove", name, "wire")
        inside = links.links_in(netns)
        assert "eth1" not in inside and "lan0" not in inside
        # Set up at start.
        lab.cli("device", "add", name, "lan", "nic", f"network={second}", "name=eth1")
        lab.cli("stop", name)
        lab.start(name)
        assert "eth1" in links.links_in(netns)


def _crashing(it: Lab, at: str) -> None:
    """Restart the lab's lxpyd with LXPY_CRASH_AT=`at` (it kills itself there)."""
    stop_daemon(it.d)
    conf = it.d.root.parent / f"{it.d.root.name}-lxpyd.toml"
    it.d = start_daemon(
        it.d.root,
        it.d.socket,
        it.tmp / "lxpyd-crash.log",
        "--config",
        str(conf),
        prefix=("env", f"{CRASH_ENV}={at}"),
    )
    it._fixture_daemon.proc = it.d.proc


def _after_crash(it: Lab) -> None:
    # It died at the crash point (SIGKILL from itself), not of anything else.
    assert it.d.proc.wait(timeout=30) == -signal.SIGKILL
    it.d.socket.unlink()
    it.restart_daemon()


def test_device_add_cut_short_by_a_crash_is_undone(lab: Lab, outside: Outside) -> None:  # noqa: F811
    lab.make_network(nat=False)
    lab.d.cli("template", "build", "busybox")
    name, addr = web(lab, "crash")
    pid = lab.info(name)["init_pid"]
    port = free_port()
    table = proxy.table_name(root_id(str(lab.d.root)))
    before = record(lab, name)
    _crashing(lab, "device-add:plugged")
    # Plugged (the port taken, the rule made), then lxpyd died before the
    # record was written.
    assert add_proxy(lab, name, "http", f"tcp:0.0.0.0:{port}", f"tcp:{addr}:80").returncode != 0
    _after_crash(lab)
    assert lab.info(name)["init_pid"] == pid
    assert record(lab, name) == before and devices(lab, name) == {}
    assert port_free(port)
    assert outside.curl(f"http://{outside.host}:{port}/").returncode != 0
    listed = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True)
    assert listed.returncode != 0
    # The same for a node: not left inside.
    _crashing(lab, "device-add:plugged")
    res = lab.cli("device", "add", name, "fuse", "unix-char", "source=/dev/fuse", check=False)
    assert res.returncode != 0
    _after_crash(lab)
    assert record(lab, name) == before
    assert lab.run_in(name, "test", "-e", "/dev/fuse").returncode != 0
