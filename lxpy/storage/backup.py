"""Backup archives of a container: writing them, checking them, unpacking them.

One file, zstd-compressed tar (docs/backup.md), version 1:

    index.json               first: format, version, the container's record
                             (config and whatever else it holds), its snapshots
    rootfs/...               the rootfs as files        (a plain backup)
    snapshots/SNAP/...       each snapshot as files
    rootfs.btrfs             a btrfs send stream        (an optimized backup)
    snapshots/SNAP.btrfs     each snapshot's stream, incremental from the one
                             before it; rootfs.btrfs from the last snapshot

Plain backups are GNU tar's (owners by number, modes, xattrs, ACLs, sparse
files, hard links), which any pool kind can unpack; optimized ones need a
btrfs pool on both ends and cost a fraction of the time to write and read.

Everything here is blocking: the daemon runs it in worker threads. An
archive is untrusted input: before anything is unpacked its every member is
checked (scan), and what is refused is said with the member's name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lxpy.errors import InvalidArgument, LxpyError, Unsupported, pool_full
from lxpy.revert import Revert
from lxpy.storage.tree import CLOSED_MODE, TreeBackend, guard_name

FORMAT = "lxpy-backup"
VERSION = 1
INDEX = "index.json"
# An index is a record and a list of snapshots: a few KiB. Anything much
# larger is not one.
MAX_INDEX = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ROOTFS = "rootfs"
SNAPSHOTS = "snapshots"
STREAM = ".btrfs"
# What GNU tar keeps beyond names and data: numeric owners (the IDs mean
# the same in every pool), xattrs of every namespace (security.capability
# among them), ACLs, holes.
_TAR_KEEP = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse"]
_TAR_UNPACK = [
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--same-permissions",
    "--same-owner",
    # Every member was checked, but tar stays careful too: no member
    # overwrites what another one made, and no path is followed out.
    "--keep-old-files",
]
_TOOL_TAIL = 2000


class BadArchive(InvalidArgument):
    """The file is not an lxpy backup, or a damaged or hostile one."""


def bad(message: str) -> BadArchive:
    return BadArchive(
        f"not a usable lxpy backup: {message}",
        hint="nothing was imported; make the file again with `lxpy export`",
    )


class Procs:
    """The processes of one pipeline, so another thread can kill them."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self.killed = False

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self.killed:
                raise LxpyError("cancelled")
            p = subprocess.Popen(args, **kw)
            self._procs.append(p)
            return p

    def kill(self) -> None:
        with self._lock:
            self.killed = True
            for p in self._procs:
                if p.poll() is None:
                    p.kill()


def _finish(p: subprocess.Popen[bytes], what: str, err: IO[bytes] | None = None) -> None:
    """Wait for `p`; raise naming `what` if it failed."""
    text = err.read().decode(errors="replace")[-_TOOL_TAIL:] if err is not None else ""
    rc = p.wait()
    if rc != 0:
        detail = text.strip().splitlines()[-1] if text.strip() else f"exit status {rc}"
        if "No space left" in text:
            raise pool_full(what)
        raise LxpyError(f"{what} failed: {detail}")


# -- what is exported -----------------------------------------------------------------


@dataclass
class Sources:
    """The trees an export reads: read-only (a private set of snapshots on
    btrfs, made under the container's lock) or the pool's own (dir, which
    the caller keeps locked)."""

    base: Path
    rootfs: Path
    snapshots: list[tuple[str, Path]]
    holder: Path | None = None

    def arcs(self) -> list[tuple[str, Path]]:
        """(name in the archive, tree) of each snapshot, oldest first."""
        return [(f"{SNAPSHOTS}/{s}", p) for s, p in self.snapshots]

    def release(self, backend: TreeBackend) -> None:
        if self.holder is not None:
            backend.destroy_scratch(self.holder)
            self.holder = None


def freeze_sources(backend: TreeBackend, name: str, snaps: list[str], optimized: bool) -> Sources:
    """The trees to export of container `name` and its snapshots `snaps`
    (oldest first). On btrfs they are read-only snapshots of their own
    (O(1) each), so the container may run and change meanwhile.

    Raises:
        Unsupported: `optimized` on a pool that is not btrfs.
    """
    rootfs = backend.container_path(name)
    if backend.name != "btrfs":
        if optimized:
            raise Unsupported(
                f"an optimized export needs a btrfs pool; this one is {backend.name!r}",
                hint="export without --optimized (a tar any pool can import)",
            )
        return Sources(backend.path, rootfs, [(s, backend.snapshot_path(name, s)) for s in snaps])
    holder = backend.scratch_volume(name, "export")
    with Revert(f"export of container {name!r}") as rv:
        rv.undo(lambda: backend.destroy_scratch(holder), f"remove {holder}")
        out = Sources(backend.path, holder / ROOTFS, [], holder)
        os.mkdir(holder / SNAPSHOTS, 0o700)
        for s in snaps:
            dst = holder / SNAPSHOTS / guard_name(s, "snapshot")
            backend.read_only_copy(backend.snapshot_path(name, s), dst)
            out.snapshots.append((s, dst))
        backend.read_only_copy(rootfs, out.rootfs)
    return out


