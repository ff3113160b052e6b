"""Container cgroups on cgroup v2, v1, and hybrid hosts.

A container gets one cgroup directory, `PARENT/lxpy.payload.NAME`, on every
mounted hierarchy, where PARENT (`lxpy.ROOTID`) is its daemon's own: two
daemons on different roots never share a container cgroup, and a container
cannot raise its limits above what the parent holds (a v1 child's devices
list is checked against its parent's). On a pure v2 host that is one
directory; on a hybrid host it is one per v1 controller hierarchy (memory,
pids, freezer, ...), one on the named `name=systemd` v1 hierarchy, and one
on the controller-less unified cgroup2 hierarchy. The v2 directory, when
there is one, is the authority for "which processes belong to the
container" because it is recursive and has cgroup.kill and cgroup.freeze.

Only os and the lxpy errors are imported: the monitor uses this module.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lxpy.errors import Busy, LxpyError, NotFound, Unsupported
from lxpy.kernel import syscalls as sc

# For annotations only: the zygote, which imports this module, needs no
# ID map arithmetic of its own here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lxpy.kernel.idranges import IdMap

PREFIX = "lxpy.payload."
# In a container's systemd scope (lxpy.kernel.systemd), the leaf cgroup its
# monitor moves into, beside the container's.
MONITOR_LEAF = "lxpy.monitor"

# Super options of a v1 cgroup mount that are not controller names.
_V1_NON_CONTROLLERS = {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode"}


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy."""

    mountpoint: str
    version: int
    # v1: its controllers (and `name=X` for a named hierarchy); v2: what
    # cgroup.controllers of the root lists (may be empty on hybrid hosts).
    controllers: tuple[str, ...]


def parse_mountinfo(text: str) -> list[Hierarchy]:
    """The cgroup hierarchies in the text of a /proc/PID/mountinfo.

    A hierarchy mounted twice is listed once (first mount wins); mounts of a
    sub-directory of a hierarchy (bind mounts, a cgroup namespace's view) are
    skipped because their root is not the hierarchy's root. v2 controllers
    are left empty here: `hierarchies()` reads them from the mounted tree.
    """
    found: list[Hierarchy] = []
    seen: set[tuple[str, str]] = set()
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint = fields[3], fields[4].replace("\\040", " ")
        fstype, superopts = rfields[0], rfields[2]
        if fstype not in ("cgroup", "cgroup2") or root != "/":
            continue
        if fstype == "cgroup2":
            key = ("cgroup2", "")
            ctrls: tuple[str, ...] = ()
        else:
            opts = [o for o in superopts.split(",") if o not in _V1_NON_CONTROLLERS]
            ctrls = tuple(o for o in opts if not o.startswith("release_agent="))
            key = ("cgroup", ",".join(sorted(ctrls)))
        if key in seen:
            continue
        seen.add(key)
        found.append(Hierarchy(mountpoint, 2 if fstype == "cgroup2" else 1, ctrls))
    return found


def hierarchies() -> list[Hierarchy]:
    """The cgroup hierarchies mounted in the caller's mount namespace."""
    with open("/proc/self/mountinfo") as f:
        found = parse_mountinfo(f.read())
    out = []
    for h in found:
        if h.version == 2:
            try:
                with open(os.path.join(h.mountpoint, "cgroup.controllers")) as f:
                    h = Hierarchy(h.mountpoint, 2, tuple(f.read().split()))
            except OSError:
                pass
        out.append(h)
    return out


def hierarchy_ids() -> tuple[str, ...]:
    """The kernel's cgroup hierarchies, as the lines of /proc/self/cgroup
    without the caller's paths ("ID:controllers").

    A short read of a few lines, whatever the mount table holds: it tells
    whether hierarchies read from that table earlier still stand.
    """
    with open("/proc/self/cgroup") as f:
        return tuple(":".join(line.split(":", 2)[:2]) for line in f.read().splitlines())


