"""A device allow-list for cgroup v2: an eBPF program, built by hand.

cgroup v2 has no `devices` controller. The kernel instead runs every
BPF_PROG_TYPE_CGROUP_DEVICE program attached to a process's cgroup (and to
its ancestors) on each mknod(2) and each open of a device node, and refuses
the access with EPERM unless all of them return 1. This module turns rules
written as for the v1 `devices.allow` file ("c 1:3 rwm", "c 136:* rwm",
"a") into such a program, as a sequence of `struct bpf_insn` packed with
`struct`, loads it and attaches it to a cgroup directory. No libbpf, no
compiler.

The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
u32 minor; }`, where access_type is (access << 16) | type. It tests the
rules in order and allows on the first that matches; anything else is
denied. A rule matches when its type is the device's (or "a"), its major
and minor are the device's (or "*"), and the access asked for is within the
rule's (an open for reading and writing needs both "r" and "w", as in v1).

The program is attached with BPF_F_ALLOW_MULTI: programs a container (or
anyone) attaches below it run as well and can only refuse more, never
allow what this one refuses.

Only errno, os, struct, the lxpy errors and lxpy.kernel.syscalls (which
holds the bpf(2) bindings) are imported (no typing at run time): the
monitor loads this module.
"""

from __future__ import annotations

import errno
import os
import struct

from lxpy.errors import InvalidArgument
from lxpy.kernel import syscalls as sc

# For annotations only: typing costs the zygote, and so every monitor it
# forks, ~0.5 MB.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# -- linux/bpf.h: the device context --------------------------------------
DEV_BLOCK = 1  # BPF_DEVCG_DEV_BLOCK
DEV_CHAR = 2  # BPF_DEVCG_DEV_CHAR
ACC_MKNOD = 1  # BPF_DEVCG_ACC_MKNOD
ACC_READ = 2  # BPF_DEVCG_ACC_READ
ACC_WRITE = 4  # BPF_DEVCG_ACC_WRITE
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE

