"""What a container start pays for its network, and how long DHCP takes.

Run as root:  .venv/bin/python bench/bench_network.py [--runs 50]

Makes its own network (a bridge with a free 10.x.y.0/24, dnsmasq, nftables
rules) on a temporary root, then times, per simulated container start:

  (a) Networks.attach: the daemon's call (netns + veth + bridge attach,
      static lease, dnsmasq reload), through its worker thread
  (b) links.create_netns: netns + veth + bridge attach alone
  (c) the same set-up the way LXC 5 does it (liblxc's veth set-up, by
      netlink from one process, the anchor of (b)): a new network
      namespace (LXC's comes with its init's clone), the veth pair made
      with its peer in that namespace, the host end given a private MAC,
      put on the bridge and up, then inside the peer renamed eth0, given
      its MAC and set up, and lo up
  (d) the same by `ip` commands (8 processes), as a script would do it:
      shown for information, LXC does not work this way
  (e) attach until a DHCP lease is held in the namespace (busybox udhcpc
      against the bridge's dnsmasq)

Teardown (detach, ip netns del) is not timed. Everything is removed at the
end, also on failure or Ctrl-C. Target: (a) median under 20 ms, and (b)
no slower than (c).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402
from pyroute2 import IPRoute  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from common import summary  # noqa: E402

from lxpy.daemon.networks import Networks  # noqa: E402
from lxpy.kernel import syscalls as sc  # noqa: E402
from lxpy.network import links  # noqa: E402
from lxpy.network.links import Nic  # noqa: E402

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in bound|renew) busybox ip addr add "$ip/${mask:-24}" dev "$interface";; esac
exit 0
"""


def ms(values: list[float]) -> str:
    v = sorted(values)
    p90 = v[min(len(v) - 1, int(len(v) * 0.9))]
    return f"median {statistics.median(v) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms   n={len(v)}"


def ip_way(bridge: str, ns: str, host: str) -> None:
    for argv in (
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host, "type", "veth", "peer", "name", host + "p"],
        ["ip", "link", "set", host + "p", "netns", ns],
        ["ip", "-n", ns, "link", "set", host + "p", "name", "eth0"],
        ["ip", "-n", ns, "link", "set", "eth0", "address", "02:00:00:aa:bb:cc"],
        ["ip", "link", "set", host, "master", bridge, "up"],
        ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ):
        subprocess.run(argv, check=True)


def in_thread(fn: Callable[[], int]) -> int:
    # unshare(CLONE_NEWNET) moves only the calling thread: a new thread
    # that ends in the new namespace leaves the caller in the host's.
    with ThreadPoolExecutor(max_workers=1) as one:
        return one.submit(fn).result()


def lxc_way(bridge: str, host: str, mac: str) -> int:
    """LXC 5's veth set-up (liblxc's instantiate_veth, then the device set
    up inside the container), by netlink from one process; returns an fd
    of the namespace (closing it, with the pair deleted, removes it)."""

    def work() -> int:
        with IPRoute() as ip:  # opened first: it stays in the host namespace
            # The container's namespace (LXC: its init's clone(CLONE_NEWNET)).
            sc.unshare(sc.CLONE_NEWNET)
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            # The pair, its peer made in the container's namespace under a
            # transient name.
            peer = host + "p"
            ip.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": fd})
            (hidx,) = ip.link_lookup(ifname=host)
            # The host end's MAC with a high first byte, so the bridge
            # keeps its own; then on the bridge, and up.
            (link,) = ip.get_links(hidx)
            own = str(link.get_attr("IFLA_ADDRESS"))
            ip.link("set", index=hidx, address="fe" + own[2:])
            ip.link("set", index=hidx, master=ip.link_lookup(ifname=bridge)[0])
            ip.link("set", index=hidx, state="up")
        with IPRoute() as inside:  # opened in the new namespace
            (idx,) = inside.link_lookup(ifname=peer)
            inside.link("set", index=idx, ifname="eth0")
            inside.link("set", index=idx, address=mac)
            inside.link("set", index=idx, state="up")
            inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
        return fd

    return in_thread(work)


