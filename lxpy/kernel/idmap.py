"""User namespaces, ID maps and idmapped mounts for unprivileged containers.

An unprivileged container runs in a user namespace whose root is an
ordinary host ID (say 1065536): root inside is not root on the host. Its
rootfs stays owned by 0..65535 on disk (templates and snapshots are shared
and never chowned) and is presented through an *idmapped mount* that
translates on-disk ID k to host ID base + k. Where the kernel or the
filesystem cannot idmap a mount, the tree is shifted once instead: every
inode chowned by +base (`shift_tree`).

Pieces, in the order a start uses them:

* `parse_subid`, `allowed_ranges`, `allocate`: pick the container's host
  ID range from root's entries in /etc/subuid and /etc/subgid.
* `create_userns`: a user namespace with that map, as a file descriptor
  (`pin_ns` binds it to a path so it outlives the process that made it).
* `create_netns_in`: a network namespace owned by that user namespace (so
  the container's root may configure its interfaces and mount sysfs).
* `idmapped_tree` + `attach_tree`: the idmapped view of the rootfs.
* `enter_userns`: what the launch path does to become the container's root.

Only os, stat, struct and the lxpy errors and kernel modules are
imported: the launch path loads this module.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lxpy.errors import Busy, InvalidArgument
from lxpy.kernel import syscalls as sc
from lxpy.kernel.hostlimits import act_as_owner, map_root
from lxpy.kernel.netif import link_up

# What a container gets, and what a Debian system needs: 0..65535 covers
# root, system users and `nobody` (65534).
DEFAULT_SIZE = 65536

# Used when root has no entries in /etc/subuid or /etc/subgid: the range
# Incus uses for the same case. Adding `root:1000000:1000000000` to both
# files makes it explicit and keeps useradd's automatic ranges out of it.
DEFAULT_RANGE_START = 1_000_000
DEFAULT_RANGE_COUNT = 1_000_000_000

# linux/nsfs.h: _IO(0xb7, 0x1), the user namespace owning a namespace.
NS_GET_USERNS = 0xB701

# Set on the host's mount of a pool lxpy made, cleared on every container's
# rootfs clone: setuid files and device nodes work inside the container, as
# on any system, and never through the host's view of the pool.
ROOTFS_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


# -- ID ranges -------------------------------------------------------------


@dataclass(frozen=True, order=True)
class IdRange:
    """`count` consecutive host IDs starting at `start`."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def overlaps(self, other: IdRange) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class IdMap:
    """A container's map: IDs 0..size-1 inside are uid_base.. / gid_base.. on the host."""

    uid_base: int
    gid_base: int
    size: int = DEFAULT_SIZE

    def uid_map(self) -> str:
        """The text written to /proc/PID/uid_map."""
        return f"0 {self.uid_base} {self.size}\n"

    def gid_map(self) -> str:
        """The text written to /proc/PID/gid_map."""
        return f"0 {self.gid_base} {self.size}\n"

    def host_uid(self, inside: int) -> int:
        """The host UID of container UID `inside`."""
        if not 0 <= inside < self.size:
            raise InvalidArgument(
                f"uid {inside} is outside the container's map (0..{self.size - 1})"
            )
        return self.uid_base + inside

    def host_gid(self, inside: int) -> int:
        """The host GID of container GID `inside`."""
        if not 0 <= inside < self.size:
            raise InvalidArgument(
                f"gid {inside} is outside the container's map (0..{self.size - 1})"
            )
        return self.gid_base + inside

    def to_json(self) -> dict[str, int]:
        return {"uid_base": self.uid_base, "gid_base": self.gid_base, "size": self.size}


def parse_subid(text: str, names: Sequence[str] = ("root", "0")) -> list[IdRange]:
    """The ranges that /etc/subuid or /etc/subgid text delegates to `names`.

    Lines are `name:start:count`; comments and malformed lines are skipped
    (as shadow-utils does), so one bad line does not disable the rest.
    """
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        parts = line.split(":")
        if len(parts) != 3 or parts[0] not in names:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            out.append(IdRange(start, count))
    return sorted(out)


def allowed_ranges(path: str) -> tuple[list[IdRange], bool]:
    """Root's ranges in `path` (/etc/subuid or /etc/subgid), or the default.

    Returns:
        (ranges, from_file): from_file is False when the default was used.
    """
    try:
        with open(path) as f:
            ranges = parse_subid(f.read())
    except FileNotFoundError:
        ranges = []
    if ranges:
        return ranges, True
    return [IdRange(DEFAULT_RANGE_START, DEFAULT_RANGE_COUNT)], False


def _start(r: IdRange) -> int:
    return r.start


