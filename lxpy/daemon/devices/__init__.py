"""Device types (lxpy.daemon.devices.base), one module each, and the table
that names them. A new type is a module with a DeviceType subclass and one
line in TYPES below.
"""

from __future__ import annotations

from lxpy.daemon.devices.base import DeviceType
from lxpy.daemon.devices.disk import Disk
from lxpy.daemon.devices.nic import NicDevice
from lxpy.daemon.devices.proxy import Proxy
from lxpy.daemon.devices.unix import UnixBlock, UnixChar
from lxpy.errors import InvalidArgument
from lxpy.model.suggest import did_you_mean

TYPES: dict[str, DeviceType] = {
    t.NAME: t for t in (Disk(), Proxy(), UnixChar(), UnixBlock(), NicDevice())
}


def device_type(name: str) -> DeviceType:
    """The device type called `name`.

    Raises:
        InvalidArgument: an unknown type, with the nearest names.
    """
    t = TYPES.get(name)
    if t is None:
        near = did_you_mean(name, TYPES)
        known = f"device types: {', '.join(sorted(TYPES))}"
        raise InvalidArgument(
            f"unknown device type {name!r}", hint=f"{near} ({known})" if near else known
        )
    return t
