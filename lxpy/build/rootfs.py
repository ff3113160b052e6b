"""Safe file access inside a rootfs that is not the running system's root.

A rootfs (especially an imported tarball) holds absolute symlinks such as
/sbin/init -> /lib/systemd/systemd. Followed naively from the host they
point into the host's own tree, so every lookup here resolves symlinks as
if `root` were `/`, and writes never follow a symlink out of the rootfs.
"""

from __future__ import annotations

import os
from pathlib import Path

from lxpy.errors import LxpyError

_MAX_LINKS = 40


def resolve_in(root: Path, path: str) -> Path:
    """Host path of `path` (absolute or relative to the rootfs) with every
    symlink resolved as if `root` were `/`. Missing components are kept as
    they are, like realpath(1) -m.

    Raises:
        LxpyError: a symlink loop.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        current = root.joinpath(*done, part)
        if current.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                raise LxpyError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(current)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def exists_in(root: Path, path: str) -> bool:
    """Whether `path` exists in the rootfs (symlinks resolved inside it)."""
    return resolve_in(root, path).exists()


def write_in(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    """Write a file in the rootfs, replacing a symlink of that name rather
    than writing through it. Existing regular files keep owner and mode.

    Returns the host path written.
    """
    parent = resolve_in(root, os.path.dirname(path))
    parent.mkdir(parents=True, exist_ok=True)
    dest = parent / os.path.basename(path)
    if dest.is_symlink():
        dest.unlink()
    fresh = not dest.exists()
    with open(dest, "w") as f:
        f.write(text)
    if fresh:
        os.chmod(dest, mode)
    return dest


def set_hostname_files(root: Path, hostname: str) -> None:
    """Write the container's hostname into its /etc/hostname and the
    127.0.1.1 line of its /etc/hosts (the template holds a placeholder).
    Done at create, and checked again at each start (the hostname may have
    been set or the container renamed since)."""
    etc = resolve_in(root, "etc")
    name_file = etc / "hostname"
    # Unchanged (the usual case at a start): no write.
    same = (
        name_file.is_file()
        and not name_file.is_symlink()
        and name_file.read_text() == hostname + "\n"
    )
    if not same and etc.is_dir():
        write_in(root, "etc/hostname", hostname + "\n")
    hosts = resolve_in(root, "etc/hosts")
    if hosts.is_file() and not hosts.is_symlink():
        lines = hosts.read_text().splitlines()
        out = [f"127.0.1.1\t{hostname}" if ln.startswith("127.0.1.1") else ln for ln in lines]
        if out != lines:
            write_in(root, "etc/hosts", "\n".join(out) + "\n")


def symlink_in(root: Path, path: str, target: str) -> None:
    """Make `path` in the rootfs a symlink to `target`, replacing what is there."""
    parent = resolve_in(root, os.path.dirname(path))
    parent.mkdir(parents=True, exist_ok=True)
    link = parent / os.path.basename(path)
    if link.is_symlink() or link.is_file():
        link.unlink()
    link.symlink_to(target)


def remove_in(root: Path, path: str) -> bool:
    """Remove a file or symlink in the rootfs; True when something was removed."""
    parent = resolve_in(root, os.path.dirname(path))
    p = parent / os.path.basename(path)
    if p.is_symlink() or p.is_file():
        p.unlink()
        return True
    return False
