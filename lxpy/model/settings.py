"""lxpyd's settings: /etc/lxpy/lxpyd.toml, --config FILE, then flags."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from lxpy.errors import InvalidArgument
from lxpy.model import tomlw
from lxpy.model.network import parse_subnet, root_id, validate_network_name
from lxpy.model.paths import DEFAULT_SOCKET, RootPaths
from lxpy.model.template import is_url
from lxpy.model.units import parse_size

DEFAULT_CONFIG = Path("/etc/lxpy/lxpyd.toml")
DEFAULT_ROOT = Path("/var/lib/lxpy")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
STORAGE_CHOICES = ("auto", "btrfs", "dir")
FEATURE_CHOICES = ("auto", "on", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")


def builtin_template_dir() -> Path:
    """Where the shipped template definitions are: the checkout's, else the package's."""
    here = Path(__file__).resolve().parents[2] / "templates"
    if here.is_dir():
        return here
    return Path("/usr/share/lxpy/templates")


@dataclass(frozen=True)
class Settings:
    root: Path = DEFAULT_ROOT
    socket: Path = DEFAULT_SOCKET
    # auto: use btrfs when the root is on btrfs or a loop pool can be made;
    # btrfs: fail loudly when it cannot; dir: plain directories.
    storage: str = "auto"
    # Size of the loop-file pool made on first start; None picks a share of
    # the free disk (see lxpy.storage.pool).
    pool_size: int | None = None
    template_dirs: tuple[Path, ...] = field(default_factory=lambda: (builtin_template_dir(),))
    # Built rootfs tarballs keyed by definition hash, shared between pools;
    # None disables the cache.
    build_cache: Path | None = None
    mirror: str = DEFAULT_MIRROR
    # Where the -security suites of Debian templates come from (Debian
    # publishes them apart from the main archive).
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    log_level: str = "info"
    # The network new containers join unless their config says otherwise
    # (made on first use); "" gives new containers no network.
    default_network: str = "lxpybr0"
    # The default network's subnet: "auto" picks a free 10.x.y.0/24.
    default_subnet: str = "auto"
    # lxcfs gives containers their own /proc/meminfo, uptime, cpuinfo (free,
    # uptime, top inside show the limits): auto uses it when lxcfs and
    # /dev/fuse are there, on fails the start without it, off never.
    lxcfs: str = "auto"
    # Where lxcfs is found or, when none runs there, started (the Debian
    # lxcfs service's mount by default).
    lxcfs_mount: Path = Path("/var/lib/lxcfs")
    # Remount the host's cgroup2 with favordynmods at start: moving a
    # process into a cgroup then costs ~0.3 ms instead of an RCU grace
    # period (~10 ms) on every container start and exec. Host-wide.
    cgroup_favordynmods: bool = True
    # On a systemd host, each running container gets a transient scope unit
    # of its own (lxpy-ROOTID-NAME.scope in machine.slice, delegated) and
    # its cgroups live there, so lxpy.service stopping leaves nothing of it
    # behind: auto uses scopes when systemd runs, on fails a start without
    # them, off keeps containers under `lxpy.ROOTID` at the cgroup root.
    systemd_scopes: str = "auto"
    # Privileged containers run under the AppArmor profile lxpy-container
    # (lxpy.kernel.apparmor) where the host runs AppArmor: auto uses it when
    # the kernel has AppArmor, on refuses to start without it, off never.
    apparmor: str = "auto"
    # Start the kernel's same-page merging daemon (ksmd) when it is off, so
    # the pages monitors mark mergeable are shared (see lxpy.kernel.ksm).
    ksm: bool = True
    # Read a container's init and the libraries it loads ahead as a start
    # begins (posix_fadvise WILLNEED, lxpy.storage.prefetch), so init finds
    # them in the page cache on a fresh snapshot. Off: init reads them itself.
    read_ahead: bool = True
    # Members of admin_group may do everything root may through the API,
    # which makes them root-equivalent on the host (they may create
    # privileged containers); members of user_group are restricted users
    # (lxpy.daemon.policy). "" for no such group.
    admin_group: str = "lxpy"
    user_group: str = "lxpy-user"
    # Seconds an API connection may sit with no request under way, and a
    # request may take to arrive whole (or its answer to be taken): the
    # connection is closed after them (lxpy.daemon.httpread). Neither
    # bounds an answer being worked on, nor a stream.
    http_idle_timeout: float = 60.0
    http_request_timeout: float = 30.0

    @property
    def cgroup_parent(self) -> str:
        """The cgroup (on every hierarchy) that holds this root's containers."""
        return "lxpy." + root_id(str(self.root))

    @property
    def paths(self) -> RootPaths:
        """Where this root's records, logs, pool and run dir are."""
        return RootPaths(self.root)


