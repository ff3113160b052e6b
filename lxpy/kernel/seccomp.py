"""A syscall filter for containers: classic BPF, built and installed in Python.

The container's init and everything it starts run under one seccomp filter
that makes a short list of host-wide or dangerous syscalls fail with an
errno (as LXC's common.seccomp does) and allows everything else. The filter
is a sequence of `struct sock_filter` instructions packed with `struct`,
loaded with prctl(PR_SET_SECCOMP); no libseccomp.

The program checks the architecture first: a syscall number means
different calls on x86_64 and i386 (a 64-bit process may still enter the
kernel through `int 0x80`), so each ABI the host runs gets its own block,
and an ABI the table does not know is killed rather than let through
unfiltered. x32 calls (numbers with bit 30 set on x86_64) fail with ENOSYS,
as on kernels built without x32.

Only os, struct, the lxpy errors and lxpy.kernel.syscalls (which holds
the prctl binding that loads the filter) are imported: the launch path
loads this module.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from lxpy.errors import InvalidArgument, Unsupported
from lxpy.kernel import syscalls as sc


@dataclass(frozen=True)
class Deny:
    """One syscall the default filter refuses, with the errno it returns."""

    name: str
    errno: int
    why: str


# The default deny list, in one place. EPERM is what the kernel itself would
# answer an unprivileged caller, so software already handles it; ENOSYS says
# "not available here" and makes callers fall back quietly.
DEFAULT_DENY: tuple[Deny, ...] = (
    # LXC's common.seccomp: loading code into the host kernel...
    Deny("init_module", errno.EPERM, "loads a kernel module into the host kernel"),
    Deny("finit_module", errno.EPERM, "loads a kernel module from a file descriptor"),
    Deny("delete_module", errno.EPERM, "unloads a host kernel module"),
    Deny("kexec_load", errno.EPERM, "replaces the running host kernel"),
    Deny("kexec_file_load", errno.EPERM, "replaces the running host kernel (file based)"),
    # ...and the "shocker" escape: opens any inode of a host filesystem by
    # its handle, bypassing the container's mount tree.
    Deny("open_by_handle_at", errno.EPERM, "opens host files by handle, ignoring the mount tree"),
    # Docker-like extras that systemd in a container never needs.
    Deny("iopl", errno.EPERM, "raw access to the host's I/O ports"),
    Deny("ioperm", errno.EPERM, "raw access to the host's I/O ports"),
    Deny("swapon", errno.EPERM, "adds host swap"),
    Deny("swapoff", errno.EPERM, "removes host swap"),
    Deny("syslog", errno.EPERM, "reads and clears the host kernel log"),
    Deny("acct", errno.EPERM, "switches host-wide process accounting"),
    Deny("settimeofday", errno.EPERM, "sets the host clock"),
    Deny("clock_settime", errno.EPERM, "sets the host clock"),
    Deny("clock_settime64", errno.EPERM, "sets the host clock (32-bit time64 call)"),
    Deny("stime", errno.EPERM, "sets the host clock (old 32-bit call)"),
    Deny("bpf", errno.EPERM, "loads eBPF programs that can trace the host kernel"),
    Deny("perf_event_open", errno.EPERM, "observes host-wide kernel and CPU events"),
    Deny("lookup_dcookie", errno.EPERM, "resolves host paths for profilers"),
    Deny("uselib", errno.EPERM, "obsolete library loader with a history of bugs"),
    # The kernel keyring is not fully namespaced: a privileged container
    # would share root's keys with the host. ENOSYS makes systemd treat
    # keyrings as unsupported instead of failing the unit.
    Deny("keyctl", errno.ENOSYS, "kernel keyring, shared with the host"),
    Deny("add_key", errno.ENOSYS, "kernel keyring, shared with the host"),
    Deny("request_key", errno.ENOSYS, "kernel keyring, shared with the host"),
)

# umount2(path, MNT_FORCE) is refused (LXC's reject_force_umount): a forced
# unmount of a shared filesystem (NFS, a bind of the host's) aborts I/O of
# the host's users of it too. Plain and lazy unmounts stay allowed.
MNT_FORCE = 1

# Syscall numbers per ABI: (x86_64, i386, generic as on aarch64); None where
# the ABI has no such call. Checked against the kernel headers by the tests.
SYSCALLS: dict[str, tuple[int | None, int | None, int | None]] = {
    "acct": (163, 51, 89),
    "add_key": (248, 286, 217),
    "adjtimex": (159, 124, 171),
    "bpf": (321, 357, 280),
    "chroot": (161, 61, 51),
    "clock_adjtime": (305, 343, 266),
    "clock_settime": (227, 264, 112),
    "clock_settime64": (None, 404, None),
    "clone": (56, 120, 220),
    "clone3": (435, 435, 435),
    "create_module": (174, 127, None),
    "delete_module": (176, 129, 106),
    "fanotify_init": (300, 338, 262),
    "finit_module": (313, 350, 273),
    "fsmount": (432, 432, 432),
    "fsopen": (430, 430, 430),
    "get_kernel_syms": (177, 130, None),
    "init_module": (175, 128, 105),
    "io_uring_enter": (426, 426, 426),
    "io_uring_register": (427, 427, 427),
    "io_uring_setup": (425, 425, 425),
    "ioperm": (173, 101, None),
    "iopl": (172, 110, None),
    "kcmp": (312, 349, 272),
    "kexec_file_load": (320, None, 294),
    "kexec_load": (246, 283, 104),
    "keyctl": (250, 288, 219),
    "lookup_dcookie": (212, 253, 18),
    "mbind": (237, 274, 235),
    "migrate_pages": (256, 294, 238),
    "mknod": (133, 14, None),
    "mknodat": (259, 297, 33),
    "mount": (165, 21, 40),
    "mount_setattr": (442, 442, 442),
    "move_mount": (429, 429, 429),
    "move_pages": (279, 317, 239),
    "name_to_handle_at": (303, 341, 264),
    "nfsservctl": (180, 169, 42),
    "open_by_handle_at": (304, 342, 265),
    "open_tree": (428, 428, 428),
    "perf_event_open": (298, 336, 241),
    "personality": (135, 136, 92),
    "pivot_root": (155, 217, 41),
    "process_vm_readv": (310, 347, 270),
    "process_vm_writev": (311, 348, 271),
    "ptrace": (101, 26, 117),
    "query_module": (178, 167, None),
    "quotactl": (179, 131, 60),
    "quotactl_fd": (443, 443, 443),
    "reboot": (169, 88, 142),
    "request_key": (249, 287, 218),
    "set_mempolicy": (238, 276, 237),
    "setdomainname": (171, 121, 162),
    "sethostname": (170, 74, 161),
    "setns": (308, 346, 268),
    "settimeofday": (164, 79, 170),
    "stime": (None, 25, None),
    "swapoff": (168, 115, 225),
    "swapon": (167, 87, 224),
    "_sysctl": (156, 149, None),
    "sysfs": (139, 135, None),
    "syslog": (103, 103, 116),
    "umount": (None, 22, None),
    "umount2": (166, 52, 39),
    "unshare": (272, 310, 97),
    "userfaultfd": (323, 374, 282),
    "uselib": (134, 86, None),
    "ustat": (136, 62, None),
    "vhangup": (153, 111, 58),
    "vm86": (None, 166, None),
    "vm86old": (None, 113, None),
}

# -- linux/audit.h, linux/seccomp.h, linux/filter.h ------------------------
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

# Offsets in struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6].
# The low half of an argument comes first on little-endian machines.
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG1_LO = 16 + 8

# (audit arch, column in SYSCALLS) per ABI a host may run; the host's own
# ABI comes first.
_ABIS_BY_MACHINE = {
    "x86_64": ((AUDIT_ARCH_X86_64, 0), (AUDIT_ARCH_I386, 1)),
    "aarch64": ((AUDIT_ARCH_AARCH64, 2),),
}

_BPF_MAXINSNS = 4096


@dataclass(frozen=True)
class Policy:
    """Which syscalls fail, and with which errno: name -> errno."""

    deny: dict[str, int]
    reject_force_umount: bool = True


def default_policy(
    extra_deny: Iterable[str] = (), allow: Iterable[str] = (), reject_force_umount: bool = True
) -> Policy:
    """The default deny list adjusted for one container.

    Args:
        extra_deny: more syscall names to refuse (with EPERM), e.g. from
            `security.syscalls.deny`.
        allow: names to take off the default list (`security.syscalls.allow`).
        reject_force_umount: refuse umount2(..., MNT_FORCE).

    Raises:
        InvalidArgument: for a name the syscall table does not know.
    """
    extra, allowed = list(extra_deny), list(allow)
    unknown = sorted({n for n in [*extra, *allowed] if n not in SYSCALLS})
    if unknown:
        raise InvalidArgument(
            f"unknown syscall name(s) {', '.join(unknown)}",
            hint="names lxpy can filter: " + ", ".join(sorted(SYSCALLS)),
        )
    deny = {d.name: d.errno for d in DEFAULT_DENY if d.name not in allowed}
    for name in extra:
        deny.setdefault(name, errno.EPERM)
    return Policy(deny, reject_force_umount)


class _Asm:
    """A tiny forward-only BPF assembler: jump targets are label names."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def ret(self, action: int) -> None:
        self.op(_RET_K, action)

    def assemble(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            offs = []
            for target in (jt, jf):
                off = target if isinstance(target, int) else self.labels[target] - i - 1
                if not 0 <= off <= 255:
                    raise Unsupported(f"seccomp filter: jump of {off} at instruction {i}")
                offs.append(off)
            out.append(struct.pack("=HBBI", code, offs[0], offs[1], k))
        return b"".join(out)


def build_filter(policy: Policy, machine: str | None = None) -> bytes:
    """The filter program for `policy` as packed `struct sock_filter`s.

    Args:
        policy: what to refuse.
        machine: `uname -m` of the target; the running machine by default.

    Raises:
        Unsupported: on an architecture without a syscall table here.
    """
    machine = machine or os.uname().machine
    key = (tuple(sorted(policy.deny.items())), policy.reject_force_umount, machine)
    prog = _BUILT.get(key)
    if prog is None:
        prog = _build(policy, machine)
        if len(_BUILT) < 16:
            _BUILT[key] = prog
    return prog


# Programs built, by policy and machine. The zygote builds the default one
# before it forks: every launch then finds it instead of assembling it in
# a fresh child, where that costs ~0.4 ms of copy-on-write faults.
_BUILT: dict[tuple[tuple[tuple[str, int], ...], bool, str], bytes] = {}


def _build(policy: Policy, machine: str) -> bytes:
    abis = _ABIS_BY_MACHINE.get(machine)
    if abis is None:
        raise Unsupported(
            f"no seccomp syscall table for {machine}",
            hint="lxpy filters syscalls on x86_64 and aarch64",
        )
    a = _Asm()
    a.op(_LD_W_ABS, _OFF_ARCH)
    for i, (arch, col) in enumerate(abis):
        a.op(_JEQ_K, arch, 0, f"abi{i + 1}")
        a.op(_LD_W_ABS, _OFF_NR)
        if arch == AUDIT_ARCH_X86_64:
            # x32 calls reuse x86_64 numbers with bit 30 set: a rule on
            # the plain number would not match them.
            a.op(_JGE_K, X32_SYSCALL_BIT, 0, 1)
            a.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
        for name, err in sorted(policy.deny.items()):
            nr = SYSCALLS[name][col]
            if nr is None:
                continue
            a.op(_JEQ_K, nr, 0, 1)
            a.ret(SECCOMP_RET_ERRNO | err)
        umount2 = SYSCALLS["umount2"][col]
        if policy.reject_force_umount and umount2 is not None and "umount2" not in policy.deny:
            a.op(_JEQ_K, umount2, 0, 3)
            a.op(_LD_W_ABS, _OFF_ARG1_LO)
            a.op(_JSET_K, MNT_FORCE, 0, 1)
            a.ret(SECCOMP_RET_ERRNO | errno.EPERM)
        a.ret(SECCOMP_RET_ALLOW)
        a.label(f"abi{i + 1}")
    # An ABI without a table: its numbers mean nothing to the rules above.
    a.ret(SECCOMP_RET_KILL_PROCESS)
    prog = a.assemble()
    if len(prog) // 8 > _BPF_MAXINSNS:
        raise InvalidArgument(f"seccomp filter too long ({len(prog) // 8} instructions)")
    return prog


def install(prog: bytes, no_new_privs: bool = False) -> None:
    """Load `prog` as a seccomp filter on the calling thread, for good.

    The filter is inherited by every child and kept across execve. Loading
    one needs CAP_SYS_ADMIN in the caller's user namespace or no_new_privs;
    the launch path is root there, so no_new_privs stays off by default
    (it would make setuid programs such as su and sudo useless inside).

    Args:
        prog: packed instructions from build_filter().
        no_new_privs: set PR_SET_NO_NEW_PRIVS first.

    Raises:
        OSError: with the kernel's errno (EACCES without CAP_SYS_ADMIN and
            without no_new_privs, EINVAL for a malformed program).
    """
    if no_new_privs:
        sc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    sc.set_seccomp_filter(prog)


def apply(policy: Policy, no_new_privs: bool = False) -> None:
    """Build the filter for `policy` on this machine and install it.

    Raises:
        Unsupported: on an architecture without a syscall table here.
        OSError: when the kernel refuses the filter.
    """
    install(build_filter(policy), no_new_privs)


def describe(policy: Policy) -> list[str]:
    """One line per refused syscall (`name: errno`), for `lxpy info` and docs."""
    lines = [f"{name}: {errno.errorcode.get(e, e)}" for name, e in sorted(policy.deny.items())]
    if policy.reject_force_umount:
        lines.append("umount2 with MNT_FORCE: EPERM")
    return lines
