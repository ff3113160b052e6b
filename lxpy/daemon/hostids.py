"""The host-wide record of the ID blocks that isolated containers hold.

Several lxpyd may run on one host, each on its own root, and every one of
them allocates from root's ranges in /etc/subuid and /etc/subgid. What
keeps two of them from handing one block to two containers is this
record, shared by every lxpyd on the host:

    /var/lib/lxpy-idmap/lock          flock(2)ed around every change
    /var/lib/lxpy-idmap/ROOTID.json   one per daemon root: its blocks

A daemon reads the others' files and rewrites its own under the lock, so
an allocation sees every block that any daemon gave out before it. Each
file names its root; the file of a root that no longer exists is dropped
by the next daemon that takes the lock. A daemon's own file mirrors its
container records (the truth), and is written again whenever they change
and when it starts, so a lost file comes back.

Non-isolated containers share one range by design (see docs/security.md)
and are not recorded here.

All of it blocks (flock, fsync): the daemon calls it in a worker thread.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lxpy.daemon.registry import write_atomic
from lxpy.errors import LxpyError
from lxpy.kernel.idranges import IdRange
from lxpy.model.paths import HOST_IDS_DIR, host_ids_file

log = logging.getLogger("lxpyd.hostids")


@dataclass(frozen=True, order=True)
class Block:
    """The host IDs an isolated container of the daemon at `root` holds."""

    root: str
    container: str
    uid_base: int
    gid_base: int
    size: int

    def uids(self) -> IdRange:
        return IdRange(self.uid_base, self.size)

    def gids(self) -> IdRange:
        return IdRange(self.gid_base, self.size)

    def overlaps(self, other: Block) -> bool:
        return self.uids().overlaps(other.uids()) or self.gids().overlaps(other.gids())

    def owner(self, mine: str) -> str:
        """Who holds it, for a message read by the daemon at root `mine`."""
        whose = "" if self.root == mine else f" of the lxpyd at {self.root}"
        return f"container {self.container!r}{whose}"


class HostIds:
    """The daemon at `root`'s view of the host-wide record in `directory`."""

    def __init__(self, root: Path, directory: Path = HOST_IDS_DIR) -> None:
        self.root = str(root)
        self.directory = directory
        self.path = host_ids_file(self.root, directory)

    @contextmanager
    def locked(self) -> Iterator[list[Block]]:
        """Hold the record's lock; yields the blocks of every other daemon
        root (and drops the files of roots that no longer exist).

        Raises:
            LxpyError: the record's directory cannot be made or opened.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise LxpyError(
                f"cannot use the host-wide record of ID ranges in {self.directory}: "
                f"{e.strerror or e}",
                hint="every lxpyd on the host keeps its containers' ID ranges there: "
                "it must be a directory root can write",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._others()
        finally:
            os.close(fd)

    def _others(self) -> list[Block]:
        out: list[Block] = []
        for f in sorted(self.directory.glob("*.json")):
            if f == self.path:
                continue
            try:
                data = json.loads(f.read_bytes())
                root = str(data["root"])
                blocks = [
                    Block(root, str(b["container"]), *(int(b[k]) for k in _FIELDS))
                    for b in data["blocks"]
                ]
            except (OSError, ValueError, KeyError, TypeError) as e:
                # Written atomically, so this is someone's hand: its blocks
                # cannot be known, and guessing could hand one out twice.
                log.warning("host ID record %s is unreadable (%s): ignored", f, e)
                continue
            if not os.path.isdir(root):
                log.info("host ID record: dropping %s, its root %s is gone", f, root)
                f.unlink(missing_ok=True)
                continue
            out += blocks
        return out

    def write(self, blocks: Iterable[Block]) -> None:
        """Make `blocks` this root's entry (the caller holds the lock)."""
        mine = sorted(b for b in blocks if b.root == self.root)
        if not mine:
            self.path.unlink(missing_ok=True)
            return
        rows = [{"container": b.container, **{k: getattr(b, k) for k in _FIELDS}} for b in mine]
        data = {"root": self.root, "blocks": rows}
        write_atomic(self.path, json.dumps(data, indent=1).encode() + b"\n", 0o600)

    def publish(self, blocks: Iterable[Block]) -> list[Block]:
        """Make `blocks` this root's entry; returns the other roots' blocks."""
        with self.locked() as others:
            self.write(blocks)
            return others

    def forget(self) -> None:
        """Remove this root's entry (its daemon and containers are gone)."""
        with self.locked():
            self.path.unlink(missing_ok=True)


_FIELDS = ("uid_base", "gid_base", "size")
