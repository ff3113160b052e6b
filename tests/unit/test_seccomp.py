"""The seccomp filter: its policy, its program, and what the kernel does with it.

The kernel tests run in a forked child (a filter cannot be removed once
installed) with no_new_privs, so they need no root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
from pathlib import Path

import pytest

from lxpy.errors import InvalidArgument, Unsupported
from lxpy.kernel import seccomp
from lxpy.model.security import SecurityConfig
from tests.forking import in_child

X86_64 = os.uname().machine == "x86_64"
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def sys_errno(nr: int, *args: int | bytes | None) -> int:
    """Make syscall nr; 0 on success, else its errno."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = _libc.syscall(ctypes.c_long(nr), *cargs)
    return 0 if ret >= 0 else ctypes.get_errno()


def nr(name: str) -> int:
    value = seccomp.SYSCALLS[name][0 if X86_64 else 2]
    assert value is not None
    return value


# -- the policy --------------------------------------------------------------


def test_default_policy_follows_lxc_and_keeps_reboot() -> None:
    p = seccomp.default_policy()
    for name in ("kexec_load", "open_by_handle_at", "init_module", "finit_module", "delete_module"):
        assert p.deny[name] == errno.EPERM
    assert p.deny["keyctl"] == errno.ENOSYS
    # init powers off through reboot(2) inside its pid namespace.
    assert "reboot" not in p.deny
    assert all(d.name in seccomp.SYSCALLS and d.why for d in seccomp.DEFAULT_DENY)


def test_policy_adjustments_and_unknown_names() -> None:
    p = seccomp.default_policy(extra_deny=["ptrace"], allow=["keyctl", "bpf"])
    assert p.deny["ptrace"] == errno.EPERM
    assert "keyctl" not in p.deny and "bpf" not in p.deny
    with pytest.raises(InvalidArgument, match="frobnicate"):
        seccomp.default_policy(extra_deny=["frobnicate"])
    assert "umount2 with MNT_FORCE: EPERM" in seccomp.describe(p)


def test_security_config_feeds_the_policy() -> None:
    cfg = SecurityConfig.from_config(
        {"security.syscalls.deny": "ptrace, userfaultfd", "security.syscalls.allow": ["bpf"]}
    )
    p = seccomp.default_policy(cfg.syscalls_deny, cfg.syscalls_allow)
    assert {"ptrace", "userfaultfd"} <= set(p.deny) and "bpf" not in p.deny
    with pytest.raises(InvalidArgument, match="security.syscalls.deny"):
        SecurityConfig.from_config({"security.syscalls.deny": "ptrace; ls"})
    with pytest.raises(InvalidArgument, match="both name 'bpf'"):
        SecurityConfig.from_config(
            {"security.syscalls.deny": ["bpf"], "security.syscalls.allow": ["bpf"]}
        )


def _header_numbers(path: str, pattern: str) -> dict[str, int]:
    text = Path(path).read_text()
    return {m[1]: int(m[2]) for m in re.finditer(pattern, text)}


@pytest.mark.parametrize(
    ("col", "header", "pattern"),
    [
        (0, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"#define __NR_(\w+)\s+(\d+)"),
        (1, "/usr/include/x86_64-linux-gnu/asm/unistd_32.h", r"#define __NR_(\w+)\s+(\d+)"),
        (2, "/usr/include/asm-generic/unistd.h", r"#define __NR(?:3264)?_(\w+)\s+(\d+)"),
    ],
)
def test_syscall_table_matches_kernel_headers(col: int, header: str, pattern: str) -> None:
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    known = _header_numbers(header, pattern)
    if col == 2:
        # The generic header lists the time64 calls for 32-bit ABIs only.
        known.pop("clock_settime64", None)
    for name, numbers in seccomp.SYSCALLS.items():
        assert numbers[col] == known.get(name), name


# -- the program, run through a small BPF interpreter ------------------------


def run_bpf(prog: bytes, arch: int, number: int, arg1: int = 0) -> int:
    data = struct.pack("<iIQ6Q", number, arch, 0, 0, arg1, 0, 0, 0, 0)
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x06:
            return k
        else:
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)


