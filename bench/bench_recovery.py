"""lxpyd's recovery after a crash, with 50 containers defined and 20 running,
beside what LXC's tools need to know the same state.

Run as root: .venv/bin/python bench/bench_recovery.py [--defined 50]
    [--running 20] [--rounds 10] [--kills 20]

Rows:
  * lxpyd SIGKILLed while idle, started again: wall time from exec to its
    first answer (the API answers only once every container is adopted and
    every intent settled), then `lxpy list` showing the running ones with
    their init pids unchanged.
  * lxpyd SIGKILLed from outside at a random moment of a create loop, then
    started again: the same time, and what the next lxpyd found (intents
    settled, hidden volumes), checked: every volume has its record and the
    cut name can be created and destroyed.
  * LXC 5 over the same count (busybox rootfs, no network): `lxc-ls -f` and
    `lxc-info` for each container.

Not like with like, and said so in the output: LXC has no daemon, so there
is nothing to restart and nothing to settle after a crash: every `lxc-*`
command reads the state from the containers' monitors each time. The LXC
rows are what it costs LXC's tools to know what runs; the lxpy rows are a
whole daemon start (Python start-up, pool, records, adoption, settling),
after which lxpy knows it too. systemd-nspawn is left out: without systemd
as PID 1 here there is no machined to restart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402
from common import BIN, Lxc, Lxpy, Scratch, print_table  # noqa: E402

from lxpy.api.client import Client  # noqa: E402
from lxpy.errors import LxpyError  # noqa: E402
from tests.conftest import Daemon  # noqa: E402

NOTE = (
    "not like with like: LXC has no daemon to restart or settle; its rows are what its\n"
    "tools take to read the same state from the containers' monitors"
)


def restart(lx: Lxpy) -> tuple[float, Daemon]:
    """Start lxpyd again on `lx`'s root; ms from exec to its first answer."""
    d = lx.daemon
    conf = d.root.parent / f"{d.root.name}-lxpyd.toml"
    logf = d.log.open("ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(BIN / "lxpyd"),
            "--root",
            str(d.root),
            "--socket",
            str(d.socket),
            "--config",
            str(conf),
        ],
        stdout=logf,
        stderr=logf,
        start_new_session=True,
    )
    logf.close()
    client = Client(str(d.socket), timeout=5)
    deadline = t0 + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"lxpyd exited {proc.returncode}: see {d.log}")
        try:
            client.request("GET", "/1.0")
            break
        except (LxpyError, OSError):
            if time.perf_counter() > deadline:
                raise RuntimeError("lxpyd did not answer within 120 s") from None
            time.sleep(0.002)
    ms = common.ms_since(t0)
    lx.daemon = Daemon(d.root, d.socket, proc, d.log)
    lx.client = Client(str(d.socket), timeout=600)
    return ms, lx.daemon


def crash(lx: Lxpy) -> int:
    """SIGKILL lxpyd; returns how many processes it had forked and left
    holding its root (they are killed: see the note printed at the end)."""
    lx.daemon.proc.kill()
    lx.daemon.proc.wait()
    root = str(lx.daemon.root)
    left = [
        p
        for p in common.all_pids()
        if "lxpyd" in common.cmdline(p) and f"--root {root} " in common.cmdline(p) + " "
    ]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return len(left)


def running_pids(lx: Lxpy) -> dict[str, int]:
    cts = json.loads(lx.cli("list", "--format", "json").stdout)
    return {c["name"]: c["init_pid"] for c in cts if c["state"] == "RUNNING"}


def idle_rounds(lx: Lxpy, rounds: int, want: dict[str, int]) -> tuple[list[float], list[float]]:
    up, listed = [], []
    for _ in range(rounds):
        crash(lx)
        ms, _ = restart(lx)
        up.append(ms)
        t0 = time.perf_counter()
        got = running_pids(lx)
        listed.append(common.ms_since(t0))
        if got != want:
            raise RuntimeError(f"adoption changed the running set: {got} != {want}")
    return up, listed