def lxc_undo(host: str, fd: int) -> None:
    subprocess.run(["ip", "link", "del", host], capture_output=True)
    os.close(fd)


def ip_undo(host: str, ns: str) -> None:
    subprocess.run(["ip", "link", "del", host], check=False)
    subprocess.run(["ip", "netns", "del", ns], check=False)


def cleanup(bridge: str, runs: int, tmp: Path) -> None:
    from lxpy.model.paths import RunPaths

    shutil.rmtree(RunPaths.of(tmp / "root").dir, ignore_errors=True)
    # Only what this benchmark may have left after a failure.
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    for i in range(runs):
        subprocess.run(["ip", "netns", "del", f"lxpybench{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"lxpyn-{i}"], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


async def main(runs: int, dhcp_runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lxpy-bench-net-"))
    name = "lxpybench0"
    script = tmp / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    results: dict[str, list[float]] = {k: [] for k in "abcde"}
    try:
        async with trio.open_nursery() as nursery:
            nets = await Networks.open(tmp / "root", nursery, default_network="")
            net = await nets.create(name)
            print(f"network {name}: {net['subnet']}")
            config = {"network": [name]}
            for i in range(runs):
                t = time.perf_counter()
                await nets.attach(f"c{i}", config)
                results["a"].append(time.perf_counter() - t)
                await nets.detach(f"c{i}")

            for i in range(runs):
                path = nets.run.dir / "bench-netns" / f"b{i}"
                nic = Nic(name, name, f"lxpyb-{i}", "eth0", "02:00:00:00:01:01")
                t = time.perf_counter()
                await trio.to_thread.run_sync(links.create_netns, path, [nic])
                results["b"].append(time.perf_counter() - t)
                await trio.to_thread.run_sync(links.delete_links, [nic.host])
                await trio.to_thread.run_sync(links.remove_netns, path)

            for i in range(runs):
                host = f"lxpyn-{i}"
                t = time.perf_counter()
                fd = await trio.to_thread.run_sync(lxc_way, name, host, "02:00:00:00:01:02")
                results["c"].append(time.perf_counter() - t)
                await trio.to_thread.run_sync(lxc_undo, host, fd)

            for i in range(runs):
                ns, host = f"lxpybench{i}", f"lxpyi-{i}"
                t = time.perf_counter()
                await trio.to_thread.run_sync(ip_way, name, ns, host)
                results["d"].append(time.perf_counter() - t)
                await trio.to_thread.run_sync(ip_undo, host, ns)

            for i in range(dhcp_runs):
                t = time.perf_counter()
                h = await nets.attach(f"d{i}", config)
                await trio.run_process(
                    ["nsenter", f"--net={h.path}", "busybox", "udhcpc", "-i", "eth0",
                     "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", str(script)],
                    capture_stdout=True, capture_stderr=True,
                )  # fmt: skip
                results["e"].append(time.perf_counter() - t)
                await nets.detach(f"d{i}")
            await nets.delete(name)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cleanup, name, runs, tmp)
    print(f"(a) Networks.attach (daemon call)      {ms(results['a'])}")
    print(f"(b) netns + veth + bridge (netlink)    {ms(results['b'])}")
    print(f"(c) LXC's steps by netlink (anchor)    {ms(results['c'])}")
    print(f"(d) the same by `ip` commands (info)   {ms(results['d'])}")
    print(f"(e) attach until a DHCP lease is held  {ms(results['e'])}")
    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    print(f"target (a) < 20 ms: {'ok' if med['a'] < 20 else 'over'}")
    print(f"target (b) <= (c): {'ok' if med['b'] <= med['c'] else 'over'}")
    summary(
        "network",
        "netns + veth + bridge (links.create_netns)",
        med["b"],
        med["c"],
        "LXC's steps, netlink",
    )
    summary(
        "network",
        "Networks.attach (daemon call, lease included)",
        med["a"],
        med["c"],
        "LXC's steps, netlink",
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--dhcp-runs", type=int, default=10)
    args = p.parse_args()
    trio.run(main, args.runs, args.dhcp_runs)
