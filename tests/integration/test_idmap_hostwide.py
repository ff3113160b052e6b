"""ID ranges never overlap: two lxpyd on one host, each on its own root.

Both allocate from root's ranges in /etc/subuid (or the default); what
keeps them apart is the record every lxpyd on the host shares
(lxpy.daemon.hostids, in /var/lib/lxpy-idmap). The ranges are read where
the kernel has them, in the uid_map and gid_map of each running
container's init, not only from lxpy's records. Any other lxpyd running
on the host meanwhile only adds blocks to keep clear of: nothing here
assumes the record is empty, and each daemon's entry goes with it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, daemon_in, info, start_again, stop_daemon

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def two_daemons(tmp_path: Path, test_cache: Path) -> Iterator[tuple[Daemon, Daemon]]:
    settings = f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with daemon_in(tmp_path / "a", settings) as a, daemon_in(tmp_path / "b", settings) as b:
        yield a, b
    # Their entries in the shared record went with them.
    assert not entry_path(a).exists() and not entry_path(b).exists()


def entry_path(d: Daemon) -> Path:
    from lxpy.model.paths import host_ids_file

    return host_ids_file(d.root)


def entry(d: Daemon) -> dict[str, tuple[int, int, int]]:
    """The daemon's blocks in the shared record: container -> (uid, gid, size)."""
    try:
        data = json.loads(entry_path(d).read_text())
    except FileNotFoundError:
        return {}
    assert data["root"] == str(d.root)
    return {b["container"]: (b["uid_base"], b["gid_base"], b["size"]) for b in data["blocks"]}


def kernel_maps(d: Daemon, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(uid base, count), (gid base, count) of the running container's init,
    as its /proc/PID/uid_map and gid_map say (one line: 0 BASE COUNT)."""
    pid = info(d, name)["init_pid"]
    out = []
    for kind in ("uid_map", "gid_map"):
        lines = Path(f"/proc/{pid}/{kind}").read_text().split("\n")
        inside, base, count = (int(x) for x in lines[0].split())
        assert inside == 0 and not [x for x in lines[1:] if x.strip()], lines
        out.append((base, count))
    return out[0], out[1]


def overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def test_two_daemons_hand_out_disjoint_ranges(tmp_path: Path, test_cache: Path) -> None:
    with two_daemons(tmp_path, test_cache) as (a, b):
        names = ("c1", "c2", "c3")
        for d in (a, b):
            for n in names:
                d.cli("create", n, "-t", "busybox", timeout=300)
                d.cli("start", n)
            # A non-isolated container in each: the one shared range.
            d.cli("create", "shared", "-t", "busybox", "--set", "security.idmap.isolated=false")
            d.cli("start", "shared")
        running = {(d.root, n): kernel_maps(d, n) for d in (a, b) for n in names}
        ranges = list(running.values())
        assert len(ranges) == 6
        for i, (uids, gids) in enumerate(ranges):
            assert uids[1] == gids[1] == 65536
            for other_uids, other_gids in ranges[i + 1 :]:
                assert not overlap(uids, other_uids) and not overlap(gids, other_gids), running
        # The shared range is the same in both daemons and apart from them all.
        shared = kernel_maps(a, "shared")
        assert kernel_maps(b, "shared") == shared
        assert not [r for r in ranges if overlap(r[0], shared[0]) or overlap(r[1], shared[1])]
        # The records and the shared record say the same as the kernel.
        for d in (a, b):
            assert entry(d) == {
                n: (running[d.root, n][0][0], running[d.root, n][1][0], 65536) for n in names
            }
            for n in names:
                rec = info(d, n)["idmap"]
                assert (rec["uid_base"], rec["gid_base"]) == (
                    running[d.root, n][0][0],
                    running[d.root, n][1][0],
                )

        # A fixed base on another daemon's block is refused, naming it.
        taken = running[a.root, "c1"][0][0]
        res = b.cli("create", "fixed", "-t", "busybox",
                    "--set", f"security.idmap.base={taken}", check=False)  # fmt: skip
        assert res.returncode != 0, res
        assert "security.idmap.base" in res.stderr and "overlaps" in res.stderr
        assert f"container 'c1' of the lxpyd at {a.root}" in res.stderr, res.stderr
        assert "hint:" in res.stderr
        assert "fixed" not in entry(b)
        # Destroyed, its block is free for every daemon.
        a.cli("destroy", "c1", "--force")
        assert "c1" not in entry(a)
        b.cli("create", "fixed", "-t", "busybox", "--set", f"security.idmap.base={taken}")
        b.cli("start", "fixed")
        assert kernel_maps(b, "fixed")[0] == (taken, 65536)
        assert entry(b)["fixed"] == (taken, taken, 65536)


def test_an_overlap_made_before_the_record_is_undone_at_the_next_start(
    tmp_path: Path, test_cache: Path
) -> None:
    with two_daemons(tmp_path, test_cache) as (a, b):
        a.cli("create", "first", "-t", "busybox", timeout=300)
        b.cli("create", "second", "-t", "busybox", timeout=300)
        a.cli("start", "first")
        a_uids, a_gids = kernel_maps(a, "first")
        # As two lxpyd from before the shared record would have it: b's
        # container holds a's block, and b published nothing.
        stop_daemon(b)
        record = b.paths.record("second")
        text = record.read_text()
        old = info_base(text)
        record.write_text(
            text.replace(f"uid_base = {old[0]}", f"uid_base = {a_uids[0]}").replace(
                f"gid_base = {old[1]}", f"gid_base = {a_gids[0]}"
            )
        )
        entry_path(b).unlink(missing_ok=True)
        b2 = start_again(b, b.root.parent / "lxpyd-again.log")
        try:
            b2.cli("start", "second")
            uids, gids = kernel_maps(b2, "second")
            assert not overlap(uids, a_uids) and not overlap(gids, a_gids)
            assert "overlaps that of container 'first'" in b2.log.read_text()
            assert entry(b2)["second"] == (uids[0], gids[0], 65536)
            # a's container kept its range: it published first.
            assert kernel_maps(a, "first") == (a_uids, a_gids)
        finally:
            stop_daemon(b2)


def info_base(record: str) -> tuple[int, int]:
    """uid_base and gid_base from a container record's [idmap] table."""
    import tomllib

    idmap = tomllib.loads(record)["idmap"]
    return int(idmap["uid_base"]), int(idmap["gid_base"])