def write_archive(
    src: Sources, index: dict[str, object], optimized: bool, spool: Path, out: int, procs: Procs
) -> None:
    """Write the archive of `src` with `index` to the file descriptor `out`
    (a pipe: the archive is never kept whole on the host), using the
    directory `spool` (made here, removed after) for the index and, when
    `optimized`, the send streams.

    Raises:
        LxpyError: a tool failed (its message).
    """
    spool.mkdir(mode=0o700)
    try:
        (spool / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        if optimized:
            members = _send_streams(src, spool, procs)
            args = ["tar", "-c", "-f", "-", "-C", str(spool), INDEX, *members]
        else:
            rules, operands = [], []
            for arc, path in [(ROOTFS, src.rootfs), *src.arcs()]:
                rel = str(path.relative_to(src.base))
                # S: symlink targets are the container's, never renamed.
                rules += ["--transform", f"s,^{re.escape(rel)},{arc},S"]
                operands.append(rel)
            args = [
                "tar", "-c", "-f", "-", *_TAR_KEEP, "-C", str(spool), INDEX,
                "-C", str(src.base), *rules, "--", *operands,
            ]  # fmt: skip
        tar = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        zstd = procs.start(
            ["zstd", "-q", "-T0", "-3", "-c"], stdin=tar.stdout, stdout=out, stderr=subprocess.PIPE
        )
        assert tar.stdout is not None
        tar.stdout.close()
        _finish(tar, "tar of the container", tar.stderr)
        _finish(zstd, "zstd", zstd.stderr)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _send_streams(src: Sources, spool: Path, procs: Procs) -> list[str]:
    (spool / SNAPSHOTS).mkdir()
    members: list[str] = []
    parent: Path | None = None
    for arc, path in [*src.arcs(), (ROOTFS, src.rootfs)]:
        member = arc + STREAM
        args = ["btrfs", "-q", "send", "-f", str(spool / member)]
        if parent is not None:
            args += ["-p", str(parent)]
        p = procs.start([*args, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _finish(p, f"btrfs send of {arc}", p.stderr)
        members.append(member)
        parent = path
    return members


# -- reading an archive ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What an archive's index says it holds (checked)."""

    container: dict[str, object]
    # (name, created_at), oldest first.
    snapshots: list[tuple[str, str]]
    optimized: bool
    version: int
    index: dict[str, object] = field(repr=False)


def check_magic(path: Path) -> None:
    """Refuse a file that is not zstd-compressed at all (a plain tar, a
    gzip file), before anything else reads it."""
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4:
        raise bad(f"the file holds {len(head)} bytes")
    if head != ZSTD_MAGIC:
        raise bad("the file is not zstd-compressed (lxpy backups are .tar.zst)")


def _unzstd(path: Path, procs: Procs) -> subprocess.Popen[bytes]:
    return procs.start(
        ["zstd", "-d", "-c", "-q", "--", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _zstd_verdict(p: subprocess.Popen[bytes]) -> None:
    """Read what is left of `p`'s output (so zstd reaches the checksum at
    the end) and refuse the file when zstd found it damaged."""
    assert p.stdout is not None and p.stderr is not None
    while p.stdout.read(1 << 20):
        pass
    err = p.stderr.read().decode(errors="replace").strip()
    if p.wait() != 0:
        detail = err.splitlines()[-1] if err else f"zstd exited {p.returncode}"
        raise bad(f"the file is truncated or damaged ({detail})")


def read_index(path: Path, procs: Procs) -> Plan:
    """The checked index of the archive at `path`.

    Raises:
        BadArchive: no index first, or one that does not say what it must.
        Unsupported: an archive of a newer format version.
    """
    check_magic(path)
    p = _unzstd(path, procs)
    try:
        try:
            tf = tarfile.open(fileobj=p.stdout, mode="r|")
            first = tf.next()
            if first is None or first.name != INDEX or not first.isreg():
                raise bad(f"its first member is not {INDEX}")
            if first.size > MAX_INDEX:
                raise bad(f"its {INDEX} is {first.size} bytes long")
            f = tf.extractfile(first)
            assert f is not None
            raw = f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise bad(f"cannot read its {INDEX} ({e})") from None
    finally:
        p.kill()
        p.wait()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise bad(f"its {INDEX} is not JSON ({e})") from None
    return parse_index(data)


def parse_index(data: object) -> Plan:
    """Check an index (see docs/backup.md).

    Raises:
        BadArchive, Unsupported.
    """
    from lxpy.model.names import validate_name

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"its {INDEX} does not say format {FORMAT!r}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"its {INDEX} has no format version")
    if version > VERSION:
        raise Unsupported(
            f"the backup is of format version {version}; this lxpy reads up to {VERSION}",
            hint="import it with a newer lxpy",
        )
    container = data.get("container")
    if not isinstance(container, dict) or not isinstance(container.get("name"), str):
        raise bad(f"its {INDEX} has no container record")
    optimized = data.get("optimized")
    if not isinstance(optimized, bool):
        raise bad(f"its {INDEX} does not say whether it is optimized")
    raw = data.get("snapshots")
    if not isinstance(raw, list):
        raise bad(f"its {INDEX} has no list of snapshots")
    snaps: list[tuple[str, str]] = []
    for s in raw:
        if not isinstance(s, dict):
            raise bad(f"a snapshot in its {INDEX} is not an object: {s!r}")
        try:
            name = validate_name(s.get("name"), "snapshot")
        except InvalidArgument as e:
            raise bad(e.message) from None
        if name in (n for n, _ in snaps):
            raise bad(f"snapshot {name!r} is listed twice")
        snaps.append((name, str(s.get("created_at") or "")))
    return Plan(container, snaps, optimized, version, data)


def _trees(plan: Plan) -> list[str]:
    return [ROOTFS, *(f"{SNAPSHOTS}/{s}" for s, _ in plan.snapshots)]


class _Checker:
    """The rules every member of a plain archive keeps (see scan)."""

    def __init__(self, plan: Plan) -> None:
        self.trees = set(_trees(plan))
        self.seen_trees: set[str] = set()
        self.links: set[str] = set()
        self.files: dict[str, str] = {}

    def _tree(self, name: str) -> str | None:
        parts = name.split("/")
        if parts[0] == ROOTFS:
            return ROOTFS
        if parts[0] == SNAPSHOTS and len(parts) > 1:
            tree = "/".join(parts[:2])
            if tree in self.trees:
                return tree
        return None

    def _path(self, name: str, member: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise bad(f"member {member!r} names a path outside the archive's tree ({name!r})")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.links:
                raise bad(f"member {member!r} lies under the symbolic link {prefix!r}")
        return name

    def check(self, m: tarfile.TarInfo) -> None:
        name = self._path(m.name, m.name)
        if name == SNAPSHOTS and m.isdir():
            return
        tree = self._tree(name)
        if tree is None:
            raise bad(f"member {name!r} is not part of what its {INDEX} lists")
        self.seen_trees.add(tree)
        if m.ischr() or m.isblk():
            raise bad(
                f"member {name!r} is a device node ({m.devmajor}:{m.devminor}); "
                "container trees never hold any"
            )
        if m.issym():
            if name == tree:
                raise bad(f"member {name!r}, the top of a tree, is a symbolic link")
            self.links.add(name)
        elif m.islnk():
            target = self._path(m.linkname, name)
            if self.files.get(target) != tree:
                raise bad(f"member {name!r} is a hard link to {target!r}, not a file of its tree")
        elif m.isreg():
            self.files[name] = tree
        elif not (m.isdir() or m.isfifo()):
            raise bad(f"member {name!r} is of a kind a backup never holds ({m.type!r})")

    def finish(self) -> None:
        missing = sorted(self.trees - self.seen_trees)
        if missing:
            raise bad(f"it lacks {', '.join(missing)}, which its {INDEX} lists")


def scan(path: Path, plan: Plan, procs: Procs) -> int:
    """Read the whole archive once and check every member; returns the
    uncompressed size of its members' data.

    A plain archive holds the trees its index lists and nothing else: no
    path out of them, no member under a symbolic link of the archive, no
    device node, hard links only to files of their own tree. An optimized
    one holds exactly one send stream per tree.

    Raises:
        BadArchive: naming the first member refused, or the damage found.
    """
    p = _unzstd(path, procs)
    total = 0
    try:
        try:
            tf = tarfile.open(fileobj=p.stdout, mode="r|")
            members = iter(tf)
            first = next(members, None)
            if first is None or first.name != INDEX:
                raise bad(f"its first member is not {INDEX}")
            if plan.optimized:
                want = {t + STREAM for t in _trees(plan)}
                got: set[str] = set()
                for m in members:
                    if m.name == SNAPSHOTS and m.isdir():
                        continue
                    if m.name not in want or m.name in got or not m.isreg():
                        raise bad(f"member {m.name!r} is not one of its send streams")
                    got.add(m.name)
                    total += m.size
                if got != want:
                    raise bad(f"it lacks {', '.join(sorted(want - got))}")
            else:
                checker = _Checker(plan)
                for m in members:
                    checker.check(m)
                    total += m.size
                checker.finish()
        except (tarfile.TarError, EOFError) as e:
            # Damage shows first as a tar that makes no sense, or ends early:
            # zstd's own word on it is the better message.
            _zstd_verdict(p)
            raise bad(f"its tar is damaged ({e})") from None
        _zstd_verdict(p)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    return total


# -- unpacking ------------------------------------------------------------------------


def unpack_trees(path: Path, plan: Plan, staging: Path, procs: Procs) -> None:
    """Unpack a plain archive's trees into `staging`, where each tree's top
    directory is already made (a volume: see TreeBackend.scratch_tree)."""
    _untar(path, [*_TAR_UNPACK, "-C", str(staging), "--", *_trees(plan)], procs)


def _untar(path: Path, args: list[str], procs: Procs) -> None:
    z = _unzstd(path, procs)
    tar = procs.start(
        ["tar", "-x", "-f", "-", *args],
        stdin=z.stdout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert z.stdout is not None
    z.stdout.close()
    _finish(tar, "unpacking the backup", tar.stderr)
    _finish(z, "zstd", z.stderr)


def unpack_streams(path: Path, plan: Plan, spool: Path, procs: Procs) -> list[tuple[str, Path]]:
    """Unpack an optimized archive's send streams into `spool`; returns
    (tree, stream file), in the order they must be received."""
    _untar(path, ["-C", str(spool), "--", *(t + STREAM for t in _trees(plan))], procs)
    # Snapshots oldest first, then the rootfs: each one's parent comes first.
    order = [*_trees(plan)[1:], ROOTFS]
    return [(t, spool / (t + STREAM)) for t in order]


_HEAD = re.compile(r"^(subvol|snapshot)\s+\./(\S+)\s+uuid=(\S+)")
_PARENT = re.compile(r"\sparent_uuid=(\S+)")


def check_stream(stream: Path, tree: str, parent: tuple[str, str] | None, procs: Procs) -> str:
    """Check that `stream` is one btrfs send stream of one subvolume, named
    as the archive's `tree` was sent (see _send_streams), incremental from
    the stream before it (`parent`: its uuid and name) or full for the
    first, and that it clones only from itself or that parent. Returns its
    uuid.

    Raises:
        BadArchive: naming what the stream is instead.
    """
    sent = os.path.basename(tree)
    sources = (f"./{sent}/",) + ((f"./{parent[1]}/",) if parent else ())
    p = procs.start(
        ["btrfs", "receive", "--dump", "-f", str(stream)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    uuid: str | None = None
    what = f"the send stream of {tree}"
    try:
        for raw in p.stdout:
            line = raw.decode(errors="replace")
            op = line.split(None, 1)[0] if line.strip() else ""
            if op in ("subvol", "snapshot"):
                m = _HEAD.match(line)
                if uuid is not None or m is None:
                    raise bad(f"{what} holds more than one subvolume")
                if m.group(2) != sent:
                    raise bad(f"{what} holds a subvolume named {m.group(2)!r}")
                uuid = m.group(3)
                if parent is None and op != "subvol":
                    raise bad(f"{what} is incremental, and nothing before it is its parent")
                of = _PARENT.search(line)
                if parent is not None and (
                    op != "snapshot" or of is None or of.group(1) != parent[0]
                ):
                    raise bad(f"{what} is not incremental from the stream before it")
            elif uuid is None and op:
                raise bad(f"{what} does not begin with its subvolume")
            elif op == "clone":
                src = re.search(r"\sfrom=(\S+)", line)
                if src is None or not src.group(1).startswith(sources):
                    raise bad(f"{what} clones data from outside it and its parent")
        err = p.stderr.read().decode(errors="replace").strip()
        if p.wait() != 0 or uuid is None:
            detail = err.splitlines()[-1] if err else "no subvolume in it"
            raise bad(f"{what} is not a btrfs send stream ({detail})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return uuid


def receive(stream: Path, into: Path, procs: Procs) -> None:
    """Receive one checked send stream into the directory `into`, confined
    there (chroot) and stopping at the stream's end."""
    p = procs.start(
        ["btrfs", "-q", "receive", "-C", "-e", "-f", str(stream), str(into)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _finish(p, "btrfs receive", p.stderr)


def new_spool(base: Path, tag: str) -> Path:
    """A fresh path for one operation's spool files under `base`
    (root's alone), not made yet."""
    base.mkdir(parents=True, exist_ok=True, mode=CLOSED_MODE)
    return base / f"{tag}-{secrets.token_hex(6)}"


def clear_spool(base: Path) -> list[str]:
    """Remove what operations cut short left in `base` (at daemon start)."""
    if not base.is_dir():
        return []
    gone = []
    for entry in sorted(os.listdir(base)):
        p = base / entry
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(entry)
    return gone
