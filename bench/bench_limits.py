"""The CPU a busy loop gets under limits.cpu, as the kernel enforces it.

Run as root:  .venv/bin/python bench/bench_limits.py [--seconds 3] [--runs 3]

Makes a container cgroup the way the monitor does (ContainerCgroup.create,
through the limits tests' Box), runs one Python busy loop in it, and
measures the CPU time it is given per second of wall time with no limit,
then under limits.cpu = 0.5 and 0.2 (changed live, as `lxpy config set`
does on a running container). On a busy host the unlimited figure is
lower than 1.0 and the limited ones can fall below their quota; they never
rise above it. The cgroup and the loop are removed at the end, also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lxpy.kernel.cgroups import ContainerCgroup  # noqa: E402
from lxpy.kernel.limits import apply_limits  # noqa: E402
from lxpy.kernel.stats import read_stats  # noqa: E402
from tests.integration.test_limits import BUSY, Box, line  # noqa: E402


def cpu_seconds(cg: ContainerCgroup) -> float:
    used = read_stats(cg)["cpu_seconds"]
    assert isinstance(used, float)
    return used


def share(cg: ContainerCgroup, seconds: float) -> float:
    """CPU seconds the cgroup used per second of wall time, over `seconds`."""
    c0, t0 = cpu_seconds(cg), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(cg) - c0) / (time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    ap.add_argument("--runs", type=int, default=3, help="measurements per setting")
    args = ap.parse_args()

    box = Box()
    box.cg.create()
    try:
        busy = box.run(BUSY)
        assert line(busy) == "up"
        print(f"{'limits.cpu':<14}{'CPU used per second':>22}{'runs':>6}")
        for limit in ("", "0.5", "0.2"):
            apply_limits(box.cg, {"limits.cpu": limit} if limit else {})
            time.sleep(0.3)  # a few periods under the new quota before measuring
            got = [share(box.cg, args.seconds) for _ in range(args.runs)]
            print(f"{limit or 'none':<14}{statistics.median(got):>22.2f}{len(got):>6}")
    finally:
        box.cg.kill(timeout=10)
        for p in box.procs:
            p.wait(timeout=10)
            for f in (p.stdin, p.stdout):
                if f:
                    f.close()
        box.cg.remove(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