def layout(hs: list[Hierarchy]) -> str:
    """`unified` (v2 only), `hybrid` (v1 controllers plus a cgroup2 tree),
    `legacy` (v1 only) or `none`."""
    v1 = any(h.version == 1 for h in hs)
    v2 = any(h.version == 2 for h in hs)
    if v2 and not v1:
        return "unified"
    if v2 and v1:
        return "hybrid"
    return "legacy" if v1 else "none"


_MOUNT_FLAGS = {
    "ro": 1,  # MS_RDONLY
    "nosuid": 2,  # MS_NOSUID
    "nodev": 4,  # MS_NODEV
    "noexec": 8,  # MS_NOEXEC
    "noatime": 1024,  # MS_NOATIME
    "nodiratime": 2048,  # MS_NODIRATIME
    "relatime": 1 << 21,  # MS_RELATIME
}


def mount_flags(options: str) -> int:
    """The MS_* flags of a mount's options as mountinfo lists them
    ("rw,nosuid,nodev,relatime"), for a remount that keeps them."""
    flags = 0
    for opt in options.split(","):
        flags |= _MOUNT_FLAGS.get(opt, 0)
    return flags


def favor_dynmods() -> str | None:
    """Remount the cgroup2 hierarchy with `favordynmods`; returns its mountpoint
    when the option is (now) set, None when there is no cgroup2 mount or the
    kernel refuses it.

    Why: moving a process into a cgroup takes the kernel's global
    cgroup_threadgroup_rwsem for writing, and by default that waits for an
    RCU grace period: about 10 ms on every container start and every exec
    (measured here). With favordynmods the rwsem favours writers and a move
    costs about 0.3 ms, for a slightly dearer fork and exit host-wide. The
    option is host-wide and stays until reboot (recent systemd versions can
    set it too); lxpyd's `cgroup_favordynmods` setting turns this off.
    """
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields, rest = pre.split(), post.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] != "cgroup2" or fields[3] != "/":
            continue
        mountpoint = fields[4]
        superopts = [o for o in rest[2].split(",") if o not in ("rw", "ro")]
        if "favordynmods" in superopts:
            return mountpoint
        # A remount replaces both the superblock's options and the mount's
        # flags: carry over what is set (nsdelegate, memory_recursiveprot,
        # nosuid, ...) so only favordynmods changes.
        try:
            sc.mount(
                None,
                mountpoint,
                None,
                sc.MS_REMOUNT | mount_flags(fields[5]),
                ",".join([*superopts, "favordynmods"]),
            )
        except OSError:
            return None
        return mountpoint
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# How many cgroups a container may make below its own on cgroup v2, and
# how deep. Why: most of the kernel memory of a cgroup is not charged to
# the memory cgroup of who made it (about 8 KB each, measured), so without
# a bound root in a container could tie up the host's memory beyond its
# own limit by making cgroups. systemd in a container makes a few dozen; a
# container engine one or two per container it runs.
MAX_DESCENDANTS = 1000
MAX_DEPTH = 32


def _bound_subtree(d: str) -> None:
    for key, value in (
        ("cgroup.max.descendants", MAX_DESCENDANTS),
        ("cgroup.max.depth", MAX_DEPTH),
    ):
        path = os.path.join(d, key)
        if os.path.exists(path):
            sc.write_file(path, str(value))


def _init_cpuset(d: str) -> None:
    # Why: a new v1 cpuset cgroup starts with empty cpus and mems, and the
    # kernel refuses to attach a task to it (ENOSPC) until both are set.
    # Copy them from the parent, as clone_children would. A parent may be
    # empty too when someone else made it (systemd's slices and scopes in
    # a nesting container, where it does not manage cpuset): set it first.
    parent = os.path.dirname(d)
    for key in ("cpuset.cpus", "cpuset.mems"):
        mine = os.path.join(d, key)
        if _read(mine).strip():
            continue
        value = _read(os.path.join(parent, key)).strip()
        if not value:
            _init_cpuset(parent)
            value = _read(os.path.join(parent, key)).strip()
        sc.write_file(mine, value)


