"""ctypes bindings for the few syscalls Python 3.11's os module lacks.

lxpy's one home for libc prototypes and the structs syscalls take: the
rest of lxpy calls these wrappers and never ctypes.CDLL(None) itself (a
binding to another library, such as libnftables, stays with its user).

One wrapper per syscall. Each raises OSError carrying the errno and naming
the call and its arguments, so a failure deep in a container launch reads
as "mount('proc', '/x/proc', 'proc'): Permission denied" rather than a bare
errno. Only ctypes and os are imported: the monitor loads this module and
must stay lean.
"""

from __future__ import annotations

import ctypes
import errno
import os

# -- namespaces (linux/sched.h) -------------------------------------------
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

CLONE_PIDFD = 0x00001000

# -- mount flags (linux/mount.h) ------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2

# -- the new mount API (linux/mount.h, fcntl.h) -----------------------------
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x00100000

# -- prctl options (linux/prctl.h) ----------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36

SECCOMP_MODE_FILTER = 2  # linux/seccomp.h

SIGKILL = 9  # not imported from signal: this module stays lean

# -- madvise advice (linux/mman.h) ---------------------------------------
MADV_MERGEABLE = 12
MADV_POPULATE_WRITE = 23  # Linux 5.14

# pivot_root has no glibc wrapper: it is reached through syscall(2) by
# number, which differs per architecture.
_PIVOT_ROOT_NR = {
    "x86_64": 155,
    "aarch64": 41,
    "riscv64": 41,
    "loongarch64": 41,
    "ppc64le": 203,
    "ppc64": 203,
    "s390x": 217,
    "armv7l": 218,
    "armv6l": 218,
    "i686": 217,
    "i386": 217,
}

_libc = ctypes.CDLL(None, use_errno=True)

