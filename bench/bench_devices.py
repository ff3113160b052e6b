"""How long adding a disk device to a running container takes.

Run as root:  .venv/bin/python bench/bench_devices.py [--runs 20]

One busybox container runs under each tool, from the same tree (lxpy's
busybox template, built by lxpy's builder). Each run shares one host
directory into the running container and takes it out again:

  lxpy, API     POST /1.0/containers/NAME/devices (disk source= path=) through
                the client library: lxpyd's handling plus one socket round
                trip; then DELETE. Unprivileged (the default: an idmapped
                mount through the container's user namespace) and privileged.
  lxpy, CLI     the whole `lxpy device add NAME DEV disk source=... path=...`
                command, process start included; then `lxpy device remove`.
  LXC 5         what LXC users do: LXC has no way to mount a host directory
                into a running container (lxc-device adds device nodes and
                NICs only; mount(2) will not bind across mount namespaces,
                and util-linux's `mount -N` resolves the paths in the
                wrong one), so they add an `lxc.mount.entry` and restart it
                (kill and start, until the file reads inside); removal the
                same. A privileged LXC container (LXC's default).

Each addition is checked (the host file is read inside) outside the timed
part. Target: adding a disk takes lxpyd under 20 ms (median of the API
call). Others load this machine at the same time: figures are indicative.
Everything is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LXPY,
    Lxc,
    Lxpy,
    Scratch,
    build_template_tree,
    install_compared,
    lxpy_can_run,
    ms_since,
    print_table,
    run,
    snapshot,
    verdict,
)

TEMPLATE = "busybox"


def _inside(pid: int, path: str) -> str:
    return run(["nsenter", "-t", str(pid), "-m", "cat", path]).stdout


def lxpy_side(scratch: Scratch, share: Path, runs: int) -> dict[str, list[float]]:
    lx = Lxpy(scratch)
    lx.build(TEMPLATE)
    out: dict[str, list[float]] = {}
    for name, privileged in (("unpriv", False), ("priv", True)):
        lx.create(name, TEMPLATE, privileged=privileged)
        lx.start_api(name)
        pid = lx.init_pid(name)
        kind = "privileged" if privileged else "unprivileged, idmapped"
        api_add, api_del, cli_add, cli_del = [], [], [], []
        config = {"source": str(share), "path": "/mnt/share"}
        for _ in range(runs):
            t0 = time.perf_counter()
            lx.client.add_device(name, "share", "disk", config)
            api_add.append(ms_since(t0))
            assert _inside(pid, "/mnt/share/f") == "shared\n"
            t0 = time.perf_counter()
            lx.client.remove_device(name, "share")
            api_del.append(ms_since(t0))
        for _ in range(runs):
            argv = [LXPY, "device", "add", name, "share", "disk", f"source={share}"]
            t0 = time.perf_counter()
            subprocess.run([*argv, "path=/mnt/share"], env=lx.env, check=True, capture_output=True)
            cli_add.append(ms_since(t0))
            assert _inside(pid, "/mnt/share/f") == "shared\n"
            t0 = time.perf_counter()
            subprocess.run(
                [LXPY, "device", "remove", name, "share"],
                env=lx.env,
                check=True,
                capture_output=True,
            )
            cli_del.append(ms_since(t0))
        out[f"lxpy API: add disk ({kind})"] = api_add
        out[f"lxpy API: remove disk ({kind})"] = api_del
        out[f"lxpy CLI: device add ({kind})"] = cli_add
        out[f"lxpy CLI: device remove ({kind})"] = cli_del
        lx.stop_api(name, force=True)
    return out


def lxc_side(scratch: Scratch, base: Path, share: Path, runs: int) -> dict[str, list[float]]:
    lxc = Lxc(scratch)
    lxc.define("bb", snapshot(base, scratch.pool / "lxc-bb"))
    config = lxc.path / "bb" / "config"
    plain = config.read_text()
    entry = f"lxc.mount.entry = {share} mnt/share none bind,create=dir 0 0\n"
    lxc.start("bb")
    add: list[float] = []
    rm: list[float] = []
    for _ in range(runs):
        # With the entry, and without it again: each a restart, the way an
        # LXC container gets a host directory (or loses it).
        for wanted, times in ((True, add), (False, rm)):
            t0 = time.perf_counter()
            config.write_text(plain + entry if wanted else plain)
            lxc.stop("bb", kill=True)
            lxc.start("bb")
            pid = lxc.init_pid("bb")
            shown = run(
                ["nsenter", "-t", str(pid), "-m", "cat", "/mnt/share/f"], check=False
            ).stdout
            times.append(ms_since(t0))
            assert (shown == "shared\n") == wanted, shown
    lxc.stop("bb", kill=True)
    return {
        "LXC 5: mount entry + restart (privileged)": add,
        "LXC 5: entry removed + restart": rm,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="additions per case")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_devices.py needs root (btrfs, namespaces, LXC)", file=sys.stderr)
        return 2
    install_compared("lxc-start")
    with Scratch("lxpy-bench-devices-") as scratch:
        share = scratch.dir / "share"
        share.mkdir()
        (share / "f").write_text("shared\n")
        base = scratch.pool / "busybox"
        build_template_tree(TEMPLATE, base)
        rows = lxc_side(scratch, base, share, args.runs)
        if lxpy_can_run():
            rows.update(lxpy_side(scratch, share, args.runs))
        print(f"\nbusybox, running; one host directory added and removed {args.runs} times")
        print("(indicative: other work loads this machine at the same time)")
        print_table("adding / removing a disk on a running container", rows.items())
        api = rows.get("lxpy API: add disk (unprivileged, idmapped)")
        if not api:
            verdict("lxpyd adds a disk to a running container in < 20 ms", None)
            return 0
        med = statistics.median(api)
        verdict(f"lxpyd adds a disk to a running container in < 20 ms (median {med:.1f})", med < 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
