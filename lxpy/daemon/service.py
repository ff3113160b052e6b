"""The Daemon object: settings, storage, registry, operations, events and the
in-memory state of every container, shared by the template and container
services.

Nothing here blocks the event loop: storage calls run in worker threads under
the storage limiter, file reads and writes under the file limiter.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from lxpy import __version__
from lxpy.daemon.events import EventBus
from lxpy.daemon.journal import Journal
from lxpy.daemon.ksm import Ksmd
from lxpy.daemon.networks import Networks
from lxpy.daemon.operations import Operations
from lxpy.daemon.recovery import Settler, settle_containers
from lxpy.daemon.registry import Registry
from lxpy.errors import (
    AlreadyExists,
    InvalidArgument,
    LxpyError,
    NotFound,
    PoolFull,
    Unsupported,
    is_full,
    pool_full,
)
from lxpy.kernel import apparmor, systemd
from lxpy.kernel.cgroups import ContainerCgroup, Hierarchy, favor_dynmods
from lxpy.model.config import Container
from lxpy.model.network import root_id
from lxpy.model.paths import KSMD_MARKER, rotated_log
from lxpy.model.settings import Settings
from lxpy.model.state import State, can_move
from lxpy.model.suggest import not_found_hint
from lxpy.storage.backup import clear_spool
from lxpy.storage.base import Backend
from lxpy.storage.pool import open_pool, pool_info
from lxpy.storage.space import space_of

if TYPE_CHECKING:
    from lxpy.daemon.autostart import BootManager
    from lxpy.daemon.devices.service import Devices
    from lxpy.daemon.lifecycle import Lifecycle
    from lxpy.daemon.resources import Resources
    from lxpy.daemon.security import Security
    from lxpy.daemon.volumes import Volumes

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


def _use_scopes(setting: str) -> bool:
    """Whether containers get systemd scopes, by the `systemd_scopes` setting.

    Raises:
        Unsupported: "on" on a host where systemd does not run.
    """
    if setting == "off":
        return False
    if systemd.available():
        return True
    if setting == "on":
        raise Unsupported(
            "systemd_scopes is on, but systemd does not run here "
            f"({systemd.PRIVATE_SOCKET} is missing)",
            hint='set systemd_scopes = "auto" or "off" in lxpyd.toml',
        )
    return False


def _load_apparmor(setting: str, run_dir: Path) -> str:
    """The profile for privileged containers, loaded, by the `apparmor`
    setting; "" without one.

    Raises:
        Unsupported: "on" on a host without AppArmor.
        LxpyError: the profile cannot be loaded.
    """
    if setting == "off":
        return ""
    if not apparmor.enabled():
        if setting == "on":
            raise Unsupported(
                "apparmor is on, but this kernel runs no AppArmor",
                hint='set apparmor = "auto" or "off" in lxpyd.toml',
            )
        return ""
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    apparmor.load(str(run_dir))
    return apparmor.PROFILE


class Daemon:
    """lxpyd's shared state. Build it with `await Daemon.open(...)`."""

    # Managed networks and container NICs; set by open().
    networks: Networks
    # Running containers (start, stop, monitors); set by open().
    lifecycle: Lifecycle
    # Limits, CPU pins, lxcfs and stats; set by open().
    resources: Resources
    # Autostart, stop-all and the restart policy; set by open().
    boot: BootManager
    # ID ranges and user namespaces of unprivileged containers; set by open().
    security: Security
    devices: Devices
    volumes: Volumes

    def __init__(
        self, settings: Settings, backend: Backend, registry: Registry, nursery: trio.Nursery
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
        # Runs ksmd after starts (setting `ksm`); None when off.
        self.ksmd: Ksmd | None = None
        # Containers run in systemd scope units of their own (setting
        # `systemd_scopes`); decided by open().
        self.scopes = False
        # The AppArmor profile privileged containers run under, or "";
        # decided by open().
        self.apparmor = ""

    @classmethod
    async def open(cls, settings: Settings, nursery: trio.Nursery) -> Daemon:
        """Open the storage pool and load the registry.

        Raises:
            LxpyError: the pool cannot be opened or made.
        """
        # Host features first: a setting this host cannot honour fails
        # the start before anything is made or mounted.
        scopes = _use_scopes(settings.systemd_scopes)
        profile = await trio.to_thread.run_sync(
            _load_apparmor, settings.apparmor, settings.paths.run.apparmor_dir
        )
        registry = Registry(settings.root)
        await trio.to_thread.run_sync(registry.prepare)
        if settings.cgroup_favordynmods:
            where = await trio.to_thread.run_sync(favor_dynmods)
            log.info("cgroup2 at %s favours dynamic moves (favordynmods)", where or "-")
        backend = await trio.to_thread.run_sync(open_pool, settings)
        d = cls(settings, backend, registry, nursery)
        d.scopes, d.apparmor = scopes, profile
        if d.scopes:
            log.info("containers run in systemd scopes under %s", systemd.SLICE)
        if settings.ksm:
            d.ksmd = Ksmd(KSMD_MARKER)
            nursery.start_soon(d.ksmd.run)
        # What a crash cut short is settled before anything is listed.
        settler = Settler(backend, registry, settings.paths)
        await d.files(settle_containers, d.journal, settler)
        # Uploads and export spools of operations a crash ended.
        for gone in await d.files(clear_spool, settings.paths.spool):
            log.warning("recovery: removed the spool file %s of an interrupted backup", gone)
        d.records, d.broken = await d.files(registry.load_all)
        d.networks = await Networks.open(
            settings.root,
            nursery,
            default_network=settings.default_network,
            default_subnet=settings.default_subnet,
            users=lambda: {n: c.config for n, c in d.records.items()},
            journal=d.journal,
            scopes=d.scopes,
        )
        if d.apparmor:
            log.info("privileged containers run under AppArmor profile %s", d.apparmor)
        for name in d.records:
            d.states[name] = State.STOPPED
        for name in d.broken:
            d.states[name] = State.ERROR
        # Imported here: these build on this module.
        from lxpy.daemon.autostart import BootManager
        from lxpy.daemon.devices.service import Devices
        from lxpy.daemon.lifecycle import Lifecycle
        from lxpy.daemon.resources import Resources
        from lxpy.daemon.security import Security
        from lxpy.daemon.volumes import Volumes

        d.security = Security(d)
        # Its containers' ID blocks, known to every lxpyd on the host.
        await d.security.open()
        d.resources = Resources(d)
        await d.resources.setup()
        d.boot = BootManager(d, nursery)
        d.devices = Devices(d)
        d.volumes = Volumes(d)
        d.lifecycle = Lifecycle(d, nursery)
        # Containers whose monitors outlived a previous lxpyd run on.
        await d.lifecycle.adopt_all()
        # Device changes a crash cut short, now that the running are known.
        await d.devices.settle()
        if d.ksmd is not None and d.running:
            # Their pages may not all be merged yet (a burst cut short by
            # the previous lxpyd's end), or written apart since.
            d.ksmd.kick()
        await d.resources.rebalance()
        # In the background: the API answers while they start one by one.
        nursery.start_soon(d.boot.autostart)
        log.info(
            "storage: %s pool at %s; %d containers (%d broken records)",
            backend.name,
            backend.path,
            len(d.states),
            len(d.broken),
        )
        return d

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

    @staticmethod
    def rotated_log(log: Path) -> Path:
        """Where console log `log` goes when a start rotates it."""
        return rotated_log(log)

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
