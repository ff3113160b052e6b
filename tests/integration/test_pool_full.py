"""A full pool's error says which pool and how much room is left, for
create, copy, config set and rename, and nothing is changed.

lxpyd runs on a small btrfs filesystem of its own (its records and its
pool on it), filled from the host as in test_host_limits.py; then on a
root whose loop-file pool is another filesystem.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Daemon, daemon_in
from tests.integration.test_host_limits import fill, free, small_pool

pytestmark = pytest.mark.integration

# "<pool> has 0B free of 300.0MiB (btrfs: 0B free in its data chunks, 3.7MiB
# in its metadata chunks beyond a 5.5MiB reserve, 1.0MiB unallocated)"
SIZE = r"\d+(?:\.\d)?(?:B|KiB|MiB|GiB|TiB)"
WHERE = re.compile(
    rf"storage pool is full(?: \([^)]*\))?: (?P<path>\S+) has (?P<free>{SIZE}) free of "
    rf"(?P<size>{SIZE}) \(btrfs: (?P<data>{SIZE}) free in its data chunks, "
    rf"(?P<meta>{SIZE}) in its metadata chunks beyond a (?P<rsv>{SIZE}) reserve, "
    rf"(?P<unalloc>{SIZE}) unallocated\)"
)


def _bytes(text: str) -> float:
    from lxpy.model.units import parse_size

    return parse_size(text)


def _usage(path: Path) -> dict[str, int]:
    """What `btrfs filesystem usage -b` says of `path`'s filesystem: its
    unallocated bytes and global reserve."""
    out = subprocess.run(
        ["btrfs", "filesystem", "usage", "-b", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    found = {
        key: int(m[1])
        for key, label in (("unallocated", "Device unallocated"), ("reserve", "Global reserve"))
        if (m := re.search(rf"{label}:\s+(\d+)", out))
    }
    assert len(found) == 2, out
    return found


def test_a_full_pool_names_itself_and_the_room_left(tmp_path: Path) -> None:
    with small_pool(tmp_path) as d:
        _full_pool_names_itself(d)


def _full_pool_names_itself(d: Daemon) -> None:
    pool = d.paths.pool_dir
    record = d.paths.record("c1")
    kept = record.read_bytes()
    fill(d.root / "hog")
    usage = _usage(pool)

    def refused(*args: str) -> re.Match[str]:
        res = d.cli(*args, check=False)
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "internal error" not in out, f"lxpy {args}: {out}"
        where = WHERE.search(out)
        assert where, f"lxpy {' '.join(args)} does not say where and how much: {out}"
        return where

    for args in (
        ("create", "c2", "-t", "busybox"),
        ("copy", "c1", "c3"),
        ("config", "set", "c1", "user.b", "2"),
        ("rename", "c1", "c4"),
    ):
        where = refused(*args)
        assert where["path"] == str(pool)
        # The figures are the filesystem's own: its size, a full pool's
        # free space (next to nothing), and the btrfs parts as `btrfs
        # filesystem usage` shows them.
        st = os.statvfs(pool)
        assert _bytes(where["size"]) == pytest.approx(st.f_blocks * st.f_frsize, rel=0.01)
        assert _bytes(where["free"]) < 16 << 20
        assert _bytes(where["unalloc"]) == pytest.approx(usage["unallocated"], abs=1 << 20)
        assert _bytes(where["data"]) < 16 << 20
        assert _bytes(where["rsv"]) == pytest.approx(usage["reserve"], rel=0.01)

    # Nothing was changed: no new container, no rename, the record as it was.
    assert record.read_bytes() == kept
    listed = json.loads(d.cli("list", "--format", "json").stdout)
    assert [c["name"] for c in listed] == ["c1"]
    assert sorted(os.listdir(d.paths.pool.containers)) == ["c1"]
    assert sorted(p.name for p in d.paths.records.iterdir()) == ["c1.toml"]

    free(d.root / "hog")
    d.cli("rename", "c1", "c4")
    d.cli("copy", "c4", "c3")
    assert "user.a" in d.cli("config", "show", "c3").stdout


def test_records_on_another_filesystem_are_named_too(tmp_path: Path) -> None:
    # The usual layout when the root is not on btrfs: a loop-file pool
    # under a root on another filesystem, which holds the records.
    with daemon_in(tmp_path, 'pool_size = "300MiB"\ndefault_network = ""\n') as d:
        d.cli("template", "build", "busybox")
        pool = d.paths.pool_dir
        fill(pool / "hog")
        res = d.cli("create", "c1", "-t", "busybox", check=False)
        out = res.stdout + res.stderr
        where = WHERE.search(out)
        assert res.returncode != 0 and where, out
        assert where["path"] == str(pool)
        st = os.statvfs(d.root)
        records = re.search(
            rf"; lxpyd's records are on another filesystem: (\S+) has ({SIZE}) free of ({SIZE})",
            out,
        )
        assert records and records[1] == str(d.root), out
        assert _bytes(records[3]) == pytest.approx(st.f_blocks * st.f_frsize, rel=0.01)
        assert json.loads(d.cli("list", "--format", "json").stdout) == []
