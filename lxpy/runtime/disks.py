"""Disk devices inside a container: mounted by the launch path before init
runs, and hot-plugged into (or out of) a running container's mount
namespace. Stdlib and lxpy.kernel only: the launch path imports it.

Each disk is a detached copy of the host path's mount tree (open_tree(2)),
made by host root, idmapped through the container's user namespace when
`shift` asks, read-only when asked, and then attached with move_mount(2)
onto its mount point, which is opened with openat2(RESOLVE_IN_ROOT)
inside the container's root: a symlink there resolves inside the
container, never to the host, and the entry that was checked is the one
mounted on (no path is resolved a second time).
"""

from __future__ import annotations

import errno
import os
import stat

from lxpy.kernel import inroot, mounts, namespaces
from lxpy.kernel import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Mount points resolve inside the container's root; mounts on the way are
# crossed (a disk inside another one), magic links are not.
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
UMOUNT_NOFOLLOW = 8
CLONE_FS = 0x00000200


def tree(m: Mapping[str, object], userns_fd: int = -1, unprivileged: bool = False) -> int:
    """A detached copy of disk `m`'s source ({"source", "readonly",
    "shift"}), idmapped through `userns_fd` when given and `m` shifts.
    Device nodes never work through it in an `unprivileged` container:
    host nodes are unix-char and unix-block devices' business.

    Raises:
        OSError: naming the source (EINVAL: its filesystem cannot be
            idmapped).
    """
    source = str(m["source"])
    add = sc.MOUNT_ATTR_RDONLY if m.get("readonly") else 0
    if unprivileged:
        add |= sc.MOUNT_ATTR_NODEV
    shift = userns_fd if (userns_fd >= 0 and m.get("shift")) else -1
    try:
        return mounts.clone_tree(source, recursive=True, userns_fd=shift, add=add)
    except OSError as e:
        if e.errno == errno.EINVAL and shift >= 0:
            raise OSError(
                e.errno,
                f"{source}: its filesystem cannot be idmapped (shift=true); "
                "use shift=false, or a filesystem that can (ext4, btrfs, xfs, tmpfs)",
            ) from None
        raise


def mount_point(root: str, path: str, is_dir: bool, label: str) -> int:
    """An O_PATH fd of the mount point `path` inside `root`, made (as a
    directory or an empty file, with the directories above it) when it
    is missing. Everything resolves inside `root`.

    Raises:
        OSError, inroot.RootfsError: it is the wrong kind of entry, or
            cannot be made.
    """
    with inroot.Rootfs(root, label, cross_mounts=True) as r:
        st = r.stat(path)
        if st is None:
            if is_dir:
                r.makedirs(path)
            else:
                r.write(path, b"", make_parents=True)
        elif stat.S_ISDIR(st.st_mode) != is_dir:
            want = "a directory" if is_dir else "a file"
            raise OSError(
                errno.ENOTDIR if is_dir else errno.EISDIR,
                f"refusing to mount on {path}: it is {inroot.kind(st.st_mode)} "
                f"in the container, not {want}",
            )
        flags = os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if is_dir else 0)
        return sc.openat2(r.fd, path.lstrip("/") or ".", flags, _RESOLVE)


def attach(tree_fd: int, root: str, path: str, is_dir: bool, label: str = "") -> None:
    """Attach detached tree `tree_fd` on `path` inside `root`.

    Raises:
        OSError, inroot.RootfsError: naming the path.
    """
    target = mount_point(root, path, is_dir, label or root)
    try:
        mounts.attach_tree_at(tree_fd, target, path)
    finally:
        os.close(target)


def is_dir(m: Mapping[str, object]) -> bool:
    """Whether disk `m`'s source is a directory (else a file)."""
    return os.path.isdir(str(m["source"]))


def detach(path: str) -> None:
    """Unmount the disk at `path` (in the caller's mount namespace and
    root), lazily, never following a final symlink; idempotent.

    Raises:
        OSError: with the kernel's errno (not EINVAL/ENOENT: nothing there).
    """
    try:
        sc.umount2(path, sc.MNT_DETACH | UMOUNT_NOFOLLOW)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise


# -- a running container ---------------------------------------------------------


def _ns(pid: int, kind: str) -> int:
    return os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)


