"""How long creating a container's rootfs takes, per storage method.

Run as root:  .venv/bin/python bench/bench_create.py [--runs 30] [--size-mb 250]

Makes its own loop-file btrfs pool, builds a template rootfs of about
--size-mb (a busybox tree plus host files from /usr/lib and /usr/share, or a
copy of LXPY_BENCH_ROOTFS when set, e.g. a Debian rootfs), then times:

  (a) BtrfsBackend.create_container, the call the daemon makes
  (b) `btrfs subvolume snapshot` run as a command
  (c) a full copy, `cp -a --reflink=never`
  (d) DirBackend.create_container on the same btrfs (cp -a --reflink=auto)
  (e) DirBackend.create_container on the host filesystem (a plain copy
      unless that filesystem can reflink)

Everything it makes (mounts, loop device, files) is removed at the end,
also on failure or Ctrl-C. Target: (a) median under 5 ms.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import btrfsutil  # noqa: E402

from lxpy.storage.btrfs import BtrfsBackend  # noqa: E402
from lxpy.storage.dir import DirBackend  # noqa: E402
from lxpy.storage.layout import TreeBackend  # noqa: E402

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
    out = []
    for i in range(runs):
        args = make(i)
        out.append(timed(partial(subprocess.run, args, check=True, stdout=subprocess.DEVNULL)))
        cleanup(i)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="runs of the fast methods")
    ap.add_argument("--copy-runs", type=int, default=3, help="runs of the copying methods")
    ap.add_argument("--size-mb", type=int, default=250, help="template rootfs size")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_create.py needs root (loop devices, mount, btrfs ioctls)", file=sys.stderr)
        return 2

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
                    lambda i: ["btrfs", "-q", "subvolume", "snapshot", str(tpl), str(snapdst)],
                    lambda i: btrfsutil.delete_subvolume(snapdst),
                    args.runs,
                ),
            )
        )
        copydst = work / "fullcopy"
        results.append(
            (
                "(c) cp -a --reflink=never (host fs)",
                bench_cmd(
                    lambda i: ["cp", "-a", "--reflink=never", str(tpl), str(copydst)],
                    lambda i: shutil.rmtree(copydst),
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
        print(f"\ntarget (a) median < 5 ms: {'met' if med < 5 else 'NOT met'} ({med:.2f} ms)")
        return 0
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
