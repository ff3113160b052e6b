"""AppArmor: the profile privileged containers run under, where the host has it.

Root in a privileged container holds CAP_SYS_ADMIN in the host's user
namespace: no capability drop or syscall filter keeps it from remounting
/proc/sys read-write or mounting a host disk (docs/security.md). On hosts
that run AppArmor (stock Debian does) lxpyd loads the profile below, as
LXC and Incus load theirs, and a privileged container's init is exec'd
under it. It allows what a whole system does (its own mounts, services,
network) and denies the mounts and writes that reach the host.

Only os and the lxpy errors are imported at run time: the launch path uses
exec_under().
"""

from __future__ import annotations

import os

from lxpy.errors import LxpyError

PROFILE = "lxpy-container"

# Where systemd inside mounts a fresh procfs for a service's own namespace
# (ProtectProc=, ProcSubset=) before it pivots into it.
_PROFILE_TEXT = """\
abi <abi/3.0>,

@{lxpy_proc}=/proc/ /run/systemd/unit-root/proc/

profile lxpy-container flags=(attach_disconnected,mediate_deleted) {
  # A whole system: its own files, network, processes and services.
  capability,
  file,
  network,
  signal,
  ptrace,
  unix,
  dbus,
  umount,
  pivot_root,
  mount,

  # No filesystem that reaches the host or its kernel.
  deny mount fstype=devtmpfs,
  deny mount fstype=debugfs,
  deny mount fstype=tracefs,
  deny mount fstype=securityfs,
  deny mount fstype=configfs,
  deny mount fstype=efivarfs,
  deny mount fstype=pstore,
  deny mount fstype=bpf,
  deny mount fstype=binfmt_misc,
  # No block device: a node of an already mounted host disk would do
  # (the kernel reuses its superblock without opening the node).
  deny mount fstype=ext2,
  deny mount fstype=ext3,
  deny mount fstype=ext4,
  deny mount fstype=xfs,
  deny mount fstype=btrfs,
  deny mount fstype=vfat,
  deny mount fstype=exfat,
  deny mount fstype=ntfs3,
  deny mount fstype=f2fs,
  deny mount fstype=squashfs,
  deny mount fstype=iso9660,
  # procfs and sysfs only where their masks and file rules apply.
  deny mount fstype=proc -> /[^pr]**,
  deny mount fstype=sysfs -> /[^s]**,
  deny mount options in (bind, rbind) /proc/ -> /[^pr]**,
  deny mount options in (bind, rbind) /sys/ -> /[^s]**,

  # Host-wide kernel knobs: only the container's own network namespace's.
  deny @{lxpy_proc}sys/[^n]** wklx,
  deny @{lxpy_proc}sys/n[^e]** wklx,
  deny @{lxpy_proc}sys/ne[^t]** wklx,
  deny @{lxpy_proc}sysrq-trigger rwklx,
  deny @{lxpy_proc}kcore rwklx,
  deny @{lxpy_proc}kmem rwklx,
  deny @{lxpy_proc}mem rwklx,
  # /sys is the host's, but for the container's own cgroup tree.
  deny /sys/[^f]** wklx,
  deny /sys/f[^s]** wklx,
  deny /sys/fs/[^c]** wklx,
  deny /sys/fs/c[^g]** wklx,
  deny /sys/fs/cg[^r]** wklx,
}
"""


def enabled() -> bool:
    """Whether the host's kernel runs AppArmor and its policy can be loaded."""
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            on = f.read().strip() == "Y"
    except OSError:
        return False
    return on and os.path.isdir("/sys/kernel/security/apparmor")


def load(run_dir: str) -> None:
    """Load (or replace) the container profile, from a file written in `run_dir`.

    Raises:
        LxpyError: when apparmor_parser is missing or refuses it.
    """
    import subprocess

    path = os.path.join(run_dir, PROFILE)
    with open(path, "w") as f:
        f.write(_PROFILE_TEXT)
    try:
        res = subprocess.run(
            ["apparmor_parser", "--replace", path], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise LxpyError(
            "AppArmor is enabled but apparmor_parser is missing",
            hint='install the apparmor package, or set apparmor = "off" in lxpyd.toml',
        ) from None
    if res.returncode != 0:
        raise LxpyError(f"apparmor_parser refused profile {PROFILE}: {res.stderr.strip()}")


def exec_under(profile: str) -> None:
    """Have the next execve(2) of this process run under `profile`.

    Raises:
        OSError: when the kernel refuses the change.
    """
    data = f"exec {profile}".encode()
    for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return
    raise OSError(2, "this kernel has no AppArmor attributes in /proc/self/attr")
