"""User and network namespaces for unprivileged containers.

The container's user namespace carries its ID map (lxpy.kernel.idranges);
its network namespace is owned by that user namespace, so the container's
root may configure its interfaces and mount sysfs. Both are made in
short-lived forked helpers and outlive them as descriptors or bind mounts:

* `create_userns`: a user namespace with a map, as a file descriptor
  (`pin_ns` binds it to a path so it outlives the process that made it).
* `create_netns_in`: a network namespace owned by a user namespace.
* `pin_new_namespaces`: both at once, bound on paths (what the zygote runs
  for each start).
* `enter_userns`, `become_root`: what the launch path does to become the
  container's root.

Only os, select, signal, fcntl and lxpy's kernel modules are imported: the
zygote and the launch path load this module.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
from collections.abc import Callable

from lxpy.kernel import syscalls as sc
from lxpy.kernel.hostlimits import act_as_owner, map_root
from lxpy.kernel.idranges import IdMap
from lxpy.kernel.mounts import detach_mount
from lxpy.kernel.netif import link_up

# linux/nsfs.h: _IO(0xb7, 0x1), the user namespace owning a namespace.
NS_GET_USERNS = 0xB701


def _helper(work: Callable[[], object]) -> tuple[int, int]:
    """Fork a helper that runs `work` (entering namespaces), writes one
    status byte (0, or the errno `work` failed with) and waits to be killed
    (by the caller, or by the end of the calling thread: sc.fork_helper).

    Returns (pid, the read end of the status byte's pipe).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = sc.fork_helper()
    if pid == 0:
        try:
            os.close(r)
            _run_and_wait(work, w)
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def _run_and_wait(work: Callable[[], object], w: int) -> None:
    # A helper's last steps: run `work`, write its status byte (0, or the
    # errno it failed with) on `w`, then wait to be killed, holding the
    # namespaces it entered for the caller.
    code = 0
    try:
        work()
    except OSError as e:
        code = e.errno or errno.EIO
    os.write(w, bytes([min(code, 255)]))
    while True:
        signal.pause()


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
            _run_and_wait(_new_netns if netns_path else lambda: None, w)
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


def _new_netns() -> None:
    # A network namespace of the caller's user namespace, with lo up.
    sc.unshare(sc.CLONE_NEWNET)
    link_up("lo")


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
