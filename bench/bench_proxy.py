"""Published ports: throughput and connection latency through a `proxy`,
on its two paths, against a direct connection to the container.

Run as root:  .venv/bin/python bench/bench_proxy.py [--mib 256] [--conns 300]

A scratch lxpyd with a network of its own (no NAT) runs one busybox
container; a small server in the container's network namespace (the
host's python, entered with nsenter: busybox has no bulk sender) answers
on port 5001 with --mib MiB and then closes, and on port 5002 with one
byte per connection. The same client (a separate python process, so it
never shares a GIL with the forwarder) measures every path:

  direct       the container's address on the bridge, no proxy;
  DNAT         a `proxy` device (lxpy device add ... listen=tcp:0.0.0.0:P
               connect=tcp:ADDR:PORT), reached on the bridge's host
               address: lxpy's nft table rewrites it to the container;
  userspace    the same device reached on 127.0.0.1:P: lxpyd's forwarder
               (lxpy.daemon.proxyd);
  socat        `socat TCP-LISTEN:...,fork,reuseaddr TCP:container` when
               socat is installed: a plain userspace forwarder to compare
               with.

LXC has no proxy device of its own (LXC users write DNAT rules by hand:
the DNAT row is that case); Incus's forkproxy is not installed here.
Throughput: MiB/s of one connection reading the whole answer (median of
--runs). Latency: connect, read one byte, close, per connection
(--conns, sequential). The machine is shared with other work: the
figures are indicative.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Lxpy, Scratch, print_table, run  # noqa: E402

from lxpy.errors import Busy  # noqa: E402
from lxpy.network import links, proxy  # noqa: E402

SERVER = r"""
import socket, sys, threading
addr, mib = sys.argv[1], int(sys.argv[2])
chunk = b"x" * (1 << 20)
def bulk(c):
    with c:
        for _ in range(mib):
            c.sendall(chunk)
def one(c):
    with c:
        c.sendall(b"!")
def serve(port, fn):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(512)
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(5002, one), daemon=True).start()
print("ready", flush=True)
serve(5001, bulk)
"""

CLIENT = r"""
import json, socket, sys, time
host = sys.argv[1]
bulk_port, one_port, runs, conns = (int(a) for a in sys.argv[2:6])
rates = []
for _ in range(runs):
    t0 = time.perf_counter()
    got = 0
    with socket.create_connection((host, bulk_port)) as s:
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            got += len(b)
    rates.append(got / (1 << 20) / (time.perf_counter() - t0))
lat = []
for _ in range(conns):
    t0 = time.perf_counter()
    with socket.create_connection((host, one_port)) as s:
        assert s.recv(1) == b"!"
    lat.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"rates": rates, "lat": lat}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def measure(host: str, bulk: int, one: int, runs: int, conns: int) -> dict[str, list[float]]:
    res = run(
        [sys.executable, "-c", CLIENT, host, str(bulk), str(one), str(runs), str(conns)],
        timeout=900,
    )
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB per throughput run")
    ap.add_argument("--runs", type=int, default=5, help="throughput runs per path")
    ap.add_argument("--conns", type=int, default=300, help="connections for latency")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")

    used = links.used_subnets()
    subnet = next(
        s
        for s in ipaddress.IPv4Network("10.213.0.0/16").subnets(new_prefix=24)
        if not any(s.overlaps(u) for u in used)
    )
    with Scratch("lxpy-bench-proxy-") as scratch:
        lx = Lxpy(scratch)
        net = f"lxbp{os.getpid() % 10000}"
        lx.cli("network", "create", net, "--subnet", str(subnet), "--no-nat")
        scratch.defer(lambda: lx.cli("network", "delete", net))
        lx.build("busybox")
        name = f"bp-{os.getpid()}"
        lx.cli("create", name, "-t", "busybox", "--set", f"network={net}")
        # Destroyed before its network is deleted (deferred cleanups run last first).
        lx.cli("start", name)
        scratch.defer(lambda: lx.cli("destroy", "--force", name))
        pid = lx.init_pid(name)
        netns = f"/proc/{pid}/ns/net"
        addr = ""
        for _ in range(300):
            per_if = links.netns_ipv4(Path(netns)).get("eth0", [])
            if per_if:
                addr = per_if[0].split("/")[0]
                break
            time.sleep(0.05)
        if not addr:
            raise RuntimeError("the container got no address")
        gateway = str(subnet.network_address + 1)
        server = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", SERVER, addr, str(args.mib)],
            stdout=subprocess.PIPE,
            text=True,
        )
        scratch.defer(server.kill)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        results: dict[str, dict[str, list[float]]] = {}
        results["direct (container address)"] = measure(addr, 5001, 5002, args.runs, args.conns)

        bulk_p, one_p = free_port(), free_port()
        # Published through lxpyd, as a user does: each proxy's port held by
        # lxpyd's forwarder, its DNAT rule in the root's table.
        for dev, p, t in (("bulk", bulk_p, 5001), ("one", one_p, 5002)):
            lx.cli("device", "add", name, dev, "proxy", f"listen=tcp:0.0.0.0:{p}",
                   f"connect=tcp:{addr}:{t}")  # fmt: skip
        results["lxpy proxy, DNAT path"] = measure(gateway, bulk_p, one_p, args.runs, args.conns)
        results["lxpy proxy, userspace path (127.0.0.1)"] = measure(
            "127.0.0.1", bulk_p, one_p, args.runs, args.conns
        )
        for dev in ("bulk", "one"):
            lx.cli("device", "remove", name, dev)

        socat = shutil.which("socat")
        if socat:
            sb, so = free_port(), free_port()
            procs = [
                subprocess.Popen(
                    [socat, f"TCP-LISTEN:{p},bind=127.0.0.1,fork,reuseaddr", f"TCP:{addr}:{t}"]
                )
                for p, t in ((sb, 5001), (so, 5002))
            ]
            try:
                for p in (sb, so):
                    # Listening once the port can no longer be bound (a
                    # probe connection would start a bulk answer).
                    for _ in range(200):
                        try:
                            proxy.bind(proxy.parse_endpoint("listen", f"tcp:127.0.0.1:{p}")).close()
                        except Busy:
                            break
                        time.sleep(0.02)
                results["socat forwarder (127.0.0.1)"] = measure(
                    "127.0.0.1", sb, so, args.runs, args.conns
                )
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()

    print(f"\nproxy bench: one busybox container, {args.mib} MiB per throughput run")
    print("figures are indicative: the machine is shared with other work")
    if not socat:
        print("socat is not installed: no plain forwarder to compare with")
    print("LXC has no proxy device: its users write DNAT rules (the DNAT row)")
    print_table(
        "throughput, one TCP connection (higher is better)",
        [(k, v["rates"]) for k, v in results.items()],
        unit="MiB/s",
    )
    print_table(
        "connection latency: connect + 1 byte + close (lower is better)",
        [(k, v["lat"]) for k, v in results.items()],
        unit="ms",
        digits=3,
    )


if __name__ == "__main__":
    main()
