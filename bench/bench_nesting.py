"""Starting a busybox container with lxpy inside lxpy (a nesting Debian
container, security.nesting=true) beside the same start on the host.

Run as root:  .venv/bin/python bench/bench_nesting.py [--runs 10]

A scratch lxpyd on the host builds busybox and the tests' Debian template
with lxpy's dependencies (tests/integration/nesting, from the suite's
build cache), creates a busybox container `bb`, and boots a nesting
Debian container `nest` holding a copy of this checkout and its
virtualenv, in which a second lxpyd (directory pool: no loop device
inside) builds busybox and creates its own `bb`. On each side the same
small timer, run where that side's lxpy runs, does the same work:

  start: `lxpy start bb` from the command until it returns (init runs),
      then `lxpy stop bb --force`, not counted. One warm-up start per
      side is not counted either.

Differences that stay: the host's pool is btrfs (idmapped rootfs), the
nested one a directory tree whose ownership was shifted at create; the
nested lxpyd's containers run under the Debian container's systemd
(scopes). The machine is shared: figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LXPY, REPO, Lxpy, Scratch, print_table, run  # noqa: E402

NESTING_TEMPLATES = REPO / "tests/integration/nesting"
VENV = Path(sys.executable).parent.parent

# The same timer on both sides: argv of `lxpy --socket S` as JSON, and
# the number of counted runs; prints one figure (ms) per run.
TIMER = """
import json, subprocess, sys, time
lxpy, runs = json.loads(sys.argv[1]), int(sys.argv[2])
for i in range(runs + 1):
    t0 = time.perf_counter()
    subprocess.run([*lxpy, "start", "bb"], check=True, capture_output=True)
    ms = (time.perf_counter() - t0) * 1000
    subprocess.run([*lxpy, "stop", "bb", "--force"], check=True, capture_output=True)
    if i:
        print(f"{ms:.2f}")
"""

INNER_SOCKET = "/run/lxpy-bench.sock"


def nested(lx: Lxpy, scratch: Scratch) -> list[str]:
    """Boot `nest`, start an lxpyd inside with a busybox `bb`; the argv
    of its CLI inside."""
    lx.cli("create", "nest", "-t", "debian-nesting", "--set", "security.nesting=true")
    lx.cli("config", "set", "nest", "security.idmap.size", "131072")
    lx.cli("start", "nest")

    def sh(script: str, stdin: Path | None = None, timeout: float = 300) -> str:
        with open(stdin or "/dev/null", "rb") as f:
            res = subprocess.run(
                [LXPY, "exec", "nest", "--", "sh", "-c", script],
                stdin=f,
                capture_output=True,
                env=lx.env,
                timeout=timeout,
            )
        if res.returncode != 0:
            raise RuntimeError(f"in nest: {script}: {res.stdout!r} {res.stderr!r}")
        return res.stdout.decode()

    sh("until systemctl is-system-running --wait; do sleep 0.2; done", timeout=120)
    tar = scratch.dir / "lxpy.tar"
    run(
        ["tar", "-C", "/", "-cf", str(tar), "--exclude=__pycache__"]
        + [str(p.relative_to("/")) for p in (REPO / "lxpy", REPO / "templates", VENV)],
        timeout=300,
    )
    sh("tar -C / -xf -", stdin=tar)
    conf = scratch.dir / "inner.toml"
    conf.write_text('storage = "dir"\nlxcfs = "off"\ndefault_network = ""\n')
    sh("mkdir -p /etc/lxpy-bench && cat > /etc/lxpy-bench/lxpyd.toml", stdin=conf)
    lxpy = [f"{VENV}/bin/lxpy", "--socket", INNER_SOCKET]
    inner = " ".join(lxpy)
    sh(
        "echo root:65536:65536 > /etc/subuid; echo root:65536:65536 > /etc/subgid; "
        f"systemd-run --unit lxpy-bench --quiet {VENV}/bin/lxpyd --root /var/lib/lxpy-bench "
        f"--socket {INNER_SOCKET} --config /etc/lxpy-bench/lxpyd.toml; "
        f"for i in $(seq 300); do test -S {INNER_SOCKET} && break; sleep 0.1; done; "
        f"{inner} template build busybox >/dev/null; "
        f"{inner} create bb -t busybox --set security.idmap.isolated=false >/dev/null",
    )
    return lxpy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="counted starts per side")
    args = ap.parse_args()

    with Scratch("lxpy-bench-nesting-") as scratch:
        lx = Lxpy(scratch, settings=f'template_dirs = ["{NESTING_TEMPLATES}"]\n')
        lx.build("busybox")
        lx.build("debian-nesting")
        lx.cli("create", "bb", "-t", "busybox")
        host_lxpy = [LXPY, "--socket", str(lx.daemon.socket)]
        inner_lxpy = nested(lx, scratch)

        host = run(
            [sys.executable, "-c", TIMER, json.dumps(host_lxpy), str(args.runs)], timeout=600
        ).stdout.split()
        res = subprocess.run(
            [LXPY, "exec", "nest", "--", f"{VENV}/bin/python3", "-c", TIMER]
            + [json.dumps(inner_lxpy), str(args.runs)],
            capture_output=True,
            text=True,
            env=lx.env,
            timeout=600,
        )
        if res.returncode != 0:
            raise RuntimeError(f"nested timer: {res.stderr}")
        inside = res.stdout.split()

        print("figures are indicative: the machine is shared with other work")
        print_table(
            "start of a busybox container (lxpy start, until init runs)",
            [
                ("lxpy on the host (btrfs pool)", [float(x) for x in host]),
                ("lxpy in a nesting lxpy container (dir pool)", [float(x) for x in inside]),
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
