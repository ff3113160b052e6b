"""Host ID ranges for unprivileged containers.

An unprivileged container runs in a user namespace whose root is an
ordinary host ID (say 1065536): IDs 0..size-1 inside are a block of host
IDs (`IdMap`). The blocks come from root's delegated ranges in
/etc/subuid and /etc/subgid (`parse_subid`, `allowed_ranges`); `allocate`
picks a free one, `shared_map` is the one block every non-isolated
container shares.

Data and arithmetic (only `allowed_ranges` reads a file): only
dataclasses and the lxpy errors are imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lxpy.errors import Busy, InvalidArgument

# What a container gets, and what a Debian system needs: 0..65535 covers
# root, system users and `nobody` (65534).
DEFAULT_SIZE = 65536

# Used when root has no entries in /etc/subuid or /etc/subgid: the range
# Incus uses for the same case. Adding `root:1000000:1000000000` to both
# files makes it explicit and keeps useradd's automatic ranges out of it.
DEFAULT_RANGE_START = 1_000_000
DEFAULT_RANGE_COUNT = 1_000_000_000


@dataclass(frozen=True, order=True)
class IdRange:
    """`count` consecutive host IDs starting at `start`."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def overlaps(self, other: IdRange) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class IdMap:
    """A container's map: IDs 0..size-1 inside are uid_base.. / gid_base.. on the host."""

    uid_base: int
    gid_base: int
    size: int = DEFAULT_SIZE

    def uid_map(self) -> str:
        """The text written to /proc/PID/uid_map."""
        return f"0 {self.uid_base} {self.size}\n"

    def gid_map(self) -> str:
        """The text written to /proc/PID/gid_map."""
        return f"0 {self.gid_base} {self.size}\n"

    def host_uid(self, inside: int) -> int:
        """The host UID of container UID `inside`."""
        if not 0 <= inside < self.size:
            raise InvalidArgument(
                f"uid {inside} is outside the container's map (0..{self.size - 1})"
            )
        return self.uid_base + inside

    def host_gid(self, inside: int) -> int:
        """The host GID of container GID `inside`."""
        if not 0 <= inside < self.size:
            raise InvalidArgument(
                f"gid {inside} is outside the container's map (0..{self.size - 1})"
            )
        return self.gid_base + inside

    def to_json(self) -> dict[str, int]:
        return {"uid_base": self.uid_base, "gid_base": self.gid_base, "size": self.size}


def parse_subid(text: str, names: Sequence[str] = ("root", "0")) -> list[IdRange]:
    """The ranges that /etc/subuid or /etc/subgid text delegates to `names`.

    Lines are `name:start:count`; comments and malformed lines are skipped
    (as shadow-utils does), so one bad line does not disable the rest.
    """
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        parts = line.split(":")
        if len(parts) != 3 or parts[0] not in names:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            out.append(IdRange(start, count))
    return sorted(out)


def allowed_ranges(path: str) -> tuple[list[IdRange], bool]:
    """Root's ranges in `path` (/etc/subuid or /etc/subgid), or the default.

    Returns:
        (ranges, from_file): from_file is False when the default was used.
    """
    try:
        with open(path) as f:
            ranges = parse_subid(f.read())
    except FileNotFoundError:
        ranges = []
    if ranges:
        return ranges, True
    return [IdRange(DEFAULT_RANGE_START, DEFAULT_RANGE_COUNT)], False


def _start(r: IdRange) -> int:
    return r.start


def allocate(
    allowed: Sequence[IdRange], used: Iterable[IdRange], size: int = DEFAULT_SIZE
) -> IdRange:
    """The lowest free block of `size` IDs inside `allowed` that overlaps no `used` one.

    Pure: the daemon passes the blocks of every isolated container on the
    host (lxpy.daemon.hostids), and keeps the result in the container's
    record.

    Raises:
        Busy: when the allowed ranges are full.
    """
    taken = sorted(used, key=_start)
    for rng in sorted(allowed, key=_start):
        # One sweep over the used ranges in order of their starts: each one
        # reaching into the candidate pushes it past its end.
        start = rng.start
        for u in taken:
            if start + size > rng.end or u.start >= start + size:
                break
            start = max(start, u.end)
        if start + size <= rng.end:
            return IdRange(start, size)
    raise Busy(
        f"no free range of {size} IDs left for another isolated container",
        hint="add a larger range for root to /etc/subuid and /etc/subgid, "
        "or set security.idmap.isolated=false on some containers",
    )


def shared_map(uid_allowed: Sequence[IdRange], gid_allowed: Sequence[IdRange]) -> IdMap:
    """The one map shared by containers with security.idmap.isolated=false:
    the first DEFAULT_SIZE IDs of root's first range. Isolated containers
    must count it as used when they allocate."""
    return IdMap(uid_allowed[0].start, gid_allowed[0].start, DEFAULT_SIZE)
