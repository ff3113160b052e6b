"""lxpyd's shared state: what every subsystem of the daemon reads or
changes (settings, storage backend, registry, intent journal, event bus,
operations, worker-thread limiters, the in-memory state of every
container). It imports no subsystem: lxpy.daemon.assemble builds the
subsystems with this state and the peers each one uses.

Nothing here blocks the event loop: storage calls run in worker threads under
the storage limiter, file reads and writes under the file limiter.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from lxpy import __version__
from lxpy.daemon.events import EventBus
from lxpy.daemon.journal import Journal
from lxpy.daemon.merging import Ksmd
from lxpy.daemon.operations import Operations
from lxpy.daemon.registry import Registry
from lxpy.errors import (
    AlreadyExists,
    InvalidArgument,
    LxpyError,
    NotFound,
    PoolFull,
    is_full,
    pool_full,
)
from lxpy.kernel import systemd
from lxpy.kernel.cgroups import ContainerCgroup, Hierarchy
from lxpy.model.config import Container
from lxpy.model.network import root_id
from lxpy.model.settings import Settings
from lxpy.model.state import State, can_move
from lxpy.model.suggest import not_found_hint
from lxpy.storage.base import Backend
from lxpy.storage.pool import pool_info
from lxpy.storage.space import space_of

log = logging.getLogger("lxpyd")

T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    """A running container as lxpyd knows it: its processes and monitor socket."""

    init_pid: int
    monitor_pid: int
    # ISO 8601, UTC: when init (last) started.
    started_at: str
    socket: Path


class Daemon:
    """lxpyd's shared state (module docstring); lxpy.daemon.assemble makes it."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        registry: Registry,
        nursery: trio.Nursery,
        *,
        run_dir: Path,
        scopes: bool = False,
        apparmor: str = "",
        ksmd: Ksmd | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.registry = registry
        # Intents of the multi-step operations under way.
        self.journal = Journal(settings.root, self.files)
        self.bus = EventBus()
        self.ops = Operations(nursery, self.bus)
        # btrfs ioctls are short but hold the GIL; a dir-backend copy is long.
        # Two lets a long copy not stall every other storage call.
        self.storage_limiter = trio.CapacityLimiter(2)
        self.file_limiter = trio.CapacityLimiter(4)
        self.records: dict[str, Container] = {}
        # Containers whose record file could not be read: name -> reason.
        self.broken: dict[str, str] = {}
        self.states: dict[str, State] = {}
        # Containers whose monitor runs (RUNNING, FROZEN, STOPPING, or
        # STARTING during a reboot): name -> its processes and socket.
        self.running: dict[str, RunInfo] = {}
        self._locks: dict[str, trio.Lock] = {}
        # Names being created, copied or renamed to: not in `records` yet,
        # but taken.
        self.reserved: set[str] = set()
        # This daemon's run dir (RUN/...): unique per daemon root.
        self.run_dir = run_dir
        # Runs ksmd after starts (setting `ksm`); None when off.
        self.ksmd = ksmd
        # Containers run in systemd scope units of their own (setting
        # `systemd_scopes`).
        self.scopes = scopes
        # The AppArmor profile privileged containers run under, or "".
        self.apparmor = apparmor

    def load(self, records: dict[str, Container], broken: dict[str, str]) -> None:
        """Know the containers of the registry: `records` (STOPPED until
        adopted) and `broken`, name -> why its record cannot be read (ERROR)."""
        self.records, self.broken = records, broken
        for name in records:
            self.states[name] = State.STOPPED
        for name in broken:
            self.states[name] = State.ERROR

    def container_run_dir(self, name: str) -> Path:
        """Where container `name`'s runtime files live (monitor socket, state
        file): under the daemon's run dir, which is unique per daemon root."""
        return self.run_dir / "containers" / name

    def cgroup(self, name: str, hs: list[Hierarchy] | None = None) -> ContainerCgroup:
        """Where container `name`'s cgroups are (nothing is made); `hs`:
        the hierarchies, when the caller has them already."""
        cg = ContainerCgroup.for_name(name, hs, parent=self.cgroup_parent(name))
        if self.scopes and not cg.exists():
            # A container started without a scope (by an lxpyd before
            # scopes, or with systemd_scopes off) runs on where it is.
            legacy = ContainerCgroup.for_name(name, hs, parent=self.settings.cgroup_parent)
            if legacy.exists():
                return legacy
        return cg

    def scope(self, name: str) -> str:
        """Container `name`'s systemd scope unit while it runs, or "" without scopes."""
        if not self.scopes:
            return ""
        return systemd.scope_unit(root_id(str(self.settings.root)), name)

    def cgroup_parent(self, name: str) -> str:
        """The cgroup (on every hierarchy) that holds container `name`'s."""
        scope = self.scope(name)
        return systemd.scope_cgroup(scope) if scope else self.settings.cgroup_parent

    def console_log(self, name: str) -> Path:
        """Where container `name`'s console is logged (kept across starts)."""
        return self.settings.root / "logs" / f"{name}.console.log"

    @staticmethod
    def rotated_log(log: Path) -> Path:
        """Where console log `log` goes when a start rotates it."""
        return log.with_name(log.name + ".1")

    def monitor_socket(self, name: str) -> Path:
        """Container `name`'s monitor control socket."""
        return self.container_run_dir(name) / "monitor.sock"

    async def storage(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking storage call in a worker thread.

        Raises:
            PoolFull: for a write that found no space (what fn raised else).
        """
        return await self._in_thread(self.storage_limiter, fn, *args)

    async def files(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking file call (records, logs, files in a rootfs) in a
        worker thread.

        Raises:
            PoolFull: for a write that found no space (what fn raised else).
        """
        return await self._in_thread(self.file_limiter, fn, *args)

    async def _in_thread(
        self, limiter: trio.CapacityLimiter, fn: Callable[..., T], *args: object
    ) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        except OSError as e:
            if not is_full(e):
                raise
            raise await self.pool_full() from e
        except PoolFull as e:
            if e.where:
                raise
            raise await self.pool_full(e.what) from e

    async def pool_full(self, what: str = "") -> PoolFull:
        """The error for a write that found no space while working on
        `what`: it names the pool and the room left on it, and the
        filesystem of the records too when that is another one."""
        try:
            pool, root = await trio.to_thread.run_sync(
                lambda: (space_of(self.backend.path), space_of(self.settings.root))
            )
        except OSError as e:
            log.warning("cannot read the free space of %s: %s", self.backend.path, e)
            return pool_full(what)
        where = pool.describe()
        if root.fsid != pool.fsid:
            where += f"; lxpyd's records are on another filesystem: {root.describe()}"
        return pool_full(what, where)

    def lock(self, name: str) -> trio.Lock:
        """The lock that serializes requests on container `name`."""
        return self._locks.setdefault(name, trio.Lock())

    def forget(self, name: str) -> None:
        """Drop everything held in memory about container `name`."""
        self.records.pop(name, None)
        self.broken.pop(name, None)
        self.states.pop(name, None)
        self.running.pop(name, None)
        self._locks.pop(name, None)

    def known(self, name: str) -> bool:
        return name in self.records or name in self.broken

    def require(self, name: str) -> Container:
        """The record of container `name`.

        Raises:
            NotFound: no such container.
            LxpyError: its record file is broken (with the reason).
        """
        if name in self.broken:
            raise InvalidArgument(
                f"container {name!r} has a broken record: {self.broken[name]}",
                hint=f"fix {self.registry.record_path(name)} and restart lxpyd, "
                "or delete the container",
            )
        try:
            return self.records[name]
        except KeyError:
            raise NotFound(
                f"container {name!r} not found",
                hint=not_found_hint(name, self.states, "known containers", "`lxpy list`"),
            ) from None

    def reserve(self, name: str) -> None:
        """Claim `name` for a container being made.

        Raises:
            AlreadyExists: a container has it, or is being made with it.
        """
        if self.known(name) or name in self.reserved:
            raise AlreadyExists(
                f"container {name!r} already exists", hint="pick another name or delete it first"
            )
        self.reserved.add(name)

    def set_state(self, name: str, new: State) -> None:
        """Move container `name` to state `new` and tell the event bus.

        Raises:
            LxpyError: the lifecycle does not allow that move
                (model/state.TRANSITIONS): a bug, logged; nothing changes.
        """
        old = self.states.get(name)
        if old is not None and old != new and not can_move(old, new):
            log.error("container %s: %s -> %s is not a move of its lifecycle", name, old, new)
            raise LxpyError(f"internal error: container {name!r} cannot go from {old} to {new}")
        self.states[name] = new
        if old is not None and old != new:
            self.bus.lifecycle(
                "container-state", f"containers/{name}", {"old": str(old), "new": str(new)}
            )

    async def info(self) -> dict[str, object]:
        """GET /1.0."""
        storage: dict[str, object] = {
            "backend": self.backend.name,
            "path": str(self.backend.path),
            "instant_snapshot": self.backend.caps.instant_snapshot,
        }
        try:
            storage.update(await self.storage(pool_info, self.backend))
        except Exception as e:
            log.warning("cannot read pool info: %s", e)
        return {
            "api_version": "1.0",
            "version": __version__,
            "root": str(self.settings.root),
            "storage": storage,
            "pid": os.getpid(),
        }
