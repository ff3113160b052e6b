"""What the kernel's exec and the dynamic loader read from an ELF file:
the program interpreter, and the libraries and search paths the dynamic
section names. 32- and 64-bit, either byte order (elf.h).
"""

from __future__ import annotations

import os
import struct

MAGIC = b"\x7fELF"
_CLASS64 = 2
_DATA2LSB = 1
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29
_MAX_PHNUM = 256


class Elf:
    """The program headers of the ELF file open on `fd` (see parse())."""

    def __init__(self, fd: int, is64: bool, endian: str, headers: list[tuple[int, int, int, int]]):
        self.fd = fd
        self.is64 = is64
        self.endian = endian
        # (p_type, p_offset, p_vaddr, p_filesz) of each program header.
        self.headers = headers

    def interpreter(self) -> str | None:
        """PT_INTERP: the loader that runs the program; None when static."""
        for p_type, offset, _, size in self.headers:
            if p_type == _PT_INTERP:
                raw = os.pread(self.fd, min(size, 4096), offset)
                return raw.split(b"\0", 1)[0].decode(errors="replace")
        return None

    def needs(self) -> tuple[list[str], list[str]]:
        """(DT_NEEDED names, DT_RUNPATH/DT_RPATH directories)."""
        dyn = next((h for h in self.headers if h[0] == _PT_DYNAMIC), None)
        if dyn is None:
            return [], []
        entry = self.endian + ("qQ" if self.is64 else "iI")
        step = struct.calcsize(entry)
        raw = os.pread(self.fd, min(dyn[3], 1 << 16), dyn[1])
        needed: list[int] = []
        paths: list[int] = []
        strtab = None
        for i in range(0, len(raw) - step + 1, step):
            tag, value = struct.unpack_from(entry, raw, i)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                needed.append(value)
            elif tag == _DT_STRTAB:
                strtab = value
            elif tag in (_DT_RPATH, _DT_RUNPATH):
                paths.append(value)
        if strtab is None:
            return [], []
        # The string table's address as a file offset, through the segment
        # that maps it.
        base = next(
            (
                off + strtab - va
                for p_type, off, va, size in self.headers
                if p_type == _PT_LOAD and va <= strtab < va + size
            ),
            None,
        )
        if base is None:
            return [], []

        def string(at: int) -> str:
            return os.pread(self.fd, 256, base + at).split(b"\0", 1)[0].decode(errors="replace")

        dirs = [d for at in paths for d in string(at).split(":") if d]
        return [string(at) for at in needed], dirs


def parse(fd: int) -> Elf | None:
    """The ELF file open on `fd`, or None when it is not one."""
    head = os.pread(fd, 64, 0)
    if len(head) < 52 or head[:4] != MAGIC:
        return None
    is64 = head[4] == _CLASS64
    e = "<" if head[5] == _DATA2LSB else ">"
    if is64:
        if len(head) < 64:
            return None
        (phoff,) = struct.unpack_from(e + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 0x36)
        form, least = e + "IIQQQQ", 56
    else:
        (phoff,) = struct.unpack_from(e + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 0x2A)
        form, least = e + "IIIII", 32
    if phentsize < least or phnum > _MAX_PHNUM:
        return None
    raw = os.pread(fd, phentsize * phnum, phoff)
    headers = []
    for i in range(len(raw) // phentsize):
        if is64:
            p_type, _, offset, vaddr, _, filesz = struct.unpack_from(form, raw, i * phentsize)
        else:
            p_type, offset, vaddr, _, filesz = struct.unpack_from(form, raw, i * phentsize)
        headers.append((p_type, offset, vaddr, filesz))
    return Elf(fd, is64, e, headers)
