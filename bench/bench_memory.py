"""Host memory per running container: lxpy's own processes against LXC's
monitor, with 50 busybox containers running under each (one tool at a time).

Run as root:  .venv/bin/python bench/bench_memory.py [--count 50]

Both boot the same tree (lxpy's busybox template, built by lxpy's builder;
one btrfs snapshot per LXC container), with no network, with lxcfs where
it is installed (lxpy's default; LXC binds the same files from the same
lxcfs, whose one process is counted on neither side).

  LXC: the PSS of each `[lxc monitor]` process (LXC's only host process
      per running container).
  lxpy: the PSS of each monitor (the parent of the container's init), plus
      the PSS of the zygote and its spare monitor (one forked ahead for the
      next start) shared out over the containers, plus lxpyd's whole PSS
      (its base included: LXC has no daemon) shared out over the
      containers. Each part is shown.

PSS (proportional set size, /proc/PID/smaps_rollup) charges each shared
page to its sharers in equal parts, so it adds up to what the processes
really cost together.

Every figure is taken at the same moment after the last start on both
sides: 2 s after it, and (with lxpyd's `ksm` on) again once ksmd is done
with the monitors, where LXC is measured again the same number of seconds
after its last start. lxpy runs twice: with `ksm = false` and with lxpyd's
default `ksm = true` (ksmd after starts, until a full scan merges nothing
new, lxpy.daemon.ksm). LXC's monitors are not marked mergeable, so a
ksmd changes nothing for LXC; a Debian host does not run ksmd unless
asked. The anchor is LXC at the same moment; target: lxpy's per-container
total no more than LXC's median monitor PSS. Everything made is removed at
the end.
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
    delete_tree,
    install_compared,
    lxpy_can_run,
    ppid,
    print_table,
    pss_kb,
    snapshot,
    summary,
    verdict,
)

TEMPLATE = "busybox"
SETTLE = 2.0  # seconds for lazily touched pages and the daemon to settle
KSM = Path("/sys/kernel/mm/ksm")
KSM_LIMIT = 600.0  # seconds to wait for ksmd at most


def mb(kb: float) -> float:
    return kb / 1024


def ksmd_running() -> bool:
    return KSM.is_dir() and _running()


def lxc_side(scratch: Scratch, base: Path, count: int, later: float | None) -> list[list[float]]:
    """PSS (MB) of each LXC monitor with `count` containers running,
    SETTLE s after the last start and (when given) `later` s after it."""
    lxc = Lxc(scratch)
    names = [f"l{i}" for i in range(count)]
    for name in names:
        lxc.define(name, snapshot(base, scratch.pool / name))
    for name in names:
        lxc.start(name)
    started = time.monotonic()
    out = []
    for at in (SETTLE, later):
        if at is None:
            continue
        time.sleep(max(0.0, started + at - time.monotonic()))
        mons = lxc.monitors()
        if len(mons) != count or len(lxc.running()) != count:
            raise RuntimeError(
                f"LXC: {len(mons)} monitors, {len(lxc.running())} running of {count}"
            )
        out.append([mb(pss_kb(p)) for p in mons])
    lxc.cleanup()
    for name in names:
        delete_tree(scratch.pool / name)
    return out


@dataclass
class LxpyMemory:
    monitor: list[float]  # PSS of each monitor, MB
    zygote: float  # PSS of the zygote and its spare, MB
    daemon: float  # lxpyd's whole PSS, MB
    ksmd: bool  # whether ksmd ran when measured

    def per_container(self, n: int) -> float:
        return statistics.median(self.monitor) + (self.zygote + self.daemon) / n

    def parts(self, n: int) -> str:
        return (
            f"monitor {statistics.median(self.monitor):.3f} MB"
            f" + zygote {self.zygote:.2f} MB / {n} + lxpyd {self.daemon:.2f} MB / {n}"
            f" = {self.per_container(n):.3f} MB"
        )


def _ksm(name: str) -> int:
    return int((KSM / name).read_text())


def _running() -> bool:
    return (KSM / "run").read_text().strip() == "1"


def wait_ksmd(since: float) -> float | None:
    """Wait until ksmd is done with the monitors: lxpyd ended its burst, or
    (a ksmd lxpyd did not start) two full scans merged no further page.
    Returns the seconds since `since` (the last start), or None when
    ksmd does not run at all."""
    if not ksmd_running():
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


def lxpy_side(scratch: Scratch, count: int, ksm: bool) -> tuple[list[LxpyMemory], float | None]:
    """lxpy's memory SETTLE s after the last start and (with ksm, when
    ksmd runs) once ksmd settled, and how many seconds after the last
    start that was."""
    lxpy = Lxpy(scratch, ksm=ksm)
    lxpy.build(TEMPLATE)
    names = [f"x{i}" for i in range(count)]
    for name in names:
        lxpy.create(name, TEMPLATE)
    dpid = lxpy.daemon.proc.pid
    for name in names:
        lxpy.start_api(name)
    started = time.monotonic()
    time.sleep(max(0.0, started + SETTLE - time.monotonic()))
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
            daemon=mb(pss_kb(dpid)),
            ksmd=ksmd_running(),
        )

    out = [measure()]
    waited = wait_ksmd(started) if ksm else None
    if waited is not None:
        out.append(measure())
    lxpy.cleanup()
    return out, waited


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
        have_lxpy = not args.no_lxpy and lxpy_can_run()
        # lxpy first: its ksm run says when LXC is measured the second time.
        off = lxpy_side(scratch, n, ksm=False)[0] if have_lxpy else []
        on, waited = lxpy_side(scratch, n, ksm=True) if have_lxpy else ([], None)
        lxc = lxc_side(scratch, base, n, waited)
        lxcfs = "with lxcfs" if scratch.lxcfs() else "no lxcfs"

    print(f"busybox, no network, {lxcfs}, {n} containers running under each tool (one at a time)")
    late = f"{waited:.0f} s after (ksmd settled)" if waited is not None else ""
    rows = [(f"LXC 5: [lxc monitor] PSS, each, {SETTLE:g} s after", lxc[0])]
    if late:
        rows.append((f"LXC 5: ... {late}", lxc[1]))
    if off:
        rows.append((f"lxpy ksm off: monitor PSS, {SETTLE:g} s after", off[0].monitor))
    if on:
        rows.append((f"lxpy ksm on: monitor PSS, {SETTLE:g} s after", on[0].monitor))
    if late:
        rows.append((f"lxpy ksm on: ... {late}", on[1].monitor))
    print_table("host memory per container (PSS)", rows, unit="MB", digits=3)
    if not have_lxpy:
        verdict("lxpy per container <= LXC monitor PSS (no `lxpy start` here)", None)
        return 0
    print()
    print("lxpy per container (lxpyd's whole PSS shared out, its base included):")
    cases = [
        (f"ksm off, {SETTLE:g} s after", off[0], lxc[0]),
        (f"ksm on, {SETTLE:g} s after", on[0], lxc[0]),
    ]
    if late:
        cases.append((f"ksm on, {late}", on[1], lxc[1]))
    for label, m, _ in cases:
        ran = "ksmd running" if m.ksmd else "ksmd not running"
        print(f"  {label}: {m.parts(n)}  ({ran})")
    if waited is None:
        print("(ksmd did not run: the kernel lacks KSM)")
    print()
    for label, m, anchor in cases:
        total, lxc_med = m.per_container(n), statistics.median(anchor)
        verdict(
            f"lxpy {label}: {total:.3f} MB per container <= LXC's monitor {lxc_med:.3f} MB",
            total <= lxc_med,
        )
        summary(
            "memory", f"PSS per container, {n} running, lxpy {label}", total, lxc_med,
            "LXC 5 [lxc monitor]", unit="MB",
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
