"""lxpyd put together: the shared state (lxpy.daemon.state), each subsystem
built with it and the peers it uses, and the start-up order.

Start-up, in order: host features (systemd scopes, AppArmor), the
registry and the pool; what a crash cut short is settled; the records are
loaded; networks, ID blocks and lxcfs are opened; containers whose
monitors outlived a previous lxpyd are adopted; device changes a crash
cut short are settled; CPU pins are worked out; autostart runs in the
background.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from lxpy.daemon.autostart import BootManager
from lxpy.daemon.backups import Backups
from lxpy.daemon.containers import Containers
from lxpy.daemon.devices.service import Devices
from lxpy.daemon.images import Images
from lxpy.daemon.ksm import Ksmd
from lxpy.daemon.lifecycle import Lifecycle
from lxpy.daemon.networks import Networks
from lxpy.daemon.recovery import Settler, settle_containers
from lxpy.daemon.registry import Registry
from lxpy.daemon.resources import Resources
from lxpy.daemon.security import Security
from lxpy.daemon.state import Daemon
from lxpy.daemon.templates import Templates
from lxpy.daemon.volumes import Volumes
from lxpy.errors import Unsupported
from lxpy.kernel import apparmor, systemd
from lxpy.kernel.cgroups import favor_dynmods
from lxpy.model.paths import KSMD_MARKER
from lxpy.model.settings import Settings
from lxpy.storage.backup import clear_spool
from lxpy.storage.pool import open_pool

log = logging.getLogger("lxpyd")


@dataclass(frozen=True)
class Services:
    """lxpyd's subsystems, as the routes reach them."""

    state: Daemon
    # Managed networks and container NICs.
    networks: Networks
    # ID ranges and user namespaces of unprivileged containers.
    security: Security
    # Limits, CPU pins, lxcfs and stats.
    resources: Resources
    # Custom volumes.
    volumes: Volumes
    # Devices: add, remove, set up at start, hot-plug.
    devices: Devices
    # Running containers (start, stop, monitors).
    lifecycle: Lifecycle
    # Autostart, stop-all and the restart policy.
    boot: BootManager
    templates: Templates
    images: Images
    # Records: create, copy, rename, destroy, snapshots.
    containers: Containers
    # Export and import.
    backups: Backups


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


def _load_apparmor(setting: str, where: Path) -> str:
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
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    apparmor.load(str(where))
    return apparmor.PROFILE


async def assemble(settings: Settings, nursery: trio.Nursery) -> Services:
    """Open the storage pool, load the registry, build every subsystem and
    bring the containers' state up to date (module docstring).

    Raises:
        LxpyError: the pool cannot be opened or made; a setting this host
            cannot honour.
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
    ksmd = Ksmd(KSMD_MARKER) if settings.ksm else None
    d = Daemon(settings, backend, registry, nursery, scopes=scopes, apparmor=profile)
    if d.scopes:
        log.info("containers run in systemd scopes under %s", systemd.SLICE)
    if ksmd is not None:
        nursery.start_soon(ksmd.run)
    # What a crash cut short is settled before anything is listed.
    settler = Settler(backend, registry, settings.paths)
    await d.files(settle_containers, d.journal, settler)
    # Uploads and export spools of operations a crash ended.
    for gone in await d.files(clear_spool, settings.paths.spool):
        log.warning("recovery: removed the spool file %s of an interrupted backup", gone)
    d.table.load(*await d.files(registry.load_all))
    networks = await Networks.open(
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
    security = Security(d)
    # Its containers' ID blocks, known to every lxpyd on the host.
    await security.open()
    resources = Resources(d)
    await resources.setup()
    volumes = Volumes(d)
    devices = Devices(d, networks, volumes, nursery)
    lifecycle = Lifecycle(d, nursery, networks, security, resources, devices, ksmd)
    boot = BootManager(d, nursery, lifecycle)
    templates = Templates(d)
    images = Images(d, lifecycle)
    containers = Containers(d, templates, images, networks, security, resources, devices, lifecycle)
    services = Services(
        d,
        networks,
        security,
        resources,
        volumes,
        devices,
        lifecycle,
        boot,
        templates,
        images,
        containers,
        Backups(d, containers, networks, security),
    )
    # Containers whose monitors outlived a previous lxpyd run on.
    await lifecycle.adopt_all()
    # Device changes a crash cut short, now that the running are known.
    await devices.settle()
    if ksmd is not None and d.running:
        # Their pages may not all be merged yet (a burst cut short by
        # the previous lxpyd's end), or written apart since.
        ksmd.kick()
    await resources.rebalance()
    # In the background: the API answers while they start one by one.
    nursery.start_soon(boot.autostart)
    log.info(
        "storage: %s pool at %s; %d containers (%d broken records)",
        backend.name,
        backend.path,
        len(d.states),
        len(d.broken),
    )
    return services
