"""Enabling and masking systemd units in a rootfs that is not running.

What `systemctl enable` does offline, done from the unit files' [Install]
sections, so no binary of the rootfs has to run on the host. Every path
goes through lxpy.kernel.inroot.
"""

from __future__ import annotations

from lxpy.errors import LxpyError
from lxpy.kernel.inroot import Rootfs

ETC_UNITS = "etc/systemd/system"
# Vendor unit directories, in the order systemd reads them (Debian 12 still
# ships units in /lib, which merged /usr makes the same as /usr/lib).
VENDOR_UNITS = ("lib/systemd/system", "usr/lib/systemd/system")

# Units masked in every systemd template because they fail or make no sense
# in a container. Empty: Debian bookworm boots under lxpy to
# `is-system-running` = running with no failed unit, with and without a
# network (tests/integration/test_boot.py checks it). Add a unit here only
# when a boot shows it failing, with the reason beside it.
CONTAINER_MASKED_UNITS: tuple[str, ...] = ()


def find_unit(root: Rootfs, unit: str) -> str | None:
    """The unit file's absolute path inside the rootfs, or None."""
    for d in (ETC_UNITS, *VENDOR_UNITS):
        rel = f"{d}/{unit}"
        if root.is_file(rel):
            return "/" + rel
    return None


def install_section(text: str) -> dict[str, list[str]]:
    """The [Install] section's keys, each with its space-separated values."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Install" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).extend(value.split())
    return out


def enable_unit(root: Rootfs, unit: str, _seen: set[str] | None = None) -> list[str]:
    """Enable `unit` (and what its Also= names) in the rootfs.

    Returns the links made, as paths inside the rootfs.

    Raises:
        LxpyError: the unit does not exist in the rootfs.
    """
    seen = _seen if _seen is not None else set()
    if unit in seen:
        return []
    seen.add(unit)
    where = find_unit(root, unit)
    if where is None:
        raise LxpyError(
            f"cannot enable {unit}: no such unit in the rootfs",
            hint="add the package that ships it to source.packages",
        )
    inst = install_section(root.read_text(where) or "")
    links = []
    for key, suffix in (("WantedBy", ".wants"), ("RequiredBy", ".requires")):
        for target in inst.get(key, []):
            link = f"{ETC_UNITS}/{target}{suffix}/{unit}"
            root.symlink(link, where)
            links.append("/" + link)
    for alias in inst.get("Alias", []):
        link = f"{ETC_UNITS}/{alias}"
        root.symlink(link, where)
        links.append("/" + link)
    for also in inst.get("Also", []):
        if "@" in also:
            continue  # template units need an instance name; none of ours do
        if find_unit(root, also) is not None:
            links += enable_unit(root, also, seen)
    return links


def is_masked(root: Rootfs, unit: str) -> bool:
    return root.readlink(f"{ETC_UNITS}/{unit}") == "/dev/null"


def mask_unit(root: Rootfs, unit: str) -> None:
    """Mask `unit` (a symlink to /dev/null in /etc/systemd/system)."""
    root.symlink(f"{ETC_UNITS}/{unit}", "/dev/null")


def unmask_unit(root: Rootfs, unit: str) -> bool:
    """Remove a mask of `unit`; True when it was masked."""
    if is_masked(root, unit):
        return root.remove(f"{ETC_UNITS}/{unit}")
    return False


def has_unit(root: Rootfs, unit: str) -> bool:
    return any(root.exists(f"{d}/{unit}") for d in VENDOR_UNITS)
