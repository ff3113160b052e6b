"""The one network-interface operation the launch path needs without pyroute2."""

from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def link_up(name: str = "lo") -> None:
    """Set interface `name` up in the caller's network namespace.

    Why ioctl and not netlink: the monitor's child runs this right before
    exec'ing init, and pulling pyroute2 into the monitor would cost memory
    in every running container.

    Raises:
        OSError: with the kernel's errno (ENODEV for an unknown interface).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(
            s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | _IFF_UP)
        )
