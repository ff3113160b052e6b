"""Time from start until a Debian container holds its DHCP address: lxpy
against LXC 5 on an lxc-net-like bridge, with the same rootfs in the same run.

Run as root:  .venv/bin/python bench/bench_dhcp.py [--runs 10]

Builds lxpy's debian-bookworm template tree once (from the suite's build
cache, the tarball lxpyd restores the template from; systemd-networkd does
DHCP on eth0) into a scratch btrfs pool. Each LXC run boots a fresh
snapshot of it, each lxpy run a fresh container of a scratch lxpyd, so
every run is a new MAC asking for a new lease, as a new container does.

  lxpy: `lxpy start` of a container on a network the scratch lxpyd made
      (`lxpy network create`: its bridge, dnsmasq and nftables table).
  LXC: `lxc-start -d` in a scratch LXC path, `lxc.net.0.type = veth` on a
      scratch bridge with a dnsmasq started the way lxc-net starts it (its
      flags, ping check on), once with lxpy's DHCP flags (--no-ping
      --dhcp-rapid-commit) and once as lxc-net ships. The first is the
      anchor lxpy is judged against: the same dnsmasq settings on both
      sides, so the difference is what the manager costs. The second is
      shown for information (what lxc-net's defaults cost). The host's
      lxcbr0 and lxc-net are never touched.

Both tools run with lxcfs where it is installed (lxpy's default; LXC binds
the same files from the same lxcfs).

"Holds its address": from the start command until `nsenter -t INIT -n ip
-4 addr show dev eth0` shows an IPv4 address, asked in a loop the same way
for every tool. Rounds alternate the tools; one warm-up round is not
counted. Then bench_network.py runs in the same run for the network set-up
cost per container start (netns + veth + bridge attach; target: median
under 20 ms). No traffic leaves the scratch bridges: nothing in the
containers is asked to reach anything. Everything made (bridges, dnsmasq,
lxpy's nftables table, containers, mounts) is removed at the end, also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SUMMARY_ENV,
    Lxc,
    Lxpy,
    Scratch,
    build_template_tree,
    delete_tree,
    install_compared,
    median_or_none,
    ms_since,
    print_table,
    run,
    snapshot,
    summary,
    verdict,
)

from lxpy.model.network import first_free_subnet, root_id  # noqa: E402
from lxpy.network import links, nftables  # noqa: E402

TEMPLATE = "debian-bookworm"
LXPY = "lxpy CLI (lxpy start)"
LXPY_API = "lxpy API (POST start)"
LXC_NET = "LXC 5, lxc-net's dnsmasq flags (info)"
LXC_FAST = "LXC 5, lxpy's dnsmasq flags (anchor)"
BENCH_NETWORK = Path(__file__).resolve().parent / "bench_network.py"


# -- the address probe --------------------------------------------------------

_INET = re.compile(r"\binet (\d+\.\d+\.\d+\.\d+)/")


def wait_ipv4(pid: int, timeout: float = 60) -> str:
    """Block until eth0 in the network namespace of `pid` has an IPv4
    address; return it. Each probe is one nsenter + ip (a few ms)."""
    argv = ["nsenter", "-t", str(pid), "-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        m = _INET.search(res.stdout)
        if m:
            return m.group(1)
    raise TimeoutError(f"no IPv4 address on eth0 of pid {pid} after {timeout} s")


_STAMP = re.compile(r"^\[\s*([\d.]+)\]")


def exchange_ms(pid: int, timeout: float = 10) -> float | None:
    """The DHCP exchange as networkd logged it in the container: from
    "eth0: Configuring with ..." to "eth0: DHCPv4 address ... acquired"
    (monotonic journal stamps; the journal may lag the address a little)."""
    argv = ["nsenter", "-t", str(pid), "-a", "journalctl", "-b", "-o", "short-monotonic"]
    argv += ["--no-pager", "-q", "-u", "systemd-networkd"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
        begin = end = None
        for line in out.splitlines():
            m = _STAMP.match(line)
            if m and "eth0: Configuring with" in line and begin is None:
                begin = float(m.group(1))
            elif m and "eth0: DHCPv4 address" in line and end is None:
                end = float(m.group(1))
        if begin is not None and end is not None:
            return (end - begin) * 1000
        time.sleep(0.05)
    return None


# -- an lxc-net-like bridge -----------------------------------------------------


class Bridge:
    """A scratch bridge with an address and its own dnsmasq, set up the way
    lxc-net sets up lxcbr0 (no NAT: nothing here leaves the host)."""

    def __init__(self, scratch: Scratch, name: str, subnet: ipaddress.IPv4Network) -> None:
        self.name, self.subnet = name, subnet
        self.gw = subnet.network_address + 1
        self.dir = scratch.dir / f"dnsmasq-{name}"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        scratch.defer(self.close)
        run(["ip", "link", "add", name, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.gw}/{subnet.prefixlen}", "dev", name])
        run(["ip", "link", "set", name, "up"])

    def start_dnsmasq(self, extra: list[str]) -> None:
        first, last = self.gw + 1, self.subnet.broadcast_address - 1
        pid_file = self.dir / "dnsmasq.pid"
        # lxc-net's command line (without -u and with --keep-in-foreground,
        # neither of which changes how fast it answers).
        argv = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--strict-order", "--bind-interfaces", f"--pid-file={pid_file}",
            "--listen-address", str(self.gw), "--dhcp-range", f"{first},{last}",
            "--dhcp-lease-max=253", "--dhcp-no-override",
            "--except-interface=lo", f"--interface={self.name}",
            f"--dhcp-leasefile={self.dir / 'leases'}", "--dhcp-authoritative",
            *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not pid_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq on {self.name} did not start")
            time.sleep(0.01)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)


class LxcOnBridge(Lxc):
    """Scratch LXC containers with a veth on a scratch bridge."""

    def define_on(self, name: str, rootfs: Path, bridge: str) -> None:
        # A random MAC per container, as lxc-create fills 00:16:3e:xx:xx:xx.
        mac = "00:16:3e:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        self.define(
            name,
            rootfs,
            net=(
                "lxc.net.0.type = veth\n"
                f"lxc.net.0.link = {bridge}\n"
                "lxc.net.0.flags = up\n"
                "lxc.net.0.name = eth0\n"
                f"lxc.net.0.hwaddr = {mac}\n"
            ),
        )


# -- one run of each tool ---------------------------------------------------------


Sample = tuple[float, float | None]  # start to address, the exchange inside


def lxc_run(lxc: LxcOnBridge, base: Path, pool: Path, name: str, bridge: str) -> Sample:
    rootfs = snapshot(base, pool / name)
    lxc.define_on(name, rootfs, bridge)
    try:
        t0 = time.perf_counter()
        lxc.start(name)
        pid = lxc.init_pid(name)
        wait_ipv4(pid)
        took = ms_since(t0)
        return took, exchange_ms(pid)
    finally:
        if name in lxc.running():
            lxc.stop(name, kill=True)
        delete_tree(rootfs)


def lxpy_run(lxpy: Lxpy, network: str, name: str, cli: bool) -> Sample:
    lxpy.client.create_container(name, TEMPLATE, {"network": [network]})
    try:
        t0 = time.perf_counter()
        if cli:
            lxpy.cli("start", name)
        else:
            lxpy.start_api(name)
        pid = lxpy.init_pid(name)
        wait_ipv4(pid)
        took = ms_since(t0)
        return took, exchange_ms(pid)
    finally:
        lxpy.client.delete_container(name, force=True)


def lxpy_network(scratch: Scratch, lxpy: Lxpy, name: str) -> str:
    """A network of the scratch lxpyd (a free subnet picked by lxpy), removed
    again before the daemon stops: containers first, then the network, then
    whatever a failure left of its bridge and nftables table."""
    table = nftables.table_name(root_id(str(lxpy.paths.root)))

    def sweep() -> None:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)

    def remove() -> None:
        try:
            for ct in lxpy.client.containers():
                lxpy.client.delete_container(ct["name"], force=True)
            lxpy.cli("network", "delete", name)
        except Exception as e:  # the sweep below still runs
            print(f"cleanup: network {name}: {e}", file=sys.stderr)

    # Deferred cleanups run last-in first-out: the sweep after lxpyd stopped.
    scratch.defer(sweep)
    lxpy.cli("network", "create", name)
    scratch.defer(remove)
    return name


def network_setup_figures() -> tuple[list[str], float | None]:
    """bench_network.py's lines on the set-up cost, and its (a) median in ms."""
    # Its own rows reach bench/run-all when run-all runs it itself.
    env = {k: v for k, v in os.environ.items() if k != SUMMARY_ENV}
    res = subprocess.run(
        [sys.executable, str(BENCH_NETWORK), "--runs", "50", "--dhcp-runs", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("(a)", "(b)", "(c)", "(d)"))]
    if res.returncode != 0:
        print(f"bench_network.py failed: {res.stderr.strip()[-500:]}", file=sys.stderr)
    m = re.search(r"^\(a\).*?median\s+([\d.]+) ms", res.stdout, re.M)
    return lines, float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="counted runs per tool")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_dhcp.py needs root (btrfs, namespaces, bridges, LXC)", file=sys.stderr)
        return 2
    install_compared("lxc-start")

    tag = os.getpid() % 10000
    labels = (LXPY, LXPY_API, LXC_NET, LXC_FAST)
    results: dict[str, list[float]] = {k: [] for k in labels}
    exchange: dict[str, list[float]] = {k: [] for k in labels}
    with Scratch("lxpy-bench-dhcp-") as scratch:
        base = scratch.pool / "debian"
        build_template_tree(TEMPLATE, base)
        # The LXC bridges first: lxpy then picks a subnet neither uses.
        used = links.used_subnets()
        bridges: dict[str, Bridge] = {}
        for label, suffix, extra in (
            (LXC_NET, "a", []),
            (LXC_FAST, "b", ["--no-ping", "--dhcp-rapid-commit"]),
        ):
            subnet = first_free_subnet(used)
            if subnet is None:
                raise RuntimeError("no free 10.x.y.0/24 for a scratch bridge")
            used.append(subnet)
            br = Bridge(scratch, f"lxbdhcp{tag}{suffix}", subnet)
            br.start_dnsmasq(extra)
            bridges[label] = br
        lxc = LxcOnBridge(scratch)
        lxpy = Lxpy(scratch)
        lxpy.build(TEMPLATE)
        network = lxpy_network(scratch, lxpy, f"lxpdhcp{tag}")

        for r in range(args.runs + 1):
            got = {
                LXPY: lxpy_run(lxpy, network, f"p{r}", cli=True),
                LXPY_API: lxpy_run(lxpy, network, f"q{r}", cli=False),
                LXC_NET: lxc_run(lxc, base, scratch.pool, f"a{r}", bridges[LXC_NET].name),
                LXC_FAST: lxc_run(lxc, base, scratch.pool, f"b{r}", bridges[LXC_FAST].name),
            }
            if r > 0:  # round 0 warms the page cache and the daemon
                for k, (took, inside) in got.items():
                    results[k].append(took)
                    if inside is not None:
                        exchange[k].append(inside)
        setup_lines, attach_ms = network_setup_figures()

    print(f"Debian bookworm (lxpy template tree, systemd-networkd), {args.runs} runs per tool")
    print("probe: nsenter -t INIT -n ip -4 addr show dev eth0, in a loop")
    print_table("start until the container holds its DHCP address", list(results.items()))
    print_table(
        "the DHCP exchange inside (networkd: eth0 configuring -> lease acquired)",
        list(exchange.items()),
    )
    print("\nnetwork set-up per container start (bench_network.py, same run):")
    for line in setup_lines:
        print(f"  {line}")
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print()
    verdict(
        f"lxpy: start to DHCP address median {med[LXPY]:.1f} ms <= LXC with the same "
        f"dnsmasq flags {med[LXC_FAST]:.1f} ms",
        med[LXPY] <= med[LXC_FAST],
    )
    print(f"(for information: LXC with lxc-net's own flags {med[LXC_NET]:.1f} ms)")
    anchor = "LXC 5, same dnsmasq flags"
    summary("dhcp", "Debian: lxpy start until DHCP address", med[LXPY], med[LXC_FAST], anchor)
    summary("dhcp", "Debian: POST start until DHCP address", med[LXPY_API], med[LXC_FAST], anchor)
    summary(
        "dhcp",
        "Debian: DHCP exchange inside",
        median_or_none(exchange[LXPY]),
        median_or_none(exchange[LXC_FAST]),
        anchor,
    )
    verdict(
        "network set-up per start (netns + veth + bridge attach, Networks.attach) median "
        f"{'-' if attach_ms is None else f'{attach_ms:.2f}'} ms < 20 ms",
        None if attach_ms is None else attach_ms < 20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
