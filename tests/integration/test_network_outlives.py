"""The network keeps working while lxpyd is down, and the next lxpyd adopts it.

A busybox container on a network of the test's own (no NAT; traffic only
between the host, the bridge and the container): lxpyd is killed (SIGKILL)
or stopped (SIGTERM), and from inside the container the bridge's dnsmasq
still answers for NAME.lxpy and renews its DHCP lease; the next lxpyd
adopts that same dnsmasq, a container it starts gets an address and a
name, a destroyed container's lease is released at once, and the network's
delete ends dnsmasq. Commands run inside with nsenter while lxpyd is away.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxpy.model.network import mac_address
from lxpy.network import dnsmasq
from tests.conftest import Daemon, alive, stop_daemon, wait_for
from tests.integration.test_network_e2e import Lab, _templates, lab_on

pytestmark = pytest.mark.integration

NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"

# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 300


@pytest.fixture
def lab(daemon: Daemon, tmp_path: Path) -> Iterator[Lab]:
    with lab_on(daemon, tmp_path) as lab:
        yield lab


def inside(pid: int, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` with the busybox sh of the container whose init is `pid`,
    in all its namespaces: no lxpyd needed."""
    return subprocess.run(
        [NSENTER, "-t", str(pid), "-a", "/bin/busybox", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )


def resolves(pid: int, name: str, gateway: str) -> str:
    """What `nslookup NAME.lxpy GATEWAY` run inside answers ('' for nothing)."""
    res = inside(pid, f"nslookup {name}.lxpy {gateway}")
    return res.stdout.split(f"{name}.lxpy", 1)[1] if res.returncode == 0 else ""


def dns_log(lab: Lab) -> Path:
    return lab.d.paths.network(lab.net) / "dnsmasq.log"


def acks(lab: Lab, mac: str) -> int:
    """How many DHCPACKs dnsmasq logged for `mac`."""
    with contextlib.suppress(FileNotFoundError):
        return sum(
            1 for ln in dns_log(lab).read_text().splitlines() if "DHCPACK" in ln and mac in ln
        )
    return 0


def lease_macs(lab: Lab) -> set[str]:
    return {le.mac for le in dnsmasq.read_leases(lab.d.paths.network(lab.net) / "leases")}


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_dns_and_dhcp_serve_while_lxpyd_is_down(lab: Lab, how: str) -> None:
    net = lab.make_network()
    dns = net["dnsmasq_pid"]
    _templates(lab, "busybox")
    bb, late = lab.names("bb", "late")
    lab.create(bb, "busybox")
    addr = lab.start(bb)
    pid = lab.info(bb)["init_pid"]
    mac = mac_address(str(lab.d.root), bb)

    if how == "sigkill":
        lab.kill_daemon()
    else:
        stop_daemon(lab.d)
    # From inside, with no lxpyd: its own name, and a lease renewal.
    assert addr in resolves(pid, bb, lab.gw)
    assert alive(dns)
    if how == "sigterm":
        assert f"dnsmasq of network {lab.net} left running (pid {dns})" in lab.d.log.read_text()
    before = acks(lab, mac)
    assert before >= 1
    res = inside(pid, "kill -USR1 $(cat /run/udhcpc.eth0.pid)")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: acks(lab, mac) > before, 30, "dnsmasq to renew the lease while lxpyd is down")
    # dnsmasq logs the ACK before it rewrites its lease file (in place).
    wait_for(lambda: mac in lease_macs(lab), 10, "the renewed lease in the lease file")

    lab.restart_daemon()
    net = lab.network()
    assert net["status"] == "running" and net["dnsmasq_pid"] == dns, net
    assert net["dnsmasq_restarts"] == 0
    assert f"dnsmasq of network {lab.net} adopted (pid {dns})" in lab.d.log.read_text()
    # A container started by the new lxpyd gets an address and a name.
    lab.create(late, "busybox")
    late_addr = lab.start(late)
    assert late_addr != addr
    assert late_addr in resolves(pid, late, lab.gw)
    assert addr in resolves(lab.info(late)["init_pid"], bb, lab.gw)

    # Destroyed: its lease is released at once, and its name with it.
    late_mac = mac_address(str(lab.d.root), late)
    assert late_mac in lease_macs(lab)
    lab.cli("destroy", "--force", late)
    lab.containers.discard(late)
    assert late_mac not in lease_macs(lab)
    assert late_mac not in {le["mac"] for le in lab.network()["leases"]}
    assert resolves(pid, late, lab.gw) == ""
    assert addr in resolves(pid, bb, lab.gw)

    # The network's delete ends its dnsmasq.
    lab.cli("destroy", "--force", bb)
    lab.containers.discard(bb)
    lab.cli("network", "delete", lab.net)
    assert not alive(dns)


def test_a_renamed_container_gives_up_its_leases(lab: Lab) -> None:
    lab.make_network()
    _templates(lab, "busybox")
    bb, old, new = lab.names("bb", "old", "new")
    for c in (bb, old):
        lab.create(c, "busybox")
    lab.start(bb)
    old_addr = lab.start(old)
    pid = lab.info(bb)["init_pid"]
    lab.cli("stop", old)
    # Stopped, it keeps its lease (and address, for its next start).
    assert old_addr in resolves(pid, old, lab.gw)
    lab.cli("rename", old, new)
    lab.containers.symmetric_difference_update({old, new})
    # Its NIC's MAC went with its old name: so did the lease.
    assert mac_address(str(lab.d.root), old) not in lease_macs(lab)
    assert resolves(pid, old, lab.gw) == ""


def test_a_dnsmasq_run_otherwise_is_replaced(lab: Lab) -> None:
    dns = lab.make_network()["dnsmasq_pid"]
    argv = Path(f"/proc/{dns}/cmdline").read_bytes().split(b"\0")[:-1]
    lab.kill_daemon()
    os.kill(dns, signal.SIGTERM)
    wait_for(lambda: not alive(dns), 10, "dnsmasq to end")
    # The same network's dnsmasq, by its pid file, with one option less.
    other = [a.decode() for a in argv if a != b"--no-ping"]
    assert len(other) == len(argv) - 1
    subprocess.run(other, check=True, timeout=30)
    pid_file = next(a for a in other if a.startswith("--pid-file=")).split("=", 1)[1]
    hand = int(Path(pid_file).read_text().split()[0])
    assert alive(hand)

    lab.restart_daemon()
    net = lab.network()
    assert net["status"] == "running" and net["dnsmasq_pid"] not in (None, hand), net
    assert not alive(hand)
    assert "runs another configuration" in lab.d.log.read_text()
