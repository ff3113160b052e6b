"""50 busybox containers started at once: wall time until all run, lxpy side
by side with LXC 5.

Run as root:  .venv/bin/python bench/bench_parallel.py [--count 50] [--runs 3]

Both start the same tree (lxpy's busybox template, built by lxpy's
builder), with no network. Each round:

  LXC: `lxc-start -d` of every container as parallel processes (each
      returns once its container is RUNNING), then `lxc-wait -s RUNNING`
      of every one, also in parallel; each round on fresh snapshots.
  lxpy API: one thread per container sends POST .../start (answered once
      the container is RUNNING), then one list confirms every state.
  lxpy CLI: `lxpy start NAME` of every container as parallel processes,
      then one list.

Between rounds everything is stopped (not timed). Target: lxpy no slower
than LXC's median. Everything made is removed at the end.

A second table gives the machine's busy CPU time over the same window
(all cores, /proc/stat), per container started: with 50 starts on a few
cores the wall time is bound by it, so it says what each tool's start
costs. It includes the containers' own boot as far as it ran in the window
(the same busybox boot for every tool), and any other load on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LXPY,
    Lxc,
    Lxpy,
    Scratch,
    build_template_tree,
    busy_ms,
    delete_tree,
    install_compared,
    lxpy_can_run,
    ms_since,
    print_table,
    snapshot,
    verdict,
)

TEMPLATE = "busybox"


def wait_all(procs: list[subprocess.Popen[bytes]], what: str) -> None:
    bad = [p for p in procs if p.wait(120) != 0]
    if bad:
        err = bad[0].stderr.read().decode(errors="replace") if bad[0].stderr else ""
        raise RuntimeError(f"{len(bad)} of {len(procs)} {what} failed; first: {err.strip()}")


class Window:
    """A timed window: its wall time and the machine's busy CPU time in it."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = busy_ms()

    def took(self) -> tuple[float, float]:
        """(wall ms, busy CPU ms) since the window opened."""
        return ms_since(self.t0), busy_ms() - self.cpu0


def lxc_round(
    scratch: Scratch, lxc: Lxc, base: Path, count: int
) -> tuple[tuple[float, float], float]:
    """((ms, busy CPU ms) until every lxc-start returned, ms until every
    lxc-wait confirmed)."""
    names = [f"l{i}" for i in range(count)]
    for name in names:
        lxc.define(name, snapshot(base, scratch.pool / name))
    try:
        w = Window()
        starts = [
            subprocess.Popen(lxc.argv("lxc-start", n, "-d"), stderr=subprocess.PIPE) for n in names
        ]
        wait_all(starts, "lxc-start -d")
        started = w.took()
        waits = [
            subprocess.Popen(
                lxc.argv("lxc-wait", n, "-s", "RUNNING", "-t", "30"), stderr=subprocess.PIPE
            )
            for n in names
        ]
        wait_all(waits, "lxc-wait -s RUNNING")
        confirmed, _cpu = w.took()
    finally:
        stops = [
            subprocess.Popen(lxc.argv("lxc-stop", n, "-k"), stderr=subprocess.DEVNULL)
            for n in names
        ]
        for p in stops:
            p.wait(120)
        for name in names:
            delete_tree(scratch.pool / name)
    return started, confirmed


def lxpy_confirm(lxpy: Lxpy, names: list[str]) -> None:
    states = {c["name"]: c["state"] for c in lxpy.client.containers()}
    bad = [n for n in names if states.get(n) != "RUNNING"]
    if bad:
        raise RuntimeError(f"lxpy: {len(bad)} not RUNNING, e.g. {bad[0]}: {states.get(bad[0])}")


def lxpy_stop_all(lxpy: Lxpy, names: list[str], pool: ThreadPoolExecutor) -> None:
    list(pool.map(lambda n: lxpy.stop_api(n, force=True), names))


def lxpy_round_api(lxpy: Lxpy, names: list[str], pool: ThreadPoolExecutor) -> tuple[float, float]:
    w = Window()
    list(pool.map(lxpy.start_api, names))
    lxpy_confirm(lxpy, names)
    took = w.took()
    lxpy_stop_all(lxpy, names, pool)
    return took


def lxpy_round_cli(lxpy: Lxpy, names: list[str], pool: ThreadPoolExecutor) -> tuple[float, float]:
    w = Window()
    procs = [
        subprocess.Popen(
            [LXPY, "start", n], env=lxpy.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for n in names
    ]
    wait_all(procs, "lxpy start")
    lxpy_confirm(lxpy, names)
    took = w.took()
    lxpy_stop_all(lxpy, names, pool)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50, help="containers started at once")
    ap.add_argument("--runs", type=int, default=3, help="counted rounds per tool")
    ap.add_argument("--no-lxpy", action="store_true", help="LXC only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_parallel.py needs root (btrfs, namespaces, LXC)", file=sys.stderr)
        return 2
    install_compared("lxc-start")
    n = args.count
    with Scratch("lxpy-bench-parallel-") as scratch:
        base = scratch.pool / "busybox"
        build_template_tree(TEMPLATE, base)
        lxc = Lxc(scratch)
        # Per tool: (wall ms, busy CPU ms) of each counted round.
        lxc_started: list[tuple[float, float]] = []
        lxc_confirmed: list[float] = []
        api: list[tuple[float, float]] = []
        cli: list[tuple[float, float]] = []
        have_lxpy = not args.no_lxpy and lxpy_can_run()
        lxpy = None
        names = [f"x{i}" for i in range(n)]
        if have_lxpy:
            lxpy = Lxpy(scratch)
            lxpy.build(TEMPLATE)
            for name in names:
                lxpy.create(name, TEMPLATE)
        with ThreadPoolExecutor(max_workers=n) as pool:
            # Round 0 warms the page cache and the daemon; it is not counted.
            for r in range(args.runs + 1):
                s, c = lxc_round(scratch, lxc, base, n)
                if lxpy is not None:
                    a = lxpy_round_api(lxpy, names, pool)
                    b = lxpy_round_cli(lxpy, names, pool)
                if r == 0:
                    continue
                lxc_started.append(s)
                lxc_confirmed.append(c)
                if lxpy is not None:
                    api.append(a)
                    cli.append(b)

        print(f"{n} busybox containers started at once, no network, {args.runs} rounds per tool")
        timed = [(f"LXC 5: {n} x lxc-start -d, all returned", lxc_started)]
        if lxpy is not None:
            timed += [
                (f"lxpy API: {n} threads POST .../start", api),
                (f"lxpy CLI: {n} x lxpy start", cli),
            ]
        rows = [(label, [w for w, _ in xs]) for label, xs in timed]
        rows.insert(1, ("LXC 5: ... + lxc-wait -s RUNNING of each", lxc_confirmed))
        print_table("wall time until all are RUNNING", rows)
        print_table(
            f"machine CPU busy in that time, per container (ms; {os.cpu_count()} cores)",
            [(label, [cpu / n for _, cpu in xs]) for label, xs in timed],
            digits=2,
        )
        print()
        lxc_med = statistics.median(w for w, _ in lxc_started)
        if lxpy is None:
            verdict("lxpy no slower than LXC (no `lxpy start` in this checkout)", None)
            return 0
        for label, xs in (("lxpy API", api), ("lxpy CLI", cli)):
            med = statistics.median(w for w, _ in xs)
            verdict(f"{label} median {med:.1f} ms <= LXC's {lxc_med:.1f} ms", med <= lxc_med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
