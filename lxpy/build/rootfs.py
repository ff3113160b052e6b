"""What lxpy keeps and checks in a container's rootfs: its hostname, its init.

All access goes through lxpy.kernel.inroot: the rootfs belongs to the
container's root, who may have made any of these files a FIFO, a device
node, a symlink out of the rootfs or a huge sparse file.
"""

from __future__ import annotations

import logging
import stat

from lxpy.kernel.inroot import Rootfs, RootfsError, kind

log = logging.getLogger("lxpy.rootfs")


def set_hostname_files(root: Rootfs, hostname: str) -> None:
    """Write the container's hostname into its /etc/hostname and the
    127.0.1.1 line of its /etc/hosts (the template holds a placeholder).
    Done at create, and checked again at each start (the hostname may have
    been set or the container renamed since).

    /etc/hostname is lxpy's: whatever entry is there other than a regular
    file with the right name (a FIFO, a device node, a symlink, a huge
    file) is replaced. /etc/hosts is the container's: one that is not a
    regular file of a sane size is left alone. A rootfs without /etc gets
    neither.

    Raises:
        RootfsError: /etc or /etc/hostname is something lxpy cannot
            replace (/etc not a directory, /etc/hostname a directory).
    """
    etc = root.stat("etc")
    if etc is None:
        return
    if not stat.S_ISDIR(etc.st_mode):
        raise root.error("etc", f"is {kind(etc.st_mode)}, not a directory")
    want = hostname + "\n"
    # Unchanged (the usual case at a start): no write. Read only what can
    # be the right name: never a FIFO, never more than its size.
    now = root.stat("etc/hostname", follow=False)
    same = (
        now is not None
        and stat.S_ISREG(now.st_mode)
        and now.st_size == len(want.encode())
        and root.read_text("etc/hostname") == want
    )
    if not same:
        root.write("etc/hostname", want)
    try:
        text = root.read_text("etc/hosts")
    except RootfsError as e:
        log.warning("%s; its 127.0.1.1 line is left as it is", e.message)
        return
    if text is None:
        return
    lines = text.splitlines()
    out = [f"127.0.1.1\t{hostname}" if ln.startswith("127.0.1.1") else ln for ln in lines]
    if out != lines:
        root.write("etc/hosts", "\n".join(out) + "\n")


def init_problem(root: Rootfs, init: str) -> str | None:
    """Why `init` in `root` cannot be run as init (None: it can): it must
    be a regular file with an execute bit, its symlinks resolved inside the
    rootfs. Looked at from the host, never opened, so a FIFO or device
    node there cannot block it."""
    try:
        st = root.stat(init)
    except RootfsError as e:
        return e.what
    if st is None:
        target = root.readlink(init)
        return "does not exist" + (
            f" (a symlink to {target}, resolved inside the container)" if target else ""
        )
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind(st.st_mode)}, not a program"
    if not st.st_mode & 0o111:
        return "is not executable"
    return None


def check_init(root: Rootfs, init: str) -> None:
    """Refuse a start whose init cannot be what it runs (init_problem), so
    the error names the path and what it is instead of an exec failure
    deep in the launch.

    Raises:
        RootfsError: naming the path and what it is.
    """
    problem = init_problem(root, init)
    if problem is not None:
        raise RootfsError(
            f"{root.label}: its init {init} {problem}",
            hint="set the init key, or restore a snapshot",
            what=problem,
        )
