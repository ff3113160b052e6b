"""Where lxpyd keeps things: the one map of its paths.

Every path lxpyd, its tests and its benches use is named here, from the
daemon root (`Settings.root`) or the pool, so that a path is changed in one
place and nobody rebuilds one by hand. Pure: it computes paths and touches
no file.

Host-wide (shared by every lxpyd on the host):

    /run/lxpy/lxpy.sock             the default API socket
    /run/lxpy/lxpyd.pid             the default pid file of `lxpyd --daemon`
    /run/lxpy/networks.lock         flock(2)ed while a daemon picks a subnet
    /run/lxpy/ksmd.started          lxpy started ksmd (lxpy.daemon.ksm)
    /var/lib/lxpy-idmap/            the ID blocks of every root (lxpy.daemon.hostids)

Under the daemon root ROOT (RootPaths):

    containers/NAME.toml            container records (lxpy.daemon.registry)
    templates/NAME.json, NAME.log   template build metadata and log
    images/FINGERPRINT.json         image metadata; images/downloads/ under way
    remotes.json                    image servers
    networks/NAME.toml, NAME/       network records; leases, dnsmasq's log
    intents/                        half-done operations (lxpy.daemon.journal)
    logs/NAME.console.log, zygote.log
    devices/NAME/unix.DEV           host nodes of a container's unix devices
    lxpyd.lock                      one lxpyd per root (lxpy.daemon.rootlock)
    spool/                          backup uploads and exports under way
    pool/, pool.img                 the storage pool (PoolPaths), its loop file

In the run dir RUN = /run/lxpy/ROOTID, one per root (RunPaths; tmpfs, gone
at reboot):

    zygote.sock, zygote.sock.pages, zygote.pid
    containers/NAME/monitor.sock, state.json
    netns/NAME, userns/NAME         bound namespaces of running containers
    nics/NAME.json                  their NIC records
    networks/NAME/hosts, dnsmasq.pid
    the AppArmor profile file (lxpy.kernel.apparmor)

In the pool (PoolPaths):

    templates/NAME                  read-only; templates/@FINGERPRINT: an image
    containers/NAME                 rootfs
    snapshots/NAME/SNAP             read-only
    volumes/NAME                    custom volumes
    and hidden names, which validated names never have (see HIDDEN).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxpy.model.network import root_id

RUN_BASE = Path("/run/lxpy")
DEFAULT_SOCKET = RUN_BASE / "lxpy.sock"
DEFAULT_PID_FILE = RUN_BASE / "lxpyd.pid"
# Host-wide, not per daemon: two daemons choosing a subnet at once must not
# both take the same free /24.
NETWORKS_LOCK = RUN_BASE / "networks.lock"
# Says lxpy started ksmd, so whichever lxpyd ends a burst may stop it.
KSMD_MARKER = RUN_BASE / "ksmd.started"
HOST_IDS_DIR = Path("/var/lib/lxpy-idmap")

# The pool's trees, each a directory of volumes.
TREES = ("templates", "containers", "snapshots", "volumes")
# Hidden names in a tree (a leading '.'), by what they hold; recovery
# settles each after a crash (lxpy.storage.tree):
#   .build-NAME       staging volume of template NAME
#   .old-NAME         the previous template NAME while a new one is committed
#   .restore-NAME     a rootfs while a snapshot is restored over it
#   .trash-NAME-XXXX  a volume being destroyed
#   .tmp-NAME-XXXX    a copy in progress, or a scratch volume
BUILD, OLD, RESTORE, TRASH, TMP = "build", "old", "restore", "trash", "tmp"
HIDDEN = (BUILD, OLD, RESTORE, TRASH, TMP)


def hidden_name(tag: str, name: str) -> str:
    """The hidden name `.TAG-NAME` (TAG one of HIDDEN, or a scratch tag)."""
    return f".{tag}-{name}"


def hidden_prefixes(*tags: str) -> tuple[str, ...]:
    """The prefixes of the hidden names of `tags`, for str.startswith."""
    return tuple(f".{t}-" for t in tags)


def image_volume(fingerprint: str) -> str:
    """The name of image `fingerprint`'s volume in the templates tree: one
    that no template definition can have."""
    return "@" + fingerprint


def rotated_log(log: Path) -> Path:
    """Where log `log` goes when it is rotated (a console log, at a start)."""
    return log.with_name(log.name + ".1")


@dataclass(frozen=True)
class RunPaths:
    """The run dir of the daemon at one root: `RUN_BASE/ROOTID`, so several
    lxpyd on different roots never share one."""

    dir: Path

    @classmethod
    def of(cls, root: Path | str) -> RunPaths:
        """The run dir of the daemon at `root` (as lxpyd was given it)."""
        return cls(RUN_BASE / root_id(str(root)))

    @property
    def zygote_socket(self) -> Path:
        return self.dir / "zygote.sock"

    @property
    def zygote_pages(self) -> Path:
        """The zygote's saved page list, beside its socket (lxpy.kernel.pages)."""
        return self.dir / "zygote.sock.pages"

    @property
    def zygote_pid(self) -> Path:
        return self.dir / "zygote.pid"

    @property
    def apparmor_dir(self) -> Path:
        """Where the profile of privileged containers is written to be loaded."""
        return self.dir

    @property
    def containers(self) -> Path:
        return self.dir / "containers"

    def container(self, name: str) -> Path:
        """Container `name`'s runtime files (monitor socket, state file)."""
        return self.containers / name

    def monitor_socket(self, name: str) -> Path:
        return self.container(name) / "monitor.sock"

    def state_file(self, name: str) -> Path:
        """What the monitor leaves when init ends: why it ended."""
        return self.container(name) / "state.json"

    @property
    def netns_dir(self) -> Path:
        return self.dir / "netns"

    def netns(self, container: str) -> Path:
        """Where container `container`'s network namespace is bound."""
        return self.netns_dir / container

    @property
    def userns_dir(self) -> Path:
        return self.dir / "userns"

    def userns(self, container: str) -> Path:
        """Where container `container`'s user namespace is bound while it runs."""
        return self.userns_dir / container

    @property
    def nics_dir(self) -> Path:
        return self.dir / "nics"

    def nics(self, container: str) -> Path:
        """The NIC record of running container `container`."""
        return self.nics_dir / f"{container}.json"

    @property
    def networks(self) -> Path:
        return self.dir / "networks"

    def network(self, name: str) -> Path:
        """Network `name`'s hosts file and dnsmasq pid file."""
        return self.networks / name


