"""`lxpy list` with 100 containers: whole-command wall time, Python start-up
included, side by side with `lxc-ls -f` over 100 LXC containers; with
--running also `lxpy exec c0 -- true` beside `nsenter -a -t PID true`.

Run as root: .venv/bin/python bench/bench_list.py [--count 100] [--runs 30]

It starts its own lxpyd on a scratch root (with its own loop-file btrfs
pool), and makes a scratch LXC path with as many stopped containers sharing
one busybox rootfs, and removes both at the end.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Imported also for what it does first: bring lxpy's byte-code up to date, or
# every `lxpy` timed here would compile its edited modules again.
import common  # noqa: E402

from lxpy.api.client import Client  # noqa: E402
from lxpy.kernel import lxcfs  # noqa: E402
from tests.conftest import daemon_in  # noqa: E402

BIN = Path(sys.executable).parent
med = statistics.median


def timed(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # warm the page cache
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[int(len(ms) * 0.9) - 1] if len(ms) >= 10 else ms[-1]
    return f"{label:<44}{len(ms):>5}{statistics.median(ms):>11.1f}{p90:>9.1f}{ms[0]:>9.1f}"


def import_time_ms() -> float:
    res = subprocess.run(
        [str(BIN / "python"), "-X", "importtime", "-c", "import lxpy.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    total = 0
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == "lxpy.cli":
            total = int(parts[1])
    return total / 1000


def lxc_path(tmp: Path, rootfs: Path, count: int) -> Path | None:
    if shutil.which("lxc-ls") is None:
        return None
    path = tmp / "lxc"
    for i in range(count):
        d = path / f"c{i}"
        d.mkdir(parents=True)
        (d / "config").write_text(
            f"lxc.uts.name = c{i}\nlxc.rootfs.path = dir:{rootfs}\nlxc.net.0.type = empty\n"
        )
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--running", action="store_true", help="also time it with all running")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_list: run as root", file=sys.stderr)
        return 2
    common.install_compared("lxc-start")
    tmp = Path(tempfile.mkdtemp(prefix="lxpy-bench-list-"))
    # A network of the bench's own (the containers run on it with
    # --running), removed at the end.
    # lxpyd's defaults otherwise: lxcfs on (an lxcfs of the bench's own,
    # stopped at the end), for the containers run with --running.
    lxcfs_mount = tmp / "lxcfs"
    settings = (
        'pool_size = "2GiB"\ndefault_network = "lxpybench0"\n'
        f'lxcfs = "auto"\nlxcfs_mount = "{lxcfs_mount}"\n'
    )
    try:
        with daemon_in(tmp, settings) as d:
            try:
                client = Client(str(d.socket))
                op = client.build_template("busybox")
                client.wait_operation(op["id"], timeout=120)
                t0 = time.perf_counter()
                for i in range(args.count):
                    client.create_container(f"c{i}", "busybox")
                per_create = (time.perf_counter() - t0) * 1000 / args.count
                env = {**os.environ, "LXPY_SOCKET": str(d.socket)}
                lxpy = timed([str(BIN / "lxpy"), "list"], args.runs, env)
                lxpy_json = timed([str(BIN / "lxpy"), "list", "--format", "json"], args.runs, env)
                running = execs = None
                if args.running:
                    names = [f"c{i}" for i in range(args.count)]
                    subprocess.run(
                        [str(BIN / "lxpy"), "start", *names],
                        check=True,
                        env=env,
                        capture_output=True,
                    )
                    running = timed([str(BIN / "lxpy"), "list"], args.runs, env)
                    init = str(client.container("c0")["init_pid"])
                    execs = (
                        timed([str(BIN / "lxpy"), "exec", "c0", "--", "true"], args.runs, env),
                        timed(["nsenter", "-a", "-t", init, "true"], args.runs),
                    )
                startup = timed([str(BIN / "python"), "-I", "-S", "-c", "pass"], args.runs)
                lxc = None
                lxcpath = lxc_path(tmp, Path(client.container("c0")["path"]), args.count)
                if lxcpath is not None:
                    lxc = timed(["lxc-ls", "-f", "-P", str(lxcpath)], args.runs)

                print(
                    f"{args.count} containers; lxpy.cli import {import_time_ms():.1f} ms; "
                    f"create through the API {per_create:.1f} ms each (request + snapshot)"
                )
                print(f"{'command':<44}{'runs':>5}{'median ms':>11}{'p90':>9}{'min':>9}")
                print(row("lxpy list", lxpy))
                print(row("lxpy list --format json", lxpy_json))
                if running is not None:
                    print(row("lxpy list, all running (with addresses)", running))
                if execs is not None:
                    print(row("lxpy exec c0 -- true", execs[0]))
                    print(row("nsenter -a -t PID true (no lxpy)", execs[1]))
                if lxc is not None:
                    print(row("lxc-ls -f (LXC 5, same count, stopped)", lxc))
                print(row("python3 -I -S -c pass (start-up floor)", startup))
                if lxc is not None:
                    anchor = f"LXC 5 lxc-ls -f ({args.count} stopped)"
                    lxc_med = statistics.median(lxc)
                    summary = common.summary
                    summary("list", f"lxpy list, {args.count} stopped", med(lxpy), lxc_med, anchor)
                    summary("list", "lxpy list --format json", med(lxpy_json), lxc_med, anchor)
                print(
                    f"target: lxpy list median < 150 ms: "
                    f"{'met' if statistics.median(lxpy) < 150 else 'NOT met'}"
                )
                return 0
            finally:
                c = Client(str(d.socket))
                for ct in c.containers():
                    c.delete_container(ct["name"], force=True)
                if any(n["name"] == "lxpybench0" for n in c.networks()):
                    c.delete_network("lxpybench0")
    finally:
        lxcfs.stop(str(lxcfs_mount))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
