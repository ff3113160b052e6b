"""POSIX access ACLs, written as the kernel's `system.posix_acl_access`
extended attribute (what setfacl(1) writes; no libacl needed).

Used to let a second group reach lxpyd's socket beside the owning one:
connect() on a unix socket needs write permission on its file, and the
kernel checks a group entry of the ACL as it checks the mode's group bits.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping

_XATTR = "system.posix_acl_access"
_VERSION = 2
# Tags (linux/posix_acl.h); entries go in this order, ACL_GROUP by id.
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_ENTRY = struct.Struct("<HHI")


def encode(user: int, group: int, other: int, groups: Mapping[int, int]) -> bytes:
    """The xattr value of an access ACL: owner, owning group and others get
    `user`, `group`, `other` (rwx bits, 0..7); each gid in `groups` its
    bits. The mask is the union of the group entries, so nothing named is
    cut back."""
    mask = group
    for perm in groups.values():
        mask |= perm
    entries = [(_USER_OBJ, user, _UNDEFINED_ID), (_GROUP_OBJ, group, _UNDEFINED_ID)]
    entries += [(_GROUP, groups[gid], gid) for gid in sorted(groups)]
    entries += [(_MASK, mask, _UNDEFINED_ID), (_OTHER, other, _UNDEFINED_ID)]
    return struct.pack("<I", _VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def decode(raw: bytes) -> dict[int, int]:
    """The named group entries (gid -> rwx bits) of an access ACL's xattr value."""
    out = {}
    for off in range(4, len(raw) - _ENTRY.size + 1, _ENTRY.size):
        tag, perm, gid = _ENTRY.unpack_from(raw, off)
        if tag == _GROUP:
            out[gid] = perm
    return out


def set_access(path: str, user: int, group: int, other: int, groups: Mapping[int, int]) -> None:
    """Give `path` the access ACL of encode(); its mode follows (the group
    bits show the mask).

    Raises:
        OSError: EOPNOTSUPP where the filesystem has no POSIX ACLs.
    """
    os.setxattr(path, _XATTR, encode(user, group, other, groups))


def named_groups(path: str) -> dict[int, int]:
    """The named group entries of `path`'s access ACL ({} without one)."""
    try:
        return decode(os.getxattr(path, _XATTR))
    except OSError:
        return {}
