"""The launch path: what the container's init-to-be does before exec.

Privileged containers (child_main): the monitor has cloned this process
into a new pid namespace, so it runs as its PID 1, with the monitor
(outside it) as parent. It joins the
container's cgroups, takes the console, enters its other namespaces, builds
the root filesystem view, pivots into it, drops capabilities, installs the
syscall filter and execs init.

Unprivileged containers in a pinned user namespace (userns_child_main): the
same steps, split over two processes because the pid namespace must be
owned by the container's user namespace: a helper enters the user
namespace, unshares, and forks PID 1. Without a pinned one
(cloned_init_main), the monitor clones PID 1 straight into new namespaces,
the user namespace first, and does the host root's part itself; see
docs/security.md.

Any failure is written to `errfd` (close-on-exec, so a successful exec
reads as EOF on the monitor's side) and the process exits 127.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import stat
import termios
from collections.abc import Mapping, Sequence

from lxpy.kernel import apparmor, caps, hostlimits, inroot, mounts, namespaces, seccomp
from lxpy.kernel import syscalls as sc
from lxpy.kernel.lxcfs import bind_mounts
from lxpy.kernel.netif import link_up
from lxpy.model.limits import KernelLimits
from lxpy.runtime import disks, readiness
from lxpy.runtime.spec import LaunchSpec

# For annotations only: typing costs the zygote, and so every monitor it
# forks, ~0.5 MB.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Host device nodes a container may use: harmless character devices.
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

# Parts of /proc and /sys that leak or control host-wide state. Files get
# /dev/null bound over them, directories an empty read-only tmpfs.
_MASKED = (
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/sysrq-trigger",
    "proc/acpi",
    "proc/scsi",
    "proc/asound",
    "sys/firmware",
    "sys/devices/virtual/powercap",
)
# Host-wide kernel knobs that must stay read-only in a container.
_READ_ONLY = ("proc/sys", "proc/bus", "proc/fs", "proc/irq")

_NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


def child_main(
    spec: LaunchSpec,
    console_fd: int,
    console_path: str,
    tty_paths: Sequence[str],
    cgroup_procs: Sequence[str],
    errfd: int,
) -> NoReturn:
    """Set the container up and exec its init; never returns.

    Args:
        spec: the container.
        console_fd: the console pty slave (becomes init's stdio and ctty).
        console_path: the host path of that slave, bound on /dev/console.
        tty_paths: host paths of the pty slaves bound on /dev/tty1..N.
        cgroup_procs: the cgroup.procs files of the container's cgroups.
        errfd: write end of the monitor's error pipe (close-on-exec).
    """
    try:
        _setup(spec, console_fd, console_path, tty_paths, cgroup_procs)
        env = _environment(spec)
        _step("exec " + spec.init)
        os.execve(spec.init, [spec.init, *spec.args], env)
    except BaseException as e:  # noqa: B036 - anything must reach the monitor
        _report(errfd, e)
    os._exit(127)


def _report(errfd: int, e: BaseException) -> None:
    # The monitor reads this pipe to say which step failed and why.
    msg = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)
    try:
        os.write(errfd, f"{_STEP[0]}: {msg}".encode(errors="replace")[:4000])
    except OSError:
        pass


def userns_child_main(
    spec: LaunchSpec,
    console_fd: int,
    console_path: str,
    tty_paths: Sequence[str],
    cgroup_procs: Sequence[str],
    errfd: int,
    pid_w: int,
    go_r: int,
) -> NoReturn:
    """Start an unprivileged container in its pinned user namespace
    (spec.userns); never returns.

    Runs in a child of the monitor (still host root, in the host's pid
    namespace). It prepares the rootfs view as host root, enters the
    container's user namespace, unshares the namespaces that user namespace
    will own, and forks the container's init-to-be, whose host pid it
    writes to `pid_w` before exiting. The monitor, a child subreaper,
    inherits that process, reaps this one, and then writes one byte to the
    pipe `go_r` reads: only then may init arm PDEATHSIG (armed before, it
    would fire on this process's exit).

    Args:
        spec, console_fd, console_path, tty_paths, cgroup_procs, errfd: as
            for child_main().
        pid_w: write end of a pipe for the init-to-be's host pid.
        go_r: read end of the monitor's go-ahead pipe.
    """
    try:
        pid = _setup_userns(spec, cgroup_procs, go_r)
        if pid:
            os.write(pid_w, f"{pid}\n".encode())
            os._exit(0)
        os.close(pid_w)
        policy = _wait_go(go_r, spec)
        _setup_init_userns(spec, console_fd, console_path, tty_paths)
        _pivot_and_exec(spec, policy)
    except BaseException as e:  # noqa: B036 - anything must reach the monitor
        _report(errfd, e)
    os._exit(127)


def cloned_init_main(
    spec: LaunchSpec,
    console_fd: int,
    console_path: str,
    tty_paths: Sequence[str],
    errfd: int,
    go_r: int,
    tree: int,
) -> NoReturn:
    """Start an unprivileged container whose user namespace is its own
    (no spec.userns); never returns.

    Runs as PID 1 of the namespaces the monitor cloned it into (user
    first, and network, pid, mount, UTS and IPC owned by it), in the
    rootfs directory, as the monitor's child. Meanwhile the monitor moves
    it into the container's cgroups, writes its ID map and idmaps `tree`
    (the monitor's detached clone of the rootfs mount) through the new
    namespace; its byte on `go_r` says so. Then it becomes root inside,
    attaches the tree and goes on as init-to-be.

    Args:
        spec, console_fd, console_path, tty_paths, errfd: as for child_main().
        go_r: read end of the monitor's go-ahead pipe.
        tree: the rootfs tree.
    """
    try:
        _step("namespaces")
        # Why private: without it, every mount below would propagate back
        # to the host's (shared) mount namespace. Done while the monitor
        # writes the map: the capabilities this needs are held already.
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        link_up("lo")
        policy = _wait_go(go_r, spec)
        namespaces.become_root()
        # Again: a change of credentials clears the parent-death signal.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        _check_monitor(errfd)
        _own_limits(spec)
        _step("mounting the rootfs")
        mounts.attach_tree(tree, ".")
        os.fchdir(tree)
        os.close(tree)
        _setup_init_userns(spec, console_fd, console_path, tty_paths)
        _pivot_and_exec(spec, policy)
    except BaseException as e:  # noqa: B036 - anything must reach the monitor
        _report(errfd, e)
    os._exit(127)


def _pivot_and_exec(spec: LaunchSpec, policy: seccomp.Policy) -> NoReturn:
    # The last steps of an unprivileged init-to-be, in the rootfs's mount.
    _pivot(".")
    _lock_down(spec, policy)
    env = _environment(spec)
    _step("exec " + spec.init)
    os.execve(spec.init, [spec.init, *spec.args], env)


def _check_monitor(errfd: int) -> None:
    # The monitor holds the read end of the error pipe until init runs: a
    # write end that reports an error means it died (maybe before the
    # parent-death signal was armed, which would then never come).
    p = select.poll()
    p.register(errfd, 0)
    if p.poll(0):
        raise OSError(errno.ECHILD, "the monitor went away before init started")


def _setup_userns(spec: LaunchSpec, cgroup_procs: Sequence[str], go_r: int) -> int:
    """Process A of userns_child_main: returns the child's pid (in A) or 0 (in it)."""
    # Dies with the monitor while it works; its child re-arms this later.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    _join_cgroups(cgroup_procs)
    _step("opening the namespaces")
    userns = os.open(spec.userns, os.O_RDONLY | os.O_CLOEXEC)
    netns = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC) if spec.netns else -1
    root = os.path.realpath(spec.rootfs)
    _step("cloning the rootfs mount")
    # As host root, before entering the user namespace: a detached copy of
    # the rootfs, idmapped through the container's namespace (on disk k,
    # seen as base + k: root inside owns its files) or, when the tree was
    # shifted on disk, as is. Made here it is not locked when attached in
    # the container's mount namespace, so pivot_root accepts it. Setuid
    # files and device nodes work in it again (the host's pool mount is
    # nosuid and nodev).
    if spec.idmap_method == "idmapped":
        tree = mounts.idmapped_tree(root, userns, clear=mounts.ROOTFS_ATTRS)
    else:
        tree = mounts.clone_tree(root, clear=mounts.ROOTFS_ATTRS)
    if spec.lxcfs:
        clone_lxcfs(spec.lxcfs)
    if spec.nesting:
        clone_nesting_nodes()
    clone_disks(spec, userns)
    # Why chdir now: the path to the rootfs may cross directories that the
    # container's root may not search (0700, owned by host root); every
    # later path is relative to it.
    os.chdir(root)
    _step("network namespace")
    if netns >= 0:
        sc.setns(netns, sc.CLONE_NEWNET)
        os.close(netns)
    else:
        # An unpinned start (tests): a netns of the user namespace's own.
        namespaces.enter_userns(userns)
        sc.unshare(sc.CLONE_NEWNET)
        link_up("lo")
    _step("entering the user namespace")
    if netns >= 0:
        namespaces.enter_userns(userns)
    os.close(userns)
    _own_limits(spec)
    _step("namespaces")
    # Made after entering the user namespace, so it owns them: systemd
    # inside may mount /proc, set the hostname and manage its mounts.
    sc.unshare(sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC)
    # Why private: without it, every mount below would propagate back to
    # the host's (shared) mount namespace.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    _step("mounting the rootfs")
    mounts.attach_tree(tree, ".")
    os.fchdir(tree)
    os.close(tree)
    # The next child is PID 1 of the new pid namespace.
    pid = os.fork()
    if pid:
        os.close(go_r)
    return pid


def _own_limits(spec: LaunchSpec) -> None:
    # As root of the container's user namespace, before anything inside
    # runs: its own inotify limits (per user inside; the whole container
    # is held to the host's per-user ceiling, charged to its root ID).
    _step("setting the user namespace's limits")
    kl = KernelLimits.from_config(spec.limits)
    hostlimits.set_own_inotify(kl.inotify_instances, kl.inotify_watches)


def _wait_go(go_r: int, spec: LaunchSpec) -> seccomp.Policy:
    _step("waiting for the monitor")
    data = os.read(go_r, 1)
    os.close(go_r)
    if not data:
        raise OSError(errno.ECHILD, "the monitor went away before init started")
    _default_signals()
    return seccomp.default_policy(spec.syscalls_deny, spec.syscalls_allow)


def _setup_init_userns(
    spec: LaunchSpec, console_fd: int, console_path: str, tty_paths: Sequence[str]
) -> None:
    # The cgroup namespace is made here, by PID 1, so its root is the
    # container's cgroup that process A joined.
    _step("namespaces")
    sc.unshare(sc.CLONE_NEWCGROUP)
    sc.sethostname(spec.effective_hostname)
    # Init does not keep the console as its controlling terminal (as on a
    # real boot, where /dev/console never becomes one): a getty taking it
    # later would have to steal it, which needs CAP_SYS_ADMIN in the host's
    # user namespace.
    _take_console(console_fd, ctty=False)
    _mount_all(".", spec, console_path, tty_paths)


# What the child is doing, for the error message if it fails.
_STEP = ["start"]


def _step(what: str) -> None:
    _STEP[0] = what


def _setup(
    spec: LaunchSpec,
    console_fd: int,
    console_path: str,
    tty_paths: Sequence[str],
    cgroup_procs: Sequence[str],
) -> None:
    _default_signals()
    # Built first: a bad name fails the start before anything is mounted.
    policy = seccomp.default_policy(spec.syscalls_deny, spec.syscalls_allow)
    _join_cgroups(cgroup_procs)
    _take_console(console_fd)

    _step("network namespace")
    # Network first, so that sysfs mounted below shows this namespace's
    # interfaces. A pre-made netns (veth already inside) is joined; without
    # one, a new namespace with only loopback keeps the host's out of reach.
    if spec.netns:
        sc.setns_path(spec.netns, sc.CLONE_NEWNET)
    else:
        sc.unshare(sc.CLONE_NEWNET)
        link_up("lo")

    _step("namespaces")
    sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP)
    sc.sethostname(spec.effective_hostname)

    _step("mounting the rootfs")
    root = os.path.realpath(spec.rootfs)
    # Why private: without it, every mount below would propagate back to
    # the host's (shared) mount namespace.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    # pivot_root needs the new root to be a mount point.
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    # The bind inherits the pool's nosuid and nodev, which are the host's
    # view only: inside, setuid files and device nodes work.
    mounts.set_mount_attrs(root, clear=mounts.ROOTFS_ATTRS)

    _mount_all(root, spec, console_path, tty_paths)
    _pivot(root)
    _lock_down(spec, policy)


def _mount_all(root: str, spec: LaunchSpec, console_path: str, tty_paths: Sequence[str]) -> None:
    """The container's /proc, /sys, /dev and /run under `root` (or "." when
    the current directory is the new root)."""
    _step("mounting /proc")
    _mount_proc(root, spec.nesting)
    _step("mounting /sys")
    _mount_sys(root, spec)
    if spec.lxcfs:
        _step("binding lxcfs files")
        _mount_lxcfs(root, spec.lxcfs)
    _step("building /dev")
    _mount_dev(root, console_path, tty_paths, KernelLimits.from_config(spec.limits).pty)
    if spec.nesting:
        _step("nesting: /dev/.lxc, /dev/fuse, /dev/net/tun")
        _mount_nesting(root, spec)
    _step("binding a fresh boot_id")
    _fresh_boot_id(root)
    _step("mounting /run")
    _mount_run(root, spec.notify_fd)
    if spec.mounts:
        _mount_disks(root, spec)


# Disk devices' trees, made by host root before an unprivileged launch
# enters the container's user namespace (its root may not reach the
# source): (the disk, its tree), in mount order.
_DISK_TREES: list[tuple[Mapping[str, object], int]] = []


def clone_disks(spec: LaunchSpec, userns_fd: int = -1) -> None:
    """Detached trees of spec's disks, made by host root (see _DISK_TREES);
    shifted ones idmapped through `userns_fd` (or by shift_disks later)."""
    for m in spec.mounts:
        _step(f"opening disk {m.get('source')}")
        _DISK_TREES.append((m, disks.tree(m, userns_fd, not spec.privileged)))


def shift_disks(userns_fd: int) -> None:
    """Idmap the shifted disks' trees (cloned without a user namespace)."""
    for m, t in _DISK_TREES:
        if m.get("shift"):
            mounts.set_idmap(t, userns_fd, what=str(m.get("source")))


def close_disks() -> None:
    """Close the trees clone_disks made (in a process that hands them on)."""
    for _m, t in _DISK_TREES:
        os.close(t)
    _DISK_TREES.clear()


def _mount_disks(root: str, spec: LaunchSpec) -> None:
    # Privileged: host root clones them here, in the container's new mount
    # namespace (a copy of the host's, where the sources are).
    if not _DISK_TREES:
        clone_disks(spec)
    label = f"container {spec.name!r}"
    try:
        for m, t in _DISK_TREES:
            _step(f"mounting disk {m.get('source')} on {m.get('path')}")
            disks.attach(t, root, str(m["path"]), bool(m.get("dir", True)), label)
    finally:
        close_disks()


def _pivot(root: str) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one; the
    # detach then drops it, so no path to the host's tree is left behind.
    _step("pivot_root")
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _lock_down(spec: LaunchSpec, policy: seccomp.Policy) -> None:
    # Last steps before exec: what init and everything it starts can
    # never regain. The filter goes last, so nothing above runs under it.
    if spec.apparmor:
        _step("setting the AppArmor profile")
        apparmor.exec_under(spec.apparmor)
    _step("dropping capabilities")
    caps.drop_bounding(spec.drop_caps)
    caps.clear_inheritable_and_ambient()
    _step("installing the syscall filter")
    seccomp.apply(policy, no_new_privs=spec.no_new_privs)


def _default_signals() -> None:
    # Why: if the monitor dies, nobody would reap or supervise init; LXC's
    # answer is the same, the container dies with its monitor.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The monitor may ignore these; init must start with default dispositions.
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def _join_cgroups(cgroup_procs: Sequence[str]) -> None:
    _step("joining the cgroups")
    # Join the cgroups first: the cgroup namespace made below takes the
    # cgroup we are in as its root, and every later child inherits it.
    # "0" means "the writer", which avoids pid-namespace translation.
    for path in cgroup_procs:
        sc.write_file(path, "0")


def _take_console(console_fd: int, ctty: bool = True) -> None:
    _step("taking the console")
    # A session of our own with the console as controlling terminal: the
    # shell on the console gets job control and ^C.
    os.setsid()
    if ctty:
        fcntl.ioctl(console_fd, termios.TIOCSCTTY, 0)
    for std in (0, 1, 2):
        os.dup2(console_fd, std)
    if console_fd > 2:
        os.close(console_fd)


def _environment(spec: LaunchSpec) -> dict[str, str]:
    # `container` is how systemd and others detect a container (systemd's
    # Container Interface); container_uuid seeds /etc/machine-id when empty.
    env = {"container": "lxpy", "TERM": "linux", "PATH": _PATH, "HOME": "/"}
    if spec.uuid:
        env["container_uuid"] = spec.uuid
    if spec.notify_fd >= 0:
        env["NOTIFY_SOCKET"] = readiness.NOTIFY_SOCKET
    env.update(spec.env)
    return env


def _target(root: str, rel: str, is_dir: bool = True) -> str:
    """The absolute mount point `rel` under `root`, created if missing.

    A symlink is refused: the mount would follow it, to wherever the
    container's files point. So is any other kind of entry than the one
    the mount needs (a FIFO where /proc should be), with a message naming
    it rather than the mount's bare ENOTDIR.
    """
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if is_dir:
            os.makedirs(path, mode=0o755, exist_ok=True)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        return path
    want = stat.S_ISDIR(st.st_mode) if is_dir else not stat.S_ISDIR(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not want:
        what = "a directory" if is_dir else "a file"
        raise OSError(
            errno.ENOTDIR if is_dir else errno.EISDIR,
            f"refusing to mount on {rel}: it is {inroot.kind(st.st_mode)} in the rootfs, "
            f"not {what}",
        )
    return path


def _bind(src: str, dst: str, flags: int = 0) -> None:
    sc.mount(src, dst, None, sc.MS_BIND)
    if flags:
        # Flags other than MS_BIND are ignored by the first bind mount;
        # they take effect only through a remount of the bind.
        sc.mount(None, dst, None, sc.MS_BIND | sc.MS_REMOUNT | flags)


def _mount_proc(root: str, nesting: bool = False) -> None:
    proc = _target(root, "proc")
    sc.mount("proc", proc, "proc", _NOSUID_NODEV_NOEXEC)
    for rel in _READ_ONLY:
        path = os.path.join(root, rel)
        if os.path.exists(path):
            _bind(path, path, sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
    # The container owns its network namespace, so its net sysctls are its
    # own to set (systemd-networkd, ip forwarding).
    # With nesting, its user namespace's limits (user.max_*) too: a nested
    # lxpy or runtime sets those of the namespaces it makes, which the
    # kernel bounds by the container's own.
    for rel in ("sys/net", "sys/user") if nesting else ("sys/net",):
        path = os.path.join(proc, rel)
        if os.path.isdir(path):
            _bind(path, path, _NOSUID_NODEV_NOEXEC)
    _mask(root, [m for m in _MASKED if m.startswith("proc/")])


def _mask(root: str, rels: Sequence[str]) -> None:
    for rel in rels:
        path = os.path.join(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC, "size=0,mode=555")
        elif os.path.exists(path):
            _bind("/dev/null", path)


def _mount_sys(root: str, spec: LaunchSpec) -> None:
    sys_ = _target(root, "sys")
    sc.mount("sysfs", sys_, "sysfs", sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
    _mask(root, [m for m in _MASKED if m.startswith("sys/")])
    # "auto" was resolved by the monitor, which knows the host's hierarchies.
    if spec.cgroup_view == "cgroup2":
        # Mounted inside the new cgroup namespace, cgroup2 shows the
        # container's own subtree as its root: systemd in the container
        # manages that subtree (on a hybrid host, without controllers).
        cg = os.path.join(sys_, "fs/cgroup")
        sc.mount("cgroup2", cg, "cgroup2", _NOSUID_NODEV_NOEXEC)
    elif spec.cgroup_view == "hybrid":
        _mount_hybrid(os.path.join(sys_, "fs/cgroup"), spec.cgroup_v1)


def _mount_hybrid(cg: str, v1: Sequence[str]) -> None:
    # The host's layout (systemd's "hybrid"): a tmpfs holding each v1
    # hierarchy and cgroup2 at unified/. Mounted inside the new cgroup
    # namespace, each shows the container's own subtree, which the monitor
    # delegated to its root: nested runtimes make and limit their cgroups
    # there. Only hierarchies the host has can be mounted in a user
    # namespace, so nothing new is made.
    sc.mount("tmpfs", cg, "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=755,size=64k")
    for entry in v1:
        name, _, options = entry.partition(":")
        path = os.path.join(cg, name)
        os.mkdir(path, 0o755)
        sc.mount("cgroup", path, "cgroup", _NOSUID_NODEV_NOEXEC, options)
    unified = os.path.join(cg, "unified")
    os.mkdir(unified, 0o755)
    sc.mount("cgroup2", unified, "cgroup2", _NOSUID_NODEV_NOEXEC)
    # As on the host: nothing inside adds hierarchies beside these.
    sc.mount(None, cg, None, sc.MS_REMOUNT | sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC, "mode=755")


# Device nodes of a nesting container (security.nesting), beside
# _DEV_NODES: FUSE (fuse-overlayfs, rootless storage) and TUN (slirp4netns,
# pasta, VPNs). The devices cgroup allows both to every container; only
# nesting ones get the nodes.
_NESTING_NODES = (("fuse", 10, 229), ("net/tun", 10, 200))

# Detached copies of those nodes by target, made by host root (see
# clone_nesting_nodes).
_NODE_TREES: dict[str, int] = {}


def clone_nesting_nodes() -> None:
    """Detached binds of /dev/fuse and /dev/net/tun for a nesting
    container, made by host root before the launch enters its user
    namespace.

    Why not the host's nodes: they may be 0600 (no udev), which root of an
    unprivileged container cannot open, and an idmapped bind of them is
    refused (devtmpfs); nodes made inside a user namespace never work (its
    mounts are nodev). So host root makes nodes of its own, 0666, on a
    tmpfs of a throwaway mount namespace (nothing on the host's
    filesystems, and no host path shows in the container's mount table),
    and hands back detached binds of them. The devices cgroup still
    decides who opens what.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            # /dev: a directory every host has, covered only in here.
            sc.mount("none", "/dev", "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=755,size=16k")
            fds = []
            for target, major, minor in _NESTING_NODES:
                path = os.path.join("/dev", target)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
                os.chmod(path, 0o666)
                fds.append(mounts.clone_tree(path, recursive=False))
            socket.send_fds(theirs, [b"n"], fds)
            code = 0
        except BaseException as e:  # noqa: B036 - reported to the parent
            theirs.send(f"{type(e).__name__}: {e}".encode(errors="replace")[:1000])
        finally:
            os._exit(code)
    theirs.close()
    try:
        msg, fds, _flags, _addr = socket.recv_fds(ours, 1024, len(_NESTING_NODES))
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if len(fds) != len(_NESTING_NODES):
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EIO, "making /dev/fuse and /dev/net/tun: " + msg.decode())
    for (target, _major, _minor), fd in zip(_NESTING_NODES, fds, strict=True):
        os.set_inheritable(fd, False)
        _NODE_TREES[target] = fd


def _mount_nesting(root: str, spec: LaunchSpec) -> None:
    # The kernel lets a user namespace mount a fresh proc or sysfs only
    # where its mount namespace already holds one fully visible: not
    # covered by anything but empty directories ("mount_too_revealing").
    # The container's /proc and /sys are masked, and in a nested
    # namespace those masks are locked, so a nested runtime's proc mount
    # would be refused. As LXC's nesting.conf does, unmasked views under
    # /dev/.lxc satisfy the check while /proc and /sys stay masked. They
    # reveal nothing root inside could not read already: the masked files
    # belong to host root (writes fail with EACCES) and /proc/sys is the
    # host's only read-only. In root's own directory, so other users
    # inside do not stumble on it (the kernel's check does not look at
    # paths).
    dev = os.path.join(root, "dev")
    lxc = _target(dev, ".lxc")
    os.chmod(lxc, 0o700)
    sc.mount("proc", _target(lxc, "proc"), "proc", _NOSUID_NODEV_NOEXEC)
    # Read-only as /sys: both are one superblock (this network namespace's).
    sc.mount("sysfs", _target(lxc, "sys"), "sysfs", sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
    if not _NODE_TREES:
        # Privileged: still host root here.
        clone_nesting_nodes()
    for target, tree in _NODE_TREES.items():
        if "/" in target:
            _target(dev, os.path.dirname(target))
        path = _target(dev, target, is_dir=False)
        mounts.attach_tree(tree, path)
        os.close(tree)
    _NODE_TREES.clear()


def _mount_lxcfs(root: str, lxcfs_root: str) -> None:
    # lxcfs answers each read for the cgroups and pid namespace of the
    # reader: bound over the kernel's files, /proc/meminfo shows the memory
    # limit, /proc/uptime the container's uptime, and so on. A file this
    # lxcfs lacks (or an lxcfs that died: ENOTCONN) keeps the kernel's.
    ro = sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC
    if _LXCFS_TREES:
        # Unprivileged: the copies host root made before entering the userns.
        for dst, tree in _LXCFS_TREES.items():
            path = os.path.join(root, dst.lstrip("/"))
            if os.path.exists(path) and not os.path.islink(path):
                mounts.attach_tree(tree, path)
                sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | ro)
            os.close(tree)
        _LXCFS_TREES.clear()
        return
    for src, dst in bind_mounts(lxcfs_root):
        path = os.path.join(root, dst.lstrip("/"))
        if os.path.exists(path) and not os.path.islink(path):
            _bind(src, path, ro)


# lxcfs files opened (as detached mounts) by host root before an
# unprivileged launch enters the container's user namespace, whose root may
# not even reach the lxcfs mount (a 0700 directory on the way), by target.
_LXCFS_TREES: dict[str, int] = {}


def clone_lxcfs(lxcfs_root: str) -> None:
    """Detached copies of lxcfs's files, made by host root for a launch
    that enters a user namespace (see _LXCFS_TREES)."""
    for src, dst in bind_mounts(lxcfs_root):
        try:
            _LXCFS_TREES[dst] = mounts.clone_tree(src, recursive=False)
        except OSError:
            pass  # a file this lxcfs cannot serve keeps the kernel's


def close_lxcfs() -> None:
    """Close the copies clone_lxcfs and clone_nesting_nodes made (in a
    process that hands them on)."""
    for trees in (_LXCFS_TREES, _NODE_TREES):
        for tree in trees.values():
            os.close(tree)
        trees.clear()


def _mount_dev(root: str, console_path: str, tty_paths: Sequence[str], ptys: int) -> None:
    dev = _target(root, "dev")
    # A tmpfs of our own: the container sees only the nodes bound below, not
    # the host's disks. Not nodev, so nodes the container makes still work.
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for node in _DEV_NODES:
        _bind(f"/dev/{node}", _target(dev, node, is_dir=False))
    # A private devpts instance: ptys opened in the container are numbered
    # and visible only there. gid=5 is the tty group of Debian rootfs trees.
    # max= (limits.pty): every instance draws on the host's kernel.pty.max,
    # so one container opening ptys until it fails would leave none for
    # `lxpy exec -t` in any other. The host's own /dev/pts keeps
    # kernel.pty.reserve of them: an instance mounted outside the initial
    # mount namespace, as this one is, never takes those.
    pts = _target(dev, "pts")
    sc.mount(
        "devpts",
        pts,
        "devpts",
        sc.MS_NOSUID | sc.MS_NOEXEC,
        f"newinstance,ptmxmode=0666,mode=0620,gid=5,max={ptys}",
    )
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    # The console and ttys are host ptys whose masters the monitor holds:
    # that is how it logs the console and hands it to `attach`.
    _bind(console_path, _target(dev, "console", is_dir=False))
    for i, path in enumerate(tty_paths, start=1):
        _bind(path, _target(dev, f"tty{i}", is_dir=False))
    shm = _target(dev, "shm")
    sc.mount("tmpfs", shm, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")
    # mqueue belongs to the ipc namespace of whoever mounts it: ours.
    mq = _target(dev, "mqueue")
    sc.mount("mqueue", mq, "mqueue", _NOSUID_NODEV_NOEXEC)
    for name, dest in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(dest, os.path.join(dev, name))


BOOT_ID = "proc/sys/kernel/random/boot_id"


def new_boot_id() -> str:
    """A random (version 4) UUID in boot_id's format: lowercase, dashed."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _fresh_boot_id(root: str) -> None:
    # Why: the kernel's boot_id is the host's, the same in every container
    # and across their starts, so journald would file every boot of the
    # container under one boot (`journalctl --list-boots`) and tools that
    # key on it would never see a reboot. Each start (and reboot inside,
    # which is a new launch) binds a new one over it, read-only, as LXC
    # and systemd-nspawn do. The file lives in the container's own /dev
    # tmpfs just made, so nothing on the host or in the rootfs is written;
    # its name goes once bound (the mount keeps the file).
    target = os.path.join(root, BOOT_ID)
    if not os.path.isfile(target) or os.path.islink(target):
        return  # a kernel without it: nothing to hide
    src = os.path.join(root, "dev", ".boot_id")
    fd = os.open(src, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    try:
        os.write(fd, (new_boot_id() + "\n").encode())
    finally:
        os.close(fd)
    _bind(src, target, sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
    os.unlink(src)


def _mount_run(root: str, notify_fd: int) -> None:
    run = _target(root, "run")
    sc.mount("tmpfs", run, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=755,size=20%")
    # systemd's Container Interface: the host's os-release and the
    # manager's name, for tools that want to know what they run on.
    host = os.path.join(run, "host")
    os.mkdir(host, 0o755)
    for src in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError:
            continue
        with open(os.path.join(host, "os-release"), "wb") as f:
            f.write(data)
        break
    with open(os.path.join(host, "container-manager"), "w") as f:
        f.write("lxpy\n")
    if notify_fd >= 0:
        # Where the container says it has booted (lxpy.runtime.readiness).
        readiness.make_endpoints(host, notify_fd)
