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


def check_init(root: Rootfs, init: str) -> None:
    """Refuse a start whose init cannot be what it runs: missing, not a
    regular file or not executable (looked at from the host, never
    opened), so the error names the path and what it is instead of an
    exec failure deep in the launch.

    Raises:
        RootfsError: naming the path and what it is.
    """
    st = root.stat(init)
    if st is None:
        target = root.readlink(init)
        extra = f" (a symlink to {target}, resolved inside the container)" if target else ""
        raise RootfsError(
            f"{root.label}: its init {init} does not exist{extra}",
            hint="set the init key, or restore a snapshot",
        )
    if not stat.S_ISREG(st.st_mode):
        raise root.error(init, f"is {kind(st.st_mode)}, not a regular file (it is the init)")
    if not st.st_mode & 0o111:
        raise root.error(init, "is not executable (it is the init)")