@pytest.mark.parametrize(
    ("machine", "arch", "col"),
    [("x86_64", 0xC000003E, 0), ("x86_64", 0x40000003, 1), ("aarch64", 0xC00000B7, 2)],
)
def test_program_per_abi(machine: str, arch: int, col: int) -> None:
    policy = seccomp.default_policy()
    prog = seccomp.build_filter(policy, machine)
    eperm = seccomp.SECCOMP_RET_ERRNO | errno.EPERM
    for name, err in policy.deny.items():
        number = seccomp.SYSCALLS[name][col]
        if number is not None:
            assert run_bpf(prog, arch, number) == seccomp.SECCOMP_RET_ERRNO | err, name
    umount2 = seccomp.SYSCALLS["umount2"][col]
    assert umount2 is not None
    assert run_bpf(prog, arch, umount2, arg1=seccomp.MNT_FORCE) == eperm
    assert run_bpf(prog, arch, umount2, arg1=2) == seccomp.SECCOMP_RET_ALLOW  # MNT_DETACH
    reboot = seccomp.SYSCALLS["reboot"][col]
    assert reboot is not None and run_bpf(prog, arch, reboot) == seccomp.SECCOMP_RET_ALLOW
    # An ABI without a table here is killed, not let through unfiltered.
    assert run_bpf(prog, 0x40000028, 1) == seccomp.SECCOMP_RET_KILL_PROCESS


def test_x32_numbers_are_refused_on_x86_64() -> None:
    prog = seccomp.build_filter(seccomp.default_policy(), "x86_64")
    x32_init_module = seccomp.X32_SYSCALL_BIT | 175
    assert run_bpf(prog, 0xC000003E, x32_init_module) == seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS


def test_unknown_machine_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="mips"):
        seccomp.build_filter(seccomp.default_policy(), "mips")


# -- the real kernel ----------------------------------------------------------


def _probe() -> dict[str, int]:
    bad = 0xDEADBEEF  # flags no call accepts: no side effects without the filter
    return {
        "init_module": sys_errno(nr("init_module"), None, 0, b""),
        "finit_module": sys_errno(nr("finit_module"), -1, b"", bad),
        "delete_module": sys_errno(nr("delete_module"), b"lxpy_no_such_module", 0),
        "kexec_load": sys_errno(nr("kexec_load"), 0, 0, None, bad),
        "open_by_handle_at": sys_errno(nr("open_by_handle_at"), -1, None, 0),
        "keyctl": sys_errno(nr("keyctl"), 0, 0, 0, 0, 0),  # KEYCTL_GET_KEYRING_ID
        "umount2_force": sys_errno(nr("umount2"), b"/lxpy-no-such-dir", 1),
        "umount2_plain": sys_errno(nr("umount2"), b"/lxpy-no-such-dir", 0),
    }


def test_filter_in_the_kernel() -> None:
    def child() -> dict[str, object]:
        before = _probe()
        seccomp.apply(seccomp.default_policy(), no_new_privs=True)
        after = _probe()
        # Ordinary calls still work under the filter.
        fd = os.open("/proc/self/status", os.O_RDONLY)
        status = os.read(fd, 8192).decode()
        os.close(fd)
        return {"before": before, "after": after, "pid": os.getpid() > 0, "status": status}

    res = in_child(child)
    after = res["after"]
    for name in ("init_module", "finit_module", "delete_module", "kexec_load", "open_by_handle_at"):
        assert after[name] == errno.EPERM, name
    assert after["keyctl"] == errno.ENOSYS
    assert after["umount2_force"] == errno.EPERM
    assert after["umount2_plain"] == errno.ENOENT
    assert res["pid"]
    assert re.search(r"^Seccomp:\s+2$", res["status"], re.M)
    if os.geteuid() == 0:
        # As root the same calls fail for other reasons without the filter,
        # so the EPERMs above are the filter's.
        # (ENOSYS on a kernel built without modules or kexec.)
        before = res["before"]
        assert before["finit_module"] in (errno.EBADF, errno.ENOSYS)
        assert before["delete_module"] in (errno.ENOENT, errno.ENOSYS)
        assert before["kexec_load"] in (errno.EINVAL, errno.ENOSYS)
        assert before["open_by_handle_at"] in (errno.EBADF, errno.EFAULT)
        assert before["umount2_force"] == errno.ENOENT


@pytest.mark.skipif(not X86_64, reason="x32 exists only on x86_64")
def test_x32_calls_fail_in_the_kernel() -> None:
    def child() -> int:
        seccomp.apply(seccomp.default_policy(), no_new_privs=True)
        return sys_errno(seccomp.X32_SYSCALL_BIT | 39)  # x32 getpid

    assert in_child(child) == errno.ENOSYS


def test_allowed_call_is_not_filtered() -> None:
    def child() -> int:
        seccomp.apply(seccomp.default_policy(allow=["keyctl"]), no_new_privs=True)
        return sys_errno(nr("keyctl"), 0, 0, 0, 0, 0)

    assert in_child(child) != errno.ENOSYS


def test_install_needs_privilege_or_no_new_privs() -> None:
    def child() -> str:
        # Root holds CAP_SYS_ADMIN, the other way in: become nobody first.
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        try:
            seccomp.apply(seccomp.default_policy())
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e.errno))
        return "installed"

    assert in_child(child) == "EACCES"


