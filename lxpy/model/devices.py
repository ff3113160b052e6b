"""Devices: the part of a container record that reaches beyond its rootfs.

As in Incus, a container's devices are a table of named entries, each with
a `type` and that type's keys, every value a string:

    [devices.www]
    type = "disk"
    source = "/srv/www"
    path = "/var/www"

This module knows their shape only (names, a type, string keys and
values); what each type's keys mean and which values it takes is the
type's own module (lxpy.daemon.devices), which judges a device when it is
added. Pure data: imports nothing of the daemon's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from lxpy.errors import InvalidArgument

# A device name: what a user types after `lxpy device add NAME`. Letters,
# digits and `-_.`, starting with a letter or digit, as Incus allows.
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
OPTION_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
# A container holds at most this many devices, each value at most
# MAX_VALUE bytes: far above use, low enough to keep the record small.
MAX_DEVICES = 64
MAX_VALUE = 4096

Device = Mapping[str, str]
Devices = Mapping[str, Device]


def validate_device_name(name: object) -> str:
    """Return `name` if it is a valid device name.

    Raises:
        InvalidArgument: naming what is wrong with it.
    """
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid device name {name!r}",
            hint="1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        )
    return name


def parse_device(name: str, raw: object, source: str = "device") -> dict[str, str]:
    """The shape of one device entry: a `type` and string keys.

    Values given as TOML or JSON booleans or numbers are stored as the
    strings a user would type (`true`, `8080`).

    Raises:
        InvalidArgument: naming the device and the bad key.
    """
    validate_device_name(name)
    where = f"{source} {name!r}"
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{where}: expected a table of key = value, got {raw!r}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not OPTION_NAME.fullmatch(key):
            raise InvalidArgument(f"{where}: invalid key {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = value
        else:
            raise InvalidArgument(f"{where}: {key}: expected a string, got {value!r}")
        if "\x00" in text or "\n" in text:
            raise InvalidArgument(f"{where}: {key}: must be a single line of text")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE:
            raise InvalidArgument(f"{where}: {key}: longer than {MAX_VALUE} bytes")
        out[key] = text
    kind = out.get("type")
    if not kind:
        raise InvalidArgument(
            f"{where}: has no type", hint="e.g. type=disk (`lxpy device add NAME DEV TYPE ...`)"
        )
    return out


def parse_devices(raw: object, source: str = "devices") -> dict[str, dict[str, str]]:
    """A whole [devices] table, checked for shape only.

    Raises:
        InvalidArgument: naming `source`, the device and what is wrong.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{source}: must be a table of devices, got {raw!r}")
    if len(raw) > MAX_DEVICES:
        raise InvalidArgument(f"{source}: {len(raw)} devices, at most {MAX_DEVICES} may be")
    return {name: parse_device(name, dev, source) for name, dev in raw.items()}


def frozen(devices: Mapping[str, Mapping[str, str]]) -> Devices:
    """A read-only copy of a devices table."""
    return MappingProxyType({n: MappingProxyType(dict(d)) for n, d in devices.items()})


def plain(devices: Devices) -> dict[str, dict[str, str]]:
    """A devices table as plain dicts (for JSON and TOML)."""
    return {n: dict(d) for n, d in devices.items()}
