"""Export and import of a ~300 MB container with two snapshots.

Run as root:  .venv/bin/python bench/bench_backup.py [--runs 3] [--size-mb 300]

A scratch lxpyd (own loop-file btrfs pool) makes container `web` from the
busybox template, fills its rootfs to about --size-mb with host files
(bench_create.fill_rootfs), snapshots it (s1), changes about a tenth of it,
snapshots it again (s2) and changes a little more. Then, each --runs times,
from the same state (the page cache warm for all, as after the first run):

  lxpy export web F              a plain backup: tar of the three trees | zstd
  lxpy export web F --optimized  btrfs send streams (s1 full, s2 and the
                                 rootfs incremental) in a tar | zstd
  lxpy import F NEW              each kind of file, then destroyed again
  tar -c ... | zstd              the shell doing the plain backup's work:
                                 the same three trees, same tar options
  tar -c ... (no zstd)           to show what the compression costs
  btrfs send ... | zstd          the optimized backup's work from the shell, less
                                 the rootfs (it needs a read-only snapshot first)
  zstd -dc | tar -x              the shell unpacking the plain backup's trees
  lxc-copy                       LXC has no export; lxc-copy of a dir rootfs
                                 (rsync of the tree, no snapshots) is its
                                 nearest file-level copy, when installed
  lxpy copy [--instance-only]    for the same comparison

Every figure is indicative: other work shares this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_create import MB, fill_rootfs, tree_size  # noqa: E402
from common import Lxc, Lxpy, Scratch, print_table, run  # noqa: E402

TAR_KEEP = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse"]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


def sync_drop() -> None:
    # Dirty pages of the run before are written out first, so one run does
    # not pay for another's writes; the read cache stays warm for all.
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=300)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    with Scratch("lxpy-bench-backup-", size="8G") as scratch:
        lx = Lxpy(scratch, pool_size="12GiB")
        lx.build("busybox")
        lx.cli("create", "web", "-t", "busybox")
        pool = lx.paths.pool_dir
        rootfs = lx.paths.pool.container("web")
        s1, s2 = lx.paths.pool.snapshot("web", "s1"), lx.paths.pool.snapshot("web", "s2")
        # Host files under /srv/bulk (the busybox tree is there already).
        (rootfs / "srv" / "bulk").mkdir(parents=True, exist_ok=True)
        fill_rootfs(rootfs / "srv" / "bulk", args.size_mb * MB)
        lx.cli("snapshot", "create", "web", "s1")
        with open(rootfs / "changed-after-s1", "wb") as f:
            f.write(os.urandom(args.size_mb * MB // 10))
        lx.cli("snapshot", "create", "web", "s2")
        (rootfs / "changed-after-s2").write_bytes(os.urandom(MB))
        size, count = tree_size(rootfs)
        print(
            f"container web: {size / MB:.0f} MB in {count} entries, snapshots s1 and s2 "
            f"(s2 = s1 + {args.size_mb // 10} MB, rootfs = s2 + 1 MB)"
        )
        out = scratch.dir / "out"
        out.mkdir()
        trees = ["containers/web", "snapshots/web/s1", "snapshots/web/s2"]
        rows: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}

        def measure(label: str, fn: Callable[[], object], file: Path | None = None) -> None:
            sync_drop()
            rows.setdefault(label, []).append(timed(fn))
            if file is not None and file.exists():
                sizes[label] = file.stat().st_size

        plain, opt = out / "web.tar.zst", out / "web-opt.tar.zst"
        shell_tar = out / "shell.tar.zst"
        dest = out / "unpack"
        for _ in range(args.runs):
            for stale in (plain, opt):
                stale.unlink(missing_ok=True)
            measure(
                "lxpy export (tar | zstd)",
                lambda: lx.cli("export", "-q", "web", str(plain), timeout=900),
                plain,
            )
            measure(
                "lxpy export --optimized (btrfs send)",
                lambda: lx.cli("export", "-q", "web", str(opt), "--optimized", timeout=900),
                opt,
            )
            measure(
                "shell: tar | zstd -T0 -3 (same 3 trees)",
                lambda: sh(
                    f"tar -c -f - {' '.join(TAR_KEEP)} -C {pool} {' '.join(trees)} "
                    f"| zstd -q -T0 -3 -c > {shell_tar}"
                ),
                shell_tar,
            )
            measure(
                "shell: tar only (no compression)",
                lambda: sh(
                    f"tar -c -f - {' '.join(TAR_KEEP)} -C {pool} {' '.join(trees)} > /dev/null"
                ),
            )
            measure(
                "shell: btrfs send s1, s2 incr (no rootfs) | zstd",
                lambda: sh(
                    f"{{ btrfs -q send {s1}; btrfs -q send -p {s1} {s2}; }} "
                    f"| zstd -q -T0 -3 -c > {out / 'shell.btrfs.zst'}"
                ),
                out / "shell.btrfs.zst",
            )
            measure(
                "lxpy import (tar)",
                lambda: lx.cli("import", "-q", str(plain), "imp", timeout=900),
            )
            measure(
                "lxpy import (optimized)",
                lambda: lx.cli("import", "-q", str(opt), "impo", timeout=900),
            )
            dest.mkdir()
            measure(
                "shell: zstd -dc | tar -x (same 3 trees)",
                lambda: sh(f"zstd -q -dc {shell_tar} | tar -x -f - {' '.join(TAR_KEEP)} -C {dest}"),
            )
            shutil.rmtree(dest)
            measure("lxpy copy (with 2 snapshots)", lambda: lx.cli("copy", "web", "cp"))
            measure(
                "lxpy copy --instance-only",
                lambda: lx.cli("copy", "web", "cpi", "--instance-only"),
            )
            for name in ("imp", "impo", "cp", "cpi"):
                lx.cli("destroy", name)
        if shutil.which("lxc-copy"):
            lxc = Lxc(scratch)
            lxc_root = scratch.pool / "lxc-web"
            run(["cp", "-a", "--reflink=never", str(rootfs), str(lxc_root)], timeout=900)
            lxc.define("web", lxc_root)
            for _ in range(args.runs):
                measure(
                    "lxc-copy (dir rootfs: rsync, no snapshots)",
                    lambda: run(lxc.argv("lxc-copy", "web", "-N", "web2"), timeout=900),
                )
                shutil.rmtree(lxc.path / "web2")
        else:
            rows["lxc-copy (not installed)"] = []
        print_table(
            "wall time, same state each run (indicative: the machine is shared)",
            rows.items(),
            "s",
            2,
        )
        print("\nfile sizes")
        for label, n in sizes.items():
            print(f"{label:<46}{n / MB:>10.1f} MB")


if __name__ == "__main__":
    main()