def create_loop_kills(lx: Lxpy, kills: int) -> tuple[list[float], int, int, int]:
    """Kill lxpyd at random moments of a create loop; returns the restart
    times, how many intents the next lxpyd settled, how many cut creates
    it undid, and how many kills left a forked helper behind."""
    pool = lx.paths.pool.containers
    records = lx.paths.records
    up: list[float] = []
    settled = undone = helpers = 0
    rng = random.Random(20)
    for k in range(kills):
        env = lx.env
        script = (
            "from lxpy.api.client import Client\n"
            f"c = Client({str(lx.daemon.socket)!r})\n"
            "for i in range(1000):\n"
            f"    c.create_container(f'k{k}x{{i}}', 'busybox', {{'network': []}})\n"
        )
        loop = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.6))
        log_at = lx.daemon.log.stat().st_size
        helpers += crash(lx) > 0
        try:
            loop.wait(timeout=30)
        except subprocess.TimeoutExpired:
            loop.kill()
            loop.wait()
        ms, _ = restart(lx)
        up.append(ms)
        text = lx.daemon.log.read_text(errors="replace")[log_at:]
        settled += text.count("recovery: create")
        undone += text.count(": undone")
        vols = {p.name for p in pool.iterdir() if not p.name.startswith(".")}
        recs = {p.stem for p in records.glob("*.toml")}
        if vols != recs:
            raise RuntimeError(f"orphans after kill {k}: {sorted(vols ^ recs)}")
        cut = f"k{k}x{len([v for v in vols if v.startswith(f'k{k}x')])}"
        lx.cli("create", cut, "-t", "busybox", "--set", "network=")
        for name in sorted(v for v in vols | {cut} if v.startswith(f"k{k}x")):
            lx.client.delete_container(name, force=True)
    return up, settled, undone, helpers


def lxc_rows(
    scratch: Scratch, rootfs: Path, defined: int, running: int, runs: int
) -> dict[str, list[float]]:
    lxc = Lxc(scratch)
    for i in range(defined):
        lxc.define(f"c{i}", common.snapshot(rootfs, scratch.pool / f"lxc-c{i}"))
    for i in range(running):
        lxc.start(f"c{i}")
    ls, info = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = common.run(["lxc-ls", "-f", "-P", str(lxc.path)]).stdout
        ls.append(common.ms_since(t0))
        t0 = time.perf_counter()
        for i in range(defined):
            common.run(lxc.argv("lxc-info", f"c{i}"))
        info.append(common.ms_since(t0))
    if out.count("RUNNING") != running:
        raise RuntimeError(f"LXC runs {out.count('RUNNING')}, not {running}")
    return {"ls": ls, "info": info}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defined", type=int, default=50)
    ap.add_argument("--running", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_recovery: run as root", file=sys.stderr)
        return 2
    common.install_compared("lxc-start")
    with Scratch("lxpy-bench-recovery-") as scratch:
        lx = Lxpy(scratch)
        lx.build("busybox")
        for i in range(args.defined):
            lx.create(f"c{i}", "busybox")
        lx.cli("start", *(f"c{i}" for i in range(args.running)), timeout=300)
        want = running_pids(lx)
        up, listed = idle_rounds(lx, args.rounds, want)
        cut_up, settled, undone, helpers = create_loop_kills(lx, args.kills)
        rootfs = scratch.pool / "lxc-template"
        common.build_template_tree("busybox", rootfs)
        lxc = lxc_rows(scratch, rootfs, args.defined, args.running, args.rounds)
        print(f"\n{args.defined} containers defined, {args.running} running (busybox, no network)")
        print_table(
            "after a crash",
            [
                ("lxpyd killed idle: exec to first answer", up),
                ("lxpy list after it (same init pids)", listed),
                ("lxpyd killed in a create loop: to answer", cut_up),
                ("lxc-ls -f (LXC 5)", lxc["ls"]),
                (f"lxc-info x {args.defined} (LXC 5)", lxc["info"]),
            ],
        )
        print(
            f"\ncreate loop: {args.kills} kills at random moments; the next lxpyd settled "
            f"{settled} cut creates ({undone} undone); no orphan volume, every cut name reused;\n"
            f"{helpers} kills left a helper lxpyd had forked (in pause(), holding its lock and\n"
            "sockets: the next lxpyd would refuse to start), killed here before the restart"
        )
        print(NOTE)
        med = statistics.median
        lxc_ls = "LXC 5 lxc-ls -f"
        common.summary("recovery", "lxpyd killed idle: exec to first answer", med(up), None, "")
        common.summary(
            "recovery", "lxpyd killed in a create loop: to answer", med(cut_up), None, ""
        )
        common.summary("recovery", "lxpy list after it", med(listed), med(lxc["ls"]), lxc_ls)
        common.verdict(
            "lxpyd answers within 2 s of a restart after a crash", max(up + cut_up) < 2000
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