def allocate(
    allowed: Sequence[IdRange], used: Iterable[IdRange], size: int = DEFAULT_SIZE
) -> IdRange:
    """The lowest free block of `size` IDs inside `allowed` that overlaps no `used` one.

    Pure: the daemon passes the blocks of every isolated container on the
    host (lxpy.daemon.hostids), and keeps the result in the container's
    record.

    Raises:
        Busy: when the allowed ranges are full.
    """
    taken = sorted(used, key=_start)
    for rng in sorted(allowed, key=_start):
        # One sweep over the used ranges in order of their starts: each one
        # reaching into the candidate pushes it past its end.
        start = rng.start
        for u in taken:
            if start + size > rng.end or u.start >= start + size:
                break
            start = max(start, u.end)
        if start + size <= rng.end:
            return IdRange(start, size)
    raise Busy(
        f"no free range of {size} IDs left for another isolated container",
        hint="add a larger range for root to /etc/subuid and /etc/subgid, "
        "or set security.idmap.isolated=false on some containers",
    )


def shared_map(uid_allowed: Sequence[IdRange], gid_allowed: Sequence[IdRange]) -> IdMap:
    """The one map shared by containers with security.idmap.isolated=false:
    the first DEFAULT_SIZE IDs of root's first range. Isolated containers
    must count it as used when they allocate."""
    return IdMap(uid_allowed[0].start, gid_allowed[0].start, DEFAULT_SIZE)


# -- namespaces ------------------------------------------------------------


