"""Capability sets of the container's init: bounding, inheritable, ambient.

The bounding set limits what any later execve can ever regain, so
dropping a capability there (before exec'ing init) takes it from the whole
container for good. The inheritable and ambient sets are cleared as well,
so nothing the launch path happened to hold is passed on through exec by
another route. Only ctypes, os and the capability table are imported.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable

from lxpy.errors import InvalidArgument
from lxpy.kernel import syscalls as sc
from lxpy.model.security import CAPABILITIES

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# capget/capset; prctl goes through lxpy.kernel.syscalls.
_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


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
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    for d in data:
        d.inheritable = 0
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


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
