"""The cgroup v2 device program: its encoding, and what it decides.

The decisions are checked by running the packed instructions through a
small interpreter of the few opcodes the builder emits, so a wrong offset,
register or immediate shows as a wrong answer; the kernel's own verdicts
are in tests/integration/test_devices_v2.py.
"""

from __future__ import annotations

import struct
import sys

import pytest

from lxpy.errors import InvalidArgument
from lxpy.kernel import bpfdev
from lxpy.kernel.devices import ALLOWED

LITTLE = sys.byteorder == "little"

# Hand-assembled: prologue, "c 1:3 rwm", "b *:* m", default deny.
# Each line: code, regs (src << 4 | dst), off (s16 LE), imm (s32 LE).
EXPECTED_HEX = """
61 12 0000 00000000
bf 23 0000 00000000
57 03 0000 ffff0000
bf 24 0000 00000000
77 04 0000 10000000
61 15 0400 00000000
61 16 0800 00000000
55 03 0400 02000000
55 05 0300 01000000
55 06 0200 03000000
b7 00 0000 01000000
95 00 0000 00000000
55 03 0500 01000000
bf 40 0000 00000000
57 00 0000 06000000
55 00 0200 00000000
b7 00 0000 01000000
95 00 0000 00000000
b7 00 0000 00000000
95 00 0000 00000000
"""


@pytest.mark.skipif(not LITTLE, reason="hand-computed bytes are little-endian")
def test_small_rule_set_encodes_to_hand_computed_bytes() -> None:
    expected = bytes.fromhex(EXPECTED_HEX.replace(" ", "").replace("\n", ""))
    got = bpfdev.program(["c 1:3 rwm", "b *:* m"])
    assert [got[i : i + 8].hex() for i in range(0, len(got), 8)] == [
        expected[i : i + 8].hex() for i in range(0, len(expected), 8)
    ]


def test_insn_packs_eight_bytes_with_signed_fields() -> None:
    raw = bpfdev.insn(0x55, dst=3, src=1, off=-2, imm=-1)
    assert len(raw) == 8
    code, regs, off, imm = struct.unpack("=BBhi", raw)
    assert (code, off, imm) == (0x55, -2, -1)
    assert regs == ((1 << 4) | 3 if LITTLE else (3 << 4) | 1)


def run(prog: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """Interpret `prog` on a bpf_cgroup_dev_ctx; returns r0 at exit."""
    ctx = struct.pack("=III", (access << 16) | dev_type, major, minor)
    regs = [0] * 11
    mask = (1 << 64) - 1
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 10_000, "no exit"
        code, r, off, imm = struct.unpack_from("=BBhi", prog, pc * 8)
        dst, src = (r & 0xF, r >> 4) if LITTLE else (r >> 4, r & 0xF)
        pc += 1
        if code == 0x61:
            assert src == 1, "loads only from the context"
            regs[dst] = struct.unpack_from("=I", ctx, off)[0]
        elif code == 0xBF:
            regs[dst] = regs[src]
        elif code == 0xB7:
            regs[dst] = imm & mask
        elif code == 0x57:
            regs[dst] &= imm & mask
        elif code == 0x77:
            regs[dst] >>= imm
        elif code == 0x55:
            if regs[dst] != imm & mask:
                pc += off
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def reachable(prog: bytes) -> set[int]:
    """The instructions reachable from the first (the verifier refuses
    a program with any other)."""
    todo, seen = [0], set()
    while todo:
        pc = todo.pop()
        if pc in seen:
            continue
        seen.add(pc)
        code, _, off, _ = struct.unpack_from("=BBhi", prog, pc * 8)
        if code == 0x95:
            continue
        todo.append(pc + 1)
        if code == 0x55:
            todo.append(pc + 1 + off)
    return seen


@pytest.mark.parametrize(
    "rules", [ALLOWED, ["a"], ["c 1:3 r", "a", "b 7:0 m"], [], ["a *:* r", "c 1:3 rwm"]]
)
def test_every_instruction_is_reachable_and_in_range(rules: list[str]) -> None:
    prog = bpfdev.program(rules)
    assert reachable(prog) == set(range(len(prog) // 8))


C, B = bpfdev.DEV_CHAR, bpfdev.DEV_BLOCK
M, R, W = bpfdev.ACC_MKNOD, bpfdev.ACC_READ, bpfdev.ACC_WRITE


@pytest.mark.parametrize(
    ("dev_type", "access", "major", "minor", "allowed"),
    [
        (C, R | W, 1, 3, 1),  # open /dev/null read-write
        (C, M, 1, 3, 1),  # mknod null
        (C, R, 1, 9, 1),  # urandom
        (C, R | W, 136, 42, 1),  # a pty slave
        (C, R | W, 10, 200, 1),  # tun
        (C, M, 1, 1, 1),  # any char node may be made ("c *:* m")
        (C, M, 4095, 1 << 19, 1),
        (C, R, 1, 1, 0),  # /dev/mem: made, never opened
        (C, R, 1, 11, 0),  # /dev/kmsg
        (C, W, 10, 201, 0),
        (C, R, 137, 0, 0),
        (C, R | M, 1, 11, 0),  # mknod allowed alone, not with read
        (B, M, 7, 0, 0),  # no block node may be made
        (B, R, 8, 0, 0),
        (B, M | R | W, 1, 3, 0),  # null's numbers, but a block node
    ],
)
def test_allowed_list_decisions(
    dev_type: int, access: int, major: int, minor: int, allowed: int
) -> None:
    assert run(bpfdev.program(ALLOWED), dev_type, access, major, minor) == allowed


def test_access_must_be_within_the_rules() -> None:
    prog = bpfdev.program(["c 1:3 r", "b 7:* rw"])
    assert run(prog, C, R, 1, 3) == 1
    assert run(prog, C, W, 1, 3) == 0
    assert run(prog, C, R | W, 1, 3) == 0
    assert run(prog, B, W, 7, 12) == 1
    assert run(prog, B, M, 7, 12) == 0


def test_all_and_empty() -> None:
    assert run(bpfdev.program(["a"]), B, M | R | W, 8, 0) == 1
    assert run(bpfdev.program(["a *:* r"]), B, R, 8, 0) == 1
    assert run(bpfdev.program(["a *:* r"]), B, W, 8, 0) == 0
    assert run(bpfdev.program([]), C, R, 1, 3) == 0
    # Rules after one that matches everything are never reached.
    assert bpfdev.program(["a", "c 1:3 r"]) == bpfdev.program(["a"])


def test_parse_rule() -> None:
    assert bpfdev.parse_rule("c 136:* rwm") == (C, 136, None, M | R | W)
    assert bpfdev.parse_rule("b *:* m") == (B, None, None, M)
    assert bpfdev.parse_rule("a") == (0, None, None, M | R | W)


@pytest.mark.parametrize(
    "rule", ["", "c 1:3", "x 1:3 r", "c 1 r", "c 1:3 rx", "c 1:3 rr", "c -1:3 r", "c a:3 r"]
)
def test_bad_rules_are_refused(rule: str) -> None:
    with pytest.raises(InvalidArgument, match="bad device rule"):
        bpfdev.program([rule])
