"""Export and import of a container as one file (docs/backup.md).

The file travels over the API's socket, never through a host path lxpyd
would open for the caller: `lxpy export` asks for a framed stream
(lxpy.api.streams) and writes the stdout frames it gets to its file;
`lxpy import` sends its file as stdin frames (an empty one ends it). So a
restricted user can export only what the API lets them see, and no caller
can make lxpyd read or write a host path of its choosing.

An export works on read-only snapshots of the container and its snapshots
taken under its lock (btrfs: O(1), so a running container may be
exported), or on the stopped container itself (dir). An import keeps the
upload in a spool file, reads its index, checks every member of it, and
only then makes anything: a scratch volume unpacked or received into, then
moved into place, then the record, as one intent of the journal ("import":
a crash leaves nothing a restart does not remove).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from lxpy import __version__
from lxpy.api.streams import ERROR, EXIT, STDIN, STDOUT, FrameDecoder, frame, json_frame
from lxpy.daemon import configcheck
from lxpy.daemon.containers import Containers
from lxpy.daemon.events import now_iso
from lxpy.daemon.http import Request, Router, Upgrade, leaf_error
from lxpy.daemon.networks import Networks
from lxpy.daemon.policy import owner_of
from lxpy.daemon.security import Security
from lxpy.daemon.security import check_config as check_security
from lxpy.daemon.state import Daemon
from lxpy.daemon.streams import FRAMED, require_upgrade
from lxpy.errors import Busy, InvalidArgument, LxpyError, Unsupported, is_full, pool_full
from lxpy.model import tomlw
from lxpy.model.config import Container, Owner, validate_config
from lxpy.model.names import validate_name
from lxpy.model.state import State
from lxpy.storage import backup as bk
from lxpy.storage.tree import TreeBackend

log = logging.getLogger("lxpyd.backups")

CHUNK = 1 << 20
# Written to the spool file in pieces of this size, not per frame.
_FLUSH = 4 << 20


class Backups:
    """Export and import of daemon `d`'s containers; an import is recorded
    through `containers`, its network config checked against `networks`
    and its ID range claimed from `security`."""

    def __init__(
        self, d: Daemon, containers: Containers, networks: Networks, security: Security
    ) -> None:
        self.d = d
        self.containers = containers
        self.networks = networks
        self.security = security
        self.spool = d.settings.paths.spool
        # Exports and imports read and write the whole rootfs: limited
        # apart from the storage calls every request makes.
        self.limiter = trio.CapacityLimiter(2)

    @property
    def backend(self) -> TreeBackend:
        backend = self.d.backend
        assert isinstance(backend, TreeBackend)
        return backend

    async def _run(self, fn: Callable[..., Any], *args: object) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except OSError as e:
            if is_full(e):
                raise pool_full("backup") from e
            raise

    # -- export ---------------------------------------------------------------
    async def export(
        self,
        name: str,
        instance_only: bool,
        optimized: bool,
        send: Callable[[bytes], Awaitable[None]],
    ) -> dict[str, object]:
        """Write the archive of container `name` through `send`, a chunk at
        a time; returns what was sent (size, snapshots).

        Raises:
            NotFound; Unsupported (optimized off btrfs); Busy (running, on a
            dir pool); LxpyError: a tool failed.
        """
        d = self.d
        backend = self.backend
        procs = bk.Procs()
        lock = d.table.lock(name)
        await lock.acquire()
        held = True
        try:
            record = d.table.require(name)
            if backend.name != "btrfs" and d.states.get(name) not in (State.STOPPED, State.ERROR):
                raise Busy(
                    f"cannot export container {name!r} while it is {d.states.get(name)} "
                    f"on a {backend.name!r} pool",
                    hint=f"stop it first (`lxpy stop {name}`); a btrfs pool exports it running",
                )
            infos = [] if instance_only else await d.storage(backend.list_snapshots, name)
            sources = await d.storage(
                bk.freeze_sources, backend, name, [s.name for s in infos], optimized
            )
            if sources.holder is not None:
                # Its own read-only copies: the container is free again.
                lock.release()
                held = False
            index = self._index(record, infos, optimized)
            sent = await self._stream(sources, index, optimized, send, procs)
        finally:
            if held:
                lock.release()
        log.info("exported %s (%d bytes, optimized=%s)", name, sent, optimized)
        return {"size": sent, "snapshots": [s.name for s in infos], "optimized": optimized}

    def _index(self, record: Container, infos: list[Any], optimized: bool) -> dict[str, object]:
        container = record.to_json()
        # Who made it is this host's business; the importer owns the copy.
        container.pop("owner", None)
        return {
            "format": bk.FORMAT,
            "version": bk.VERSION,
            "lxpy_version": __version__,
            "exported_at": now_iso(),
            "optimized": optimized,
            "pool": self.backend.name,
            "container": container,
            "snapshots": [{"name": s.name, "created_at": s.created_at} for s in infos],
        }

    async def _stream(
        self,
        sources: bk.Sources,
        index: dict[str, object],
        optimized: bool,
        send: Callable[[bytes], Awaitable[None]],
        procs: bk.Procs,
    ) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        spool = bk.new_spool(self.spool, "export")
        total = 0
        try:
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    try:
                        await self._run(
                            bk.write_archive, sources, index, optimized, spool, w, procs
                        )
                    except LxpyError:
                        if not procs.killed:
                            raise
                        # Killed because the reader stopped: its error is the one.
                    finally:
                        os.close(w)

                nursery.start_soon(write)
                reader = trio.lowlevel.FdStream(r)
                r = -1
                try:
                    while data := await reader.receive_some(CHUNK):
                        await send(bytes(data))
                        total += len(data)
                except BaseException:
                    # The client hung up (or a tool failed): end the tools,
                    # so the writer's thread ends too.
                    procs.kill()
                    raise
                finally:
                    await reader.aclose()
        finally:
            if r >= 0:
                os.close(r)
            with trio.CancelScope(shield=True):
                await self.d.storage(sources.release, self.backend)
        return total

    # -- import ---------------------------------------------------------------
    async def import_file(
        self, path: Path, name: str | None, owner: Owner, sees: Callable[[str], bool] | None
    ) -> dict[str, object]:
        """Make a container (named `name`, else as in the archive) of the
        archive at `path`; returns the container object.

        Raises:
            BadArchive (InvalidArgument): not a usable backup; nothing made.
            AlreadyExists: the name is in use. InvalidArgument: what its
            config names does not exist here (a network), or is taken (a
            pinned address). Unsupported: an optimized backup on a pool
            that is not btrfs, or a newer format.
        """
        d = self.d
        backend = self.backend
        procs = bk.Procs()
        plan = await self._run(bk.read_index, path, procs)
        if plan.optimized and backend.name != "btrfs":
            raise Unsupported(
                f"the backup is optimized (btrfs send streams); this pool is {backend.name!r}",
                hint="export it again without --optimized to import it here",
            )
        if name is None:
            try:
                name = validate_name(plan.container.get("name"))
            except InvalidArgument as e:
                raise bk.bad(f"the container's name in it: {e.message}") from None
        record = _record_of(plan, name)
        config = dict(validate_config(dict(record.config)))
        check_security(config)
        configcheck.check_networks(self.networks, config)
        configcheck.check_address(d, self.networks, name, config, strict=True, sees=sees)
        d.table.reserve(name)
        try:
            # Every member is checked before anything is made.
            await self._run(bk.scan, path, plan, procs)
            async with d.journal.begin("import", name=name) as op:
                staging = await d.storage(backend.scratch_volume, name, "import")
                op.undo(lambda: d.storage(backend.destroy_scratch, staging), f"remove {staging}")
                op.step("staged")
                rootfs, snaps = await self._run(
                    _unpack, backend, path, plan, staging, path.parent, procs
                )
                op.step("unpacked")
                await d.storage(backend.adopt_container, name, rootfs, snaps, op.step)
                op.undo(lambda: d.storage(backend.delete_container, name), f"delete {name}")
                await d.storage(backend.destroy_scratch, staging)
                shifted = record.idmap if record.idmap and record.idmap.method == "shift" else None
                await self.containers._record_new(
                    op, name, record.template, config, shifted, owner, base=record
                )
        finally:
            d.table.unreserve(name)
            await self.security.release(name)
        d.bus.lifecycle(
            "container-imported",
            f"containers/{name}",
            {"snapshots": [s for s, _ in plan.snapshots]},
        )
        return await self.containers.describe(name)


def _record_of(plan: bk.Plan, name: str) -> Container:
    """The record an import makes, read as a record file is (every field
    the record has, devices among them), under its new name."""
    data = {k: v for k, v in plan.container.items() if v is not None and k != "owner"}
    data["name"] = name
    try:
        return Container.from_toml(tomlw.dumps(data), "the container record in the backup")
    except (InvalidArgument, ValueError, TypeError) as e:
        raise bk.bad(str(getattr(e, "message", e))) from None


def _unpack(
    backend: TreeBackend, path: Path, plan: bk.Plan, staging: Path, spool: Path, procs: bk.Procs
) -> tuple[Path, list[tuple[str, Path, str]]]:
    """Unpack (plain) or receive (optimized) the archive's trees into the
    scratch volume `staging`; returns its rootfs and snapshots."""
    snapdir = staging / bk.SNAPSHOTS
    os.mkdir(snapdir, 0o700)
    snaps = [(s, snapdir / s, created) for s, created in plan.snapshots]
    if not plan.optimized:
        for top in [staging / bk.ROOTFS, *(p for _, p, _ in snaps)]:
            backend.scratch_tree(top)
        bk.unpack_trees(path, plan, staging, procs)
        return staging / bk.ROOTFS, snaps
    streams = spool / "streams"
    streams.mkdir(mode=0o700)
    try:
        parent: tuple[str, str] | None = None
        for tree, stream in bk.unpack_streams(path, plan, streams, procs):
            uuid = bk.check_stream(stream, tree, parent, procs)
            bk.receive(stream, staging if tree == bk.ROOTFS else snapdir, procs)
            stream.unlink()
            parent = (uuid, os.path.basename(tree))
    finally:
        shutil.rmtree(streams, ignore_errors=True)
    return staging / bk.ROOTFS, snaps


# -- routes -------------------------------------------------------------------------


def _flag(req: Request, name: str) -> bool:
    raw = req.query.get(name)
    if raw is None or raw == "":
        return False
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"{name}: expected 1 or 0, got {raw!r}")


def add_backup_routes(r: Router, backups: Backups) -> None:
    """GET /1.0/containers/{name}/export and POST /1.0/containers/import,
    both framed streams (lxpy.api.streams)."""
    d = backups.d

    async def export(req: Request) -> object:
        require_upgrade(req)
        name = req.params["name"]
        d.table.require(name)
        instance_only = _flag(req, "instance_only")
        optimized = _flag(req, "optimized")
        if optimized and d.backend.name != "btrfs":
            raise Unsupported(
                f"an optimized export needs a btrfs pool; this one is {d.backend.name!r}",
                hint="export without --optimized (a tar any pool can import)",
            )

        async def run(stream: trio.abc.Stream, early: bytes) -> None:
            async def send(data: bytes) -> None:
                await stream.send_all(frame(STDOUT, data))

            await _answer(stream, lambda: backups.export(name, instance_only, optimized, send))

        return Upgrade(run)

    async def import_(req: Request) -> object:
        require_upgrade(req)
        raw = req.query.get("name") or None
        name = validate_name(raw) if raw is not None else None
        if name is not None:
            d.table.reserve(name)  # refused now, before the upload, if taken
            d.table.unreserve(name)
        owner = owner_of(req.caller)

        async def run(stream: trio.abc.Stream, early: bytes) -> None:
            spool = bk.new_spool(backups.spool, "import")
            await trio.to_thread.run_sync(spool.mkdir, 0o700)
            path = spool / "backup.tar.zst"

            async def work() -> object:
                if not await _upload(stream, early, path):
                    # Nobody is left to answer; nothing was made.
                    raise LxpyError("the client hung up before the end of its upload")
                return await backups.import_file(path, name, owner, None)

            try:
                await _answer(stream, work)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, spool, True)

        return Upgrade(run)

    C = "/1.0/containers/{name}"
    r.add(
        "GET",
        C + "/export",
        export,
        "Export a container with its snapshots as one backup file (docs/backup.md): "
        "upgrade to the framed stream; stdout frames carry the file, then an exit "
        "frame (or an error frame)",
        query=(
            ("instance_only", "1 to leave the snapshots out"),
            ("optimized", "1 for btrfs send streams (btrfs pools only)"),
        ),
        status=101,
        response=FRAMED,
    )
    r.add(
        "POST",
        "/1.0/containers/import",
        import_,
        "Import a backup file as a new container: upgrade to the framed stream, send "
        "the file as stdin frames and an empty one to end it; the answer is an exit "
        "frame with the container (or an error frame)",
        query=(("name", "the new container's name (default: the one in the backup)"),),
        status=101,
        response=FRAMED,
    )


async def _answer(stream: trio.abc.Stream, work: Callable[[], Awaitable[object]]) -> None:
    """Run `work`; its result as an exit frame, or its error as an error frame."""
    try:
        result = await work()
    except Exception as exc:
        # A nursery's error comes wrapped in a group of one.
        e = leaf_error(exc)
        if not isinstance(e, LxpyError):
            raise
        out = json_frame(ERROR, e.to_json())
    else:
        out = json_frame(EXIT, result)
    try:
        await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _upload(stream: trio.abc.Stream, early: bytes, path: Path) -> bool:
    """Write the stdin frames the client sends to `path` until an empty
    one; False when the client hung up first."""
    decoder = FrameDecoder()
    data = early
    async with await trio.open_file(path, "wb") as f:
        buf = bytearray()
        while True:
            for kind, payload in decoder.feed(data):
                if kind != STDIN:
                    raise InvalidArgument(f"an import sends stdin frames only, got type {kind}")
                if not payload:
                    await f.write(bytes(buf))
                    return True
                buf += payload
                if len(buf) >= _FLUSH:
                    try:
                        await f.write(bytes(buf))
                    except OSError as e:
                        if is_full(e):
                            raise pool_full("upload of a backup", str(path.parent)) from e
                        raise
                    buf.clear()
            try:
                data = bytes(await stream.receive_some(CHUNK))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if not data:
                return False
