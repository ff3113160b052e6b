"""The `security.*` config keys of a container, parsed and validated.

Pure data: the parsers here turn what a user typed (a string on the
command line) or what a TOML/JSON record holds into stored values, and
`SecurityConfig.from_config` turns a container's flat config into one
object the daemon and the launch path read. Every error names the key.

Keys:
    security.privileged        bool, default false: no user namespace.
    security.idmap.isolated    bool, default true: an ID range of its own.
    security.idmap.base        int: a fixed host ID base (uid and gid).
    security.idmap.size        int, default 65536: how many IDs are mapped.
    security.syscalls.deny     names refused on top of the default list.
    security.syscalls.allow    names taken off the default list.
    security.capabilities.drop capability names removed from the bounding
                               set (default: LXC's list).
    security.no_new_privs      bool, default false: set no_new_privs on init.
    security.mac_filtering     bool, default true: frames from its NICs on a
                               managed bridge carry the NIC's MAC.
    security.ipv4_filtering    bool, default true: ARP and IPv4 from its NICs
                               carry its own address; no DHCP server (implies
                               MAC filtering, as in Incus).
    security.nesting           bool, default false: container runtimes (podman,
                               docker, systemd-nspawn, lxpy) may run inside.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lxpy.errors import InvalidArgument

# For annotations only: typing would cost the zygote, and so every monitor it
# forks, ~0.5 MB.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Capability numbers (linux/capability.h).
CAPABILITIES: dict[str, int] = {
    name: i
    for i, name in enumerate(
        (
            "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap "
            "linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock "
            "ipc_owner sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin "
            "sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease "
            "audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm "
            "block_suspend audit_read perfmon bpf checkpoint_restore"
        ).split()
    )
}

# What containers lose by default, as LXC's common.conf: module loading,
# raw I/O, the host clock and the host's MAC policy are host-wide. In an
# unprivileged container the kernel checks these against the host's user
# namespace anyway, so they grant nothing there; they are dropped all the
# same (LXC's userns.conf keeps them) because systemd reads the bounding
# set: without CAP_SYS_RAWIO it skips the debugfs and tracefs mounts, which
# a user namespace cannot make, without CAP_SYS_MODULE modules-load, and
# without CAP_SYS_TIME timesyncd, instead of failing them.
DEFAULT_DROP_CAPS = ("mac_admin", "mac_override", "sys_time", "sys_module", "sys_rawio")

MIN_IDMAP_SIZE = 65536
# Host IDs are 32-bit and (uid_t)-1 is reserved; staying below 2**31 also
# keeps clear of tools that store IDs in a signed int.
MAX_HOST_ID = 2**31 - 1

_SYSCALL_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def parse_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"{key}: expected true or false, got {value!r}")


def _int(key: str, value: object) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{key}: expected a number, got {value!r}")
    try:
        return int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise InvalidArgument(f"{key}: expected a number, got {value!r}") from None


def parse_idmap_base(key: str, value: object) -> int:
    n = _int(key, value)
    if not 1 <= n <= MAX_HOST_ID - MIN_IDMAP_SIZE:
        raise InvalidArgument(
            f"{key}: {n} is not a usable host ID base",
            hint="pick an ID inside root's range in /etc/subuid and /etc/subgid",
        )
    return n


def parse_idmap_size(key: str, value: object) -> int:
    n = _int(key, value)
    if not MIN_IDMAP_SIZE <= n <= MAX_HOST_ID:
        raise InvalidArgument(
            f"{key}: {n} IDs is too few or too many",
            hint=f"a Debian system needs at least {MIN_IDMAP_SIZE} (nobody is 65534)",
        )
    return n


def _names(key: str, value: object) -> list[str]:
    # A list in TOML/JSON; a comma- or space-separated string on the CLI.
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise InvalidArgument(f"{key}: expected a list of names, got {value!r}")
    return list(dict.fromkeys(items))


def parse_syscalls(key: str, value: object) -> list[str]:
    names = _names(key, value)
    bad = [n for n in names if not _SYSCALL_NAME.fullmatch(n)]
    if bad:
        raise InvalidArgument(f"{key}: {bad[0]!r} is not a syscall name")
    return names


def parse_capabilities(key: str, value: object) -> list[str]:
    names = [n.lower().removeprefix("cap_") for n in _names(key, value)]
    bad = [n for n in names if n not in CAPABILITIES]
    if bad:
        raise InvalidArgument(
            f"{key}: unknown capability {bad[0]!r}", hint="names as in capabilities(7)"
        )
    return names


Parser = Callable[[str, object], object]

# (key, parser, doc) for lxpy.model.config to register.
KEYS: tuple[tuple[str, Parser, str], ...] = (
    (
        "security.privileged",
        parse_bool,
        "Run without a user namespace: root inside is root on the host (default false).",
    ),
    (
        "security.idmap.isolated",
        parse_bool,
        "Give the container a host ID range of its own (default true); false shares one range.",
    ),
    ("security.idmap.base", parse_idmap_base, "Fixed first host ID of the container's map."),
    ("security.idmap.size", parse_idmap_size, "How many IDs are mapped (default 65536)."),
    ("security.syscalls.deny", parse_syscalls, "Syscalls refused on top of the default list."),
    ("security.syscalls.allow", parse_syscalls, "Syscalls taken off the default deny list."),
    (
        "security.capabilities.drop",
        parse_capabilities,
        "Capabilities removed from the container's bounding set (default: LXC's list).",
    ),
    (
        "security.no_new_privs",
        parse_bool,
        "Set no_new_privs on init: setuid programs stop working (default false).",
    ),
    (
        "security.mac_filtering",
        parse_bool,
        "On a managed network, drop frames from the container whose source MAC is not "
        "its NIC's (default true).",
    ),
    (
        "security.ipv4_filtering",
        parse_bool,
        "On a managed network, drop ARP and IPv4 from the container that do not use its own "
        "address, and DHCP server replies; implies MAC filtering (default true).",
    ),
    (
        "security.nesting",
        parse_bool,
        "Let container runtimes (podman, docker, systemd-nspawn, lxpy) run inside: fresh "
        "proc and sysfs mounts, delegated cgroups, /dev/fuse and /dev/net/tun "
        "(default false; see docs/security.md).",
    ),
)
# Keys a running container follows at once (its NICs' rules are replaced);
# the others take effect at its next start.
LIVE_KEYS = frozenset({"security.mac_filtering", "security.ipv4_filtering"})

_PARSERS = {k: p for k, p, _ in KEYS}


@dataclass(frozen=True)
class SecurityConfig:
    """A container's security settings, with defaults filled in."""

    privileged: bool = False
    idmap_isolated: bool = True
    idmap_base: int | None = None
    idmap_size: int = MIN_IDMAP_SIZE
    syscalls_deny: tuple[str, ...] = ()
    syscalls_allow: tuple[str, ...] = ()
    drop_caps: tuple[str, ...] = DEFAULT_DROP_CAPS
    no_new_privs: bool = False
    mac_filtering: bool = True
    ipv4_filtering: bool = True
    nesting: bool = False

    @property
    def filters_mac(self) -> bool:
        """Whether its NICs' source MAC is checked: IPv4 filtering needs it
        (a port could otherwise take another's MAC and so its frames)."""
        return self.mac_filtering or self.ipv4_filtering

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> SecurityConfig:
        """Read the security.* keys of a container's flat config.

        Other keys are ignored. Values are parsed again, so a record
        edited by hand is checked too.

        Raises:
            InvalidArgument: naming the first bad key.
        """

        def get(key: str, default: object) -> Any:  # what _PARSERS[key] returns
            return _PARSERS[key](key, config[key]) if key in config else default

        deny = tuple(get("security.syscalls.deny", []))
        allow = tuple(get("security.syscalls.allow", []))
        both = sorted(set(deny) & set(allow))
        if both:
            raise InvalidArgument(
                f"security.syscalls.deny and security.syscalls.allow both name {both[0]!r}"
            )
        privileged = bool(get("security.privileged", False))
        base: int | None = get("security.idmap.base", None)
        if base is not None and privileged:
            raise InvalidArgument(
                "security.idmap.base: a privileged container has no ID map",
                hint="unset one of security.idmap.base and security.privileged",
            )
        return cls(
            privileged=privileged,
            idmap_isolated=bool(get("security.idmap.isolated", True)),
            idmap_base=base,
            idmap_size=get("security.idmap.size", MIN_IDMAP_SIZE),
            syscalls_deny=deny,
            syscalls_allow=allow,
            drop_caps=tuple(get("security.capabilities.drop", DEFAULT_DROP_CAPS)),
            no_new_privs=bool(get("security.no_new_privs", False)),
            mac_filtering=bool(get("security.mac_filtering", True)),
            ipv4_filtering=bool(get("security.ipv4_filtering", True)),
            nesting=bool(get("security.nesting", False)),
        )


