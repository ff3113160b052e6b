"""Host device nodes passed into a container (`unix-char` / `unix-block`).

How a node gets in: lxpyd makes a node of its own for the host's device
(mknod, with the owner and mode the device asks for, mapped through the
container's ID map) in a directory of the daemon root, and binds it onto
`path` inside the container's mount namespace (new mount API: a detached
copy made by open_tree(2) in the host, attached by move_mount(2) from a
helper that has entered the container's mount namespace and root). The
container's devices cgroup is then widened to exactly that node
(lxpy.kernel.devices.change_extra).

Why a bound node rather than mknod inside: a node made on a filesystem that
an unprivileged container's user namespace mounted (its /dev tmpfs) can
never be opened (the kernel marks such superblocks nodev), and the
container's own list refuses mknod of block nodes anyway. A node on the
host's filesystem, bound in, works for privileged and unprivileged
containers alike, and its owner and mode are those the device asks for
without touching the host's own /dev node.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from lxpy.errors import InvalidArgument, LxpyError, NotFound
from lxpy.kernel import mounts
from lxpy.kernel import syscalls as sc
from lxpy.revert import Revert

KINDS = {"unix-char": "c", "unix-block": "b"}


@dataclass(frozen=True)
class Node:
    """A device number and its kind ("c" or "b")."""

    kind: str
    major: int
    minor: int

    @property
    def fmt(self) -> int:
        return stat.S_IFCHR if self.kind == "c" else stat.S_IFBLK


def inspect(source: str, dev_type: str) -> Node:
    """The device behind host node `source`, checked against `dev_type`
    ("unix-char" or "unix-block").

    Raises:
        NotFound: `source` does not exist.
        InvalidArgument: it is not a node of that kind.
    """
    if not os.path.isabs(source):
        raise InvalidArgument(
            f"source {source!r} is not an absolute path", hint="give e.g. source=/dev/fuse"
        )
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise NotFound(
            f"source {source} does not exist on the host",
            hint="check the path (`ls -l` it), or load the driver that makes it",
        ) from None
    want = KINDS.get(dev_type)
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else None
    if kind is None or kind != want:
        what = {"c": "a character device", "b": "a block device", None: "not a device node"}[kind]
        raise InvalidArgument(
            f"source {source} is {what}, not what {dev_type} passes in",
            hint="use unix-char for character devices, unix-block for block devices",
        )
    return Node(kind, os.major(st.st_rdev), os.minor(st.st_rdev))


def check_path(path: str) -> str:
    """`path` inside the container, normalized: absolute, with no `..`.

    Raises:
        InvalidArgument: naming the path.
    """
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or path.rstrip("/") == "" or "\0" in path:
        raise InvalidArgument(
            f"path {path!r} is not an absolute path inside the container",
            hint="give e.g. path=/dev/fuse (no `..`)",
        )
    return "/" + "/".join(p for p in parts if p and p != ".")


def parse_mode(value: str) -> int:
    """An octal permission mode ("0660", "660").

    Raises:
        InvalidArgument: naming the value.
    """
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise InvalidArgument(
            f"bad mode {value!r}: not an octal permission mode", hint="give e.g. mode=0660"
        )
    return mode


def make_node(host_path: str, node: Node, uid: int, gid: int, mode: int) -> None:
    """Make lxpyd's own node for `node` at `host_path` (host IDs `uid`,
    `gid`: the container's, mapped), replacing a stale one.

    Raises:
        OSError: with the kernel's errno.
    """
    os.makedirs(os.path.dirname(host_path), mode=0o700, exist_ok=True)
    try:
        os.unlink(host_path)
    except FileNotFoundError:
        pass
    with Revert(f"node {host_path}") as rv:
        os.mknod(host_path, node.fmt | 0o600, os.makedev(node.major, node.minor))
        rv.undo(lambda: os.unlink(host_path), f"remove {host_path}")
        os.chown(host_path, uid, gid)
        # After mknod: its mode passed through the umask.
        os.chmod(host_path, mode)


def host_id(init_pid: int, kind: str, container_id: int) -> int:
    """The host ID a container's `container_id` maps to (its init's
    uid_map or gid_map; `kind` "uid" or "gid"); itself without a map.

    Raises:
        InvalidArgument: the container's map does not hold it.
    """
    with open(f"/proc/{init_pid}/{kind}_map") as f:
        for line in f:
            inside, outside, count = (int(x) for x in line.split())
            if inside <= container_id < inside + count:
                return outside + container_id - inside
    raise InvalidArgument(
        f"{kind} {container_id} is not mapped in the container",
        hint=f"give a {kind} inside the container's ID range",
    )


def bind_in(init_pid: int, host_path: str, path: str) -> None:
    """Bind node `host_path` onto `path` inside the running container whose
    init is `init_pid` (the mount point is made there, with its parent
    directories, resolved in the container's root). Nothing is left inside
    on failure.

    Raises:
        LxpyError: the mount point cannot be made (a directory or a
            symlink is there) or the kernel refused the mount.
    """
    tree = mounts.clone_tree(host_path, recursive=False)
    try:
        _in_container(init_pid, lambda: _attach(tree, path), f"bind a node onto {path}")
    finally:
        os.close(tree)


def unbind(init_pid: int, path: str) -> None:
    """Unmount the node bound at `path` in the running container and remove
    its mount point (idempotent).

    Raises:
        LxpyError: the kernel refused the unmount.
    """
    _in_container(init_pid, lambda: _detach(path), f"remove the node at {path}")


def _attach(tree: int, path: str) -> None:
    parent = os.path.dirname(path)
    with Revert(f"mount point {path}") as rv:
        # Why step by step: each directory made registers its removal, so a
        # failure removes what this call made and nothing else.
        cur = ""
        for part in parent.strip("/").split("/") if parent != "/" else []:
            cur += "/" + part
            try:
                os.mkdir(cur, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(cur).st_mode):
                    raise OSError(errno.ENOTDIR, f"{cur} is not a directory") from None
            else:
                rv.undo(functools.partial(os.rmdir, cur), f"remove {cur}")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            rv.undo(lambda: os.unlink(path), f"remove {path}")
        except FileExistsError:
            mode = os.lstat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                raise OSError(errno.EEXIST, f"{path} exists and is not a file or node") from None
        mounts.attach_tree(tree, path)


def _detach(path: str) -> None:
    mounts.detach_mount(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    # Only the empty file this module made as the mount point goes.
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        os.unlink(path)


def _in_container(init_pid: int, work: Callable[[], None], what: str) -> None:
    """Run `work` in a helper that has entered the mount namespace and the
    root of `init_pid`; its OSError comes back as an LxpyError naming `what`.

    Why a process: setns(CLONE_NEWNS) refuses a caller that shares its
    filesystem context with other threads (every thread of lxpyd does).
    """
    # Read before the helper enters the container (its /proc is another).
    uid, gid = host_id(init_pid, "uid", 0), host_id(init_pid, "gid", 0)
    mnt = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root = os.open(f"/proc/{init_pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = sc.fork_helper()
        if pid == 0:
            msg = b""
            try:
                os.close(r)
                sc.setns(mnt, sc.CLONE_NEWNS)
                # Init's root, not the namespace's first mount: what the
                # container sees as /.
                os.fchdir(root)
                os.chroot(".")
                os.chdir("/")
                # Files made inside are the container root's: host root is
                # not mapped in an unprivileged container's filesystems
                # (creating there as it fails with EOVERFLOW).
                sc.setfsgid(gid)
                sc.setfsuid(uid)
                work()
            except OSError as e:
                msg = f"{e.errno}:{e.strerror or e}".encode()
            except BaseException as e:  # noqa: B036 - reported, never lost
                msg = f"{errno.EIO}:{e!r}".encode()
            finally:
                os.write(w, msg or b"0:")
                os._exit(0)
        os.close(w)
        w = -1
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        os.waitpid(pid, 0)
    finally:
        for fd in (mnt, root, r, w):
            if fd >= 0:
                os.close(fd)
    code, _, text = out.decode(errors="replace").partition(":")
    if not out:
        raise LxpyError(f"cannot {what}: the helper died")
    if code != "0":
        raise LxpyError(f"cannot {what} in the container: {text}")