_TYPES = {"a": 0, "b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# -- linux/bpf_common.h, linux/bpf.h: opcodes ------------------------------
_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
_ALU64_MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X: dst = src
_ALU64_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
_ALU64_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
_ALU64_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
_JMP_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K: if dst != imm: pc += off
_JMP_EXIT = 0x95  # BPF_JMP | BPF_EXIT: return r0

# Registers: r1 holds the context on entry; r0 is the return value.
_R0, _R1, _R2, _R3, _R4, _R5, _R6 = range(7)
_TYPE, _ACC, _MAJOR, _MINOR = _R3, _R4, _R5, _R6

_LOG_SIZE = 1 << 16
_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One `struct bpf_insn`: code u8, dst_reg:4 | src_reg:4 (dst in the low
    nibble on little-endian hosts), off s16, imm s32; host byte order."""
    regs = (src << 4) | dst if _LITTLE else (dst << 4) | src
    return struct.pack("=BBhi", code, regs, off, imm)


def parse_rule(rule: str) -> tuple[int, int | None, int | None, int]:
    """A v1-style rule ("c 1:3 rwm", "b *:* m", "a") as (type, major,
    minor, access): type 0 for "a", None for "*", access a mask of ACC_*.

    Raises:
        InvalidArgument: for a rule that is not of that form.
    """
    parts = rule.split()
    try:
        if parts == ["a"]:
            return 0, None, None, ACC_ALL
        kind, nums, acc = parts
        major_s, minor_s = nums.split(":")
        major = None if major_s == "*" else int(major_s)
        minor = None if minor_s == "*" else int(minor_s)
        mask = 0
        for ch in acc:
            mask |= _ACCESS[ch]
        if not acc or len(set(acc)) != len(acc) or kind not in _TYPES:
            raise ValueError(rule)
        for n in (major, minor):
            if n is not None and not 0 <= n < 1 << 31:
                raise ValueError(rule)
    except (ValueError, KeyError):
        raise InvalidArgument(
            f"bad device rule {rule!r}",
            hint="write it as for devices.allow: 'c 1:3 rwm', 'b *:* m' or 'a'",
        ) from None
    return _TYPES[kind], major, minor, mask


def _rule_block(rule: str) -> list[bytes]:
    kind, major, minor, access = parse_rule(rule)
    # Each test is a jump past the rest of the block when it fails (None
    # for the offset until the block's length is known).
    body: list[tuple[int, int, int, int | None]] = []  # code, dst, src or imm, jump
    if kind:
        body.append((_JMP_JNE_K, _TYPE, kind, 0))
    if access != ACC_ALL:
        # Allowed when the access asked for has no bit outside the rule's.
        body.append((_ALU64_MOV_X, _R0, _ACC, None))
        body.append((_ALU64_AND_K, _R0, ~access & ACC_ALL, None))
        body.append((_JMP_JNE_K, _R0, 0, 0))
    if major is not None:
        body.append((_JMP_JNE_K, _MAJOR, major, 0))
    if minor is not None:
        body.append((_JMP_JNE_K, _MINOR, minor, 0))
    n = len(body) + 2  # the tests, then r0 = 1 and exit
    out = []
    for i, (code, dst, arg, jump) in enumerate(body):
        if jump is not None:
            out.append(insn(code, dst=dst, off=n - i - 1, imm=arg))
        elif code == _ALU64_MOV_X:
            out.append(insn(code, dst=dst, src=arg))
        else:
            out.append(insn(code, dst=dst, imm=arg))
    out.append(insn(_ALU64_MOV_K, dst=_R0, imm=1))
    out.append(insn(_JMP_EXIT))
    return out


def program(rules: Iterable[str]) -> bytes:
    """The instructions of a program that allows what `rules` allow and
    denies every other device access.

    Raises:
        InvalidArgument: for a malformed rule.
    """
    out = [
        insn(_LDX_MEM_W, dst=_R2, src=_R1, off=0),  # access_type
        insn(_ALU64_MOV_X, dst=_TYPE, src=_R2),
        insn(_ALU64_AND_K, dst=_TYPE, imm=0xFFFF),
        insn(_ALU64_MOV_X, dst=_ACC, src=_R2),
        insn(_ALU64_RSH_K, dst=_ACC, imm=16),
        insn(_LDX_MEM_W, dst=_MAJOR, src=_R1, off=4),
        insn(_LDX_MEM_W, dst=_MINOR, src=_R1, off=8),
    ]
    for rule in rules:
        block = _rule_block(rule)
        out += block
        if len(block) == 2:
            # A rule that matches everything ("a") ends the program: the
            # verifier refuses code that cannot be reached.
            return b"".join(out)
    out.append(insn(_ALU64_MOV_K, dst=_R0, imm=0))  # default deny
    out.append(insn(_JMP_EXIT))
    return b"".join(out)


def load(prog: bytes) -> int:
    """Load `prog` as a BPF_PROG_TYPE_CGROUP_DEVICE program; returns its fd.

    Raises:
        OSError: with the kernel's errno; when the verifier refuses the
            program, the message carries the verifier's log.
    """
    try:
        return sc.bpf_prog_load(sc.BPF_PROG_TYPE_CGROUP_DEVICE, prog)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EINVAL):
            raise
    # Why: the first try runs without a log (cheaper, and a log too small
    # would itself fail with ENOSPC); on a refusal, load again with one so
    # the error says what the verifier disliked. Refused once, accepted
    # with a log: take it.
    return sc.bpf_prog_load(sc.BPF_PROG_TYPE_CGROUP_DEVICE, prog, _LOG_SIZE)


def attach(cgroup_dir: str, rules: Iterable[str]) -> None:
    """Attach a program allowing only `rules` to the cgroup2 directory
    `cgroup_dir` (BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI). The attachment
    keeps the program while the cgroup lives; no fd is left open.

    Raises:
        InvalidArgument: for a malformed rule.
        OSError: with the kernel's errno (EPERM without privilege, EINVAL
            or ENOSYS on a kernel without cgroup BPF, EBADF when the
            directory is not on a cgroup2 mount).
    """
    prog = program(rules)
    dfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pfd = load(prog)
        try:
            # union bpf_attr, BPF_PROG_ATTACH: target_fd, attach_bpf_fd,
            # attach_type, attach_flags, replace_bpf_fd.
            sc.bpf(
                sc.BPF_PROG_ATTACH,
                struct.pack("=IIIII", dfd, pfd, sc.BPF_CGROUP_DEVICE, sc.BPF_F_ALLOW_MULTI, 0),
            )
        finally:
            os.close(pfd)
    finally:
        os.close(dfd)


def attached(cgroup_dir: str) -> list[int]:
    """The ids of the device programs attached to `cgroup_dir` itself (not
    those of its ancestors).

    Raises:
        OSError: with the kernel's errno.
    """
    dfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sc.bpf_prog_query(dfd, sc.BPF_CGROUP_DEVICE)
    finally:
        os.close(dfd)


def replace(cgroup_dir: str, rules: Iterable[str]) -> None:
    """Make the device programs on `cgroup_dir` allow exactly `rules`: a new
    program is attached, then the ones that were there are detached.

    Why in that order: while both are attached, the kernel asks both and
    allows only what each allows, so the container never has more than the
    old list or the new one at any moment (a widened list takes effect
    when the old program goes, a narrowed one at once).

    Raises:
        InvalidArgument: for a malformed rule.
        OSError: with the kernel's errno (the old programs stay on failure
            to attach the new one).
    """
    old = attached(cgroup_dir)
    attach(cgroup_dir, rules)
    dfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for prog_id in old:
            try:
                pfd = sc.bpf(sc.BPF_PROG_GET_FD_BY_ID, struct.pack("=III", prog_id, 0, 0))
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue  # detached meanwhile
                raise
            try:
                sc.bpf(
                    sc.BPF_PROG_DETACH,
                    struct.pack("=IIIII", dfd, pfd, sc.BPF_CGROUP_DEVICE, 0, 0),
                )
            finally:
                os.close(pfd)
    finally:
        os.close(dfd)