def _helper(work: Callable[[], object]) -> tuple[int, int]:
    """Fork a helper that runs `work` (entering namespaces), writes one
    status byte (0, or the errno `work` failed with) and waits to be killed
    (by the caller, or by the end of the calling thread: sc.fork_helper).

    Returns (pid, the read end of the status byte's pipe).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = sc.fork_helper()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            try:
                work()
            except OSError as e:
                code = e.errno or errno.EIO
            os.write(w, bytes([min(code, 255)]))
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def write_maps(pid: int, uid_map: str, gid_map: str) -> None:
    """Write the uid and gid maps of process `pid`'s user namespace.

    Raises:
        OSError: with the kernel's errno, naming the map.
    """
    # Why the parent writes the maps: a privileged writer may map any range
    # and leaves setgroups(2) usable inside, which a Debian system needs
    # (login, su, daemons dropping groups).
    for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
        try:
            sc.write_file(f"/proc/{pid}/{name}", text)
        except OSError as e:
            raise OSError(e.errno, f"writing {name} {text.strip()!r}: {e.strerror}") from None


def create_userns(idmap: IdMap) -> int:
    """A new user namespace with `idmap`, as an open O_CLOEXEC file descriptor.

    A short-lived helper unshares CLONE_NEWUSER; we (root in the parent
    namespace) write its maps, open its /proc/PID/ns/user and kill it. The
    namespace lives as long as the descriptor (or a bind mount, see pin_ns).
    It is owned by the host IDs of its root (hostlimits.act_as_owner).

    Raises:
        OSError: with the kernel's errno (EPERM without root, EINVAL for a
            map outside what the caller may map).
    """

    def work() -> None:
        act_as_owner(idmap.host_uid(0), idmap.host_gid(0))
        sc.unshare(sc.CLONE_NEWUSER)

    pid, r = _helper(work)
    try:
        _await_byte(r, pid, "unshare(CLONE_NEWUSER)")
        write_maps(pid, idmap.uid_map(), idmap.gid_map())
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(r)
        _reap(pid)


def create_netns_in(userns_fd: int) -> int:
    """A new network namespace owned by the user namespace `userns_fd`.

    The container's root may then configure its interfaces and mount sysfs
    (the kernel asks for CAP_SYS_ADMIN in the user namespace owning the
    network namespace); the host keeps full control of it as well.

    Returns:
        an O_CLOEXEC descriptor of the network namespace.

    Raises:
        OSError: with the kernel's errno.
    """

    def work() -> None:
        sc.setns(userns_fd, sc.CLONE_NEWUSER)
        sc.unshare(sc.CLONE_NEWNET)

    pid, r = _helper(work)
    try:
        _await_byte(r, pid, "setns(user) + unshare(CLONE_NEWNET)")
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(r)
        _reap(pid)


def _await_byte(r: int, pid: int, what: str, timeout: float = 5.0) -> None:
    # One status byte from helper `pid` (0: done, else an errno), bounded
    # in time: a stuck helper must not hang the process serving every start.
    if not select.select([r], [], [], timeout)[0]:
        raise OSError(errno.ETIMEDOUT, f"{what}: helper process {pid} did not answer")
    data = os.read(r, 1)
    if not data:
        raise OSError(errno.ECHILD, f"{what}: helper process {pid} died")
    if data[0]:
        raise OSError(data[0], f"{what}: {os.strerror(data[0])}")


def pin_new_namespaces(userns_path: str, uid_map: str, gid_map: str, netns_path: str) -> None:
    """Make a container's user namespace (when `userns_path` is given, with
    `uid_map`/`gid_map`) and its network namespace (when `netns_path` is
    given; owned by that user namespace, with lo up) in one short-lived
    helper, and bind them on the paths (created empty), as pin_ns does.
    Blocking, single-threaded callers only (it forks).

    Why one helper for both: each fork from a large process copies its page
    tables; one fork from a small one (the zygote) makes both namespaces.

    The user namespace is owned by the host IDs its root maps to
    (hostlimits.act_as_owner): what the container holds in host-wide
    per-user tables is charged to them, not to host root.

    On failure neither path is left bound.

    Raises:
        OSError: with the kernel's errno (EINVAL for a map the caller may
            not write, ETIMEDOUT when the helper hangs).
    """
    r, w = os.pipe2(os.O_CLOEXEC)  # helper -> us: status bytes
    go_r, go_w = os.pipe2(os.O_CLOEXEC)  # us -> helper: the maps are written
    pid = sc.fork_helper()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.close(go_w)
            if userns_path:
                try:
                    act_as_owner(map_root(uid_map), map_root(gid_map))
                    sc.unshare(sc.CLONE_NEWUSER)
                except OSError as e:
                    os.write(w, bytes([min(e.errno or errno.EIO, 255)]))
                    os._exit(1)
                os.write(w, b"\0")
                # The network namespace is made once the maps are written:
                # before that this process holds no capability to use in it.
                if os.read(go_r, 1) != b"\0":
                    os._exit(1)
            try:
                if netns_path:
                    sc.unshare(sc.CLONE_NEWNET)
                    link_up("lo")
            except OSError as e:
                code = e.errno or errno.EIO
            os.write(w, bytes([min(code, 255)]))
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    os.close(go_r)
    pinned: list[str] = []
    try:
        if userns_path:
            _await_byte(r, pid, "unshare(CLONE_NEWUSER)")
            write_maps(pid, uid_map, gid_map)
            os.write(go_w, b"\0")
        _await_byte(r, pid, "unshare(CLONE_NEWNET)" if netns_path else "the user namespace")
        for kind, path in (("user", userns_path), ("net", netns_path)):
            if not path:
                continue
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
            pinned.append(path)
            sc.mount(f"/proc/{pid}/ns/{kind}", path, None, sc.MS_BIND)
    except BaseException:
        for path in pinned:
            unpin_ns(path)
        raise
    finally:
        os.close(r)
        os.close(go_w)
        _reap(pid)


def owning_userns(ns_fd: int) -> int:
    """The user namespace owning namespace `ns_fd` (ioctl NS_GET_USERNS), as a new fd.

    Raises:
        OSError: EPERM when the owner is outside the caller's reach.
    """
    fd = fcntl.ioctl(ns_fd, NS_GET_USERNS)
    os.set_inheritable(fd, False)
    return fd


def pin_ns(ns_fd: int, path: str) -> None:
    """Bind the namespace `ns_fd` on `path` (created empty) so it outlives
    every process and descriptor, as `ip netns add` does for netns.

    Raises:
        OSError: with the kernel's errno.
    """
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
    sc.mount(f"/proc/self/fd/{ns_fd}", path, None, sc.MS_BIND)


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


def unpin_ns(path: str) -> None:
    """Undo pin_ns; idempotent."""
    detach_mount(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def enter_userns(userns_fd: int) -> None:
    """Join the container's user namespace and become its root (0:0, no groups).

    After setns the caller holds every capability inside the namespace but
    still has host UID 0, which the map does not contain; switching to 0
    inside makes files it creates belong to the container's root.

    Raises:
        OSError: with the kernel's errno (EINVAL from a multithreaded process).
    """
    sc.setns(userns_fd, sc.CLONE_NEWUSER)
    become_root()


def become_root() -> None:
    """Switch to 0:0 with no groups in the user namespace the caller is in
    (entered or unshared, its map written), where it holds every capability.

    Raises:
        OSError: with the kernel's errno (EINVAL while the map is unwritten).
    """
    # Groups first and UID last: setresuid may take the capabilities
    # that setgroups and setresgid need.
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


# -- idmapped mounts -------------------------------------------------------


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


# -- shifting ownership on disk (the fallback) ------------------------------

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
    restored after the chown clears them. Symlinks are not followed.

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
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            one(os.path.join(dirpath, name))
    return changed


# -- cgroups handed to the container's root ---------------------------------

# The files systemd's delegation contract names, plus v1's `tasks`.
_DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "tasks")


def delegate_cgroups(dirs: Iterable[str], idmap: IdMap) -> None:
    """Give the container's root its cgroup directories (as LXC does), so
    systemd inside may create and manage its subtree there.

    Raises:
        OSError: when a directory cannot be changed.
    """
    uid, gid = idmap.host_uid(0), idmap.host_gid(0)
    for d in dirs:
        os.chown(d, uid, gid)
        for name in _DELEGATED:
            try:
                os.chown(os.path.join(d, name), uid, gid)
            except FileNotFoundError:
                pass
