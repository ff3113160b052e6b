"""50 busybox containers started at once: wall time until all run, lxpy side
by side with LXC 5.

Run as root:  .venv/bin/python bench/bench_parallel.py [--count 50] [--runs 3]

Both start the same tree (lxpy's busybox template, built by lxpy's
builder), with no network, with lxcfs where it is installed (lxpy's
default; LXC binds the same files from the same lxcfs), and with lxpyd's
defaults (read-ahead on; --no-read-ahead adds rows without it). Two kinds
of round, the same for both tools:

  fresh: every container is a new btrfs snapshot of the template (LXC: a
      snapshot and a config per container; lxpy: POST /1.0/containers),
      made before the timed part and removed after it, so both boot files
      no container has read yet (new inodes: a cold page cache).
  restart: the same containers as the round before, started again (a warm
      page cache, on both sides).

In each round:

  LXC: `lxc-start -d` of every container as parallel processes (each
      returns once its container is RUNNING), then `lxc-wait -s RUNNING`
      of every one, also in parallel.
  lxpy API: one thread per container sends POST .../start (answered once
      the container is RUNNING), then one list confirms every state.
  lxpy CLI: `lxpy start NAME` of every container as parallel processes,
      then one list.

Stops, snapshots and deletes are not timed; each round begins with another
tool, so none always follows the same one. The anchor is LXC's "all
returned" of the same kind of round; target: lxpy no slower than it.
Everything made is removed at the end.

A second table gives the machine's busy CPU time over the same window
(all cores, /proc/stat), per container started: with 50 starts on a few
cores the wall time is bound by it, so it says what each tool's start
costs. It includes the containers' own boot as far as it ran in the window
(the same busybox boot for every tool), and any other load on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
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
    summary,
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


def lxc_define(scratch: Scratch, lxc: Lxc, base: Path, names: list[str]) -> None:
    for name in names:
        lxc.define(name, snapshot(base, scratch.pool / name))


def lxc_remove(scratch: Scratch, lxc: Lxc, names: list[str]) -> None:
    for name in names:
        delete_tree(scratch.pool / name)
        shutil.rmtree(lxc.path / name, ignore_errors=True)


def lxc_round(lxc: Lxc, names: list[str]) -> tuple[tuple[float, float], float]:
    """((ms, busy CPU ms) until every lxc-start returned, ms until every
    lxc-wait confirmed); all stopped again after (not timed)."""
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


def lxpy_create(lxpy: Lxpy, names: list[str], pool: ThreadPoolExecutor) -> None:
    list(pool.map(lambda n: lxpy.create(n, TEMPLATE), names))


def lxpy_delete(lxpy: Lxpy, names: list[str], pool: ThreadPoolExecutor) -> None:
    list(pool.map(lambda n: lxpy.client.delete_container(n, force=True), names))


Timed = list[tuple[float, float]]  # (wall ms, busy CPU ms) of each counted round
Round = Callable[[Lxpy, list[str], ThreadPoolExecutor], tuple[float, float]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50, help="containers started at once")
    ap.add_argument("--runs", type=int, default=3, help="counted rounds per tool and kind")
    ap.add_argument("--no-lxpy", action="store_true", help="LXC only")
    ap.add_argument(
        "--no-read-ahead", action="store_true", help="also lxpy with read_ahead = false"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_parallel.py needs root (btrfs, namespaces, LXC)", file=sys.stderr)
        return 2
    install_compared("lxc-start")
    n = args.count
    kinds = ("fresh", "restart")
    with Scratch("lxpy-bench-parallel-") as scratch:
        base = scratch.pool / "busybox"
        build_template_tree(TEMPLATE, base)
        lxc = Lxc(scratch)
        have_lxpy = not args.no_lxpy and lxpy_can_run()
        # The daemons: lxpyd's defaults, and (asked for) without read-ahead.
        daemons: dict[str, Lxpy] = {}
        if have_lxpy:
            daemons["lxpy"] = Lxpy(scratch)
            if args.no_read_ahead:
                daemons["lxpy, read_ahead off"] = Lxpy(scratch, read_ahead=False)
            for d in daemons.values():
                d.build(TEMPLATE)
        lxc_started: dict[str, Timed] = {k: [] for k in kinds}
        lxc_confirmed: dict[str, list[float]] = {k: [] for k in kinds}
        # (daemon label, API or CLI, kind) -> its rounds
        lxpy_rounds: dict[tuple[str, str, str], Timed] = {}
        with ThreadPoolExecutor(max_workers=n) as pool:
            # Round 0 warms the daemons (and, for restart, makes the
            # containers restarted after); it is not counted.
            lxc_names = [f"l{i}" for i in range(n)]
            kept = {label: [f"k{i}" for i in range(n)] for label in daemons}
            for kind in kinds:
                if kind == "restart":
                    lxc_define(scratch, lxc, base, lxc_names)
                    for label, d in daemons.items():
                        lxpy_create(d, kept[label], pool)
                for r in range(args.runs + 1):

                    def lxc_step(r: int = r, kind: str = kind) -> None:
                        if kind == "fresh":
                            lxc_define(scratch, lxc, base, lxc_names)
                        s, c = lxc_round(lxc, lxc_names)
                        if kind == "fresh":
                            lxc_remove(scratch, lxc, lxc_names)
                        if r > 0:
                            lxc_started[kind].append(s)
                            lxc_confirmed[kind].append(c)

                    def lxpy_step(
                        label: str, way: str, fn: Round, r: int = r, kind: str = kind
                    ) -> None:
                        d, names = daemons[label], kept[label]
                        if kind == "fresh":
                            names = [f"{way[0].lower()}{r}-{i}" for i in range(n)]
                            lxpy_create(d, names, pool)
                        took = fn(d, names, pool)
                        if kind == "fresh":
                            lxpy_delete(d, names, pool)
                        if r > 0:
                            lxpy_rounds.setdefault((label, way, kind), []).append(took)

                    steps = [lxc_step] + [
                        partial(lxpy_step, label, way, fn)
                        for label in daemons
                        for way, fn in (("API", lxpy_round_api), ("CLI", lxpy_round_cli))
                    ]
                    # Each round begins with another tool: none always runs
                    # right after the previous one's containers went.
                    for step in steps[r % len(steps) :] + steps[: r % len(steps)]:
                        step()
                if kind == "restart":
                    lxc_remove(scratch, lxc, lxc_names)
                    for label, d in daemons.items():
                        lxpy_delete(d, kept[label], pool)

        lxcfs = "with lxcfs" if lxc.lxcfs else "no lxcfs"
        print(
            f"{n} busybox containers started at once, no network, {lxcfs},"
            f" {args.runs} rounds per tool and kind"
        )
        verdicts = []
        for kind in kinds:
            timed = [(f"LXC 5: {n} x lxc-start -d, all returned", lxc_started[kind])]
            for (label, way, k), xs in lxpy_rounds.items():
                if k == kind:
                    what = f"{n} threads POST .../start" if way == "API" else f"{n} x lxpy start"
                    timed.append((f"{label} {way}: {what}", xs))
            rows = [(label, [w for w, _ in xs]) for label, xs in timed]
            rows.insert(1, ("LXC 5: ... + lxc-wait -s RUNNING of each", lxc_confirmed[kind]))
            print_table(f"{kind}: wall time until all are RUNNING", rows)
            print_table(
                f"{kind}: machine CPU busy in that time, per container"
                f" (ms; {os.cpu_count()} cores)",
                [(label, [cpu / n for _, cpu in xs]) for label, xs in timed],
                digits=2,
            )
            lxc_med = statistics.median(w for w, _ in lxc_started[kind])
            for label, xs in timed[1:]:
                med = statistics.median(w for w, _ in xs)
                short = label.split(":")[0]
                verdicts.append(
                    (
                        f"{kind}, {short} median {med:.1f} ms <= LXC's {lxc_med:.1f} ms",
                        med <= lxc_med,
                    )
                )
                summary(
                    "parallel",
                    f"{n} busybox at once, {kind}: {short}",
                    med,
                    lxc_med,
                    "LXC 5 lxc-start -d",
                )
        print()
        if not lxpy_rounds:
            verdict("lxpy no slower than LXC (no `lxpy start` in this checkout)", None)
            return 0
        for text, ok in verdicts:
            verdict(text, ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