def _make_parent(h: Hierarchy, path: str, init: Callable[[Hierarchy, str], None] | None) -> None:
    """Make a daemon's parent cgroup `path`, set up before it is visible.

    On v1 it is made under a private name, set up, and renamed into place
    (v1 cgroups may be renamed; v2 ones may not, and need no set-up), so
    a container started at the same moment never sees it half-made.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if h.version == 2:
        os.makedirs(path, exist_ok=True)
        return
    tmp = f"{path}.new-{os.getpid()}"
    os.mkdir(tmp)
    try:
        if "cpuset" in h.controllers:
            _init_cpuset(tmp)
        if init is not None:
            init(h, tmp)
        os.rename(tmp, path)
    except OSError as e:
        os.rmdir(tmp)
        # Another start made it first: use theirs.
        if not (e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EBUSY) and os.path.isdir(path)):
            raise


def remove_parent(parent: str, hs: list[Hierarchy] | None = None, timeout: float = 2.0) -> None:
    """Remove a daemon's parent cgroup where it holds no container any more.

    A container cgroup removed a moment ago may still be dying in the
    kernel, which refuses the parent's removal (EBUSY) meanwhile: that is
    retried for up to `timeout` seconds. One holding a container stays.
    """
    deadline = time.monotonic() + timeout
    for h in hierarchies() if hs is None else hs:
        path = os.path.join(h.mountpoint, parent.strip("/"))
        while True:
            try:
                os.rmdir(path)
            except OSError as e:
                in_use = any(entry.is_dir() for entry in _scandir(path))
                if e.errno == errno.EBUSY and not in_use and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
            break


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def subtree(path: str) -> list[str]:
    """`path` and every directory below it, each before its children.

    Why not os.walk: it recurses, and root in a container may nest its
    cgroups a thousand deep (on v1 nothing bounds the depth), which would
    end the walk in a RecursionError and leave the tree behind.
    """
    out: list[str] = []
    todo = [path]
    while todo:
        d = todo.pop()
        out.append(d)
        todo.extend(e.path for e in _scandir(d) if e.is_dir(follow_symlinks=False))
    return out


def _pids_under(path: str) -> set[int]:
    pids: set[int] = set()
    for d in subtree(path):
        try:
            pids.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked
    return pids


class ContainerCgroup:
    """The cgroup directories of one container, one per hierarchy."""

    def __init__(self, name: str, dirs: list[tuple[Hierarchy, str]]) -> None:
        self.name = name
        self.dirs = dirs

    @classmethod
    def for_name(
        cls, name: str, hs: list[Hierarchy] | None = None, parent: str = ""
    ) -> ContainerCgroup:
        """Where container `name`'s cgroups live (nothing is created).

        Args:
            name: the container name; the directory is `lxpy.payload.NAME`.
            hs: the hierarchies (default: the ones mounted now).
            parent: a path relative to each hierarchy's root to nest under.

        Raises:
            Unsupported: when no cgroup hierarchy is mounted.
        """
        hs = hierarchies() if hs is None else hs
        if not hs:
            raise Unsupported(
                "no cgroup hierarchy is mounted", hint="mount cgroup2 on /sys/fs/cgroup"
            )
        rel = os.path.join(parent.strip("/"), PREFIX + name)
        return cls(name, [(h, os.path.join(h.mountpoint, rel)) for h in hs])

    @property
    def paths(self) -> list[str]:
        return [d for _h, d in self.dirs]

    @property
    def unified(self) -> str | None:
        """The directory on the cgroup2 hierarchy, if the host has one."""
        return next((d for h, d in self.dirs if h.version == 2), None)

    def _v1(self, controller: str) -> str | None:
        return next(
            (d for h, d in self.dirs if h.version == 1 and controller in h.controllers), None
        )

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process writes "0" to in order to join."""
        return [os.path.join(d, "cgroup.procs") for d in self.paths]

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.paths)

    def create(self, init_parent: Callable[[Hierarchy, str], None] | None = None) -> bool:
        """Make the directories; reuse leftovers of a previous run if empty.
        Returns whether all of them are new (so hold the kernel's defaults).

        A missing parent directory is made first and handed to `init_parent`
        (with its hierarchy) before anything can be made under it, so rules
        that v1 accepts only on a childless cgroup (devices.deny) can go in.

        Raises:
            Busy: when a leftover cgroup of this name still has processes.
            LxpyError: when a directory cannot be made.
        """
        if self.exists() and self.pids():
            raise Busy(
                f"cgroup {PREFIX}{self.name} still has processes {sorted(self.pids())[:5]}",
                hint="a previous run of this container is still alive; stop or kill it first",
            )
        fresh = not self.exists()
        for h, d in self.dirs:
            try:
                parent = os.path.dirname(d)
                if parent != h.mountpoint and not os.path.isdir(parent):
                    _make_parent(h, parent, init_parent)
                os.makedirs(d, exist_ok=True)
                if h.version == 2:
                    _bound_subtree(d)
            except OSError as e:
                self.remove(timeout=1)
                raise LxpyError(f"cannot create cgroup {d}: {e.strerror}") from None
            if h.version == 1 and "cpuset" in h.controllers:
                _init_cpuset(d)
        return fresh

    def mend(self) -> list[str]:
        """Make these cgroups fit for init to be (re)launched into them,
        after others changed the host's hierarchies meanwhile: a hierarchy
        no longer mounted is left out, and the directory on a hierarchy
        without controllers (a named one a tool mounts), if someone removed
        it, is made again. On a hierarchy with controllers a missing
        directory stays an error: making it again would drop its limits.
        Returns what changed, for the log.
        """
        changed: list[str] = []
        kept: list[tuple[Hierarchy, str]] = []
        for h, d in self.dirs:
            if not os.path.exists(os.path.join(h.mountpoint, "cgroup.procs")):
                changed.append(f"{h.mountpoint} is no longer a cgroup hierarchy: left out")
                continue
            named = all(c.startswith("name=") for c in h.controllers)
            if h.version == 1 and named and not os.path.isdir(d):
                try:
                    os.makedirs(d, exist_ok=True)
                except OSError as e:  # the launch then says what it cannot join
                    changed.append(f"{d} was removed and cannot be made again: {e.strerror}")
                else:
                    changed.append(f"{d} was removed: made again")
            kept.append((h, d))
        self.dirs = kept
        return changed

    def attach(self, pid: int) -> None:
        """Move process `pid` (host pid namespace) into every directory.

        Raises:
            NotFound: when the process is gone.
            LxpyError: when a hierarchy refuses it.
        """
        for path in self.procs_files():
            try:
                sc.write_file(path, str(pid))
            except ProcessLookupError:
                raise NotFound(f"process {pid} does not exist") from None
            except OSError as e:
                raise LxpyError(f"cannot move {pid} into {path}: {e.strerror}") from None

    def pids(self) -> set[int]:
        """All processes in the container's cgroup tree (host pids)."""
        src = self.unified or (self.paths[0] if self.paths else None)
        if src is None or not os.path.isdir(src):
            return set()
        return _pids_under(src)

    # -- freezer --------------------------------------------------------------

    def _v2_freeze_file(self) -> str | None:
        if self.unified and os.path.exists(os.path.join(self.unified, "cgroup.freeze")):
            return os.path.join(self.unified, "cgroup.freeze")
        return None

    def frozen(self) -> bool:
        """Whether the container is frozen (fully, not still freezing)."""
        v2 = self._v2_freeze_file()
        if v2:
            events = _read(os.path.join(os.path.dirname(v2), "cgroup.events"))
            return "frozen 1" in events.splitlines()
        v1 = self._v1("freezer")
        if v1 is None:
            return False
        return _read(os.path.join(v1, "freezer.state")).strip() == "FROZEN"

    def _set_frozen(self, on: bool, timeout: float) -> None:
        v2 = self._v2_freeze_file()
        v1 = self._v1("freezer")
        if v2:
            sc.write_file(v2, "1" if on else "0")
        elif v1:
            sc.write_file(os.path.join(v1, "freezer.state"), "FROZEN" if on else "THAWED")
        else:
            raise Unsupported("this host has no cgroup freezer", hint="enable the freezer")
        # Why wait: freezing is asynchronous; a task in an uninterruptible
        # sleep freezes only when it comes out of it.
        deadline = time.monotonic() + timeout
        while self.frozen() != on:
            if time.monotonic() > deadline:
                raise Busy(
                    f"cgroup {PREFIX}{self.name} did not {'freeze' if on else 'thaw'} "
                    f"within {timeout}s",
                    hint="a process may be stuck in uninterruptible I/O",
                )
            time.sleep(0.005)

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process of the container and wait until they are.

        Raises:
            Unsupported: without any freezer.
            Busy: when freezing does not complete within `timeout`.
        """
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        """Undo freeze().

        Raises:
            Unsupported: without any freezer.
            Busy: when thawing does not complete within `timeout`.
        """
        self._set_frozen(False, timeout)

    # -- kill and remove ----------------------------------------------------

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the container's cgroups; wait until none is left.

        Raises:
            Busy: when processes remain after `timeout` (stuck in the kernel).
        """
        deadline = time.monotonic() + timeout
        v2kill = self.unified and os.path.join(self.unified, "cgroup.kill")
        while True:
            pids = self.pids()
            if not pids:
                return
            if v2kill and os.path.exists(v2kill):
                # One write kills the whole subtree, including processes
                # forked while we would otherwise be iterating.
                sc.write_file(v2kill, "1")
            else:
                self._kill_by_listing()
            self._thaw_below()
            if time.monotonic() > deadline:
                raise Busy(
                    f"cgroup {PREFIX}{self.name} still has processes {sorted(pids)[:5]} "
                    f"after SIGKILL",
                    hint="they are probably in uninterruptible sleep; retry later",
                )
            time.sleep(0.005)

    def _thaw_below(self) -> None:
        # A task frozen by a v1 freezer cgroup does not die of SIGKILL
        # until it is thawed, and a nesting container's root may freeze
        # cgroups of its own below the container's (docker pause does):
        # thawed here, as host root, so a kill ends them too.
        top = self._v1("freezer")
        if top is None:
            return
        for d in subtree(top)[1:]:
            try:
                if _read(os.path.join(d, "freezer.state")).strip() != "THAWED":
                    sc.write_file(os.path.join(d, "freezer.state"), "THAWED")
            except OSError:
                continue  # gone meanwhile

    def _kill_by_listing(self) -> None:
        # Why freeze first: a forking process could otherwise create
        # children faster than we list and kill them.
        frozen = False
        try:
            self.freeze(timeout=1)
            frozen = True
        except LxpyError:
            pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            # v1-frozen tasks only die once thawed.
            try:
                self.thaw(timeout=1)
            except LxpyError:
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the directories (and sub-cgroups the container made).

        Idempotent. Retries while the kernel still reports them busy, which
        it does for a short while after the last process was killed.

        Raises:
            Busy: when a directory cannot be removed within `timeout`.
        """
        deadline = time.monotonic() + timeout
        for _h, d in self.dirs:
            if not os.path.isdir(d):
                continue
            for sub in reversed(subtree(d)):
                while True:
                    try:
                        os.rmdir(sub)
                        break
                    except FileNotFoundError:
                        break
                    except OSError as e:
                        if e.errno != errno.EBUSY or time.monotonic() > deadline:
                            raise Busy(
                                f"cannot remove cgroup {sub}: {e.strerror}",
                                hint="processes are still in it; kill them first",
                            ) from None
                        time.sleep(0.005)


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
