"""Security at the daemon: config checks, ID ranges and user namespaces.

* `check_config`: the security.* keys of a container, validated together
  (and the syscall names against the filter's table) before they are saved.
* `Security.assign`: the host ID range of an unprivileged container, picked
  once (at create, or at the first unprivileged start) and kept in its
  record; with the fallback method, the rootfs is shifted on disk here.
  Isolated blocks are allocated against every lxpyd on the host, through
  the record they share (`lxpy.daemon.hostids`).
* `Security.prepare_userns` / `unpin_userns`: where the user namespace of
  a running container on a network is bound (`RUN/userns/NAME`), so the
  network namespace that its veths go into and its launch use the same
  one, and lxpyd may restart meanwhile. On no network the launch makes it.

See docs/security.md for the model.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from lxpy.daemon.hostids import Block, HostIds
from lxpy.errors import Busy, InvalidArgument, Unsupported
from lxpy.kernel import idranges, namespaces, seccomp, shift
from lxpy.model.config import Container
from lxpy.model.security import IdmapRecord, SecurityConfig

if TYPE_CHECKING:
    from lxpy.daemon.state import Daemon

log = logging.getLogger("lxpyd.security")

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"


def check_config(config: Mapping[str, object]) -> SecurityConfig:
    """The security settings of a container config, checked as a whole.

    Raises:
        InvalidArgument: naming the bad key (conflicting keys, an unknown
            syscall name).
    """
    sec = SecurityConfig.from_config(config)
    try:
        seccomp.default_policy(sec.syscalls_deny, sec.syscalls_allow)
    except InvalidArgument as e:
        raise InvalidArgument(f"security.syscalls: {e.message}", e.hint) from None
    return sec


def describe(record: Container, apparmor: str = "") -> str:
    """One line for `lxpy info`: privileged (and under which AppArmor
    profile, `apparmor`, if any), or the map and how the rootfs is presented."""
    try:
        sec = SecurityConfig.from_config(record.config)
    except InvalidArgument as e:
        return f"invalid: {e.message}"
    nesting = "; nesting on (container runtimes may run inside)" if sec.nesting else ""
    if sec.privileged:
        confined = f"AppArmor profile {apparmor}" if apparmor else "no AppArmor on this host"
        return (
            f"privileged: root inside is root on the host (no user namespace; {confined})" + nesting
        )
    if record.idmap is None:
        return "unprivileged (its ID range is picked at the next start)" + nesting
    return record.idmap.describe() + nesting


_USERNS: list[str | None] = []


def userns_problem() -> str | None:
    """Why this host cannot make user namespaces for containers (None: it can).

    Probed once per process with a throwaway namespace. The usual reason
    is a chroot: the kernel refuses CLONE_NEWUSER to a chrooted caller.
    """
    if not _USERNS:
        try:
            # With root's own first ranges, which containers will use: in a
            # nesting container (lxpy inside lxpy) the default range lies
            # outside the container's map, where no ID can own a namespace.
            uids, _ = idranges.allowed_ranges(SUBUID)
            gids, _ = idranges.allowed_ranges(SUBGID)
            probe = idranges.IdMap(uids[0].start, gids[0].start, 1)
            os.close(namespaces.create_userns(probe))
            _USERNS.append(None)
        except OSError as e:
            why = e.strerror or str(e)
            if e.errno == errno.EPERM and os.stat("/").st_ino != os.stat("/proc/1/root/").st_ino:
                why += " (lxpyd runs in a chroot, where the kernel refuses user namespaces)"
            _USERNS.append(why)
    return _USERNS[0]


def _wanted_matches(rec: IdmapRecord, sec: SecurityConfig, shared: idranges.IdMap) -> bool:
    if rec.size != sec.idmap_size or rec.isolated != sec.idmap_isolated:
        return False
    if not sec.idmap_isolated:
        return (rec.uid_base, rec.gid_base) == (shared.uid_base, shared.gid_base)
    return sec.idmap_base is None or rec.uid_base == rec.gid_base == sec.idmap_base


def _pick(
    mine: str,
    name: str,
    sec: SecurityConfig,
    method: str,
    taken: list[Block],
    uid_allowed: list[idranges.IdRange],
    gid_allowed: list[idranges.IdRange],
) -> IdmapRecord:
    """The range container `name` of the daemon at root `mine` gets, given
    every isolated block `taken` on the host.

    Raises:
        Busy: no free range, or a fixed base that overlaps another block.
    """
    shared = idranges.shared_map(uid_allowed, gid_allowed)
    if not sec.idmap_isolated:
        return IdmapRecord(shared.uid_base, shared.gid_base, shared.size, method, False)
    size = sec.idmap_size
    # The shared range is never handed to an isolated container.
    common = Block("", "", shared.uid_base, shared.gid_base, shared.size)
    if sec.idmap_base is not None:
        wanted = Block(mine, name, sec.idmap_base, sec.idmap_base, size)
        for other in [common, *taken]:
            if wanted.overlaps(other):
                whose = other.owner(mine) if other.container else "non-isolated containers"
                lo = other.uid_base if wanted.uids().overlaps(other.uids()) else other.gid_base
                raise Busy(
                    f"security.idmap.base: {sec.idmap_base}..{sec.idmap_base + size - 1} "
                    f"overlaps the range {lo}..{lo + other.size - 1} of {whose}",
                    hint="pick another base, or unset it to have one allocated",
                )
        return IdmapRecord(sec.idmap_base, sec.idmap_base, size, method, True)
    uid = idranges.allocate(uid_allowed, [b.uids() for b in [common, *taken]], size)
    gid = idranges.allocate(gid_allowed, [b.gids() for b in [common, *taken]], size)
    return IdmapRecord(uid.start, gid.start, size, method, True)


@dataclass(frozen=True)
class StartSecurity:
    """What a start needs of a container's security settings, checked once
    (Security.for_start)."""

    # The record it starts with: with its ID range, if unprivileged.
    record: Container
    settings: SecurityConfig
    # The host IDs its user namespace maps to; None: privileged (none).
    ids: idranges.IdMap | None
    # Its LaunchSpec fields (launch_fields), but `userns`.
    fields: dict[str, object]


class Security:
    """ID ranges and user namespaces of daemon `d`'s containers."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.root = str(d.settings.root)
        self.host = HostIds(d.settings.root)
        # Ranges handed out to containers whose record is not saved yet
        # (a create or copy under way): name -> record.
        self._claims: dict[str, IdmapRecord] = {}
        # Every read-pick-publish of the host-wide record, in turn: a pick
        # must see the blocks this daemon claimed a moment before.
        self._host_lock = trio.Lock()
        self._published: frozenset[Block] | None = None
        # Containers whose recorded block another lxpyd had published
        # first (both made before the record was shared): they get a block
        # of their own at their next start.
        self.stale: set[str] = set()

    # -- ID ranges -------------------------------------------------------------
    def _blocks(self, skip: str = "") -> list[Block]:
        # This daemon's isolated blocks: saved records and pending claims.
        recs = {n: r.idmap for n, r in self.d.records.items() if r.idmap}
        recs.update(self._claims)
        return [
            Block(self.root, n, r.uid_base, r.gid_base, r.size)
            for n, r in sorted(recs.items())
            if r.isolated and n != skip
        ]

    async def open(self) -> None:
        """Publish this daemon's blocks in the host-wide record, and note
        (as `stale`) its containers whose block another lxpyd holds."""
        async with self._host_lock:
            mine = self._blocks()
            others = await self.d.files(self.host.publish, mine)
            self._published = frozenset(mine)
        for b in mine:
            clash = next((o for o in others if b.overlaps(o)), None)
            if clash is None:
                continue
            rec = self.d.records[b.container].idmap
            if rec is not None and rec.method == "shift":
                log.warning(
                    "container %s: its ID range %d.. overlaps that of %s, and its files "
                    "are shifted to it: copy it into a new container to separate them",
                    b.container,
                    b.uid_base,
                    clash.owner(self.root),
                )
                continue
            log.warning(
                "container %s: its ID range %d.. overlaps that of %s; it gets a range "
                "of its own at its next start",
                b.container,
                b.uid_base,
                clash.owner(self.root),
            )
            self.stale.add(b.container)

    async def publish(self) -> None:
        """Bring this daemon's entry in the host-wide record in line with
        its records and claims (after a delete, a rename, a failed create)."""
        with trio.CancelScope(shield=True):
            async with self._host_lock:
                mine = frozenset(self._blocks())
                if mine != self._published:
                    await self.d.files(self.host.publish, mine)
                    self._published = mine

    async def rename(self, old: str, new: str) -> None:
        """Container `old` is now `new` (its record is): so in the host-wide record."""
        if old in self.stale:
            self.stale.discard(old)
            self.stale.add(new)
        await self.publish()

    def _pick_and_claim(
        self, name: str, sec: SecurityConfig, method: str, own: list[Block]
    ) -> tuple[IdmapRecord, frozenset[Block]]:
        # In a worker thread, holding the host-wide lock: every block any
        # lxpyd gave out is in `others`, and the pick is published before
        # the lock goes. Returns it and what this daemon's entry now holds.
        uid_allowed, _ = idranges.allowed_ranges(SUBUID)
        gid_allowed, _ = idranges.allowed_ranges(SUBGID)
        with self.host.locked() as others:
            rec = _pick(self.root, name, sec, method, own + others, uid_allowed, gid_allowed)
            if rec.isolated:
                own = [*own, Block(self.root, name, rec.uid_base, rec.gid_base, rec.size)]
            self.host.write(own)
        return rec, frozenset(own)

    async def assign(
        self, name: str, config: Mapping[str, object], current: IdmapRecord | None, fresh: bool
    ) -> IdmapRecord | None:
        """The ID range container `name` runs with (None: privileged, nothing kept).

        Picks a range when it has none or its config asks for another, and
        claims it until `release` (the caller saves the record first).
        `fresh`: the rootfs was just made (a create or copy), so a shift may
        run on it.

        Raises:
            InvalidArgument: bad security.* keys, or a change a shifted
                rootfs cannot follow.
            Busy: no free range, or a fixed base that overlaps another.
        """
        return await self._assign(name, check_config(config), current, fresh)

    async def _assign(
        self, name: str, sec: SecurityConfig, current: IdmapRecord | None, fresh: bool
    ) -> IdmapRecord | None:
        # assign() for settings checked already (`sec`).
        # The choice is made holding this daemon's lock (its own blocks,
        # claims included, cannot change meanwhile) and the host-wide one
        # (nor can any other lxpyd's).
        if not sec.privileged:
            # Probed once, in a worker thread; known, it is read right here.
            problem = _USERNS[0] if _USERNS else await self.d.files(userns_problem)
            if problem is not None:
                raise Unsupported(
                    f"container {name!r} cannot be unprivileged here: "
                    f"no user namespace can be made: {problem}",
                    hint="set security.privileged=true to run it without one",
                )
        if sec.privileged:
            if current is not None and current.method == "shift":
                raise InvalidArgument(
                    f"container {name!r} had its files shifted to host IDs "
                    f"{current.uid_base}..; it cannot become privileged",
                    hint="copy its files into a new privileged container instead",
                )
            return current
        method = (
            current.method
            if current is not None
            else await self.d.storage(shift.idmap_method, str(self.d.backend.container_path(name)))
        )
        uid_allowed, _ = idranges.allowed_ranges(SUBUID)
        gid_allowed, _ = idranges.allowed_ranges(SUBGID)
        shared = idranges.shared_map(uid_allowed, gid_allowed)
        keep = name not in self.stale or (current is not None and current.method == "shift")
        if current is not None and keep and _wanted_matches(current, sec, shared):
            return current
        async with self._host_lock:
            own = self._blocks(skip=name)
            rec, written = await self.d.files(self._pick_and_claim, name, sec, method, own)
            self._claims[name] = rec
            self._published = written
        if method == "shift":
            try:
                await self.d.storage(self._shift, name, current, rec, fresh)
            except BaseException:
                await self.release(name)
                raise
        return rec

    def _shift(self, name: str, current: IdmapRecord | None, rec: IdmapRecord, fresh: bool) -> None:
        if current is not None and not fresh:
            raise InvalidArgument(
                f"container {name!r} had its files shifted to host IDs "
                f"{current.uid_base}..; its ID map cannot change",
                hint="keep its security.idmap.* settings",
            )
        rootfs = str(self.d.backend.container_path(name))
        n = shift.shift_tree(rootfs, idranges.IdMap(rec.uid_base, rec.gid_base, rec.size))
        log.info("container %s: shifted %d inodes to host IDs %d..", name, n, rec.uid_base)

    async def release(self, name: str) -> None:
        """Drop the claim `assign` made (its record is saved, or the attempt
        failed: then its block leaves the host-wide record too)."""
        self._claims.pop(name, None)
        await self.publish()

    async def for_start(self, record: Container) -> StartSecurity:
        """What the start of `record` needs of its security settings,
        checked once: the record with the ID range it starts with (picked
        now if it had none, and saved when it changed), its ID map and its
        launch fields.

        Raises:
            as assign().
        """
        sec = check_config(record.config)
        if sec.privileged:
            return StartSecurity(record, sec, None, launch_fields(record, sec))
        rec = await self._assign(record.name, sec, record.idmap, fresh=False)
        if rec == record.idmap:
            await self.release(record.name)
            new = record
        else:
            new = replace(record, idmap=rec)
            try:
                await self.d.files(self.d.registry.save, new)
                self.d.table.put(new)
                self.stale.discard(record.name)
            finally:
                await self.release(record.name)
            log.info("container %s: host ID range %s", record.name, rec.to_json() if rec else None)
        ids = idranges.IdMap(rec.uid_base, rec.gid_base, rec.size) if rec is not None else None
        return StartSecurity(new, sec, ids, launch_fields(new, sec))

    # -- user namespaces -------------------------------------------------------
    def userns_path(self, name: str) -> Path:
        """Where container `name`'s user namespace is bound while it runs."""
        return self.d.settings.paths.run.userns(name)

    def prepare_userns(self, name: str) -> str:
        """The path container `name`'s user namespace is bound on, its
        directory made and a stale binding removed (for a caller that makes
        the namespace elsewhere: namespaces.pin_new_namespaces). Blocking.

        Raises:
            OSError: the directory cannot be made or the stale one unbound.
        """
        path = self.userns_path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        namespaces.unpin_ns(str(path))
        return str(path)

    def unpin_userns(self, name: str) -> None:
        """Unbind container `name`'s user namespace (idempotent); the
        namespace ends with its last process."""
        path = self.userns_path(name)
        namespaces.unpin_ns(str(path))
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def check_update(record: Container, config: Mapping[str, object]) -> None:
    """Check a new config of `record` before it is saved.

    Raises:
        InvalidArgument: bad security.* keys, or a map change that a rootfs
            shifted on disk cannot follow.
    """
    sec = check_config(config)
    rec = record.idmap
    if rec is None or rec.method != "shift":
        return
    uid_allowed, _ = idranges.allowed_ranges(SUBUID)
    gid_allowed, _ = idranges.allowed_ranges(SUBGID)
    if sec.privileged or not _wanted_matches(
        rec, sec, idranges.shared_map(uid_allowed, gid_allowed)
    ):
        raise InvalidArgument(
            f"container {record.name!r} had its files shifted to host IDs "
            f"{rec.uid_base}..; it cannot become privileged or change its ID map",
            hint="keep its security.privileged and security.idmap.* settings",
        )


def launch_fields(record: Container, sec: SecurityConfig) -> dict[str, object]:
    """The LaunchSpec fields of `record`'s security settings `sec` (checked
    by check_config), but `userns` (an unprivileged record must have its
    range: see Security.for_start).

    Raises:
        InvalidArgument: an unprivileged record without its range.
    """
    out: dict[str, object] = {
        "drop_caps": sec.drop_caps,
        "syscalls_deny": sec.syscalls_deny,
        "syscalls_allow": sec.syscalls_allow,
        "no_new_privs": sec.no_new_privs,
        "nesting": sec.nesting,
    }
    if not sec.privileged:
        rec = record.idmap
        if rec is None:
            raise InvalidArgument(f"container {record.name!r} has no ID range yet")
        out |= {
            "uid_base": rec.uid_base,
            "gid_base": rec.gid_base,
            "idmap_size": rec.size,
            "idmap_method": rec.method,
        }
    return out
