"""What a monitor needs to run one container: the launch spec.

The daemon (or a test) fills a LaunchSpec, sends it as JSON to the zygote,
and the forked monitor rebuilds it here. Stdlib plus lxpy.model.units only:
the monitor imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from lxpy.errors import InvalidArgument
from lxpy.model.units import parse_signal

# Capabilities removed from the bounding set before init runs (LXC's
# defaults): loading kernel modules, raw I/O ports, setting the host clock
# and changing the host's MAC policy are host-wide, not per container.
DEFAULT_DROP_CAPS = ("mac_admin", "mac_override", "sys_time", "sys_module", "sys_rawio")

CAPS = {
    "chown": 0,
    "dac_override": 1,
    "dac_read_search": 2,
    "fowner": 3,
    "fsetid": 4,
    "kill": 5,
    "setgid": 6,
    "setuid": 7,
    "setpcap": 8,
    "linux_immutable": 9,
    "net_bind_service": 10,
    "net_broadcast": 11,
    "net_admin": 12,
    "net_raw": 13,
    "ipc_lock": 14,
    "ipc_owner": 15,
    "sys_module": 16,
    "sys_rawio": 17,
    "sys_chroot": 18,
    "sys_ptrace": 19,
    "sys_pacct": 20,
    "sys_admin": 21,
    "sys_boot": 22,
    "sys_nice": 23,
    "sys_resource": 24,
    "sys_time": 25,
    "sys_tty_config": 26,
    "mknod": 27,
    "lease": 28,
    "audit_write": 29,
    "audit_control": 30,
    "setfcap": 31,
    "mac_override": 32,
    "mac_admin": 33,
    "syslog": 34,
    "wake_alarm": 35,
    "block_suspend": 36,
    "audit_read": 37,
    "perfmon": 38,
    "bpf": 39,
    "checkpoint_restore": 40,
}

CGROUP_VIEWS = ("auto", "cgroup2", "hybrid", "none")


@dataclass(frozen=True)
class LaunchSpec:
    """One container as the monitor runs it."""

    name: str
    rootfs: str
    control_socket: str
    init: str = "/sbin/init"
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    # Signal names as lxpy.model.units.parse_signal reads them.
    halt_signal: str = "SIGPWR"
    reboot_signal: str = "SIGINT"
    stop_timeout: float = 30.0
    # Nest the container's cgroup under this path of every hierarchy.
    cgroup_parent: str = ""
    # On a systemd host: the transient scope unit (lxpy.kernel.systemd) the
    # monitor moves into first; cgroup_parent is then that scope's cgroup.
    scope: str = ""
    console_log: str = ""
    console_buffer: int = 256 * 1024
    # The monitor rewrites this JSON file on every state change, so its
    # last word (why the container ended) outlives it.
    state_file: str = ""
    # A pre-made network namespace file to join; empty: a new one with lo only.
    netns: str = ""
    ttys: int = 4
    # What the container sees at /sys/fs/cgroup: "cgroup2" (its own subtree),
    # "none", "hybrid" (a tmpfs with the host's v1 hierarchies and cgroup2 at
    # unified/, as on the host; for nesting), or "auto" (the monitor decides:
    # cgroup2 when the host mounts it, hybrid for nesting on a hybrid host).
    cgroup_view: str = "auto"
    # The host's v1 hierarchies for a hybrid view: "DIR:OPTIONS" per mount,
    # e.g. "memory:memory", "systemd:none,name=systemd" (set by the monitor).
    cgroup_v1: tuple[str, ...] = ()
    uuid: str = ""
    drop_caps: tuple[str, ...] = DEFAULT_DROP_CAPS
    # Unprivileged (an ID map below): a pinned user namespace
    # (lxpy.kernel.namespaces.pin_ns) with that map to run in, or empty for one
    # the launch makes. The map also serves the host side (cgroup
    # delegation, pty ownership). No map: privileged, no user namespace.
    userns: str = ""
    uid_base: int = 0
    gid_base: int = 0
    idmap_size: int = 0
    # "idmapped": the rootfs is presented through an idmapped mount;
    # "shift": its ownership was shifted on disk and it is used as is.
    idmap_method: str = "idmapped"
    # The seccomp filter: the default deny list plus these names, minus
    # those (lxpy.kernel.seccomp.default_policy).
    syscalls_deny: tuple[str, ...] = ()
    syscalls_allow: tuple[str, ...] = ()
    no_new_privs: bool = False
    # security.nesting: unmasked proc and sysfs under /dev/.lxc, /dev/fuse,
    # /dev/net/tun and (on a hybrid host) the v1 hierarchies, all delegated.
    nesting: bool = False
    # The AppArmor profile init is exec'd under (lxpy.kernel.apparmor), or "".
    apparmor: str = ""
    # The container's limits.* config keys (as stored), written into its
    # cgroups before init runs (lxpy.kernel.limits).
    limits: Mapping[str, object] = field(default_factory=dict)
    # CPUs to pin the container to when limits.cpu is a quota (the daemon
    # balances them across containers, so `nproc` inside shows the quota
    # rounded up); empty: no pinning beyond what limits.cpu says.
    cpus: tuple[int, ...] = ()
    # Root of an lxcfs mount whose files are bound over /proc/meminfo & co.;
    # empty: no lxcfs.
    lxcfs: str = ""
    # Disk devices the launch mounts before init runs, each
    # {"source": host path, "path": path inside, "readonly": bool,
    # "shift": bool, "dir": bool (else a file)} (lxpy.daemon.devices.disk),
    # in mount order.
    mounts: tuple[Mapping[str, object], ...] = ()
    # Set by the monitor for each launch: its unbound notify socket, which
    # the init-to-be inherits and binds in the container
    # (lxpy.runtime.readiness); -1: none.
    notify_fd: int = -1

    @property
    def privileged(self) -> bool:
        """No user namespace: root inside is host root."""
        return not (self.userns or self.idmap_size)

    @property
    def effective_hostname(self) -> str:
        return self.hostname or self.name

    def halt_signum(self) -> int:
        return parse_signal(self.halt_signal, "halt_signal")

    def reboot_signum(self) -> int:
        return parse_signal(self.reboot_signal, "reboot_signal")

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["args"] = list(self.args)
        data["env"] = dict(self.env)
        data["drop_caps"] = list(self.drop_caps)
        data["syscalls_deny"] = list(self.syscalls_deny)
        data["syscalls_allow"] = list(self.syscalls_allow)
        data["cgroup_v1"] = list(self.cgroup_v1)
        data["limits"] = dict(self.limits)
        data["cpus"] = list(self.cpus)
        data["mounts"] = [dict(m) for m in self.mounts]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> LaunchSpec:
        """Validate a spec sent as JSON.

        Raises:
            InvalidArgument: naming the bad field.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"launch spec: unknown field(s) {', '.join(unknown)}")
        for req in ("name", "rootfs", "control_socket"):
            if not isinstance(data.get(req), str) or not data[req]:
                raise InvalidArgument(f"launch spec: {req} must be a non-empty string")
        kw = dict(data)
        if "args" in kw:
            kw["args"] = tuple(_strs(kw["args"], "args"))
        for key in ("drop_caps", "syscalls_deny", "syscalls_allow", "cgroup_v1"):
            if key in kw:
                kw[key] = tuple(_strs(kw[key], key))
        env = kw.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidArgument("launch spec: env must map strings to strings")
        limits = kw.get("limits", {})
        if not isinstance(limits, Mapping) or not all(
            isinstance(k, str) and k.startswith("limits.") for k in limits
        ):
            raise InvalidArgument("launch spec: limits must map limits.* keys to values")
        if "cpus" in kw:
            cpus = kw["cpus"]
            if not isinstance(cpus, list | tuple) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus
            ):
                raise InvalidArgument("launch spec: cpus must be a list of CPU numbers")
            kw["cpus"] = tuple(cpus)
        if "mounts" in kw:
            kw["mounts"] = tuple(_mounts(kw["mounts"]))
        spec = cls(**kw)  # type: ignore[arg-type]
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check the fields that would otherwise fail late, in the child.

        Raises:
            InvalidArgument: naming the bad field.
        """
        if not os.path.isabs(self.rootfs) or not os.path.isdir(self.rootfs):
            raise InvalidArgument(f"launch spec: rootfs {self.rootfs!r} is not a directory")
        if not self.init.startswith("/"):
            raise InvalidArgument(f"launch spec: init {self.init!r} must be an absolute path")
        if self.cgroup_view not in CGROUP_VIEWS:
            raise InvalidArgument(
                f"launch spec: cgroup_view {self.cgroup_view!r} is not one of {CGROUP_VIEWS}"
            )
        bad = [c for c in self.drop_caps if c.lower().removeprefix("cap_") not in CAPS]
        if bad:
            raise InvalidArgument(f"launch spec: unknown capabilities {bad}")
        if not self.privileged:
            if self.userns and not os.path.isabs(self.userns):
                raise InvalidArgument(f"launch spec: userns {self.userns!r} must be a path")
            if min(self.uid_base, self.gid_base) <= 0 or self.idmap_size < 65536:
                raise InvalidArgument(
                    "launch spec: a user namespace needs uid_base, gid_base > 0 "
                    "and idmap_size >= 65536"
                )
            if self.idmap_method not in ("idmapped", "shift"):
                raise InvalidArgument(
                    f"launch spec: idmap_method {self.idmap_method!r} is not idmapped or shift"
                )
        if not 0 <= self.ttys <= 64:
            raise InvalidArgument(f"launch spec: ttys must be 0..64, got {self.ttys}")
        self.halt_signum()
        self.reboot_signum()


def _mounts(value: object) -> list[dict[str, object]]:
    out = []
    if not isinstance(value, list | tuple):
        raise InvalidArgument("launch spec: mounts must be a list")
    for m in value:
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("source"), str)
            or not isinstance(m.get("path"), str)
            or not str(m["source"]).startswith("/")
            or not str(m["path"]).startswith("/")
            or not all(isinstance(m.get(k, False), bool) for k in ("readonly", "shift", "dir"))
        ):
            raise InvalidArgument(f"launch spec: bad mount {m!r}")
        out.append(dict(m))
    return out


def _strs(value: object, key: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"launch spec: {key} must be a list of strings")
    return list(value)
