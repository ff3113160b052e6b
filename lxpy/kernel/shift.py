"""Shifting a rootfs's ownership on disk, for filesystems that cannot idmap.

Where an idmapped mount of the pool's filesystem works (`idmap_method`
says "idmapped"), a container's rootfs is presented through one
(lxpy.kernel.mounts). Where it does not ("shift"), the tree is shifted once
instead: every inode chowned by +base (`shift_tree`), keeping setuid bits,
POSIX ACLs and file capabilities.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator

from lxpy.kernel.idranges import DEFAULT_RANGE_START, IdMap
from lxpy.kernel.mounts import idmapped_tree
from lxpy.kernel.namespaces import create_userns

_METHOD_CACHE: dict[int, str] = {}


def idmap_method(path: str) -> str:
    """How `path`'s filesystem can present a tree to a user namespace.

    Returns "idmapped" when an idmapped mount of it works, "shift" when
    ownership must be shifted on disk instead. Probed once per filesystem
    (st_dev) with a throwaway namespace; nothing is mounted.

    Raises:
        OSError: when `path` cannot be examined (it must exist).
    """
    dev = os.stat(path).st_dev
    if dev in _METHOD_CACHE:
        return _METHOD_CACHE[dev]
    method = "shift"
    try:
        ns = create_userns(IdMap(DEFAULT_RANGE_START, DEFAULT_RANGE_START, 1))
    except OSError:
        ns = -1
    if ns >= 0:
        try:
            os.close(idmapped_tree(path, ns, recursive=False))
            method = "idmapped"
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                raise
        finally:
            os.close(ns)
    _METHOD_CACHE[dev] = method
    return method


_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_USER, _ACL_GROUP = 0x02, 0x08
_CAPS_XATTR = "security.capability"
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_REVISION_MASK = 0xFF000000


def _shift_acl(raw: bytes, idmap: IdMap) -> bytes:
    # Header u32 version, then (u16 tag, u16 perm, u32 id) entries; only
    # named user and group entries carry an ID.
    out = bytearray(raw[:4])
    for off in range(4, len(raw) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, off)
        if tag == _ACL_USER and ident < idmap.size:
            ident = idmap.host_uid(ident)
        elif tag == _ACL_GROUP and ident < idmap.size:
            ident = idmap.host_gid(ident)
        out += struct.pack("<HHI", tag, perm, ident)
    return bytes(out)


def _shift_caps(raw: bytes, idmap: IdMap) -> bytes:
    # File capabilities written from the host (revision 2) would be
    # ignored inside a user namespace; revision 3 names the namespace's
    # root (a host UID), which makes them valid there and only there.
    (magic,) = struct.unpack_from("<I", raw)
    if magic & _VFS_CAP_REVISION_MASK == _VFS_CAP_REVISION_2 and len(raw) >= 20:
        flags = magic & ~_VFS_CAP_REVISION_MASK
        body = raw[4:20]
        return (
            struct.pack("<I", _VFS_CAP_REVISION_3 | flags)
            + body
            + struct.pack("<I", idmap.uid_base)
        )
    return raw


def shift_tree(root: str, idmap: IdMap) -> int:
    """Shift the ownership of every inode under `root` by the map, once.

    Container ID k (0 <= k < size) becomes host ID base + k; IDs already
    in the host range (a resumed shift) and IDs outside the map are left
    alone. setuid/setgid bits, POSIX ACLs and file capabilities are
    restored after the chown clears them. Symlinks are not followed; the
    walk keeps its own stack, so no depth of tree is too deep for it.

    Returns:
        the number of inodes changed.

    Raises:
        OSError: for a file that cannot be changed.
    """
    done: set[tuple[int, int]] = set()
    changed = 0

    def one(path: str) -> None:
        nonlocal changed
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) in done:
            return
        done.add((st.st_dev, st.st_ino))
        uid = idmap.uid_base + st.st_uid if st.st_uid < idmap.size else st.st_uid
        gid = idmap.gid_base + st.st_gid if st.st_gid < idmap.size else st.st_gid
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        link = stat.S_ISLNK(st.st_mode)
        saved: dict[str, bytes] = {}
        if not link:
            for name in (*_ACL_XATTRS, _CAPS_XATTR):
                try:
                    saved[name] = os.getxattr(path, name, follow_symlinks=False)
                except OSError:
                    pass
        os.chown(path, uid, gid, follow_symlinks=False)
        if not link:
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))
            for name, raw in saved.items():
                new = _shift_caps(raw, idmap) if name == _CAPS_XATTR else _shift_acl(raw, idmap)
                os.setxattr(path, name, new, follow_symlinks=False)
        changed += 1

    one(root)
    for path in _walk(root):
        one(path)
    return changed


def _walk(root: str) -> Iterator[str]:
    # Every entry below `root`, without following symlinks. Why a stack of
    # our own rather than os.walk: Python 3.11's os.walk nests one generator
    # per level, so a tree deeper than the recursion limit (a rootfs is a
    # tree anyone may have built) would fail the shift halfway. As os.walk
    # does, a directory that cannot be listed is passed over.
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            yield entry.path
            try:
                below = entry.is_dir(follow_symlinks=False)
            except OSError:
                below = False
            if below:
                stack.append(entry.path)
