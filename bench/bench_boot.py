"""Booting and stopping a Debian systemd container: lxpy side by side with
LXC 5 and systemd-nspawn, on the same rootfs, with no network.

Run as root:  .venv/bin/python bench/bench_boot.py [--runs 10]
                  [--template debian-bookworm] [--template debian-trixie]

For each template (default: debian-bookworm; `--template` again adds
Debian 13, debian-trixie), builds lxpy's template tree once (from the
suite's build cache, /var/cache/lxpy-tests, the tarball lxpyd restores
the template from) into a scratch btrfs pool; each LXC and nspawn run boots a fresh
snapshot of it, each lxpy run a fresh container of a scratch lxpyd. Rounds
alternate the tools; one warm-up round is not counted.

  start to running: from the start command until systemd inside answers
      `systemctl is-system-running --wait` with `running`, asked the same
      way for every tool (nsenter into init's namespaces).
  overhead: start to running minus systemd's own userspace boot time
      (`systemd-analyze`): what the manager adds around systemd.
  stop: a clean shutdown (init gets SIGRTMIN+3) until the container is gone:
      `lxc-stop`, SIGTERM to systemd-nspawn (which forwards SIGRTMIN+3 to
      init and waits for it), `lxpy stop`.

lxpy runs with lxpyd's defaults (lxcfs on where it is installed, and
LXC then binds the same files from the same lxcfs; the init read-ahead
on), and once more through the API with `read_ahead = false`, a daemon of
its own: the read-ahead's share of the figure.

The lxpy rows appear once this checkout has `lxpy start`. Everything made
is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    WAIT_METHOD,
    Lxc,
    Lxpy,
    Nspawn,
    Scratch,
    build_template_tree,
    delete_tree,
    install_compared,
    lxpy_can_run,
    ms_since,
    print_table,
    snapshot,
    summary,
    userspace_ms,
    verdict,
    wait_running,
)

TEMPLATES = {"debian-bookworm": "Debian 12 bookworm", "debian-trixie": "Debian 13 trixie"}
LXC = "LXC 5 (lxc-start -d, lxc-stop)"
NSPAWN = "systemd-nspawn (--boot, SIGTERM)"
LXPY_CLI = "lxpy CLI (lxpy start, lxpy stop)"
LXPY_API = "lxpy API (POST start, POST stop)"
LXPY_NO_AHEAD = "lxpy API, read_ahead = false"
# LXC runs these containers privileged (its default as root); lxpy's
# default is unprivileged (a user namespace and an idmapped rootfs to set
# up on each start). This row is the like-for-like comparison.
LXPY_PRIV = "lxpy API, privileged (as LXC here)"


@dataclass
class Results:
    boot: list[float] = field(default_factory=list)
    userspace: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)
    stop: list[float] = field(default_factory=list)
    not_running: list[str] = field(default_factory=list)


class Tool(Protocol):
    def prepare(self, name: str) -> None: ...
    def start(self, name: str) -> int: ...  # returns init's host pid
    def stop(self, name: str) -> None: ...  # returns once the container is gone
    def discard(self, name: str) -> None: ...


def measure(tool: Tool, name: str, into: Results | None) -> None:
    """Boot `name` to running, ask systemd how long its part took, time the
    probe alone on the running system, stop it; record into `into`."""
    tool.prepare(name)
    try:
        t0 = time.perf_counter()
        pid = tool.start(name)
        state = wait_running(pid)
        boot = ms_since(t0)
        user = userspace_ms(pid)
        # The probe's own cost (nsenter + systemctl + answer), part of every
        # "start to running" figure: how far the overhead is from zero.
        t0 = time.perf_counter()
        wait_running(pid)
        probe = ms_since(t0)
        t0 = time.perf_counter()
        tool.stop(name)
        stop = ms_since(t0)
    finally:
        tool.discard(name)
    if into is None:
        return
    into.boot.append(boot)
    into.stop.append(stop)
    into.probe.append(probe)
    if state != "running":
        into.not_running.append(state)
    if user is not None:
        into.userspace.append(user)
        into.overhead.append(boot - user)


class LxcTool:
    def __init__(self, lxc: Lxc, scratch: Scratch, base: Path) -> None:
        self.lxc, self.pool, self.base = lxc, scratch.pool, base

    def prepare(self, name: str) -> None:
        self.lxc.define(name, snapshot(self.base, self.pool / name))

    def start(self, name: str) -> int:
        self.lxc.start(name)
        return self.lxc.init_pid(name)

    def stop(self, name: str) -> None:
        self.lxc.stop(name)

    def discard(self, name: str) -> None:
        if name in self.lxc.running():
            self.lxc.stop(name, kill=True)
        delete_tree(self.pool / name)


class NspawnTool:
    def __init__(self, ns: Nspawn, scratch: Scratch, base: Path) -> None:
        self.ns, self.pool, self.base = ns, scratch.pool, base

    def prepare(self, name: str) -> None:
        snapshot(self.base, self.pool / name)

    def start(self, name: str) -> int:
        self.ns.start(name, self.pool / name)
        return self.ns.leader(name)

    def stop(self, name: str) -> None:
        self.ns.poweroff(name)

    def discard(self, name: str) -> None:
        self.ns.cleanup()
        delete_tree(self.pool / name)


class LxpyTool:
    def __init__(self, lxpy: Lxpy, template: str, cli: bool, privileged: bool = False) -> None:
        self.lxpy, self.template, self.via_cli = lxpy, template, cli
        self.privileged = privileged

    def prepare(self, name: str) -> None:
        self.lxpy.create(name, self.template, privileged=self.privileged)

    def start(self, name: str) -> int:
        # Init's pid as each way gives it: the CLI prints it, the API
        # answers with the container (another request would compete with
        # the boot for the CPU, as a second lxc-info would).
        if self.via_cli:
            out = self.lxpy.cli("start", name).stdout
            return int(out.rsplit("init pid ", 1)[1].split(")")[0])
        return int(self.lxpy.start_api(name)["init_pid"])

    def stop(self, name: str) -> None:
        if self.via_cli:
            self.lxpy.cli("stop", name)
        else:
            self.lxpy.stop_api(name)
        state = self.lxpy.client.container(name)["state"]
        if state != "STOPPED":
            raise RuntimeError(f"lxpy stop {name} returned with the container {state}")

    def discard(self, name: str) -> None:
        self.lxpy.client.delete_container(name, force=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="counted runs per tool")
    ap.add_argument("--no-lxpy", action="store_true", help="LXC and nspawn only")
    ap.add_argument(
        "--template",
        action="append",
        choices=sorted(TEMPLATES),
        help="the Debian template to boot (again for another; default debian-bookworm)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_boot.py needs root (btrfs, namespaces, LXC)", file=sys.stderr)
        return 2
    install_compared("lxc-start", "systemd-nspawn")

    with Scratch("lxpy-bench-boot-") as scratch:
        # One of each for all templates: each owns a scratch directory.
        lxc, ns = Lxc(scratch), Nspawn(scratch)
        have_lxpy = not args.no_lxpy and lxpy_can_run()
        lxpy = Lxpy(scratch) if have_lxpy else None
        plain = Lxpy(scratch, read_ahead=False) if have_lxpy else None
        for t, template in enumerate(dict.fromkeys(args.template or ["debian-bookworm"])):
            if t:
                print()
            tools: dict[str, Tool] = {
                LXC: LxcTool(lxc, scratch, scratch.pool / template),
                NSPAWN: NspawnTool(ns, scratch, scratch.pool / template),
            }
            bench_template(scratch, tools, lxpy, plain, template, args.runs, f"t{t}")
    return 0


def bench_template(
    scratch: Scratch,
    tools: dict[str, Tool],
    lxpy: Lxpy | None,
    plain: Lxpy | None,
    template: str,
    runs: int,
    prefix: str,
) -> None:
    """Boot `template` `runs` times with `tools` (LXC and nspawn, which
    boot snapshots of its tree) and lxpy (`plain`: a daemon with the
    read-ahead off), alternating; print the tables, verdicts and run-all
    rows."""
    build_template_tree(template, scratch.pool / template)
    if lxpy is not None:
        lxpy.build(template)
        tools[LXPY_CLI] = LxpyTool(lxpy, template, cli=True)
        tools[LXPY_API] = LxpyTool(lxpy, template, cli=False)
        tools[LXPY_PRIV] = LxpyTool(lxpy, template, cli=False, privileged=True)
    if plain is not None:
        plain.build(template)
        tools[LXPY_NO_AHEAD] = LxpyTool(plain, template, cli=False)
    results = {label: Results() for label in tools}
    for r in range(runs + 1):
        for i, (label, tool) in enumerate(tools.items()):
            # Round 0 warms the page cache and the daemon: not counted.
            measure(tool, f"{prefix}b{i}r{r}", results[label] if r > 0 else None)

    print(f"{TEMPLATES[template]} (lxpy template tree), no network, {runs} runs per tool")
    print(f"wait method: {WAIT_METHOD}")
    print_table("start to running", [(k, v.boot) for k, v in results.items()])
    print_table(
        "systemd's own userspace boot (systemd-analyze)",
        [(k, v.userspace) for k, v in results.items()],
    )
    print_table(
        "overhead = start to running - userspace", [(k, v.overhead) for k, v in results.items()]
    )
    print_table(
        "the probe alone, on the running container (included above)",
        [(k, v.probe) for k, v in results.items()],
    )
    print_table("stop (clean halt until gone)", [(k, v.stop) for k, v in results.items()])
    for k, v in results.items():
        if v.not_running:
            print(f"note: {k}: {len(v.not_running)} run(s) ended {sorted(set(v.not_running))}")

    med = {k: (statistics.median(v.boot), statistics.median(v.stop)) for k, v in results.items()}
    lxc_boot = med[LXC][0]
    ns_stop = med[NSPAWN][1]
    print()
    if lxpy is None:
        verdict("lxpy start no slower than LXC (no `lxpy start` in this checkout)", None)
        return
    for k in (LXPY_CLI, LXPY_API, LXPY_PRIV, LXPY_NO_AHEAD):
        if k not in med:
            continue
        summary("boot", f"{TEMPLATES[template]} start to running: {k}", med[k][0], lxc_boot, LXC)
        summary("boot", f"{TEMPLATES[template]} clean stop: {k}", med[k][1], ns_stop, NSPAWN)
        over = statistics.median(results[k].overhead) if results[k].overhead else None
        verdict(
            f"{k}: start median {med[k][0]:.1f} ms <= LXC's {lxc_boot:.1f} ms",
            med[k][0] <= lxc_boot,
        )
        verdict(
            f"{k}: overhead above systemd's userspace < 20 ms "
            f"({'-' if over is None else f'{over:.1f}'} ms)",
            None if over is None else over < 20,
        )
        verdict(
            f"{k}: stop median {med[k][1]:.1f} ms <= nspawn's {ns_stop:.1f} ms",
            med[k][1] <= ns_stop,
        )


if __name__ == "__main__":
    sys.exit(main())
