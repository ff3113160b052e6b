"""Container records and their configuration keys.

A container's config is a flat mapping of dotted keys (`hostname`,
`environment.TZ`, later `limits.memory`) to values, as in Incus. Each key is
declared once in KEYS with a parser that turns what a user typed (always a
string on the command line) or what a TOML/JSON file holds into the stored
value, or raises InvalidArgument naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from lxpy.errors import InvalidArgument
from lxpy.model import devices as dm
from lxpy.model import limits as lm
from lxpy.model import security as sm
from lxpy.model import tomlw
from lxpy.model.names import validate_name
from lxpy.model.network import parse_ipv4, parse_network_list
from lxpy.model.suggest import did_you_mean
from lxpy.model.units import parse_signal, signal_name

Parser = Callable[[str, object], object]


@dataclass(frozen=True)
class ConfigKey:
    name: str
    parse: Parser
    doc: str
    # True for keys whose change applies to a running container at once.
    live: bool = False


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{key}: expected a string, got {value!r}")
    if "\x00" in value or "\n" in value:
        raise InvalidArgument(f"{key}: must be a single line of text")
    return value


def _hostname(key: str, value: object) -> str:
    try:
        return validate_name(value, "host")
    except InvalidArgument as e:
        raise InvalidArgument(f"{key}: {e.message}", e.hint) from None


def _abspath(key: str, value: object) -> str:
    text = _text(key, value)
    if not text.startswith("/") or "/../" in text + "/":
        raise InvalidArgument(
            f"{key}: expected an absolute path inside the container, got {text!r}"
        )
    return text


def _signal(key: str, value: object) -> str:
    return signal_name(parse_signal(value, key))


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"{key}: expected true or false, got {value!r}")


def _args(key: str, value: object) -> list[str]:
    # A list in TOML/JSON, or a space-separated string on the command line.
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(f"{key}: expected a list of strings, got {value!r}")


KEYS: dict[str, ConfigKey] = {
    k.name: k
    for k in (
        ConfigKey("description", _text, "Free text shown in `lxpy info`.", live=True),
        ConfigKey("hostname", _hostname, "Hostname inside the container (default: its name)."),
        ConfigKey("init", _abspath, "Program run as PID 1 (default: the template's, /sbin/init)."),
        ConfigKey("init.args", _args, "Arguments passed to init."),
        ConfigKey(
            "halt_signal",
            _signal,
            "Signal that asks init to power off (default: the template's), like lxc.signal.halt.",
        ),
        ConfigKey(
            "reboot_signal", _signal, "Signal that asks init to reboot (default: the template's)."
        ),
        ConfigKey(
            "network",
            parse_network_list,
            "Networks the container joins, one NIC each (eth0, eth1, ...); empty for none "
            "(default for new containers: the daemon's default network, lxpybr0).",
        ),
        ConfigKey(
            "ipv4.address",
            parse_ipv4,
            "IPv4 address pinned to eth0 (a static DHCP lease on the first network).",
        ),
        # Resource limits apply to a running container at once; boot.* keys
        # are read by lxpyd when it decides, so they need no restart either.
        ConfigKey(
            "limits.memory",
            lm.parse_memory,
            "Hard memory limit: a size (512MiB) or a share of host RAM (50%).",
            live=True,
        ),
        ConfigKey(
            "limits.memory.swap",
            lm.parse_swap,
            "Swap: true (as the kernel allows), false (none) or a size.",
            live=True,
        ),
        ConfigKey(
            "limits.cpu",
            lm.parse_cpu,
            "CPU time in CPUs' worth (0.5, 2) or a pinned CPU set (0-1,3; 1-1 for CPU 1).",
            live=True,
        ),
        ConfigKey(
            "limits.cpu.weight",
            lm.parse_weight,
            "CPU share under contention, 1..10000 (default 100).",
            live=True,
        ),
        ConfigKey(
            "limits.processes",
            lm.parse_processes,
            "Most processes at once, or max (default: 15% of the host's PIDs).",
            live=True,
        ),
        # Set up at start: they take effect at the next one.
        ConfigKey(
            "limits.pty",
            lm.parse_pty,
            f"Most ptys the container's devpts hands out (default {lm.DEFAULT_PTY}).",
        ),
        ConfigKey(
            "limits.kernel.max_inotify_instances",
            lm.parse_ucount,
            "inotify instances per user inside "
            "(default: the host's fs.inotify.max_user_instances).",
        ),
        ConfigKey(
            "limits.kernel.max_inotify_watches",
            lm.parse_ucount,
            "inotify watches per user inside (default: the host's fs.inotify.max_user_watches).",
        ),
        ConfigKey("boot.autostart", _bool, "Start when lxpyd starts.", live=True),
        ConfigKey("boot.priority", lm.parse_priority, "Autostart order: higher first.", live=True),
        ConfigKey(
            "boot.delay",
            lm.parse_delay,
            "Seconds to wait after autostarting this one before the next.",
            live=True,
        ),
        ConfigKey(
            "boot.stop_priority",
            lm.parse_priority,
            "Shutdown order when lxpyd stops them all: higher first.",
            live=True,
        ),
        ConfigKey(
            "boot.restart",
            lm.parse_restart,
            "Restart policy: no, on-failure or always.",
            live=True,
        ),
        ConfigKey(
            "boot.restart_max",
            lm.parse_restart_max,
            "Restarts allowed within 60 s before the container is left in ERROR (default 5).",
            live=True,
        ),
    )
}
# security.* keys (see lxpy.model.security and docs/security.md): they take
# effect at the next start, the filtering ones at once.
KEYS.update(
    {name: ConfigKey(name, parse, doc, live=name in sm.LIVE_KEYS) for name, parse, doc in sm.KEYS}
)

# Families of free-form keys: the part after the prefix is the user's.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PREFIXES: dict[str, ConfigKey] = {
    "environment.": ConfigKey("environment.*", _text, "Environment variable for init."),
    "user.": ConfigKey("user.*", _text, "Free-form user metadata.", live=True),
}


def lookup_key(key: str) -> ConfigKey:
    """The declaration of config key `key`.

    Raises:
        InvalidArgument: for an unknown key.
    """
    if key in KEYS:
        return KEYS[key]
    for prefix, decl in PREFIXES.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if prefix == "environment." and not ENV_NAME.fullmatch(rest):
                raise InvalidArgument(f"{key}: {rest!r} is not a valid environment variable name")
            if not rest:
                raise InvalidArgument(f"config key {key!r} needs a name after {prefix!r}")
            return decl
    # A mistyped family prefix (`enviroment.TZ`) is near that family's key.
    rest = key.partition(".")[2]
    near = did_you_mean(key, [*KEYS, *(p + rest for p in PREFIXES if rest)])
    lister = "`lxpy config keys` lists them with their meaning"
    raise InvalidArgument(
        f"unknown config key {key!r}", hint=f"{near} ({lister})" if near else lister
    )


def parse_value(key: str, value: object) -> object:
    """Validate one config value, returning what is stored."""
    return lookup_key(key).parse(key, value)


# What a request may store: a key name of at most MAX_KEY characters, a
# value of at most MAX_VALUE bytes (as UTF-8; a list as its JSON), and a
# config of at most MAX_CONFIG bytes, keys and values together. Every key
# holds one line (a name, a path, a size, a list of names): 8 KiB is far
# above what any needs, and the whole record stays small enough to be
# read, listed and rewritten atomically on every change. Records already
# stored are read whatever their size.
MAX_KEY = 256
MAX_VALUE = 8 * 1024
MAX_CONFIG = 64 * 1024


def _size(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def check_key_length(key: str) -> None:
    """Raise InvalidArgument for a key name longer than MAX_KEY characters."""
    if len(key) > MAX_KEY:
        raise InvalidArgument(
            f"config key {key[:40]!r}... is {len(key)} characters long, at most {MAX_KEY} may be",
            hint="pick a shorter name",
        )


def _check_size(key: str, value: object) -> None:
    check_key_length(key)
    size = _size(value)
    if size > MAX_VALUE:
        raise InvalidArgument(
            f"{key}: the value is {size} bytes long, at most {MAX_VALUE} (8 KiB) may be stored",
            hint="keep large data in a file inside the container and the path in the key",
        )


def config_size(config: Mapping[str, object]) -> int:
    """Bytes of a config's keys and values, as MAX_CONFIG counts them."""
    return sum(len(key) + _size(value) for key, value in config.items())


