"""Who is on the other end of an API connection, and may they use it.

The socket's mode (0660, group `lxpy`) is the first gate; this is the
second, per connection: the kernel's record of the peer (SO_PEERCRED, taken
at connect()) must be root or a member of group `lxpy`. The peer's command
name is kept for the log, so the journal says who did what.
"""

from __future__ import annotations

import grp
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

# The group whose members may use lxpyd (made by the Debian package).
ACCESS_GROUP = "lxpy"

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """A connected client as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int
    # /proc/PID/comm, or "?" when the process is gone.
    comm: str = "?"

    def __str__(self) -> str:
        return f"uid {self.uid} pid {self.pid} ({self.comm})"


class _Socket(Protocol):
    # A stdlib or a trio socket.
    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


def peer_of(sock: _Socket) -> Peer | None:
    """The credentials of a unix socket's peer; None for other sockets.

    Raises:
        OSError: the socket is unusable.
    """
    if sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid, _comm(pid))


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def supplementary_groups(pid: int) -> set[int]:
    """The supplementary groups of process `pid` (the `Groups:` line of
    /proc/PID/status); empty when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def access_gid(group: str = ACCESS_GROUP) -> int | None:
    """The gid of `group`, or None when the host has no such group."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def allowed(peer: Peer, group: str = ACCESS_GROUP) -> bool:
    """Whether `peer` may use the API: uid 0, or a member of `group`
    (its primary gid, or one of its supplementary groups)."""
    if peer.uid == 0:
        return True
    gid = access_gid(group)
    if gid is None:
        return False
    # Read at each connection, not cached: `usermod -aG lxpy` takes effect
    # with the user's next login, as for any group.
    return peer.gid == gid or gid in supplementary_groups(peer.pid)