# -- the pure parts of the security model (ID ranges, config keys) ------------


def test_parse_subid_and_allocate() -> None:
    from lxpy.kernel import idranges

    text = "# comment\nalice:100000:65536\nroot:1000000:262144\n0:5000000:65536\nbad line\n"
    assert idranges.parse_subid(text) == [
        idranges.IdRange(1000000, 262144),
        idranges.IdRange(5000000, 65536),
    ]
    allowed = idranges.parse_subid(text)
    shared = idranges.IdRange(1000000, 65536)
    a = idranges.allocate(allowed, [shared])
    assert a == idranges.IdRange(1065536, 65536)
    b = idranges.allocate(allowed, [shared, a, idranges.IdRange(1131536, 10)])
    assert b == idranges.IdRange(1131546, 65536)
    c = idranges.allocate(allowed, [shared, a, b])
    assert c == idranges.IdRange(5000000, 65536)  # the first range is full
    from lxpy.errors import Busy

    with pytest.raises(Busy, match="no free range"):
        idranges.allocate(allowed, [shared, a, b, c, idranges.IdRange(1197082, 60000)])


def test_allocate_finds_the_lowest_free_block() -> None:
    import random

    from lxpy.errors import Busy
    from lxpy.kernel import idranges

    def lowest(
        allowed: list[idranges.IdRange], used: list[idranges.IdRange], size: int
    ) -> int | None:
        # Every start in turn: slow, and plainly right.
        for rng in sorted(allowed):
            for start in range(rng.start, rng.end - size + 1):
                if not any(u.overlaps(idranges.IdRange(start, size)) for u in used):
                    return start
        return None

    rnd = random.Random(7)
    for _ in range(300):
        allowed = [idranges.IdRange(rnd.randrange(0, 200), rnd.randrange(1, 60)) for _ in range(2)]
        used = [idranges.IdRange(rnd.randrange(0, 260), rnd.randrange(1, 30)) for _ in range(6)]
        size = rnd.randrange(1, 20)
        want = lowest(allowed, used, size)
        if want is None:
            with pytest.raises(Busy):
                idranges.allocate(allowed, used, size)
        else:
            assert idranges.allocate(allowed, used, size) == idranges.IdRange(want, size)


def test_default_range_without_subid_entries(tmp_path: Path) -> None:
    from lxpy.kernel import idranges

    empty = tmp_path / "subuid"
    empty.write_text("")
    ranges, from_file = idranges.allowed_ranges(str(empty))
    assert not from_file and ranges == [idranges.IdRange(1_000_000, 1_000_000_000)]
    m = idranges.shared_map(ranges, ranges)
    assert m.uid_map() == "0 1000000 65536\n" and m.host_gid(5) == 1_000_005


def test_security_config_defaults_and_errors() -> None:
    cfg = SecurityConfig.from_config({})
    assert not cfg.privileged and cfg.idmap_isolated and cfg.idmap_size == 65536
    assert "sys_module" in cfg.drop_caps
    cfg = SecurityConfig.from_config(
        {"security.privileged": "true", "security.capabilities.drop": "CAP_SYS_TIME,sys_module"}
    )
    assert cfg.privileged and cfg.drop_caps == ("sys_time", "sys_module")
    with pytest.raises(InvalidArgument, match="security.idmap.size"):
        SecurityConfig.from_config({"security.idmap.size": "1000"})
    with pytest.raises(InvalidArgument, match="security.capabilities.drop"):
        SecurityConfig.from_config({"security.capabilities.drop": ["sys_everything"]})
    with pytest.raises(InvalidArgument, match="privileged container has no ID map"):
        SecurityConfig.from_config({"security.privileged": True, "security.idmap.base": 2000000})


def test_docs_list_every_default_deny() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs/security.md").read_text()
    for d in seccomp.DEFAULT_DENY:
        assert f"`{d.name}`" in text, d.name


def test_each_policy_gets_its_own_program() -> None:
    # Programs are kept by policy (the zygote builds the default one once):
    # a kept one must never stand in for another policy's.
    default = seccomp.build_filter(seccomp.default_policy(), "x86_64")
    assert seccomp.build_filter(seccomp.default_policy(), "x86_64") == default
    for policy in (
        seccomp.default_policy(["ptrace"]),
        seccomp.default_policy(allow=["keyctl"]),
        seccomp.default_policy(reject_force_umount=False),
    ):
        prog = seccomp.build_filter(policy, "x86_64")
        assert prog != default
        assert prog == seccomp._build(policy, "x86_64")
    assert seccomp.build_filter(seccomp.default_policy(), "aarch64") != default
