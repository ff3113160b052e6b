"""Capability sets of the container's init: bounding, inheritable, ambient.

The bounding set limits what any later execve can ever regain, so
dropping a capability there (before exec'ing init) takes it from the whole
container for good. The inheritable and ambient sets are cleared as well,
so nothing the launch path happened to hold is passed on through exec by
another route. Only the capability table and lxpy.kernel.syscalls
(capget, capset, prctl) are imported.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from lxpy.errors import InvalidArgument
from lxpy.kernel import syscalls as sc
from lxpy.model.security import CAPABILITIES

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def cap_numbers(names: Iterable[str]) -> list[int]:
    """Capability numbers for names such as `sys_admin` or `CAP_SYS_ADMIN`.

    Raises:
        InvalidArgument: naming an unknown capability.
    """
    out = []
    for name in names:
        key = name.lower().removeprefix("cap_")
        if key not in CAPABILITIES:
            raise InvalidArgument(
                f"unknown capability {name!r}", hint="names as in capabilities(7)"
            )
        out.append(CAPABILITIES[key])
    return out


def drop_bounding(names: Iterable[str]) -> None:
    """Remove capabilities from the calling thread's bounding set.

    A capability the running kernel does not know (newer than it) is
    skipped: it cannot be granted there either.

    Raises:
        InvalidArgument: for an unknown name.
        OSError: EPERM without CAP_SETPCAP.
    """
    for nr in cap_numbers(names):
        try:
            sc.prctl(PR_CAPBSET_READ, nr)
        except OSError:
            continue
        sc.prctl(PR_CAPBSET_DROP, nr)


def clear_inheritable_and_ambient() -> None:
    """Empty the inheritable and ambient sets of the calling thread.

    Raises:
        OSError: with the kernel's errno.
    """
    # Ambient capabilities survive execve of an ordinary binary; kernels
    # before 4.3 have none (EINVAL), which is the same as empty.
    try:
        sc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    sc.capset([(effective, permitted, 0) for effective, permitted, _ in sc.capget()])


def read_sets(pid: int | str = "self") -> dict[str, set[str]]:
    """The capability sets of a process by name, from /proc/PID/status:
    keys "inheritable", "permitted", "effective", "bounding", "ambient".

    Raises:
        OSError: when the process is gone.
    """
    fields = {"CapInh": "inheritable", "CapPrm": "permitted", "CapEff": "effective"}
    fields |= {"CapBnd": "bounding", "CapAmb": "ambient"}
    by_nr = {v: k for k, v in CAPABILITIES.items()}
    out: dict[str, set[str]] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                mask = int(value.strip(), 16)
                out[fields[key]] = {by_nr.get(i, str(i)) for i in range(64) if mask >> i & 1}
    return out