@dataclass(frozen=True)
class PoolPaths:
    """The trees of the storage pool at `path`. Names are taken as given:
    the storage layer guards them (lxpy.storage.tree.guard_name)."""

    path: Path

    @property
    def trees(self) -> tuple[Path, ...]:
        return tuple(self.path / t for t in TREES)

    @property
    def templates(self) -> Path:
        return self.path / "templates"

    @property
    def containers(self) -> Path:
        return self.path / "containers"

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    @property
    def volumes(self) -> Path:
        return self.path / "volumes"

    def template(self, name: str) -> Path:
        return self.templates / name

    def image(self, fingerprint: str) -> Path:
        """A cached image: a template whose name no definition can have."""
        return self.templates / image_volume(fingerprint)

    def staging(self, name: str) -> Path:
        """The staging volume of a build of template `name`."""
        return self.templates / hidden_name(BUILD, name)

    def container(self, name: str) -> Path:
        """Container `name`'s rootfs."""
        return self.containers / name

    def snapshot_dir(self, name: str) -> Path:
        """The directory holding the snapshots of container `name`."""
        return self.snapshots / name

    def snapshot(self, name: str, snap: str) -> Path:
        return self.snapshot_dir(name) / snap

    def volume(self, name: str) -> Path:
        return self.volumes / name


@dataclass(frozen=True)
class RootPaths:
    """What the daemon at `root` keeps there, with its pool and run dir."""

    root: Path

    @property
    def run(self) -> RunPaths:
        return RunPaths.of(self.root)

    @property
    def pool_dir(self) -> Path:
        """Where the pool is (a loop-file mount, or a plain directory)."""
        return self.root / "pool"

    @property
    def pool(self) -> PoolPaths:
        return PoolPaths(self.pool_dir)

    @property
    def pool_image(self) -> Path:
        """The loop file of a pool lxpyd made (see lxpy.storage.pool)."""
        return self.root / "pool.img"

    @property
    def records(self) -> Path:
        return self.root / "containers"

    def record(self, name: str) -> Path:
        """Container `name`'s record."""
        return self.records / f"{name}.toml"

    @property
    def template_records(self) -> Path:
        """Templates' build metadata (NAME.json) and build logs (NAME.log)."""
        return self.root / "templates"

    @property
    def images(self) -> Path:
        """Image metadata (FINGERPRINT.json)."""
        return self.root / "images"

    @property
    def downloads(self) -> Path:
        """Image downloads under way."""
        return self.images / "downloads"

    @property
    def remotes(self) -> Path:
        return self.root / "remotes.json"

    @property
    def networks(self) -> Path:
        return self.root / "networks"

    def network_record(self, name: str) -> Path:
        return self.networks / f"{name}.toml"

    def network(self, name: str) -> Path:
        """Network `name`'s leases and dnsmasq's log."""
        return self.networks / name

    @property
    def intents(self) -> Path:
        return self.root / "intents"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def console_log(self, name: str) -> Path:
        """Container `name`'s console log (kept across starts)."""
        return self.logs / f"{name}.console.log"

    @property
    def zygote_log(self) -> Path:
        return self.logs / "zygote.log"

    def devices(self, container: str) -> Path:
        """Where lxpyd makes the host nodes of container `container`'s unix
        devices: on the root's filesystem, never nodev (unlike /run)."""
        return self.root / "devices" / container

    def device_node(self, container: str, device: str) -> Path:
        """The host node of unix device `device` of container `container`."""
        return self.devices(container) / f"unix.{device}"

    @property
    def lock(self) -> Path:
        """flock(2)ed by the lxpyd serving this root, holding its pid."""
        return self.root / "lxpyd.lock"

    @property
    def spool(self) -> Path:
        """Backup uploads and exports under way."""
        return self.root / "spool"


def host_ids_file(root: Path | str, directory: Path = HOST_IDS_DIR) -> Path:
    """The file of the daemon at `root` in the host-wide record of ID blocks."""
    return directory / f"{root_id(str(root))}.json"