_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.syscall.restype = ctypes.c_long
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def write_file(path: str, value: str) -> None:
    """Write `value` to a kernel file (cgroup, /proc) in one write(2).

    Why not pathlib: no buffering, so a value the kernel refuses fails this
    call with the kernel's errno (EBUSY, EINVAL, ESRCH), as is.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces.

    Raises:
        OSError: with the kernel's errno (EPERM without CAP_SYS_ADMIN, EINVAL
            for a second CLONE_NEWPID before a fork).
    """
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that `fd` (an open /proc/PID/ns/* file) names.

    Raises:
        OSError: with the kernel's errno.
    """
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def setns_path(path: str | os.PathLike[str], nstype: int = 0) -> None:
    """setns(2) on a namespace file given by path (e.g. a bound netns).

    Raises:
        OSError: when the file cannot be opened or joined.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype)
    finally:
        os.close(fd)


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2).

    Raises:
        OSError: with the kernel's errno, naming source, target and type.
    """
    ret = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, f"mount({str(source)!r}, {str(target)!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2).

    Raises:
        OSError: with the kernel's errno (EINVAL when `target` is not a mount point).
    """
    _check(_libc.umount2(_b(target), flags), f"umount2({str(target)!r}, {flags})")


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    """pivot_root(2), through syscall(2).

    Raises:
        OSError: with the kernel's errno; ENOSYS on an architecture this
            module does not know.
    """
    nr = _PIVOT_ROOT_NR.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {os.uname().machine}")
    ret = _libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old))
    _check(ret, f"pivot_root({str(new_root)!r}, {str(put_old)!r})")


def sethostname(name: str) -> None:
    """sethostname(2) in the caller's UTS namespace.

    Raises:
        OSError: with the kernel's errno.
    """
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments.

    Raises:
        OSError: with the kernel's errno.
    """
    ret = _libc.prctl(option, arg2, arg3, arg4, arg5)
    _check(ret, f"prctl({option}, {arg2})")
    return int(ret)


def fork_helper() -> int:
    """os.fork() for a helper that must never outlive its parent: the child
    is killed (SIGKILL) when the thread that forked it ends, or at once when
    that has happened already. Returns the child's pid, and 0 in the child.

    Why: a helper parked for its parent (in pause(), until it is killed)
    that survived a killed parent would keep every descriptor it inherited,
    the lock a daemon holds on its root among them. PDEATHSIG fires when
    the forking *thread* ends, not its process: the caller reaps the helper
    before the call that forked it returns, in that thread.

    Raises:
        OSError: fork failed.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            prctl(PR_SET_PDEATHSIG, SIGKILL)
        except OSError:
            os._exit(1)
        # Orphaned between the fork and the prctl: no death signal will come.
        if os.getppid() != parent:
            os._exit(1)
    return pid


def set_process_name(name: str) -> None:
    """Set the calling thread's comm (what ps and top show), cut to 15 bytes.

    Raises:
        OSError: with the kernel's errno.
    """
    buf = ctypes.create_string_buffer(name.encode()[:15])
    ret = _libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)
    _check(ret, f"prctl(PR_SET_NAME, {name!r})")


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2) on `length` bytes of the caller's memory from `addr`.

    Raises:
        OSError: with the kernel's errno (EINVAL for advice a mapping cannot take).
    """
    _check(_libc.madvise(addr, length, advice), f"madvise({addr:#x}, {length}, {advice})")


# -- openat2 (linux/openat2.h) ---------------------------------------------
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
# The same number on every architecture (the syscall table was unified
# before openat2 came, in Linux 5.6).
_OPENAT2_NR = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` relative to `dirfd` under the `resolve` rules
    (RESOLVE_IN_ROOT: every symlink and ".." resolved as if `dirfd` were
    "/"); returns the new fd.

    Raises:
        OSError: with the kernel's errno (ENOSYS before Linux 5.6).
    """
    how = _OpenHow(flags, mode, resolve)
    for _ in range(_OPENAT2_TRIES):
        ret = _libc.syscall(
            ctypes.c_long(_OPENAT2_NR),
            ctypes.c_int(dirfd),
            _b(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        # Why: a scoped walk (IN_ROOT, BENEATH) that crosses ".." fails with
        # EAGAIN when any rename or mount on the host raced with it (the
        # kernel cannot then prove ".." stayed inside); the kernel asks the
        # caller to try again. A relative symlink such as Debian 13's
        # /usr/sbin/init -> ../lib/systemd/systemd takes that path, so on a
        # busy host a start could fail for a rename elsewhere.
        if ret >= 0 or ctypes.get_errno() != errno.EAGAIN or not resolve & _SCOPED:
            break
    _check(ret, f"openat2({dirfd}, {path!r}, {flags:#o}, resolve={resolve:#x})")
    return int(ret)


# Scoped walks, which the kernel may refuse with EAGAIN under a racing rename.
_SCOPED = RESOLVE_BENEATH | RESOLVE_IN_ROOT
# Each retry is one lookup; a host renaming so often that this many in a
# row race is a host to report EAGAIN on.
_OPENAT2_TRIES = 64


# The same number on every architecture (Linux 5.3).
_CLONE3_NR = 435


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


def clone3(flags: int, exit_signal: int) -> tuple[int, int]:
    """clone3(2) as a fork into new namespaces (`flags`: CLONE_NEW*), with
    a pidfd of the child. Returns (pid, pidfd) in the parent, (0, -1) in
    the child.

    Unlike os.fork(), no at-fork handler runs, so: single-threaded callers
    only, and the child must end in execve or os._exit without returning
    to the caller's logic.

    Raises:
        OSError: with the kernel's errno (ENOSYS before Linux 5.3).
    """
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs(
        flags=flags | CLONE_PIDFD, pidfd=ctypes.addressof(pidfd), exit_signal=exit_signal
    )
    ret = _libc.syscall(
        ctypes.c_long(_CLONE3_NR), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))
    )
    _check(ret, f"clone3({flags:#x})")
    return (int(ret), pidfd.value) if ret else (0, -1)


# -- bpf (linux/bpf.h) ------------------------------------------------------
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2
# bpf(2) has no glibc wrapper and a number per architecture (Linux 3.18).
_BPF_NR = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
    "armv7l": 386,
    "armv6l": 386,
    "i686": 357,
    "i386": 357,
}


def bpf(cmd: int, attr: bytes | ctypes.Structure) -> int:
    """bpf(2): run command `cmd` on `attr` (a `union bpf_attr`, only as long
    as the fields the command reads); returns the kernel's answer (a new fd
    for BPF_PROG_LOAD, 0 for BPF_PROG_ATTACH). Given as bytes, a copy is
    passed; given as a ctypes structure, the structure itself, so that a
    command's answer written into the union (BPF_PROG_QUERY) is read there.

    Raises:
        OSError: with the kernel's errno (EPERM without CAP_BPF/CAP_SYS_ADMIN,
            EINVAL for a program or attach type the kernel lacks, EACCES when
            the verifier refuses a program); ENOSYS on an architecture this
            module does not know.
    """
    nr = _BPF_NR.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"bpf: unknown syscall number on {os.uname().machine}")
    # A copy the kernel may write to (newer kernels report the log's size in it).
    buf = ctypes.create_string_buffer(attr, len(attr)) if isinstance(attr, bytes) else attr
    size = ctypes.sizeof(buf)
    ret = _libc.syscall(
        ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(buf), ctypes.c_uint(size)
    )
    _check(ret, f"bpf({cmd}, {size} bytes)")
    return int(ret)


class _BpfProgLoad(ctypes.Structure):
    # union bpf_attr, as BPF_PROG_LOAD reads it.
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
    ]


def bpf_prog_load(prog_type: int, prog: bytes, log_size: int = 0) -> int:
    """bpf(BPF_PROG_LOAD): load `prog` (packed struct bpf_insn, 8 bytes
    each) as a GPL program of `prog_type`; returns its fd. With `log_size`,
    the verifier writes its log to a buffer of that size, and the message
    of a refusal carries it.

    Raises:
        OSError: as bpf() does (EACCES or EINVAL when the verifier refuses
            the program).
    """
    insns = ctypes.create_string_buffer(prog, len(prog))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _BpfProgLoad(
        prog_type=prog_type,
        insn_cnt=len(prog) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        log_level=1 if log is not None else 0,
        log_size=log_size,
        log_buf=ctypes.addressof(log) if log is not None else 0,
    )
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        if log is None:
            raise
        text = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"{e.strerror}; verifier log:\n{text}") from None


class _BpfProgQuery(ctypes.Structure):
    # union bpf_attr, as BPF_PROG_QUERY reads and answers it.
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
    ]


def bpf_prog_query(target_fd: int, attach_type: int, most: int = 64) -> list[int]:
    """bpf(BPF_PROG_QUERY): the ids of the programs attached to `target_fd`
    (a cgroup directory) for `attach_type`, the first `most` of them.

    Raises:
        OSError: as bpf() does.
    """
    ids = (ctypes.c_uint32 * most)()
    attr = _BpfProgQuery(
        target_fd=target_fd, attach_type=attach_type, prog_ids=ctypes.addressof(ids), prog_cnt=most
    )
    bpf(BPF_PROG_QUERY, attr)
    return [int(ids[i]) for i in range(min(attr.prog_cnt, most))]


# -- the new mount API: open_tree, mount_setattr, move_mount -----------------
# The same numbers on every architecture (Linux 5.2; mount_setattr 5.12).
_OPEN_TREE_NR = 428
_MOVE_MOUNT_NR = 429
_MOUNT_SETATTR_NR = 442


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """open_tree(2): the mount at `path` (relative to `dirfd`), or with
    OPEN_TREE_CLONE a detached copy of it, as a new descriptor.

    Raises:
        OSError: with the kernel's errno (ENOSYS before Linux 5.2).
    """
    ret = _libc.syscall(
        ctypes.c_long(_OPEN_TREE_NR), ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags)
    )
    _check(ret, f"open_tree({path!r})")
    return int(ret)


def mount_setattr(
    dirfd: int,
    path: str,
    flags: int,
    attr_set: int = 0,
    attr_clr: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
    what: str = "",
) -> None:
    """mount_setattr(2): set `attr_set` and clear `attr_clr` (MOUNT_ATTR_*),
    change the propagation (MS_PRIVATE, ...; 0 leaves it) and, with
    MOUNT_ATTR_IDMAP, idmap through `userns_fd`, on the mount at `path`
    relative to `dirfd` (AT_EMPTY_PATH: the tree `dirfd` is; AT_RECURSIVE:
    and every mount below). `what` names the call in errors.

    Raises:
        OSError: with the kernel's errno (ENOSYS before Linux 5.12, EINVAL
            for a filesystem that cannot be idmapped, EPERM for a flag locked
            by a less privileged mount namespace).
    """
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    ret = _libc.syscall(
        ctypes.c_long(_MOUNT_SETATTR_NR),
        ctypes.c_int(dirfd),
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, what or f"mount_setattr({dirfd}, {path!r}, {flags:#x})")


def move_mount(
    from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int, what: str = ""
) -> None:
    """move_mount(2): move (attach, for a detached tree) the mount at
    `from_path` relative to `from_fd` onto `to_path` relative to `to_fd`
    (MOVE_MOUNT_F_EMPTY_PATH / _T_EMPTY_PATH: the descriptors themselves).
    `what` names the target in errors.

    Raises:
        OSError: with the kernel's errno.
    """
    ret = _libc.syscall(
        ctypes.c_long(_MOVE_MOUNT_NR),
        ctypes.c_int(from_fd),
        _b(from_path),
        ctypes.c_int(to_fd),
        _b(to_path),
        ctypes.c_uint(flags),
    )
    _check(ret, f"move_mount(-> {what or to_path!r})")


# -- capabilities (linux/capability.h) ----------------------------------------
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capget() -> list[tuple[int, int, int]]:
    """capget(2) of the calling thread: its (effective, permitted,
    inheritable) masks, one tuple for capabilities 0-31 and one for 32-63.

    Raises:
        OSError: with the kernel's errno.
    """
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        _check(-1, "capget")
    return [(d.effective, d.permitted, d.inheritable) for d in data]


def capset(sets: list[tuple[int, int, int]]) -> None:
    """capset(2) of the calling thread: `sets` as capget() returns them.

    Raises:
        OSError: with the kernel's errno (EPERM for a set the thread may not take).
    """
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(*(_CapData(*s) for s in sets))
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        _check(-1, "capset")


# -- file system IDs -------------------------------------------------------


def setfsuid(uid: int) -> int:
    """setfsuid(2): the UID the calling thread's file accesses and new
    files use from now on; returns the previous one. The kernel reports no
    error: a change it refuses leaves the previous one.
    """
    return int(_libc.setfsuid(uid))


def setfsgid(gid: int) -> int:
    """setfsgid(2): as setfsuid, for the GID."""
    return int(_libc.setfsgid(gid))


# -- seccomp (linux/filter.h) ----------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_seccomp_filter(prog: bytes) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER): load `prog` (packed
    struct sock_filter instructions, 8 bytes each) on the calling thread.

    Raises:
        OSError: with the kernel's errno (EACCES without CAP_SYS_ADMIN and
            without no_new_privs, EINVAL for a malformed program).
    """
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