def _check_total(new: Mapping[str, object], old: Mapping[str, object] | None = None) -> None:
    size = config_size(new)
    # A config stored before the cap may stay over it, as long as it does
    # not grow: unsetting keys must always work.
    if size > MAX_CONFIG and (old is None or size > config_size(old)):
        raise InvalidArgument(
            f"the config would be {size} bytes long, at most {MAX_CONFIG} (64 KiB) may be stored",
            hint="unset keys you no longer need",
        )


def validate_config(values: Mapping[str, object], *, capped: bool = True) -> dict[str, object]:
    """Validate a whole mapping of config keys; the first bad key raises.

    With `capped` (what a request asks to store), keys, values and the
    whole mapping are held to MAX_KEY, MAX_VALUE and MAX_CONFIG.
    """
    if capped:
        for key, value in values.items():
            _check_size(key, value)
    config = {key: parse_value(key, value) for key, value in values.items()}
    if capped:
        _check_total(config)
    return config


def _flatten(data: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        full = prefix + key
        if isinstance(value, Mapping):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


@dataclass(frozen=True)
class Owner:
    """Who made a container: the caller's uid, and whether the caller was a
    restricted user (group `lxpy-user`), who alone may see it besides admins."""

    uid: int
    restricted: bool = False

    def to_json(self) -> dict[str, object]:
        return {"uid": self.uid, "restricted": self.restricted}

    @classmethod
    def from_json(cls, data: Mapping[str, object], source: str = "owner") -> Owner:
        """Raises InvalidArgument naming `source` for a bad table."""
        uid, restricted = data.get("uid"), data.get("restricted", False)
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32 - 1:
            raise InvalidArgument(f"{source}: uid must be a user ID, got {uid!r}")
        if not isinstance(restricted, bool):
            raise InvalidArgument(f"{source}: restricted must be true or false")
        return cls(uid, restricted)


@dataclass(frozen=True)
class Container:
    """The on-disk record of one container (its state lives in the daemon)."""

    name: str
    template: str
    created_at: str
    config: Mapping[str, object] = field(default_factory=dict)
    # The host ID range of an unprivileged container, once allocated.
    idmap: sm.IdmapRecord | None = None
    # Who made it (kept by rename; a copy belongs to whoever copied). None in
    # records older than owners: such containers are the admins' only.
    owner: Owner | None = None
    # Its devices (lxpy.model.devices): name -> {"type": ..., key: value}.
    devices: dm.Devices = field(default_factory=dict)
    # The devices each snapshot was taken with (restored with it); a
    # snapshot taken before devices were recorded has no entry.
    snapshot_devices: Mapping[str, dm.Devices] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "devices", dm.frozen(self.devices))
        object.__setattr__(
            self,
            "snapshot_devices",
            MappingProxyType({s: dm.frozen(v) for s, v in self.snapshot_devices.items()}),
        )

    def with_snapshot(self, snap: str, keep: bool) -> Container:
        """A copy that records (keep) or forgets snapshot `snap`'s devices."""
        snaps = {s: dm.plain(v) for s, v in self.snapshot_devices.items()}
        if keep:
            snaps[snap] = dm.plain(self.devices)
        else:
            snaps.pop(snap, None)
        return replace(self, snapshot_devices=snaps)

    def with_device(self, name: str, device: Mapping[str, str] | None) -> Container:
        """A copy with device `name` set to `device` (already validated by
        its type), or removed (None)."""
        new = dm.plain(self.devices)
        if device is None:
            new.pop(name, None)
        else:
            new[name] = dict(device)
        return replace(self, devices=new)

    def with_config(self, set_: Mapping[str, object], unset: list[str]) -> Container:
        """A copy with keys set (validated) and unset.

        Raises:
            InvalidArgument: for an unknown key or a bad value.
        """
        new = dict(self.config)
        for key in unset:
            lookup_key(key)
            new.pop(key, None)
        new.update(validate_config(set_))
        _check_total(new, self.config)
        return replace(self, config=new)

    def renamed(self, name: str) -> Container:
        return replace(self, name=validate_name(name))

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "template": self.template,
            "created_at": self.created_at,
            "config": dict(self.config),
            "idmap": self.idmap.to_json() if self.idmap else None,
            "owner": self.owner.to_json() if self.owner else None,
            "devices": dm.plain(self.devices),
        }

    def to_toml(self) -> str:
        data: dict[str, object] = {
            "name": self.name,
            "template": self.template,
            "created_at": self.created_at,
            "config": dict(self.config),
        }
        if self.idmap is not None:
            data["idmap"] = self.idmap.to_json()
        if self.owner is not None:
            data["owner"] = self.owner.to_json()
        if self.devices:
            data["devices"] = dm.plain(self.devices)
        if self.snapshot_devices:
            data["snapshots"] = {
                s: {"devices": dm.plain(v)} for s, v in self.snapshot_devices.items()
            }
        return tomlw.dumps(data)

    @classmethod
    def from_toml(cls, text: str, source: str = "config") -> Container:
        """Parse a container record.

        Raises:
            InvalidArgument: naming `source` and what is wrong.
        """
        data = tomlw.loads(text, source)
        try:
            name = validate_name(data["name"])
            template = str(data["template"])
            created = str(data.get("created_at", ""))
        except KeyError as e:
            raise InvalidArgument(f"{source}: missing key {e.args[0]!r}") from None
        raw = data.get("config", {})
        if not isinstance(raw, Mapping):
            raise InvalidArgument(f"{source}: [config] must be a table")
        try:
            config = validate_config(_flatten(raw), capped=False)
        except InvalidArgument as e:
            raise InvalidArgument(f"{source}: {e.message}", e.hint) from None
        idmap = None
        if "idmap" in data:
            if not isinstance(data["idmap"], Mapping):
                raise InvalidArgument(f"{source}: [idmap] must be a table")
            idmap = sm.IdmapRecord.from_json(data["idmap"], f"{source}: idmap")
        owner = None
        if "owner" in data:
            if not isinstance(data["owner"], Mapping):
                raise InvalidArgument(f"{source}: [owner] must be a table")
            owner = Owner.from_json(data["owner"], f"{source}: owner")
        devices = dm.parse_devices(data.get("devices"), f"{source}: devices")
        snaps = data.get("snapshots", {})
        if not isinstance(snaps, Mapping) or not all(
            isinstance(v, Mapping) for v in snaps.values()
        ):
            raise InvalidArgument(f"{source}: [snapshots] must be a table of tables")
        snapshot_devices = {
            s: dm.parse_devices(v.get("devices"), f"{source}: snapshots.{s}.devices")
            for s, v in snaps.items()
        }
        return cls(
            name=name,
            template=template,
            created_at=created,
            config=config,
            idmap=idmap,
            owner=owner,
            devices=devices,
            snapshot_devices=snapshot_devices,
        )