def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{key}: expected a path, got {value!r}")
    return Path(value)


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidArgument(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def _group(key: str, value: object) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not _GROUP_NAME.fullmatch(value):
        raise InvalidArgument(f'{key}: expected a group name (or "" for none), got {value!r}')
    return value


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise InvalidArgument(f"{key}: expected a number of seconds above 0, got {value!r}")
    return float(value)


def settings_from_mapping(data: Mapping[str, object], source: str = "settings") -> Settings:
    """Validate a settings mapping (a parsed lxpyd.toml).

    Raises:
        InvalidArgument: naming the file, the key and the bad value.
    """
    known = {f.name for f in fields(Settings)}
    values: dict[str, object] = {}
    try:
        for key, value in data.items():
            if key not in known:
                raise InvalidArgument(
                    f"unknown setting {key!r}", hint="known settings: " + ", ".join(sorted(known))
                )
            if key in ("root", "socket", "lxcfs_mount"):
                values[key] = _path(key, value)
            elif key == "storage":
                values[key] = _choice(key, value, STORAGE_CHOICES)
            elif key in ("cgroup_favordynmods", "ksm", "read_ahead"):
                if not isinstance(value, bool):
                    raise InvalidArgument(f"{key}: expected true or false, got {value!r}")
                values[key] = value
            elif key in ("lxcfs", "systemd_scopes", "apparmor"):
                values[key] = _choice(key, value, FEATURE_CHOICES)
            elif key == "log_level":
                values[key] = _choice(key, value, LOG_LEVELS)
            elif key == "pool_size":
                values[key] = None if value == "auto" else parse_size(value, key)
            elif key == "template_dirs":
                if not isinstance(value, list):
                    raise InvalidArgument(f"{key}: expected a list of paths, got {value!r}")
                # The shipped templates always come first; a user's file of
                # the same name in a later directory overrides it.
                values[key] = (builtin_template_dir(), *(_path(key, v) for v in value))
            elif key == "build_cache":
                values[key] = None if value == "" else _path(key, value)
            elif key == "default_network":
                values[key] = "" if value == "" else validate_network_name(value)
            elif key == "default_subnet":
                values[key] = "auto" if value == "auto" else str(parse_subnet(value, key))
            elif key in ("mirror", "security_mirror"):
                if not isinstance(value, str) or not is_url(value):
                    raise InvalidArgument(f"{key}: expected a URL, got {value!r}")
                values[key] = value
            elif key in ("admin_group", "user_group"):
                values[key] = _group(key, value)
            elif key in ("http_idle_timeout", "http_request_timeout"):
                values[key] = _seconds(key, value)
        admin = values.get("admin_group", Settings.admin_group)
        if admin and admin == values.get("user_group", Settings.user_group):
            raise InvalidArgument(
                f"admin_group and user_group are both {admin!r}",
                hint="restricted users need a group of their own",
            )
    except InvalidArgument as e:
        raise InvalidArgument(f"{source}: {e.message}", e.hint) from None
    return replace(Settings(), **values)  # type: ignore[arg-type]


def load_settings(path: Path | None) -> Settings:
    """Read settings from `path`, or the default file when it exists.

    Raises:
        InvalidArgument: when the file is missing (given explicitly) or invalid.
    """
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Settings()
        path = DEFAULT_CONFIG
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidArgument(f"cannot read settings file {path}: {e.strerror}") from None
    data = tomlw.loads(text, str(path))
    return settings_from_mapping(data, str(path))
