"""Host memory per running container: lxpy's own processes against LXC's
monitor, with 50 busybox containers running under each (one tool at a time).

Run as root:  .venv/bin/python bench/bench_memory.py [--count 50]

Both boot the same tree (lxpy's busybox template, built by lxpy's builder;
one btrfs snapshot per LXC container), with no network.

  LXC: the PSS of each `[lxc monitor]` process (LXC's only host process
      per running container).
  lxpy: the PSS of each monitor (the parent of the container's init), plus
      the PSS of the zygote and its spare monitor (one forked ahead for the
      next start) shared out over the containers, plus lxpyd's PSS
      growth from "all created, none running" to "all running", per
      container.

PSS (proportional set size, /proc/PID/smaps_rollup) charges each shared
page to its sharers in equal parts, so it adds up to what the processes
really cost together. Target: lxpy's per-container total no more than
LXC's median monitor PSS. Everything made is removed at the end.

lxpy is measured twice: 2 s after the last start, and once ksmd is done
with the monitors: lxpyd runs it after starts until a full scan merges
nothing new (lxpy.daemon.merging), at the kernel's own scan rate. The target is
judged on the settled figure, what 50 running containers cost for as
long as they run. LXC's monitors are not marked mergeable, so ksmd does
not change LXC's figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Lxc,
    Lxpy,
    Scratch,
    build_template_tree,
    install_compared,
    lxpy_can_run,
    ppid,
    print_table,
    pss_kb,
    rss_kb,
    snapshot,
    verdict,
)

TEMPLATE = "busybox"
SETTLE = 2.0  # seconds for lazily touched pages and the daemon to settle
KSM = Path("/sys/kernel/mm/ksm")
KSM_LIMIT = 600.0  # seconds to wait for ksmd at most


def mb(kb: float) -> float:
    return kb / 1024


def lxc_side(scratch: Scratch, base: Path, count: int) -> list[float]:
    """PSS (MB) of each LXC monitor with `count` containers running."""
    lxc = Lxc(scratch)
    names = [f"l{i}" for i in range(count)]
    for name in names:
        lxc.define(name, snapshot(base, scratch.pool / name))
    for name in names:
        lxc.start(name)
    time.sleep(SETTLE)
    mons = lxc.monitors()
    if len(mons) != count or len(lxc.running()) != count:
        raise RuntimeError(f"LXC: {len(mons)} monitors, {len(lxc.running())} running of {count}")
    pss = [mb(pss_kb(p)) for p in mons]
    lxc.cleanup()
    return pss


@dataclass
class LxpyMemory:
    monitor: list[float]  # PSS of each monitor, MB
    zygote: float  # PSS of the zygote, MB
    daemon_growth: float  # lxpyd's PSS growth from none to all running, MB
    daemon_rss: tuple[float, float]  # lxpyd's RSS before and after, MB

    def per_container(self, n: int) -> float:
        # A daemon that shrank (a collection ran) is not a saving per container.
        return statistics.median(self.monitor) + (self.zygote + max(0.0, self.daemon_growth)) / n


def _ksm(name: str) -> int:
    return int((KSM / name).read_text())


def _running() -> bool:
    return (KSM / "run").read_text().strip() == "1"


def wait_ksmd(since: float) -> float | None:
    """Wait until ksmd is done with the monitors: lxpyd ended its burst, or
    (a ksmd lxpyd did not start) two full scans merged no further page.
    Returns the seconds since `since` (the last start), or None when
    ksmd does not run at all."""
    if not KSM.is_dir() or not _running():
        return None
    scans, sharing = _ksm("full_scans"), _ksm("pages_sharing")
    still = 0
    while time.monotonic() - since < KSM_LIMIT and _running():
        time.sleep(0.5)
        if _ksm("full_scans") == scans:
            continue
        scans, now = _ksm("full_scans"), _ksm("pages_sharing")
        still = still + 1 if now <= sharing else 0
        sharing = max(sharing, now)
        if still >= 2:
            break
    return time.monotonic() - since


def lxpy_side(scratch: Scratch, count: int) -> tuple[LxpyMemory, LxpyMemory, float | None]:
    """lxpy's memory 2 s after the starts and once ksmd settled, and how
    long ksmd took (None when it does not run)."""
    lxpy = Lxpy(scratch)
    lxpy.build(TEMPLATE)
    names = [f"x{i}" for i in range(count)]
    for name in names:
        lxpy.create(name, TEMPLATE)
    dpid = lxpy.daemon.proc.pid
    time.sleep(SETTLE)
    daemon_before = pss_kb(dpid)
    rss_before = rss_kb(dpid)
    for name in names:
        lxpy.start_api(name)
    started = time.monotonic()
    time.sleep(SETTLE)
    monitors = [ppid(lxpy.init_pid(name)) for name in names]
    if len(set(monitors)) != count:
        raise RuntimeError(f"lxpy: {len(set(monitors))} distinct monitors for {count} containers")
    zygote = lxpy.zygote()
    if zygote is None:
        raise RuntimeError("lxpy: no zygote found in the daemon's run dir")

    def measure() -> LxpyMemory:
        return LxpyMemory(
            monitor=[mb(pss_kb(p)) for p in monitors],
            # With its spare, the monitor it keeps forked ahead.
            zygote=mb(pss_kb(zygote) + sum(pss_kb(p) for p in lxpy.spares())),
            daemon_growth=mb(pss_kb(dpid) - daemon_before),
            daemon_rss=(mb(rss_before), mb(rss_kb(dpid))),
        )

    early = measure()
    waited = wait_ksmd(started)
    settled = measure()
    lxpy.cleanup()
    return early, settled, waited


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50, help="containers running at once")
    ap.add_argument("--no-lxpy", action="store_true", help="LXC only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_memory.py needs root (btrfs, namespaces, LXC)", file=sys.stderr)
        return 2
    install_compared("lxc-start")
    n = args.count
    with Scratch("lxpy-bench-memory-") as scratch:
        base = scratch.pool / "busybox"
        build_template_tree(TEMPLATE, base)
        lxc = lxc_side(scratch, base, n)
        res = None if args.no_lxpy or not lxpy_can_run() else lxpy_side(scratch, n)

        print(f"busybox, no network, {n} containers running under each tool (one tool at a time)")
        rows = [("LXC 5: [lxc monitor] PSS, each", lxc)]
        if res is not None:
            early, lx, waited = res
            rows.append((f"lxpy: monitor PSS, each, {SETTLE:g} s after", early.monitor))
            if waited is not None:
                rows.append((f"lxpy: ... once ksmd settled ({waited:.0f} s)", lx.monitor))
        print_table("host memory per container (PSS)", rows, unit="MB", digits=3)
        lxc_med = statistics.median(lxc)
        if res is None:
            verdict("lxpy per container <= LXC monitor PSS (no `lxpy start` here)", None)
            return 0
        print()
        for label, m in (("2 s after", early), ("ksmd settled", lx)):
            rb, ra = m.daemon_rss
            print(
                f"lxpy per container, {label}: monitor {statistics.median(m.monitor):.3f} MB"
                f" + zygote {m.zygote:.2f} MB / {n}"
                f" + lxpyd PSS growth {m.daemon_growth:+.2f} MB / {n}"
                f" = {m.per_container(n):.3f} MB  (lxpyd RSS {rb:.1f} -> {ra:.1f} MB)"
            )
        if waited is None:
            print("(ksmd does not run here: lxpyd's `ksm` setting is off or the kernel lacks KSM)")
        total = lx.per_container(n)
        print(f"LXC per container:  [lxc monitor] {lxc_med:.3f} MB")
        print()
        verdict(
            f"lxpy per container {total:.3f} MB <= LXC's monitor {lxc_med:.3f} MB", total <= lxc_med
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
