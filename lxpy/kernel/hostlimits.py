"""A container's share of host-wide per-user kernel tables: inotify.

The kernel counts inotify instances and watches per (user namespace, user)
at every level of the user-namespace chain (kernel/ucount.c): a process in
a container is charged to its own user inside, against the container
namespace's `user.max_inotify_*`, and, at the host's level, to the user
that owns the container's namespace, against the host's
`fs.inotify.max_user_instances` / `max_user_watches`. lxpy makes each
container's user namespace owned by the container's own root ID
(act_as_owner, called by lxpy.kernel.namespaces), so that host-level
charge is the container's own: one container opening instances until
EMFILE leaves host root and every other container their own.

Here: making the namespaces a process creates owned by another host ID,
raising the host's per-user ceiling when a container asks for more
(`limits.kernel.max_inotify_*`), and setting the container namespace's
own values, by a process inside it. Stdlib only: the launch path uses it.
"""

from __future__ import annotations

import os

from lxpy.kernel import syscalls as sc

PR_SET_DUMPABLE = 4
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
# linux/securebits.h: capabilities stay when the effective UID leaves 0.
SECBIT_NO_SETUID_FIXUP = 1 << 2

HOST = {
    "instances": "/proc/sys/fs/inotify/max_user_instances",
    "watches": "/proc/sys/fs/inotify/max_user_watches",
}
# The same tables as seen from the user namespace of the caller.
OWN = {
    "instances": "/proc/sys/user/max_inotify_instances",
    "watches": "/proc/sys/user/max_inotify_watches",
}


def map_root(map_text: str) -> int:
    """The host ID that ID 0 inside maps to in `map_text` (the format of
    /proc/PID/uid_map: "inside outside count" lines), or 0 when 0 is not
    mapped."""
    for line in map_text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "0":
            return int(parts[1])
    return 0


def act_as_owner(uid: int, gid: int) -> tuple[int, int, int]:
    """Make the user namespaces this process creates from now on owned by
    host `uid`:`gid` (see the module's docstring for why), keeping every
    capability. Host root only.

    Only the effective IDs change: the real UID stays 0, so the kernel
    does not hold the new namespace to root's RLIMIT_NPROC either.

    Returns:
        what stop_acting() needs to undo it: (securebits, euid, egid).

    Raises:
        OSError: with the kernel's errno.
    """
    saved = (sc.prctl(PR_GET_SECUREBITS), os.geteuid(), os.getegid())
    sc.prctl(PR_SET_SECUREBITS, saved[0] | SECBIT_NO_SETUID_FIXUP)
    os.setegid(gid)
    os.seteuid(uid)
    return saved


def stop_acting(saved: tuple[int, int, int]) -> None:
    """Undo act_as_owner() in a process still in the user namespace it was
    in (not in a child that entered the new one).

    Raises:
        OSError: with the kernel's errno.
    """
    bits, euid, egid = saved
    os.seteuid(euid)
    os.setegid(egid)
    sc.prctl(PR_SET_SECUREBITS, bits)
    # Changing the effective UID made the process undumpable (its /proc
    # files root's, no core dumps); it is root again.
    sc.prctl(PR_SET_DUMPABLE, 1)


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def host_inotify() -> tuple[int, int]:
    """The host's per-user ceilings: (instances, watches)."""
    return _read(HOST["instances"]), _read(HOST["watches"])


def raise_host_inotify(instances: int | None, watches: int | None) -> list[str]:
    """Raise the host's per-user inotify ceilings to at least these values
    (None: leave it); they are never lowered. Host root only.

    Why: the host's value bounds what every container's root ID may hold,
    whatever the container's own namespace allows.

    Returns:
        what was raised, as "fs.inotify.NAME: OLD -> NEW", for the log.

    Raises:
        OSError: with the kernel's errno.
    """
    done = []
    for kind, wanted in (("instances", instances), ("watches", watches)):
        if wanted is None:
            continue
        have = _read(HOST[kind])
        if wanted > have:
            sc.write_file(HOST[kind], str(wanted))
            done.append(f"fs.inotify.max_user_{kind}: {have} -> {wanted}")
    return done


def set_own_inotify(instances: int | None, watches: int | None) -> None:
    """Set the caller's user namespace's `user.max_inotify_*` (None: the
    host's per-user value), from inside it with CAP_SYS_RESOURCE there.

    The values bound each user inside; the container as a whole is bound
    by the host's ceiling, charged to its root ID. Root inside may raise
    its own namespace's values (the kernel lets CAP_SYS_RESOURCE in a
    namespace write them), never the host's.

    Raises:
        OSError: with the kernel's errno.
    """
    host = host_inotify()
    for kind, wanted, default in (
        ("instances", instances, host[0]),
        ("watches", watches, host[1]),
    ):
        sc.write_file(OWN[kind], str(default if wanted is None else wanted))
