"""How long creating a container takes: the whole `lxpy create` command
and the API call beside `lxc-copy -s`, and the storage methods underneath.

Run as root:  .venv/bin/python bench/bench_create.py [--runs 30] [--size-mb 250]

Whole commands (a scratch lxpyd and a scratch LXC path, both on one
loop-file btrfs pool, both from lxpy's busybox template tree, no network):

  lxpy create NAME -t busybox: the command, Python start-up included
  POST /1.0/containers: the API call the command makes
  lxc-copy -s -n base -N NAME (anchor): LXC's btrfs snapshot clone of a
      container whose rootfs is a subvolume holding the same tree

Each run is followed, outside the timed part, by the same clean-up on
both sides (`lxpy delete` through the API, `lxc-destroy`); the tools take
turns run by run.

Storage methods (their own pool, a template rootfs of about --size-mb: a
busybox tree plus host files from /usr/lib and /usr/share, or a copy of
LXPY_BENCH_ROOTFS when set, e.g. a Debian rootfs):

  (a) BtrfsBackend.create_container, the call the daemon makes
  (b) `btrfs subvolume snapshot` run as a command
  (c) a full copy, `cp -a --reflink=never`
  (d) DirBackend.create_container on the same btrfs (cp -a --reflink=auto)
  (e) DirBackend.create_container on the host filesystem (a plain copy
      unless that filesystem can reflink)

Each method makes its runs as a burst and deletes them after, none timed
in between. Everything it makes (mounts, loop device, files) is removed
at the end, also on failure or Ctrl-C. Targets: (a) median under 5 ms,
`lxpy create` no slower than `lxc-copy -s`.
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
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import btrfsutil  # noqa: E402
import common  # noqa: E402
from common import Lxc, Lxpy, Scratch  # noqa: E402

from lxpy.storage.btrfs import BtrfsBackend  # noqa: E402
from lxpy.storage.dir import DirBackend  # noqa: E402
from lxpy.storage.tree import TreeBackend  # noqa: E402

MB = 1000**2


def tree_size(path: Path) -> tuple[int, int]:
    """Bytes and number of entries under `path` (not following links)."""
    total = count = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            total += st.st_size
            count += 1
    return total, count


def fill_rootfs(root: Path, target: int) -> None:
    """A busybox system plus host files until `target` bytes."""
    for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root", "usr", "var"):
        (root / d).mkdir(exist_ok=True)
    busybox = shutil.which("busybox")
    if busybox:
        shutil.copy2(busybox, root / "bin" / "busybox")
        for applet in ("sh", "ls", "cat", "mount", "init", "ps", "ip", "vi"):
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "hostname").write_text("bench\n")
    size = 0
    # /usr/share first and no file over 4 MB: a Debian rootfs of this size
    # has some 10,000 entries, mostly small, and a copy's cost is per file
    # as much as per byte.
    for src_top in (Path("/usr/share"), Path("/usr/lib")):
        for dirpath, _dirnames, filenames in os.walk(src_top):
            rel = Path(dirpath).relative_to("/")
            for n in filenames:
                src = Path(dirpath) / n
                try:
                    st = src.lstat()
                except OSError:
                    continue
                if not (src.is_file() and not src.is_symlink()) or st.st_size > 4 * MB:
                    continue
                dst = root / rel / n
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copy2(src, dst)
                except OSError:
                    continue
                size += st.st_size
                if size >= target:
                    return


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]


def bench_backend(be: TreeBackend, runs: int) -> list[float]:
    # Create them all, then delete them all: a burst of creates as a user
    # launching containers makes, with no delete's cleanup work in between.
    names = [f"c{i}" for i in range(runs)]
    out = [timed(partial(be.create_container, name, "bench")) for name in names]
    for name in names:
        be.delete_container(name)
    return out


def bench_cmd(
    make: Callable[[int], list[str]], cleanup: Callable[[int], None], runs: int
) -> list[float]:
    # A burst too, as bench_backend: the deletes come after the last run.
    out = []
    for i in range(runs):
        args = make(i)
        out.append(timed(partial(subprocess.run, args, check=True, stdout=subprocess.DEVNULL)))
    for i in range(runs):
        cleanup(i)
    return out


TEMPLATE = "busybox"


def whole_commands(runs: int) -> dict[str, list[float]]:
    """`lxpy create`, POST /1.0/containers and `lxc-copy -s`, run by run."""
    out: dict[str, list[float]] = {CREATE_CLI: [], CREATE_API: [], LXC_COPY: []}
    with Scratch("lxpy-bench-create-", size="4G") as scratch:
        lxpy = Lxpy(scratch, pool_size="2GiB")
        lxpy.build(TEMPLATE)
        # LXC's path on the btrfs pool, its base container's rootfs a
        # subvolume of the same tree: what `lxc-copy -s` snapshots.
        lxc = Lxc(scratch, path=scratch.pool / "lxc")
        base = lxc.path / "base" / "rootfs"
        base.parent.mkdir()
        common.build_template_tree(TEMPLATE, scratch.pool / "tree")
        common.snapshot(scratch.pool / "tree", base)
        lxc.define("base", base, backing="btrfs")
        scratch.defer(common.delete_tree, base)
        # Round 0 warms the page cache and the daemon; it is not counted.
        for i in range(runs + 1):
            name = f"c{i}"
            cli = timed(partial(lxpy.cli, "create", name, "-t", TEMPLATE))
            lxpy.client.delete_container(name)
            api = timed(partial(lxpy.create, name, TEMPLATE))
            lxpy.client.delete_container(name)
            copy = timed(partial(common.run, lxc.argv("lxc-copy", "base", "-N", name, "-s")))
            common.run(lxc.argv("lxc-destroy", name))
            if i > 0:
                out[CREATE_CLI].append(cli)
                out[CREATE_API].append(api)
                out[LXC_COPY].append(copy)
    return out


CREATE_CLI = "lxpy create NAME -t busybox"
CREATE_API = "POST /1.0/containers"
LXC_COPY = "lxc-copy -s (LXC 5, btrfs snapshot clone)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="runs of the fast methods")
    ap.add_argument("--copy-runs", type=int, default=3, help="runs of the copying methods")
    ap.add_argument("--size-mb", type=int, default=250, help="template rootfs size")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_create.py needs root (loop devices, mount, btrfs ioctls)", file=sys.stderr)
        return 2
    common.install_compared("lxc-start")
    if common.lxpy_can_run():
        whole = whole_commands(args.runs)
        common.print_table("whole commands, busybox template, no network", list(whole.items()))
        cli, api, copy = (statistics.median(whole[k]) for k in (CREATE_CLI, CREATE_API, LXC_COPY))
        common.verdict(f"lxpy create median {cli:.1f} ms <= lxc-copy -s {copy:.1f} ms", cli <= copy)
        common.summary("create", "lxpy create (whole command)", cli, copy, "LXC 5 lxc-copy -s")
        common.summary("create", "POST /1.0/containers", api, copy, "LXC 5 lxc-copy -s")
        print()

    work = Path(tempfile.mkdtemp(prefix="lxpy-bench-", dir="/var/tmp"))
    image, mnt = work / "pool.img", work / "btrfs"
    mounted = False
    try:
        mnt.mkdir()
        with open(image, "xb") as f:
            f.truncate(4 * 1024**3)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        mounted = True

        bt = BtrfsBackend(mnt / "pool")
        staging = bt.begin_template("bench")
        src = os.environ.get("LXPY_BENCH_ROOTFS")
        if src:
            subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(staging)], check=True)
        else:
            fill_rootfs(staging, args.size_mb * MB)
        bt.commit_template("bench")
        tpl = bt.template_path("bench")
        size, entries = tree_size(tpl)
        # Timings should not include flushing the template build itself.
        btrfsutil.sync(mnt)
        print(f"template: {size / MB:.0f} MB, {entries} entries, at {tpl}")

        # The same data in the two dir pools (one on btrfs, one on the host).
        dir_btrfs = DirBackend(mnt / "dirpool")
        dir_host = DirBackend(work / "dirpool")
        for be in (dir_btrfs, dir_host):
            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(tpl), str(be.template_path("bench"))],
                check=True,
            )
        btrfsutil.sync(mnt)

        results: list[tuple[str, list[float]]] = []
        results.append(("(a) BtrfsBackend.create_container", bench_backend(bt, args.runs)))
        snapdst = mnt / "cmd-snap"
        results.append(
            (
                "(b) btrfs subvolume snapshot (command)",
                bench_cmd(
                    lambda i: [
                        "btrfs",
                        "-q",
                        "subvolume",
                        "snapshot",
                        str(tpl),
                        str(snapdst) + str(i),
                    ],
                    lambda i: btrfsutil.delete_subvolume(str(snapdst) + str(i)),
                    args.runs,
                ),
            )
        )
        copydst = work / "fullcopy"
        results.append(
            (
                "(c) cp -a --reflink=never (host fs)",
                bench_cmd(
                    lambda i: ["cp", "-a", "--reflink=never", str(tpl), str(copydst) + str(i)],
                    lambda i: shutil.rmtree(str(copydst) + str(i)),
                    args.copy_runs,
                ),
            )
        )
        results.append(
            ("(d) DirBackend.create_container (btrfs)", bench_backend(dir_btrfs, args.copy_runs))
        )
        results.append(
            ("(e) DirBackend.create_container (host fs)", bench_backend(dir_host, args.copy_runs))
        )

        print()
        head = ("method", "runs", "median ms", "p90 ms", "min ms", "max ms")
        print(f"{head[0]:44} {head[1]:>4} {head[2]:>10} {head[3]:>10} {head[4]:>9} {head[5]:>9}")
        for label, xs in results:
            print(
                f"{label:44} {len(xs):4d} {statistics.median(xs):10.2f} {p90(xs):10.2f}"
                f" {min(xs):9.2f} {max(xs):9.2f}"
            )
        med = statistics.median(results[0][1])
        common.summary("create", "(a) BtrfsBackend.create_container", med, None, "")
        print(f"\ntarget (a) median < 5 ms: {'met' if med < 5 else 'NOT met'} ({med:.2f} ms)")
        return 0
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
