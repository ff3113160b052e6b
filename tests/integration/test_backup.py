"""Export, import and copy of containers with the real `lxpy` and a real lxpyd.

Round trips are checked file by file (kind, mode, owners, size, content,
mtime, link target, hard links, xattrs) on the rootfs and on each snapshot,
on btrfs (plain and optimized) and on the dir pool. Damaged and hostile
files are refused with nothing left: no record, no volume (hidden ones
included), no spool, no intent, and the name usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lxpy.model.paths import PoolPaths
from tests.conftest import (
    VENV_BIN,
    Daemon,
    dir_daemon_in,
    info,
    wait_for,
)
from tests.integration.test_cli import cli_json, fails
from tests.integration.test_network import free_subnet, net_name, scrub

pytestmark = pytest.mark.integration


def pool(d: Daemon) -> PoolPaths:
    return d.paths.pool


def rootfs(d: Daemon, name: str) -> Path:
    return pool(d).container(name)


def snapshot(d: Daemon, name: str, snap: str) -> Path:
    return pool(d).snapshot(name, snap)


# -- comparing trees -----------------------------------------------------------------


def _xattrs(p: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return []
    return sorted((n, os.getxattr(p, n, follow_symlinks=False)) for n in names)


def describe_tree(top: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under `top` (and `top`): what a restore must give back."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in [".", *dirnames, *filenames] if dirpath == str(top) else [*dirnames, *filenames]:
            p = os.path.normpath(os.path.join(dirpath, n))
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            entry: list[object] = [
                stat.S_IFMT(st.st_mode),
                oct(stat.S_IMODE(st.st_mode)),
                st.st_uid,
                st.st_gid,
                _xattrs(p),
            ]
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
                entry += [st.st_size, digest, int(st.st_mtime), st.st_nlink, st.st_ino]
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(p))
            elif not stat.S_ISDIR(st.st_mode):
                entry.append(int(st.st_mtime))
            out[rel] = tuple(entry)
    # Hard links: an inode number means nothing across pools; which names
    # share one does.
    for rel, row in out.items():
        if stat.S_ISREG(int(row[0])):  # type: ignore[call-overload]
            out[rel] = (*row[:-1], min(inodes[int(row[-1])]))  # type: ignore[call-overload]
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = describe_tree(a), describe_tree(b)
    assert sorted(ta) == sorted(tb), set(ta) ^ set(tb)
    diff = {k: (ta[k], tb[k]) for k in ta if ta[k] != tb[k]}
    assert not diff, diff


def furnish(root: Path, stage: str) -> None:
    """Files that test what a backup must keep, different at each `stage`."""
    d = root / "data"
    d.mkdir(exist_ok=True)
    (d / "marker").write_text(stage)
    owned = d / "owned"
    owned.write_text("owned by 1000:1001\n")
    os.chown(owned, 1000, 1001)
    os.chmod(owned, 0o640)
    suid = d / "suid"
    suid.write_bytes(b"#!/bin/sh\n")
    os.chmod(suid, 0o4755)
    os.setxattr(d / "marker", "user.stage", stage.encode())
    os.setxattr(owned, "trusted.note", b"kept")
    # A file capability (cap_net_bind_service+ep, VFS_CAP_REVISION_2).
    os.setxattr(suid, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))
    with contextlib.suppress(FileExistsError):
        os.symlink("/etc/hostname", d / "abs-link")
    with contextlib.suppress(FileExistsError):
        os.symlink("../etc", d / "rel-link")
    with contextlib.suppress(FileExistsError):
        os.link(d / "marker", d / "hardlink")
    with contextlib.suppress(FileExistsError):
        os.mkfifo(d / "fifo", 0o600)
    with open(d / "sparse", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(4 * 1024 * 1024)
        f.write(stage.encode())
    # A file of the first stage only: the later ones must not have it.
    gone = d / "only-in-s1"
    if stage == "one":
        gone.write_text("s1")
    else:
        gone.unlink(missing_ok=True)


def make_source(d: Daemon, name: str) -> None:
    """Container `name` with config, a device and two snapshots, s1 and s2."""
    d.cli(
        "create", name, "-t", "busybox",
        "--set", "description=a backup test",
        "--set", "user.purpose=round trip",
        "--set", "limits.memory=256MiB",
        timeout=300,
    )  # fmt: skip
    share = d.root.parent / f"{name}-share"
    share.mkdir(exist_ok=True)
    d.cli("device", "add", name, "www", "disk", f"source={share}", "path=/srv/www")
    for stage, snap in (("one", "s1"), ("two", "s2"), ("three", None)):
        furnish(rootfs(d, name), stage)
        if snap:
            d.cli("snapshot", "create", name, snap)


def assert_same_container(d: Daemon, src: str, dst: str, d2: Daemon | None = None) -> None:
    d2 = d2 or d
    a, b = info(d, src), info(d2, dst)
    assert b["config"] == a["config"]
    assert b["devices"] == a["devices"] and "www" in a["devices"], (a, b)
    assert b["snapshots"] == a["snapshots"] == ["s1", "s2"]
    assert b["template"] == a["template"]
    assert_same_tree(snapshot(d, src, "s1"), snapshot(d2, dst, "s1"))
    assert_same_tree(snapshot(d, src, "s2"), snapshot(d2, dst, "s2"))
    # The rootfs: the same, but for the hostname files made for its name.
    ta, tb = describe_tree(rootfs(d, src)), describe_tree(rootfs(d2, dst))
    for t in (ta, tb):
        for f in ("etc/hostname", "etc/hosts"):
            t.pop(f, None)
    assert ta == tb
    assert (snapshot(d2, dst, "s1") / "data" / "marker").read_text() == "one"
    assert (snapshot(d2, dst, "s2") / "data" / "marker").read_text() == "two"
    assert (rootfs(d2, dst) / "data" / "marker").read_text() == "three"
    assert (snapshot(d2, dst, "s1") / "data" / "only-in-s1").exists()
    assert not (snapshot(d2, dst, "s2") / "data" / "only-in-s1").exists()


def assert_nothing_left(d: Daemon, name: str, before: list[str]) -> None:
    """No trace of an import of `name` that was refused."""
    assert [c["name"] for c in cli_json(d, "list")] == before
    assert not d.paths.record(name).exists()
    assert not rootfs(d, name).exists()
    assert not pool(d).snapshot_dir(name).exists()
    hidden = [p.name for p in pool(d).containers.iterdir() if p.name.startswith(".")]
    assert hidden == []
    assert list(d.paths.spool.glob("*")) == []
    assert list(d.paths.intents.glob("*")) == []


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("optimized", [False, True], ids=["tar", "optimized"])
def test_round_trip_btrfs(daemon: Daemon, tmp_path: Path, optimized: bool) -> None:
    d = daemon
    make_source(d, "web")
    backup = tmp_path / "web.tar.zst"
    extra = ["--optimized"] if optimized else []
    res = d.cli("export", "web", str(backup), *extra)
    # Progress: what was moved, and how fast.
    assert "exporting web:" in res.stderr and "/s" in res.stderr, res.stderr
    assert backup.is_file() and not Path(f"{backup}.part").exists()
    with subprocess.Popen(["zstd", "-dc", str(backup)], stdout=subprocess.PIPE) as z:
        with tarfile.open(fileobj=z.stdout, mode="r|") as tf:
            names = [m.name for m in tf]
    assert names[0] == "index.json"
    if optimized:
        assert names[1:] == ["snapshots/s1.btrfs", "snapshots/s2.btrfs", "rootfs.btrfs"]
    else:
        assert "rootfs/data/marker" in names and "snapshots/s1/data/only-in-s1" in names

    # Under a new name, beside the source.
    res = d.cli("import", str(backup), "web2")
    assert "importing" in res.stderr and "imported web2 with 2 snapshots" in res.stdout
    assert_same_container(d, "web", "web2")
    assert cli_json(d, "info", "web2")["owner"]["uid"] == 0
    cap = os.getxattr(rootfs(d, "web2") / "data" / "suid", "security.capability")
    assert struct.unpack("<IIIII", cap)[:2] == (0x02000001, 1 << 10)
    assert os.stat(rootfs(d, "web2") / "data" / "suid").st_mode & stat.S_ISUID

    # Under its own name, once the source is gone: the name comes from the file.
    expected = describe_tree(snapshot(d, "web", "s2"))
    d.cli("destroy", "web")
    d.cli("import", str(backup))
    assert describe_tree(snapshot(d, "web", "s2")) == expected
    assert (rootfs(d, "web") / "etc" / "hostname").read_text().strip() == "web"
    # The imported container runs.
    d.cli("start", "web")
    out = d.cli("exec", "web", "--", "cat", "/data/marker").stdout
    assert out == "three"
    d.cli("stop", "web", "--force")


def test_instance_only_through_a_pipe(daemon: Daemon, tmp_path: Path) -> None:
    """`-` for stdout and stdin: `lxpy export web - | lxpy import - NEW`."""
    d = daemon
    make_source(d, "web")
    lxpy = f"{VENV_BIN / 'lxpy'} --socket {d.socket}"
    subprocess.run(
        ["sh", "-c", f"{lxpy} export -q web - --instance-only | {lxpy} import -q - solo"],
        check=True,
        timeout=300,
    )
    assert info(d, "solo")["snapshots"] == []
    assert (rootfs(d, "solo") / "data" / "marker").read_text() == "three"
    assert list(tmp_path.glob("*.part")) == []


def test_round_trip_dir_pool(dir_daemon: Daemon, tmp_path: Path) -> None:
    d = dir_daemon
    make_source(d, "web")
    backup = tmp_path / "web.tar.zst"
    err = fails(d, "export", "web", str(tmp_path / "o.tar.zst"), "--optimized")
    assert "optimized export needs a btrfs pool" in err
    assert not (tmp_path / "o.tar.zst").exists()
    assert not (tmp_path / "o.tar.zst.part").exists()
    d.cli("export", "web", str(backup))
    d.cli("import", str(backup), "web2")
    assert_same_container(d, "web", "web2")
    # Snapshots keep when they were taken.
    assert [s["created_at"] for s in cli_json(d, "snapshot", "list", "web2")] == [
        s["created_at"] for s in cli_json(d, "snapshot", "list", "web")
    ]


def test_btrfs_backup_into_dir_pool(daemon: Daemon, tmp_path: Path, test_cache: Path) -> None:
    """Another host, another pool kind: a plain backup moves, an optimized
    one is refused there with a clear error."""
    make_source(daemon, "web")
    plain, opt = tmp_path / "web.tar.zst", tmp_path / "web-opt.tar.zst"
    daemon.cli("export", "-q", "web", str(plain))
    daemon.cli("export", "-q", "web", str(opt), "--optimized")
    with dir_daemon_in(tmp_path, test_cache, "other") as d2:
        err = fails(d2, "import", "-q", str(opt))
        assert "optimized" in err and "'dir'" in err
        assert_nothing_left(d2, "web", [])
        d2.cli("import", "-q", str(plain))
        assert_same_container(daemon, "web", "web", d2)


# -- refusals ------------------------------------------------------------------------


def test_import_refuses_a_name_in_use(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    make_source(d, "web")
    d.cli("create", "other", "-t", "busybox")
    backup = tmp_path / "web.tar.zst"
    d.cli("export", "-q", "web", str(backup))
    before = describe_tree(rootfs(d, "other"))
    err = fails(d, "import", "-q", str(backup), "other")
    assert "container 'other' already exists" in err
    # The file's own name, taken by its source.
    err = fails(d, "import", "-q", str(backup))
    assert "container 'web' already exists" in err
    assert describe_tree(rootfs(d, "other")) == before
    assert sorted(c["name"] for c in cli_json(d, "list")) == ["other", "web"]
    assert list(d.paths.spool.glob("*")) == []


def _damaged(good: bytes, how: str) -> bytes:
    if how == "truncated":
        return good[: len(good) // 2]
    if how == "corrupted":
        mid = len(good) // 2
        return good[:mid] + bytes(b ^ 0x5A for b in good[mid : mid + 64]) + good[mid + 64 :]
    if how == "tail-cut":
        return good[:-8]
    if how == "not-zstd":
        return b"\x1f\x8b" + good[2:]
    assert how == "empty"
    return b""


@pytest.mark.parametrize("optimized", [False, True], ids=["tar", "optimized"])
def test_damaged_file_refused_leaving_nothing(
    daemon: Daemon, tmp_path: Path, optimized: bool
) -> None:
    d = daemon
    make_source(d, "web")
    backup = tmp_path / "web.tar.zst"
    d.cli("export", "-q", "web", str(backup), *(["--optimized"] if optimized else []))
    good = backup.read_bytes()
    for how in ("truncated", "corrupted", "tail-cut", "not-zstd", "empty"):
        bad = tmp_path / f"{how}.tar.zst"
        bad.write_bytes(_damaged(good, how))
        err = fails(d, "import", "-q", str(bad), "restored")
        assert "not a usable lxpy backup" in err, (how, err)
        assert_nothing_left(d, "restored", ["web"])
    # The name is free: the good file takes it.
    d.cli("import", "-q", str(backup), "restored")
    assert_same_container(d, "web", "restored")


def _archive(members: list[tuple[tarfile.TarInfo, bytes | None]], index: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        data = json.dumps(index).encode()
        ti = tarfile.TarInfo("index.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
        for ti, content in members:
            if content is not None:
                ti.size = len(content)
            tf.addfile(ti, io.BytesIO(content) if content is not None else None)
    return subprocess.run(
        ["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True, check=True
    ).stdout


def _member(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _index(snapshots: tuple[str, ...] = (), optimized: bool = False) -> dict[str, Any]:
    return {
        "format": "lxpy-backup",
        "version": 1,
        "optimized": optimized,
        "container": {"name": "evil", "template": "busybox", "created_at": "", "config": {}},
        "snapshots": [{"name": s, "created_at": ""} for s in snapshots],
    }


ROOT_DIR = (_member("rootfs", tarfile.DIRTYPE), None)
HOSTILE: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], dict[str, Any], str]] = {
    "path-out": (
        [ROOT_DIR, (_member("rootfs/../../escaped"), b"x")],
        _index(),
        "outside the archive's tree",
    ),
    "absolute": ([ROOT_DIR, (_member("/tmp/escaped"), b"x")], _index(), "outside"),
    "symlink-out": (
        [
            ROOT_DIR,
            (_member("rootfs/etc", tarfile.SYMTYPE, linkname="/"), None),
            (_member("rootfs/etc/escaped"), b"x"),
        ],
        _index(),
        "lies under the symbolic link 'rootfs/etc'",
    ),
    "device": (
        [ROOT_DIR, (_member("rootfs/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
        _index(),
        "device node (8:0)",
    ),
    "hardlink-out": (
        [ROOT_DIR, (_member("rootfs/shadow", tarfile.LNKTYPE, linkname="/etc/shadow"), None)],
        _index(),
        "outside",
    ),
    "hardlink-other-tree": (
        [
            ROOT_DIR,
            (_member("snapshots/s1", tarfile.DIRTYPE), None),
            (_member("snapshots/s1/f"), b"x"),
            (_member("rootfs/f", tarfile.LNKTYPE, linkname="snapshots/s1/f"), None),
        ],
        _index(("s1",)),
        "not a file of its tree",
    ),
    "unlisted": (
        [ROOT_DIR, (_member("snapshots/s9", tarfile.DIRTYPE), None)],
        _index(),
        "not part of what its index.json lists",
    ),
    "missing-tree": ([ROOT_DIR], _index(("s1",)), "lacks snapshots/s1"),
    "no-rootfs": ([], _index(), "lacks rootfs"),
    "top-symlink": (
        [(_member("rootfs", tarfile.SYMTYPE, linkname="/"), None)],
        _index(),
        "the top of a tree, is a symbolic link",
    ),
    "bad-snapshot-name": ([ROOT_DIR], _index(("../x",)), "snapshot"),
    "newer-format": ([ROOT_DIR], {**_index(), "version": 99}, "format version 99"),
    "not-a-stream": (
        [(_member("rootfs.btrfs"), b"\0" * 4096)],
        _index(optimized=True),
        "is not a btrfs send stream",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused(daemon: Daemon, tmp_path: Path, case: str) -> None:
    d = daemon
    members, index, message = HOSTILE[case]
    f = tmp_path / f"{case}.tar.zst"
    f.write_bytes(_archive(members, index))
    for p in (Path("/tmp/escaped"), tmp_path / "escaped"):
        p.unlink(missing_ok=True)
    err = fails(d, "import", "-q", str(f))
    assert message in err, err
    assert_nothing_left(d, "evil", [])
    assert not Path("/tmp/escaped").exists()
    assert not (d.root / "escaped").exists() and not (pool(d).path / "escaped").exists()


def test_optimized_stream_of_another_subvolume_refused(daemon: Daemon, tmp_path: Path) -> None:
    """A real send stream, but not of what the index says: refused before
    anything is received."""
    d = daemon
    make_source(d, "web")
    good = tmp_path / "web.tar.zst"
    d.cli("export", "-q", "web", str(good), "--optimized")
    with subprocess.Popen(["zstd", "-dc", str(good)], stdout=subprocess.PIPE) as z:
        with tarfile.open(fileobj=z.stdout, mode="r|") as tf:
            streams = {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]
    # s2's stream (incremental from s1) offered as the first and only one.
    f = tmp_path / "swapped.tar.zst"
    idx = json.loads(streams["index.json"])
    idx["snapshots"] = idx["snapshots"][:1]
    f.write_bytes(
        _archive(
            [
                (_member("snapshots/s1.btrfs"), streams["snapshots/s2.btrfs"]),
                (_member("rootfs.btrfs"), streams["rootfs.btrfs"]),
            ],
            idx,
        )  # fmt: skip
    )
    err = fails(d, "import", "-q", str(f), "evil")
    assert "send stream of snapshots/s1" in err, err
    assert_nothing_left(d, "evil", ["web"])


# -- copy ----------------------------------------------------------------------------


@contextlib.contextmanager
def network(d: Daemon) -> Iterator[str]:
    name = net_name()
    d.cli("network", "create", name, "--subnet", free_subnet(), "--no-nat")
    try:
        yield name
    finally:
        for c in cli_json(d, "list"):
            if c["state"] != "STOPPED":
                d.cli("stop", c["name"], "--force", check=False)
        d.cli("network", "delete", name, check=False)
        scrub(d.root)


def test_copy_is_a_new_machine(daemon: Daemon) -> None:
    d = daemon
    with network(d) as net:
        subnet = next(n for n in cli_json(d, "network", "list") if n["name"] == net)["subnet"]
        pinned = subnet.rsplit(".", 1)[0] + ".50"
        d.cli(
            "create", "src", "-t", "busybox", "--set", f"network={net}",
            "--set", f"ipv4.address={pinned}", "--set", "user.k=v",
        )  # fmt: skip
        machine_id = "0123456789abcdef0123456789abcdef\n"
        (rootfs(d, "src") / "etc" / "machine-id").write_text(machine_id)
        share = d.root.parent / "src-share"
        share.mkdir()
        d.cli("device", "add", "src", "www", "disk", f"source={share}", "path=/srv/www")
        d.cli("snapshot", "create", "src", "s1")
        (rootfs(d, "src") / "etc" / "later").write_text("after s1")

        out = cli_json(d, "copy", "src", "dup")
        assert out["dropped"] == ["ipv4.address"]
        new_id = (rootfs(d, "dup") / "etc" / "machine-id").read_text()
        assert len(new_id.strip()) == 32 and int(new_id, 16) >= 0 and new_id != machine_id
        assert (rootfs(d, "src") / "etc" / "machine-id").read_text() == machine_id
        dup = info(d, "dup")
        assert "ipv4.address" not in dup["config"]
        assert dup["config"]["user.k"] == "v" and dup["config"]["network"] == [net]
        assert dup["devices"] == info(d, "src")["devices"] and "www" in dup["devices"]
        assert info(d, "src")["config"]["ipv4.address"] == pinned
        # Snapshots come along, as they were.
        assert dup["snapshots"] == ["s1"]
        assert_same_tree(snapshot(d, "src", "s1"), snapshot(d, "dup", "s1"))
        assert (rootfs(d, "dup") / "etc" / "later").read_text() == "after s1"

        # Both run at once, each with its own MAC and address.
        for c in ("src", "dup"):
            d.cli("start", c)
        macs = {
            c: d.cli("exec", c, "--", "cat", "/sys/class/net/eth0/address").stdout.strip()
            for c in ("src", "dup")
        }
        assert macs["src"] != macs["dup"] and all(macs.values()), macs
        text = d.cli("copy", "src", "dup2", "--instance-only").stdout
        assert "not copied: ipv4.address" in text
        assert info(d, "dup2")["snapshots"] == []
        assert (rootfs(d, "dup2") / "etc" / "machine-id").read_text() not in (machine_id, new_id)


def test_copy_keeps_an_empty_machine_id_empty(daemon: Daemon) -> None:
    d = daemon
    d.cli("create", "src", "-t", "busybox")
    (rootfs(d, "src") / "etc" / "machine-id").write_text("")
    d.cli("copy", "src", "dup")
    assert (rootfs(d, "dup") / "etc" / "machine-id").read_text() == ""


def test_async_client_exports_and_imports(daemon: Daemon) -> None:
    """The TUI's client speaks the same stream as the CLI's."""
    import asyncio

    from lxpy.api.aclient import AsyncClient

    d = daemon
    make_source(d, "web")

    async def go() -> tuple[dict[str, Any], dict[str, Any], bytes]:
        client = AsyncClient(d.socket, timeout=120)
        parts: list[bytes] = []
        summary = await client.export_container("web", parts.append)
        data = b"".join(parts)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 16):
                yield data[i : i + (1 << 16)]

        made = await client.import_container(chunks(), "web2")
        return summary, made, data

    summary, made, data = asyncio.run(go())
    assert summary["size"] == len(data) and summary["snapshots"] == ["s1", "s2"]
    assert made["name"] == "web2" and made["snapshots"] == ["s1", "s2"]
    assert_same_container(d, "web", "web2")


def test_export_of_a_running_container(daemon: Daemon, tmp_path: Path) -> None:
    """On btrfs a running container is exported from snapshots of one
    instant, and keeps running; nothing of the export stays in the pool."""
    d = daemon
    make_source(d, "web")
    d.cli("start", "web")
    pid = info(d, "web")["init_pid"]
    backup = tmp_path / "web.tar.zst"
    d.cli("export", "-q", "web", str(backup))
    assert info(d, "web")["state"] == "RUNNING" and info(d, "web")["init_pid"] == pid
    hidden = [p.name for p in pool(d).containers.iterdir() if p.name.startswith(".")]
    assert hidden == [] and list(d.paths.spool.glob("*")) == []
    d.cli("import", "-q", str(backup), "web2")
    assert (rootfs(d, "web2") / "data" / "marker").read_text() == "three"
    d.cli("stop", "web", "--force")


def test_hang_ups_leave_nothing(daemon: Daemon, tmp_path: Path) -> None:
    """A client that goes away in the middle of an export or an upload:
    the export's snapshots, tools and spool go, and no import is made."""
    from lxpy.api.client import Client
    from lxpy.api.streams import STDIN, frame, open_stream

    d = daemon
    make_source(d, "web")
    # Enough data that the export is still under way when the client leaves.
    with open(rootfs(d, "web") / "big", "wb") as f:
        f.write(os.urandom(64 * 1024 * 1024))
    backup = tmp_path / "web.tar.zst"
    d.cli("export", "-q", "web", str(backup))
    client = Client(d.socket, timeout=60)

    sock, _ = open_stream(client, "GET", "/1.0/containers/web/export")
    assert sock.recv(65536)
    sock.close()

    sock, _ = open_stream(client, "POST", "/1.0/containers/import?name=half")
    sock.sendall(frame(STDIN, backup.read_bytes()[: 1 << 20]))
    sock.close()

    def settled() -> bool:
        hidden = [p for p in pool(d).containers.iterdir() if p.name.startswith(".")]
        tools = [
            p
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and str(pool(d).path).encode() in _cmdline(p)
        ]
        return not hidden and not tools and not list(d.paths.spool.glob("*"))

    wait_for(settled, 60, "the export and the upload to be cleaned up")
    assert [c["name"] for c in cli_json(d, "list")] == ["web"]
    # Both work again at once.
    d.cli("export", "-q", "web", str(tmp_path / "again.tar.zst"))
    d.cli("import", "-q", str(backup), "half")


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def test_dir_pool_refuses_to_export_a_running_container(dir_daemon: Daemon, tmp_path: Path) -> None:
    d = dir_daemon
    d.cli("create", "web", "-t", "busybox", timeout=300)
    d.cli("start", "web")
    err = fails(d, "export", "-q", "web", str(tmp_path / "w.tar.zst"))
    assert "while it is RUNNING" in err and "lxpy stop web" in err, err
    assert not (tmp_path / "w.tar.zst").exists()
    d.cli("stop", "web", "--force")
    d.cli("export", "-q", "web", str(tmp_path / "w.tar.zst"))
