"""The busybox kind: a tiny rootfs made from the host's static busybox.

No network and no package manager: the binary is copied, every applet gets a
symlink, and busybox init is given an inittab and boot scripts. It builds in
well under a second, so it is never cached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import trio

from lxpy.build.proc import capture
from lxpy.build.report import Reporter
from lxpy.errors import LxpyError, NotFound, Unsupported
from lxpy.kernel import elf
from lxpy.kernel.inroot import Rootfs
from lxpy.model.template import TemplateDef

# Mode of each top-level directory; the rest of the tree is made on demand.
DIRS: dict[str, int] = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "usr/share/udhcpc": 0o755,
    "etc": 0o755,
    "etc/init.d": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "home": 0o755,
    "var/log": 0o755,
    "var/tmp": 0o1777,
    "mnt": 0o755,
}

INITTAB = """\
# busybox init reads this at boot (format: id:runlevel:action:process).
# lxpy mounts /proc, /sys, /dev and /run before init starts.
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
::restart:/sbin/init
"""

# The console getty line setup adds when setup.console_getty is true. Baud
# rate 0 leaves the line alone: the console is a pty, not a serial port.
GETTY_LINE = "::respawn:/sbin/getty -L 0 console vt100\n"

RCS = """\
#!/bin/sh
# Run once by init at boot (::sysinit). lxpy mounts /proc, /sys, /dev and
# /run before init starts, so nothing is mounted here.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
[ -s /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
# Start scripts run in name order: S40network is lxpy's DHCP client.
for script in /etc/init.d/S??*; do
	[ -x "$script" ] && "$script" start
done
# The boot is done: say so to lxpy (`lxpy start --wait`), through the FIFO
# it makes in every container. Elsewhere there is none and this is a no-op.
[ -p /run/host/ready ] && echo READY=1 > /run/host/ready
exit 0
"""

RCK = """\
#!/bin/sh
# Run by init on halt, poweroff and reboot (::shutdown), before it kills
# every process. Nothing is unmounted or remounted read-only: the root
# filesystem is the host's btrfs volume, and remounting it would reach the
# host.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
for script in $(ls -r /etc/init.d/S??* 2>/dev/null); do
	[ -x "$script" ] && "$script" stop
done
sync
exit 0
"""

PROFILE = """\
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
PS1='\\u@\\h:\\w\\$ '
"""

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""

GROUP = """\
root:x:0:
daemon:x:1:
tty:x:5:
utmp:x:43:
nogroup:x:65534:
"""

# '*' in the password field: no password matches, the account is locked.
# An empty "last change" field keeps login from demanding a new password.
SHADOW = """\
root:*::0:99999:7:::
daemon:*::0:99999:7:::
nobody:*::0:99999:7:::
"""


def is_static_elf(path: Path) -> bool:
    """True when `path` is an ELF executable without a program interpreter
    (PT_INTERP), i.e. it runs without the host's dynamic loader and libc.

    Raises:
        LxpyError: the file is not an ELF binary.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        binary = elf.parse(fd)
        if binary is None:
            raise LxpyError(f"{path} is not an ELF binary")
        return binary.interpreter() is None
    finally:
        os.close(fd)


def check_busybox(defn: TemplateDef) -> Path:
    """The host busybox the definition names, checked to be static.

    Raises:
        NotFound: it does not exist.
        Unsupported: it is dynamically linked (it would not run inside a
            rootfs that has no libc).
    """
    path = Path(defn.source.busybox)
    if not path.is_file():
        raise NotFound(
            f"source.busybox: {path} does not exist",
            hint="install the busybox-static package (apt-get install busybox-static)",
        )
    if not is_static_elf(path):
        raise Unsupported(
            f"source.busybox: {path} is dynamically linked and cannot run in a rootfs "
            "without a C library",
            hint="install the busybox-static package (apt-get install busybox-static)",
        )
    return path


def parse_applets(listing: str) -> list[str]:
    """Relative install paths from `busybox --list-full` (bin/sh, sbin/init, ...)."""
    applets = []
    for line in listing.splitlines():
        rel = line.strip().lstrip("/")
        if not rel or rel in ("bin/busybox", "linuxrc") or ".." in rel.split("/"):
            continue
        applets.append(rel)
    return applets


def parse_version(banner: str) -> str:
    """The version from busybox's banner (`BusyBox v1.35.0 (...) multi-call binary.`)."""
    m = re.search(r"BusyBox v(\S+)", banner)
    return m.group(1) if m else "unknown"


def lay_out(path: Path, busybox: Path, applets: list[str], version: str) -> int:
    """Fill the empty directory `path` with a busybox system (blocking).

    Returns the number of applet links made.
    """
    with Rootfs(path, "the busybox rootfs") as root:
        for rel, mode in DIRS.items():
            root.makedirs(rel, mode)
        root.symlink("var/run", "../run")
        root.write("bin/busybox", busybox.read_bytes(), 0o755)
        made = 0
        for rel in applets:
            if root.stat(rel, follow=False) is not None:
                continue
            # Absolute target: it resolves inside the container once it is the root.
            root.symlink(rel, "/bin/busybox")
            made += 1
        files = {
            "inittab": (INITTAB, 0o644),
            "init.d/rcS": (RCS, 0o755),
            "init.d/rcK": (RCK, 0o755),
            "profile": (PROFILE, 0o644),
            "passwd": (PASSWD, 0o644),
            "group": (GROUP, 0o644),
            "shadow": (SHADOW, 0o600),
            "shells": ("/bin/sh\n/bin/ash\n", 0o644),
            "os-release": (
                f'NAME="BusyBox"\nID=busybox\nVERSION_ID="{version}"\n'
                f'PRETTY_NAME="BusyBox {version}"\n',
                0o644,
            ),
            "resolv.conf": ("# written by udhcpc when a lease is bound\n", 0o644),
        }
        for rel, (text, mode) in files.items():
            root.write(f"etc/{rel}", text, mode, make_parents=True)
    return made


async def build(defn: TemplateDef, target: Path, report: Reporter) -> None:
    """Fill `target` with a busybox system from the host's static busybox.

    Raises:
        NotFound, Unsupported: see `check_busybox`.
        LxpyError: busybox could not list its applets.
    """
    bb = await trio.to_thread.run_sync(check_busybox, defn)
    report.progress(0.1, "busybox")
    listing = await capture([bb, "--list-full"])
    version = parse_version(await capture([bb]))
    applets = parse_applets(listing)
    made = await trio.to_thread.run_sync(lay_out, target, bb, applets, version)
    report.log(f"busybox {version} from {bb}: {made} applet links")
