"""Creating a container from a cached image, beside a template and LXC.

Run as root:  .venv/bin/python bench/bench_images.py [--runs 20] [--template debian-bookworm]

A scratch lxpyd (own loop-file btrfs pool) builds the template (from the
suite's build cache), publishes a container of it as an image, and pulls
the same rootfs as a simplestreams image from a server on 127.0.0.1 (the
tree is made here from the template's rootfs). Then each row creates
--runs containers with one command each, timed from the command's start
to its exit, and removes them afterwards:

  lxpy create -t TEMPLATE            a snapshot of the template
  lxpy create --image ALIAS          a snapshot of the published image
  lxpy create --image local:ALIAS    a snapshot of the pulled image
  lxc-copy -s (btrfs)                LXC's snapshot clone of a container
                                     whose rootfs is a btrfs subvolume
                                     holding the same tree
  lxc-create -t local                LXC's image path: the rootfs tarball
                                     unpacked for each container (as its
                                     download template does from its cache)

The three lxpy rows should be equal: an image is cached as a read-only
subvolume exactly as a template is. Also printed once: the first pull
(download, sha256, checks, unpack) and a publish. The machine is shared
with other work: figures are indicative.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LXPY,
    Lxc,
    Lxpy,
    Scratch,
    install_compared,
    ms_since,
    print_table,
    run,
)

from tests.simplestreams import Product, Server, build_tree, host_arch  # noqa: E402


def timed_cmds(argvs: list[list[str]], env: dict[str, str] | None = None) -> list[float]:
    out = []
    for argv in argvs:
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env, timeout=600)
        out.append(ms_since(t0))
    return out


def xz_tarball(tree: Path, out: Path) -> None:
    # The fastest xz level: the tarball is made once and only unpacked in
    # the timed rows (and by the pull).
    env = {**os.environ, "XZ_OPT": "-0 -T0"}
    subprocess.run(
        ["tar", "-C", str(tree), "--numeric-owner", "--xattrs", "-cJf", str(out), "."],
        check=True,
        env=env,
    )


def lxc_meta(out: Path) -> None:
    """The metadata tarball lxc-create -t local wants: config and excludes."""
    conf = out.parent / "config"
    conf.write_text("lxc.arch = linux64\nlxc.include = /usr/share/lxc/config/common.conf\n")
    excludes = out.parent / "excludes"
    excludes.write_text("dev/*\n")
    with tarfile.open(out, "w:xz") as tar:
        tar.add(conf, "config")
        tar.add(excludes, "excludes")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="creates per snapshot row")
    ap.add_argument("--unpack-runs", type=int, default=3, help="creates of lxc-create -t local")
    ap.add_argument("--template", default="debian-bookworm", help="the rootfs (an lxpy template)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_images.py needs root", file=sys.stderr)
        return 2
    install_compared("lxc-start")
    with Scratch("lxpy-bench-images-", size="12G") as s:
        lx = Lxpy(s, pool_size="8GiB")
        lx.build(args.template)
        tpl = lx.paths.pool.template(args.template)
        tree_mb = int(run(["du", "-sm", str(tpl)]).stdout.split()[0])
        print(f"rootfs: template {args.template}, {tree_mb} MB on disk", flush=True)

        # The image, published from a container of the template.
        lx.client.create_container("src", args.template, {"network": []})
        t0 = time.perf_counter()
        lx.cli("publish", "src", "--alias", "pub")
        publish_ms = ms_since(t0)

        # The same tree as a simplestreams image on a local server.
        mirror = s.dir / "mirror"
        mirror.mkdir()
        root_tar = mirror / "root.tar.xz"
        xz_tarball(tpl, root_tar)
        build_tree(
            mirror / "tree",
            [Product("bench", "1", host_arch(), "default", "20261201_00:00", root_tar)],
        )
        with Server(mirror / "tree") as server:
            lx.cli("remote", "add", "local", server.url)
            t0 = time.perf_counter()
            lx.cli("image", "pull", "local:bench/1", timeout=1200)
            pull_ms = ms_since(t0)

        env = lx.env
        n = args.runs
        rows: list[tuple[str, list[float]]] = []
        for label, how in (
            (f"lxpy create -t {args.template}", ["-t", args.template]),
            ("lxpy create --image pub (published)", ["--image", "pub"]),
            ("lxpy create --image local:bench/1 (pulled)", ["--image", "local:bench/1"]),
        ):
            names = [f"b{i}" for i in range(n)]
            xs = timed_cmds(
                [[LXPY, "create", nm, *how, "--set", "network="] for nm in names], env=env
            )
            rows.append((label, xs))
            for nm in names:
                lx.cli("destroy", nm)

        # LXC: a container whose rootfs is a btrfs subvolume with the same tree.
        # Its path on the scratch btrfs, where lxc-copy -s can snapshot.
        lxc = Lxc(s)
        lxc.path = s.pool / "lxc"
        lxc.path.mkdir()
        src_dir = lxc.path / "src"
        src_dir.mkdir()
        run(["btrfs", "-q", "subvolume", "create", str(src_dir / "rootfs")])
        run(["cp", "-a", "--reflink=never", f"{tpl}/.", str(src_dir / "rootfs")], timeout=600)
        lxc.define("src", src_dir / "rootfs")
        conf = src_dir / "config"
        conf.write_text(conf.read_text().replace("dir:", "btrfs:"))
        names = [f"l{i}" for i in range(n)]
        xs = timed_cmds([lxc.argv("lxc-copy", "src", "-N", nm, "-s") for nm in names])
        rows.append(("lxc-copy -s (btrfs snapshot clone)", xs))
        for nm in names:
            run(lxc.argv("lxc-destroy", nm), timeout=300)

        meta = mirror / "lxc-meta.tar.xz"
        lxc_meta(meta)
        names = [f"u{i}" for i in range(args.unpack_runs)]
        xs = timed_cmds(
            [
                lxc.argv(
                    "lxc-create", nm, "-t", "local", "--", "-m", str(meta), "-f", str(root_tar)
                )
                for nm in names
            ]
        )
        rows.append(("lxc-create -t local (unpack per create)", xs))
        for nm in names:
            run(lxc.argv("lxc-destroy", nm), timeout=300)

        print_table(
            f"create, one command each ({tree_mb} MB rootfs; shared machine: indicative)", rows
        )
        print(f"\nonce: lxpy publish src: {publish_ms:.0f} ms")
        print(
            f"once: lxpy image pull (download from 127.0.0.1, sha256, checks, unpack of "
            f"{root_tar.stat().st_size / 1e6:.0f} MB xz): {pull_ms:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