def own_userns(pid: int) -> bool:
    """Whether process `pid` runs in a user namespace of its own (an
    unprivileged container), not the caller's."""
    return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino


def in_mount_ns(pid: int, work: Callable[[], object]) -> None:
    """Run `work` in a short-lived helper inside the mount namespace (and
    root) of process `pid`, as root of its user namespace when it has one
    of its own (an unprivileged container: files it makes belong to the
    container's root, and its mounts are the namespace's own).

    Why a helper: a thread of a multi-threaded process cannot enter another
    mount or user namespace (setns: EINVAL).

    Raises:
        OSError: what `work` or the entering raised, with its message.
    """
    userns = _ns(pid, "user") if own_userns(pid) else -1
    mntns = _ns(pid, "mnt")
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = sc.fork_helper()
        if child == 0:
            code = 0
            try:
                os.close(r)
                if userns >= 0:
                    sc.setns(userns, sc.CLONE_NEWUSER)
                    namespaces.become_root()
                sc.setns(mntns, sc.CLONE_NEWNS)
                os.chdir("/")
                work()
            except BaseException as e:  # noqa: B036 - anything must reach the parent
                msg = getattr(e, "message", None) or str(e)
                os.write(w, f"{getattr(e, 'errno', 0) or 0} {msg}".encode(errors="replace")[:4000])
                code = 1
            os._exit(code)
        os.close(w)
        w = -1
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        _pid, status = os.waitpid(child, 0)
    finally:
        for fd in (r, w, userns, mntns):
            if fd >= 0:
                os.close(fd)
    if out or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        num, _, msg = out.decode(errors="replace").partition(" ")
        raise OSError(int(num) if num.isdigit() else errno.EIO, msg or f"helper status {status}")


def in_mount_ns_thread(pid: int, work: Callable[[], object]) -> None:
    """Run `work` in a new thread of this process that enters the mount
    namespace (and root) of process `pid`, as host root.

    Why a thread will do here: a thread that unshares its filesystem
    context (CLONE_FS: root and cwd) may enter another mount namespace on
    its own, and host root may mount in any container's. It costs far
    less than forking a large process (in_mount_ns). The thread ends
    with the work, and its namespace with it.

    Raises:
        what `work` raised; OSError for the entering.
    """
    # Imported here: the launch path (and so every monitor) does without it.
    import threading

    mntns = _ns(pid, "mnt")
    failed: list[BaseException] = []

    def body() -> None:
        try:
            sc.unshare(CLONE_FS)
            sc.setns(mntns, sc.CLONE_NEWNS)
            os.chdir("/")
            work()
        except BaseException as e:  # noqa: B036 - handed to the caller
            failed.append(e)

    try:
        t = threading.Thread(target=body, name="lxpy-mountns")
        t.start()
        t.join()
    finally:
        os.close(mntns)
    if failed:
        raise failed[0]


class _MountPointMissing(Exception):
    pass


def plug(pid: int, m: Mapping[str, object], label: str) -> None:
    """Mount disk `m` into the running container whose init is `pid`.

    Raises:
        OSError, inroot.RootfsError: naming the source or the path.
    """
    unprivileged = own_userns(pid)
    userns = _ns(pid, "user") if unprivileged else -1
    try:
        t = tree(m, userns, unprivileged)
    finally:
        if userns >= 0:
            os.close(userns)
    path, is_dir = str(m["path"]), bool(m.get("dir", True))

    def fast() -> None:
        # Host root makes no file in an unprivileged container's idmapped
        # rootfs (its ID is not mapped there): a missing mount point is
        # made by the helper, as the container's root.
        if unprivileged and not _exists(path):
            raise _MountPointMissing
        attach(t, "/", path, is_dir, label)

    try:
        try:
            in_mount_ns_thread(pid, fast)
        except _MountPointMissing:
            in_mount_ns(pid, lambda: attach(t, "/", path, is_dir, label))
    finally:
        os.close(t)


def _exists(path: str) -> bool:
    with inroot.Rootfs("/", "", cross_mounts=True) as r:
        return r.stat(path) is not None


def unplug(pid: int, path: str) -> None:
    """Unmount the disk at `path` in the running container whose init is `pid`.

    Raises:
        OSError: the kernel's refusal.
    """
    in_mount_ns_thread(pid, lambda: detach(path))
