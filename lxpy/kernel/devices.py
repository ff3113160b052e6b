"""Which device nodes a container may open: the v1 devices controller or,
on cgroup v2, an eBPF device program.

A container's /dev holds only harmless nodes, but a privileged root could
make a node of a host disk with mknod(2) and open it. The container's
cgroup gets an allow-list close to LXC's: every character node may be made
(systemd's PrivateDevices= makes its own /dev), and only these may be
opened. No block node may be made: the kernel mounts a block device that is
mounted already without opening it, so a node of the host's disk would be
enough to mount it. Unprivileged
containers get the same list, as a second wall behind the user namespace
(which refuses such nodes anyway).

Where the host has the v1 `devices` controller, the list is written to it,
and the daemon's parent cgroup holds the same list: the kernel checks every
change to a child's list against its parent's, so root in a privileged
container cannot widen its own list. On cgroup v2 (no `devices`
controller) the same rules become a BPF_PROG_TYPE_CGROUP_DEVICE program
(lxpy.kernel.bpfdev) attached to the container's cgroup2 directory with
BPF_F_ALLOW_MULTI: programs attached below it can only refuse more, and the
container's seccomp filter refuses bpf(2), so it cannot detach it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence

from lxpy.kernel import bpfdev
from lxpy.kernel import syscalls as sc
from lxpy.kernel.cgroups import ContainerCgroup, Hierarchy

# (type major:minor access): "m" is mknod, "rw" open for reading and writing.
ALLOWED: tuple[str, ...] = (
    "c *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:1 rwm",  # console
    "c 5:2 rwm",  # ptmx
    "c 136:* rwm",  # pty slaves: the console, the ttys and the container's own
    "c 10:200 rwm",  # net/tun, for VPNs inside
    "c 10:229 rwm",  # fuse
)


def devices_dir(cg: ContainerCgroup) -> str | None:
    """The container's directory on the v1 devices hierarchy, if the host has one."""
    return next((d for h, d in cg.dirs if h.version == 1 and "devices" in h.controllers), None)


def restrict(cg: ContainerCgroup, extra: Sequence[str] = ()) -> bool:
    """Deny every device to `cg` but ALLOWED and `extra` (the nodes its
    unix-char/unix-block devices pass in: node_rule) (its directories must exist):
    through the v1 devices controller where the host has one, else through
    a BPF device program on its cgroup2 directory.

    Returns:
        False when neither is there: no v1 devices controller, and no
        cgroup2 directory or a kernel that will not load or attach the
        program (no cgroup BPF, or no privilege for bpf(2)). Nothing was
        done then.

    Raises:
        OSError: when the kernel refuses a v1 rule, or refuses the BPF
            program for another reason (a verifier error names it).
    """
    d = devices_dir(cg)
    if d is not None:
        try:
            _widen_parent(d, extra)
            _restrict_dir(d, (*ALLOWED, *extra))
        except PermissionError:
            if not in_user_namespace():
                raise
            # lxpy inside a nesting container: the v1 devices files are
            # host root's alone, and the outer container's list already
            # bounds every cgroup below it, this one included.
            return False
        return True
    if cg.unified is None:
        return False
    try:
        bpfdev.attach(cg.unified, (*ALLOWED, *extra))
    except OSError as e:
        # Why these: a kernel without bpf(2) or cgroup device programs
        # (ENOSYS, EINVAL, EOPNOTSUPP), or a daemon without CAP_BPF /
        # CAP_SYS_ADMIN (EPERM); the caller falls back to dropping mknod.
        if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    return True


def init_parent(h: Hierarchy, path: str) -> None:
    """Give a new parent cgroup (not yet holding any child) the allow-list
    (bounded by the outer container's when lxpy runs in one: see restrict)."""
    if h.version == 1 and "devices" in h.controllers and not in_user_namespace():
        _restrict_dir(path)


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the host's
    (whose map is the whole ID space), as lxpy inside a container does."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except FileNotFoundError:
        return False


def _restrict_dir(d: str, rules: Sequence[str] = ALLOWED) -> None:
    sc.write_file(os.path.join(d, "devices.deny"), "a")
    _write_rules(os.path.join(d, "devices.allow"), rules)


def _write_rules(path: str, rules: Iterable[str]) -> None:
    # One open for every rule: the kernel takes each write(2) as one.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for rule in rules:
            os.write(fd, rule.encode())
    finally:
        os.close(fd)


def _widen_parent(d: str, extra: Sequence[str]) -> None:
    # v1 checks a child's list against its parent's: the daemon's parent
    # cgroup must allow a passed-in node before one container may. What the
    # parent allows beyond ALLOWED is only what some running container was
    # given (narrow_parent takes it back when none holds it any more);
    # each container's own list still holds only its own nodes.
    if extra:
        _write_rules(os.path.join(os.path.dirname(d), "devices.allow"), extra)


# -- passed-in nodes (unix-char / unix-block devices) -------------------------


def node_rule(kind: str, major: int, minor: int) -> str:
    """The rule that lets a container open (read and write) one node;
    `kind` is "c" or "b". No mknod: the node is bound in, not made."""
    return f"{kind} {major}:{minor} rw"


def covered(rule: str, rules: Iterable[str]) -> bool:
    """Whether `rules` allow everything `rule` does (so denying `rule`
    would take away some of theirs)."""
    kind, major, minor, access = bpfdev.parse_rule(rule)
    for other in rules:
        k, ma, mi, acc = bpfdev.parse_rule(other)
        if (
            k in (0, kind)
            and ma in (None, major)
            and mi in (None, minor)
            and access & acc == access
        ):
            return True
    return False


def narrow_parent(cg: ContainerCgroup, rules: Sequence[str], in_use: Sequence[str]) -> None:
    """Take `rules` back from the v1 parent of `cg`'s devices directory,
    but those ALLOWED or `in_use` (what other running containers were
    given) cover: a privileged container that can write its own list can
    then never widen it to a node only another container was given.
    Nothing on cgroup v2 (each container's program is its own). The
    directory of `cg` itself need not exist any more.

    Raises:
        OSError: the kernel refused a rule.
    """
    d = devices_dir(cg)
    if d is None:
        return
    keep = (*ALLOWED, *in_use)
    gone = [r for r in rules if not covered(r, keep)]
    if gone:
        _write_rules(os.path.join(os.path.dirname(d), "devices.deny"), gone)


def change_extra(cg: ContainerCgroup, before: Sequence[str], after: Sequence[str]) -> bool:
    """Change the nodes a running container may open from ALLOWED + `before`
    to ALLOWED + `after`, at once.

    Returns:
        False when there is neither a v1 devices controller nor a cgroup2
        directory (nothing was done).

    Raises:
        InvalidArgument: a malformed rule.
        OSError: the kernel refused a rule or the program.
    """
    d = devices_dir(cg)
    if d is not None:
        added = [r for r in after if r not in before]
        _widen_parent(d, added)
        if added:
            _write_rules(os.path.join(d, "devices.allow"), added)
        keep = (*ALLOWED, *after)
        gone = [r for r in before if r not in after and not covered(r, keep)]
        if gone:
            _write_rules(os.path.join(d, "devices.deny"), gone)
        return True
    if cg.unified is None:
        return False
    bpfdev.replace(cg.unified, (*ALLOWED, *after))
    return True
