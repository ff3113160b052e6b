"""Who is on the other end of an API connection, and in which tier.

The socket's mode and ACL (root, group `lxpy`, group `lxpy-user`) are the
first gate; this is the second, per connection: the kernel's record of the
peer, taken at connect() (SO_PEERCRED for pid, uid and gid, SO_PEERGROUPS
for the supplementary groups), must be root or a member of one of the two
groups. Root and `lxpy` members are admins; `lxpy-user` members are
restricted users, whose every request lxpy.daemon.policy judges. The peer's
command name is kept for the log, so the journal says who did what.
"""

from __future__ import annotations

import errno
import grp
import socket
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

# The groups made by the Debian package (settings admin_group, user_group).
ADMIN_GROUP = "lxpy"
USER_GROUP = "lxpy-user"

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# <asm-generic/socket.h>; Python 3.11's socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
# Room for a typical list of groups; a longer one is asked for again.
_GROUPS_GUESS = 64
_NGROUPS_MAX = 65536


@dataclass(frozen=True)
class Peer:
    """A connected client as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int
    # /proc/PID/comm, or "?" when the process is gone.
    comm: str = "?"
    # Supplementary groups at connect().
    groups: frozenset[int] = field(default_factory=frozenset)

    def __str__(self) -> str:
        return f"uid {self.uid} pid {self.pid} ({self.comm})"


class Tier(StrEnum):
    ADMIN = "admin"
    USER = "restricted"


@dataclass(frozen=True)
class Groups:
    """The names of the two groups that may use the API ("" for none)."""

    admin: str = ADMIN_GROUP
    user: str = USER_GROUP


DEFAULT_GROUPS = Groups()


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the peer (None for an in-process caller, which is
    trusted) and its tier, decided once per connection."""

    peer: Peer | None
    tier: Tier
    groups: Groups = DEFAULT_GROUPS

    @property
    def uid(self) -> int:
        return 0 if self.peer is None else self.peer.uid

    @property
    def restricted(self) -> bool:
        return self.tier is Tier.USER

    def __str__(self) -> str:
        who = "in-process" if self.peer is None else str(self.peer)
        return f"{who} [restricted]" if self.restricted else who


# A caller not on a unix socket (in-process tests): trusted as root.
INTERNAL = Caller(None, Tier.ADMIN)


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
    return Peer(pid, uid, gid, _comm(pid), _peer_groups(sock))


def _peer_groups(sock: _Socket) -> frozenset[int]:
    # The kernel's copy of the peer's groups from connect(), not
    # /proc/PID/status: that pid may have exited and been reused since.
    for size in (_GROUPS_GUESS, _NGROUPS_MAX):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * size)
        except OSError as e:
            if e.errno == errno.ERANGE:
                continue
            raise
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return frozenset()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def group_gid(group: str) -> int | None:
    """The gid of `group`, or None when the host has no such group (or "")."""
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def admit(peer: Peer | None, groups: Groups = DEFAULT_GROUPS) -> Caller | None:
    """The tier of `peer`: admin for uid 0 and members of `groups.admin`,
    restricted for members of `groups.user` (the primary gid or a
    supplementary group counts); None for anyone else."""
    if peer is None:
        return INTERNAL
    # Group IDs are looked up per connection, not cached: a group made or
    # renumbered while lxpyd runs counts from the next connection on.
    mine = {peer.gid, *peer.groups}
    if peer.uid == 0 or group_gid(groups.admin) in mine:
        return Caller(peer, Tier.ADMIN, groups)
    if group_gid(groups.user) in mine:
        return Caller(peer, Tier.USER, groups)
    return None
