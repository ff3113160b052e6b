"""The interface every storage backend implements.

A pool is one directory holding three trees:

    templates/<name>          read-only rootfs of a built template
    containers/<name>         a container's writable rootfs
    snapshots/<name>/<snap>   read-only snapshots of a container

All methods are synchronous and may block (ioctls, copies): the daemon calls
them through trio.to_thread with the storage limiter. Every method either
completes or leaves the pool as it found it. Deletes are idempotent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Called with the name of each step boundary an operation passes (see
# lxpy.daemon.crashpoint); None: nobody asks.
Step = Callable[[str], None] | None


@dataclass(frozen=True)
class Capabilities:
    # create, clone and snapshot cost O(1), whatever the rootfs size
    instant_snapshot: bool
    # templates and snapshots are read-only at the filesystem level
    readonly_snapshots: bool


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    created_at: str  # ISO 8601, UTC


class Backend(ABC):
    """A storage pool rooted at `path`."""

    name: str
    caps: Capabilities

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- templates ---------------------------------------------------------
    @abstractmethod
    def template_path(self, name: str) -> Path: ...

    @abstractmethod
    def template_exists(self, name: str) -> bool: ...

    @abstractmethod
    def begin_template(self, name: str) -> Path:
        """Create an empty writable staging volume for building template
        `name` (replacing a stale one left by a crash) and return its path."""

    @abstractmethod
    def begin_template_from(self, name: str, src: Path) -> Path:
        """Like begin_template, but the staging volume is a writable copy
        of the volume at `src` (a container's rootfs or a snapshot)."""

    @abstractmethod
    def template_identity(self, name: str) -> str | None:
        """What tells this volume of template `name` from any other that had
        the name before or after (None: not built)."""

    @abstractmethod
    def commit_template(self, name: str, step: Step = None) -> None:
        """Turn the staging volume into the read-only template `name`,
        replacing an existing template of that name. `step` is told
        "old-moved-aside" and "sealed"."""

    @abstractmethod
    def abort_template(self, name: str) -> None:
        """Delete the staging volume of `name` if there is one."""

    @abstractmethod
    def delete_template(self, name: str) -> None: ...

    # -- containers --------------------------------------------------------
    @abstractmethod
    def container_path(self, name: str) -> Path: ...

    @abstractmethod
    def container_exists(self, name: str) -> bool: ...

    @abstractmethod
    def create_container(self, name: str, template: str) -> None:
        """Writable rootfs for container `name` from template `template`.

        Raises:
            NotFound: the template is not built.
            AlreadyExists: the container volume exists.
        """

    @abstractmethod
    def delete_container(self, name: str, step: Step = None) -> None:
        """Delete the rootfs (with any nested subvolumes) and all snapshots.
        `step` is told "volume-deleted" and "snapshots-deleted"."""

    @abstractmethod
    def rename_container(self, old: str, new: str, step: Step = None) -> None:
        """Rename the rootfs and the snapshots of `old`. `step` is told
        "volume-moved" and "snapshots-moved"."""

    @abstractmethod
    def settle_rename(self, old: str, new: str, forward: bool) -> None:
        """After a crash in rename_container: move the rootfs and the
        snapshots of the container all to `new` (forward) or all back to
        `old`, wherever each of them is."""

    @abstractmethod
    def clone_container(self, src: str, dst: str) -> None:
        """A writable copy of container `src` (not its snapshots) as `dst`."""

    @abstractmethod
    def copy_snapshots(self, src: str, dst: str, snaps: list[str]) -> None:
        """Copies of snapshots `snaps` of container `src` as snapshots of `dst`."""

    # -- snapshots ---------------------------------------------------------
    @abstractmethod
    def create_snapshot(self, name: str, snap: str) -> None: ...

    @abstractmethod
    def list_snapshots(self, name: str) -> list[SnapshotInfo]: ...

    @abstractmethod
    def snapshot_path(self, name: str, snap: str) -> Path:
        """Where snapshot `snap` of container `name` lives (read it only)."""

    @abstractmethod
    def delete_snapshot(self, name: str, snap: str) -> None: ...

    # -- custom volumes ----------------------------------------------------
    @abstractmethod
    def volume_path(self, name: str) -> Path:
        """Where custom volume `name` lives (a disk device's source)."""

    @abstractmethod
    def volume_exists(self, name: str) -> bool: ...

    @abstractmethod
    def create_volume(self, name: str) -> None:
        """An empty writable custom volume `name`.

        Raises:
            AlreadyExists: it exists.
        """

    @abstractmethod
    def delete_volume(self, name: str) -> None:
        """Delete custom volume `name` with everything in it.

        Raises:
            NotFound: there is none.
        """

    @abstractmethod
    def list_volumes(self) -> list[str]:
        """The names of the custom volumes, sorted."""

    @abstractmethod
    def restore_snapshot(self, name: str, snap: str, step: Step = None) -> None:
        """Make the container's rootfs a writable copy of `snap`. If this
        fails half way, the rootfs is as it was before. `step` is told
        "moved-aside" and "copied"."""