IDMAP_METHODS = ("idmapped", "shift")


@dataclass(frozen=True)
class IdmapRecord:
    """The host ID range an unprivileged container was given, as its record keeps it.

    The daemon allocates it once (at create, or at the first unprivileged
    start) and keeps it, so the range stays stable across restarts and
    never overlaps another isolated container's.
    """

    uid_base: int
    gid_base: int
    size: int = MIN_IDMAP_SIZE
    # "idmapped": the rootfs stays 0-based on disk and is presented through
    # an idmapped mount; "shift": its files were chowned by +base once.
    method: str = "idmapped"
    # False: the range shared by every non-isolated container.
    isolated: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "uid_base": self.uid_base,
            "gid_base": self.gid_base,
            "size": self.size,
            "method": self.method,
            "isolated": self.isolated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], source: str = "idmap") -> IdmapRecord:
        """Parse a record's [idmap] table.

        Raises:
            InvalidArgument: naming `source` and the bad field.
        """
        try:
            rec = cls(
                uid_base=parse_idmap_base(f"{source}.uid_base", data["uid_base"]),
                gid_base=parse_idmap_base(f"{source}.gid_base", data["gid_base"]),
                size=parse_idmap_size(f"{source}.size", data.get("size", MIN_IDMAP_SIZE)),
                method=str(data.get("method", "idmapped")),
                isolated=parse_bool(f"{source}.isolated", data.get("isolated", True)),
            )
        except KeyError as e:
            raise InvalidArgument(f"{source}: missing key {e.args[0]!r}") from None
        if rec.method not in IDMAP_METHODS:
            raise InvalidArgument(
                f"{source}.method: {rec.method!r} is not one of {', '.join(IDMAP_METHODS)}"
            )
        return rec

    def describe(self) -> str:
        """One line for `lxpy info`."""
        how = "idmapped mount" if self.method == "idmapped" else "ownership shifted on disk"
        share = "" if self.isolated else ", shared range"
        return (
            f"unprivileged: ids 0..{self.size - 1} are host uids {self.uid_base}.."
            f"{self.uid_base + self.size - 1}, gids {self.gid_base}.."
            f"{self.gid_base + self.size - 1} ({how}{share})"
        )
