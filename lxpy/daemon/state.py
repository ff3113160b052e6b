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
from pathlib import Path
from typing import TypeVar

import trio

from lxpy import __version__
from lxpy.daemon.events import EventBus
from lxpy.daemon.journal import Journal
from lxpy.daemon.operations import Operations
from lxpy.daemon.registry import Registry
from lxpy.daemon.table import ContainerTable
from lxpy.errors import PoolFull, is_full, pool_full
from lxpy.kernel import systemd
from lxpy.kernel.cgroups import ContainerCgroup, Hierarchy
from lxpy.model.network import root_id
from lxpy.model.settings import Settings
from lxpy.storage.base import Backend
from lxpy.storage.pool import pool_info
from lxpy.storage.space import space_of

log = logging.getLogger("lxpyd")

T = TypeVar("T")


class Daemon:
    """lxpyd's shared state (module docstring); lxpy.daemon.assemble makes it."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        registry: Registry,
        nursery: trio.Nursery,
        *,
        scopes: bool = False,
        apparmor: str = "",
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
        # One entry per container; the views below read it.
        self.table = ContainerTable(self.bus, registry.record_path)
        self.records = self.table.records
        # Containers whose record file could not be read: name -> reason.
        self.broken = self.table.broken
        self.states = self.table.states
        # Containers whose monitor runs: name -> its processes and socket.
        self.running = self.table.running
        # Containers run in systemd scope units of their own (setting
        # `systemd_scopes`).
        self.scopes = scopes
        # The AppArmor profile privileged containers run under, or "".
        self.apparmor = apparmor

    def container_run_dir(self, name: str) -> Path:
        """Where container `name`'s runtime files live (monitor socket, state
        file): under the daemon's run dir, which is unique per daemon root."""
        return self.settings.paths.run.container(name)

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
        return self.settings.paths.console_log(name)

    def monitor_socket(self, name: str) -> Path:
        """Container `name`'s monitor control socket."""
        return self.settings.paths.run.monitor_socket(name)

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
