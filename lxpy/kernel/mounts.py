"""Detached mount trees through the new mount API (open_tree(2),
mount_setattr(2), move_mount(2)).

An unprivileged container's rootfs stays owned by 0..65535 on disk
(templates and snapshots are shared and never chowned) and is presented
through an *idmapped mount*: a detached copy of its tree, idmapped through
the container's user namespace, so that on-disk ID k is seen as host ID
base + k (`idmapped_tree` + `attach_tree`). Disks, device nodes and lxcfs
files reach a container the same way, as detached copies (`clone_tree`)
attached inside its mount namespace. Where a filesystem cannot idmap, the
tree is shifted on disk instead (lxpy.kernel.shift).

Only os and lxpy.kernel.syscalls are imported: the launch path loads this
module.
"""

from __future__ import annotations

import errno
import os

from lxpy.kernel import syscalls as sc

# Set on the host's mount of a pool lxpy made, cleared on every container's
# rootfs clone: setuid files and device nodes work inside the container, as
# on any system, and never through the host's view of the pool.
ROOTFS_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


def clone_tree(
    source: str, recursive: bool = True, userns_fd: int = -1, clear: int = 0, add: int = 0
) -> int:
    """A detached, private copy of the mount tree at `source` (open_tree(2)
    with OPEN_TREE_CLONE), as an O_CLOEXEC descriptor; attach_tree() mounts
    it. With `userns_fd`, the copy is idmapped through that user namespace
    too (see idmapped_tree). `clear`: MOUNT_ATTR_* flags the copy drops
    (ROOTFS_ATTRS for a rootfs), `add` those it gets (MOUNT_ATTR_RDONLY).

    Why detached: made by host root before the launch path enters the
    container's user namespace, it can be attached inside the namespace's
    own mount namespace, where a mount copied from the host's would be
    locked and refused by pivot_root.

    Why private: a copy keeps the propagation of what it copies, and on a
    host whose `/` is shared (systemd makes it so) that is a peer of the
    host's pool mount. pivot_root refuses a shared new root, and every
    mount made below the copy (the container's /proc, /dev, ...) would
    appear in the host's mount table too.

    Raises:
        OSError: with the kernel's errno (ENOSYS before Linux 5.2; with
            `userns_fd`, as for idmapped_tree).
    """
    recurse = sc.AT_RECURSIVE if recursive else 0
    fd = sc.open_tree(sc.AT_FDCWD, source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | recurse)
    if userns_fd >= 0:
        add |= sc.MOUNT_ATTR_IDMAP
        what = f"mount_setattr({source!r}, MOUNT_ATTR_IDMAP)"
    else:
        userns_fd = 0
        what = f"mount_setattr({source!r}, MS_PRIVATE)"
    try:
        sc.mount_setattr(
            fd, "", sc.AT_EMPTY_PATH | recurse, add, clear, sc.MS_PRIVATE, userns_fd, what
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def idmapped_tree(source: str, userns_fd: int, recursive: bool = True, clear: int = 0) -> int:
    """A detached, private copy of the mount tree at `source`, idmapped
    through `userns_fd`.

    On the copy, an inode owned by k on disk is seen as the host ID that
    the namespace maps k to (container root's files: base + 0), and a file
    created through it by host ID base + k is stored as k.

    Returns:
        an O_CLOEXEC descriptor of the tree; attach_tree() mounts it.

    Raises:
        OSError: EINVAL when the filesystem cannot be idmapped, ENOSYS on
            kernels before 5.12, EPERM without CAP_SYS_ADMIN.
    """
    return clone_tree(source, recursive, userns_fd, clear)


def set_mount_attrs(path: str, add: int = 0, clear: int = 0, recursive: bool = True) -> None:
    """Set (`add`) and clear (`clear`) MOUNT_ATTR_* flags of the mount at
    `path` (and those below it), leaving its other flags as they are.

    Raises:
        OSError: with the kernel's errno (EPERM for a flag locked by a
            less privileged mount namespace).
    """
    flags = sc.AT_SYMLINK_NOFOLLOW | (sc.AT_RECURSIVE if recursive else 0)
    sc.mount_setattr(sc.AT_FDCWD, path, flags, add, clear, what=f"mount_setattr({path!r})")


def set_idmap(tree_fd: int, userns_fd: int, recursive: bool = True, what: str = "") -> None:
    """Idmap a detached tree (from clone_tree, not yet attached) through
    `userns_fd`, as idmapped_tree does; `what` names it in errors.

    Raises:
        OSError: as for idmapped_tree.
    """
    sc.mount_setattr(
        tree_fd,
        "",
        sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if recursive else 0),
        sc.MOUNT_ATTR_IDMAP,
        userns_fd=userns_fd,
        what=f"mount_setattr({what or tree_fd!r}, MOUNT_ATTR_IDMAP)",
    )


def attach_tree(tree_fd: int, target: str) -> None:
    """move_mount(2) a detached tree (from idmapped_tree) onto `target`.

    Raises:
        OSError: with the kernel's errno.
    """
    sc.move_mount(tree_fd, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)


def attach_tree_at(tree_fd: int, target_fd: int, what: str = "") -> None:
    """move_mount(2) a detached tree onto the entry open at `target_fd`
    (an O_PATH descriptor): no path is resolved again, so nothing can be
    swapped for a symlink between the check and the mount.

    Raises:
        OSError: with the kernel's errno.
    """
    flags = sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH
    sc.move_mount(tree_fd, "", target_fd, "", flags, what or str(target_fd))


def mount_idmapped(source: str, target: str, userns_fd: int) -> None:
    """Mount an idmapped view of `source` on `target` (may be `source` itself).

    Raises:
        OSError: as idmapped_tree() and attach_tree().
    """
    fd = idmapped_tree(source, userns_fd)
    try:
        attach_tree(fd, target)
    finally:
        os.close(fd)


def detach_mount(path: str) -> None:
    """Lazily unmount what is mounted on `path`; nothing when nothing is
    (or `path` is gone).

    Raises:
        OSError: with the kernel's errno for any other refusal.
    """
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
