"""Running a bootstrap tool where its target allows device nodes and setuid
files, though the pool it lives in does not.

lxpy mounts its pool nosuid and nodev (lxpy.storage.pool): a container's
root must not hand host users setuid files or device nodes through the
host's view of it. debootstrap refuses such a target outright ("cannot
install into target ... mounted with noexec or nodev"), and mmdebstrap
would make a template without device nodes. So the tool runs in a mount
namespace of its own, in which the target is a bind mount of itself with
both attributes cleared: it builds what it would build anywhere, the host's
view of the pool stays as it is, and whatever the tool mounts inside the
target (/proc, /sys, /dev) ends with it.

    argv = in_own_mounts(target, ["debootstrap", ...])

runs `python -I -S -c ...` (stdlib and lxpy only, as the zygote does),
which sets that up and execs the tool: the tool keeps its pid, session and
process group, so cancelling a build kills it as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from lxpy.kernel import mounts
from lxpy.kernel import syscalls as sc

_BOOT = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from lxpy.build.mountns import main; main(sys.argv[1:])"
)


def in_own_mounts(target: str | os.PathLike[str], argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` with `target` allowing device
    nodes and setuid files (see the module's docstring)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable, "-I", "-S", "-c", _BOOT.format(root=root), os.fspath(target), *argv]


def main(args: Sequence[str]) -> NoReturn:
    """TARGET PROGRAM [ARGS...]: set up the mount namespace, exec PROGRAM."""
    target, *argv = args
    try:
        sc.unshare(sc.CLONE_NEWNS)
        # Why private: the bind below, and every mount the tool makes,
        # must not propagate back to the host's (shared) mount namespace.
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        mounts.set_mount_attrs(target, clear=mounts.ROOTFS_ATTRS)
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"lxpy: cannot run {argv[0] if argv else '?'} for {target}: {e}", file=sys.stderr)
    os._exit(127)
