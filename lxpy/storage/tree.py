"""The pool layout and the steps both backends share.

Both backends keep the same three trees and differ only in a handful of
primitives (make an empty volume, copy one, seal a staging volume, destroy
one). Everything that decides *order* lives here once: existence checks with
clear errors, moving aside before replacing, rollback, and the rule that a
volume is renamed out of sight before it is destroyed, so a half-deleted tree
is never visible under a real name.

Hidden names (a leading '.', which validated names never have) in a tree:

    .build-NAME        staging volume of template NAME (templates/)
    @FINGERPRINT       an image (downloaded or published), kept as a
                       template whose name no definition can have
    .old-NAME          the previous template NAME while a new one is committed
    .restore-NAME      a container's rootfs while a snapshot is restored over it
    .trash-NAME-XXXX   a volume being destroyed
    .tmp-NAME-XXXX     a copy in progress (dir backend)

`recover()` settles all of these after a crash.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from lxpy.errors import AlreadyExists, Busy, InvalidArgument, LxpyError, NotFound, pool_full
from lxpy.model.paths import (
    BUILD,
    OLD,
    RESTORE,
    TMP,
    TRASH,
    TREES,
    PoolPaths,
    hidden_name,
    hidden_prefixes,
)
from lxpy.revert import Revert
from lxpy.storage.base import Backend, SnapshotInfo, Step
from lxpy.storage.mounts import mounts_under

log = logging.getLogger("lxpy.storage")

# Mode of the pool, its trees and the per-container snapshot directories:
# host root's alone. The top directory of a rootfs is the container's `/`
# (0755 inside, as every distribution has it), so the closing must happen
# on the way there: with these at 0755 any host user could walk into a
# rootfs and run a setuid-root file its root planted (on disk it is owned
# by 0 even for an unprivileged container, whose files are idmapped), or
# read its /etc/shadow. Incus closes each instance's directory (0100/0700)
# for the same reason; here the rootfs is the volume, one level lower.
CLOSED_MODE = 0o700


def guard_name(name: str, what: str) -> str:
    """Refuse names that would leave their tree or hit a hidden entry.

    Callers validate names with lxpy.model.names; this is the last line of
    defence against path traversal, not the place for friendly rules.

    Raises:
        InvalidArgument: for an empty name, one with '/' or NUL, or one
            starting with '.'.
    """
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise InvalidArgument(f"invalid {what} name {name!r}")
    return name


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with a 'Z'."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn an OSError raised inside into lxpy's error for `what`."""
    try:
        yield
    except LxpyError:
        raise
    except OSError as e:
        raise os_error(e, what) from e


def os_error(e: OSError, what: str) -> LxpyError:
    """lxpy's error for an OSError that happened while working on `what`."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENOENT:
        return NotFound(f"{what}: does not exist ({reason})")
    if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
        return AlreadyExists(f"{what}: already exists")
    if e.errno == errno.EBUSY:
        return Busy(
            f"{what}: in use ({reason})",
            hint="stop the container and unmount anything mounted inside its rootfs",
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return pool_full(what)
    return LxpyError(f"{what}: {reason}")


def _tell(step: Step, name: str) -> None:
    if step is not None:
        step(name)


def _closed_dir(path: Path) -> None:
    # mkdir's mode passes through the umask, and an existing directory
    # keeps whatever mode it has: set it outright.
    path.mkdir(exist_ok=True, mode=CLOSED_MODE)
    os.chmod(path, CLOSED_MODE)


class TreeBackend(Backend):
    """Shared orchestration over a pool with templates/, containers/, snapshots/."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.paths = PoolPaths(path)
        path.mkdir(parents=True, exist_ok=True, mode=CLOSED_MODE)
        for tree in TREES:
            (path / tree).mkdir(exist_ok=True, mode=CLOSED_MODE)

    def close_to_others(self) -> list[str]:
        """Give the pool, its trees and every snapshot directory the closed
        mode, as a pool made by an older lxpy (0711 and 0755) needs.

        Returns the directories that were open, for the log.

        Raises:
            OSError: one cannot be changed.
        """
        dirs = [self.path, *(self.path / t for t in TREES)]
        snaps = self.paths.snapshots
        dirs += [snaps / e for e in sorted(os.listdir(snaps)) if not e.startswith(".")]
        changed = []
        for d in dirs:
            st = os.lstat(d)
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != CLOSED_MODE:
                os.chmod(d, CLOSED_MODE)
                changed.append(f"{d} ({stat.S_IMODE(st.st_mode):o})")
        return changed

    # -- primitives each backend provides ------------------------------------
    @abstractmethod
    def _is_volume(self, path: Path) -> bool:
        """Whether `path` is a volume of this backend (not just any entry)."""

    @abstractmethod
    def _new_volume(self, path: Path) -> None:
        """An empty writable volume at `path` (which does not exist)."""

    @abstractmethod
    def _copy(self, src: Path, dst: Path, *, read_only: bool) -> None:
        """A copy of volume `src` at `dst` (which does not exist). Either it
        completes or nothing is left at `dst`."""

    @abstractmethod
    def _seal(self, staging: Path, dst: Path) -> None:
        """Make `dst` the finished, read-only-if-possible form of `staging`.
        `staging` may be consumed; whatever is left of it is removed after."""

    @abstractmethod
    def _destroy(self, path: Path) -> None:
        """Delete the volume at `path` with everything in it (nested
        volumes too). `path` is already out of sight (a .trash name)."""

    @abstractmethod
    def _created_at(self, path: Path) -> float:
        """When the snapshot at `path` was taken (seconds since the epoch)."""

    def _identity(self, path: Path) -> str:
        # A rename keeps an inode; a new volume has a new one.
        st = os.lstat(path)
        return f"{st.st_dev}:{st.st_ino}"

    # -- paths ---------------------------------------------------------------
    def template_path(self, name: str) -> Path:
        return self.paths.template(guard_name(name, "template"))

    def container_path(self, name: str) -> Path:
        return self.paths.container(guard_name(name, "container"))

    def snapshot_dir(self, name: str) -> Path:
        """The directory holding the snapshots of container `name`."""
        return self.paths.snapshot_dir(guard_name(name, "container"))

    def snapshot_path(self, name: str, snap: str) -> Path:
        """Where snapshot `snap` of container `name` lives."""
        return self.paths.snapshot(guard_name(name, "container"), guard_name(snap, "snapshot"))

    def volume_path(self, name: str) -> Path:
        return self.paths.volume(guard_name(name, "volume"))

    def _staging(self, name: str) -> Path:
        return self.paths.staging(guard_name(name, "template"))

    @staticmethod
    def _aside(path: Path, tag: str) -> Path:
        return path.with_name(hidden_name(tag, path.name))

    @staticmethod
    def _scratch(path: Path, tag: str) -> Path:
        # Same directory as `path`: renames stay within one parent, which
        # btrfs needs for read-only subvolumes (moving one to another
        # directory would rewrite its '..' and fails with EROFS).
        return path.with_name(f"{hidden_name(tag, path.name)}-{secrets.token_hex(4)}")

    # -- shared steps --------------------------------------------------------
    def _remove(self, path: Path, what: str) -> None:
        """Delete the volume at `path` if there is one (idempotent)."""
        if not os.path.lexists(path):
            return
        # Renaming would carry a mount inside along, and deleting would then
        # fail half way (btrfs) or walk into the mounted files (rmtree):
        # refuse while the volume is whole and still under its name.
        mounted = mounts_under(path)
        if mounted:
            raise Busy(
                f"{what}: something is mounted inside {path}",
                hint="stop the container, or unmount " + ", ".join(mounted),
            )
        trash = self._scratch(path, TRASH)
        with translate(what):
            # A local mountpoint refuses the rename with EBUSY: that is the
            # moment to stop, before anything is gone.
            try:
                os.rename(path, trash)
            except OSError as e:
                # A full btrfs may refuse the rename (ENOSPC) and still
                # delete: deleting is how space is freed, and the undo of
                # a create that failed for want of space must not fail too.
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                trash = path
            self._destroy(trash)

    def _rename_back(self, aside: Path, path: Path, what: str) -> None:
        try:
            os.rename(aside, path)
        except OSError as e:
            # Nothing more can be done here; recover() retries on next start.
            log.error("%s: could not put %s back at %s: %s", what, aside, path, e)

    # -- templates -----------------------------------------------------------
    def template_exists(self, name: str) -> bool:
        return self._is_volume(self.template_path(name))

    def begin_template(self, name: str) -> Path:
        staging = self._staging(name)
        what = f"staging volume of template {name!r}"
        self._remove(staging, what)
        with translate(what):
            self._new_volume(staging)
        return staging

    def begin_template_from(self, name: str, src: Path) -> Path:
        staging = self._staging(name)
        what = f"staging volume of template {name!r}"
        self._remove(staging, what)
        if not self._is_volume(src):
            raise NotFound(f"{what}: its source {src} is not a volume")
        self._need_free(staging, what)
        with translate(what):
            self._copy(src, staging, read_only=False)
        return staging

    def template_identity(self, name: str) -> str | None:
        path = self.template_path(name)
        if not self._is_volume(path):
            return None
        with translate(f"template {name!r}"):
            return self._identity(path)

    def commit_template(self, name: str, step: Step = None) -> None:
        staging = self._staging(name)
        dst = self.template_path(name)
        what = f"template {name!r}"
        if not self._is_volume(staging):
            raise NotFound(
                f"template {name!r} has no staging volume to commit",
                hint="begin_template() makes one; a crash or abort removes it",
            )
        old = self._aside(dst, OLD)
        self._remove(old, what)
        had_old = os.path.lexists(dst)
        with translate(what):
            with Revert(what) as rv:
                if had_old:
                    # The old template stays whole until the new one is in place.
                    os.rename(dst, old)
                    rv.undo(lambda: self._rename_back(old, dst, what), f"put {old} back")
                    _tell(step, "old-moved-aside")
                self._seal(staging, dst)
            _tell(step, "sealed")
        if had_old:
            self._cleanup(old, what)
        self._cleanup(staging, what)

    def _cleanup(self, path: Path, what: str) -> None:
        # The operation itself succeeded; a leftover is only wasted space
        # and recover() removes it on the next start.
        try:
            self._remove(path, what)
        except LxpyError as e:
            log.warning("%s: could not remove %s: %s", what, path, e.message)

    def abort_template(self, name: str) -> None:
        self._remove(self._staging(name), f"staging volume of template {name!r}")

    def delete_template(self, name: str) -> None:
        self._remove(self.template_path(name), f"template {name!r}")

    # -- containers ----------------------------------------------------------
    def container_exists(self, name: str) -> bool:
        return self._is_volume(self.container_path(name))

    def _need_container(self, name: str) -> Path:
        path = self.container_path(name)
        if not self._is_volume(path):
            raise NotFound(f"container {name!r} has no storage volume")
        return path

    def _need_free(self, path: Path, what: str) -> None:
        if os.path.lexists(path):
            raise AlreadyExists(f"{what} already exists", hint=f"its volume is {path}")

    def create_container(self, name: str, template: str) -> None:
        src = self.template_path(template)
        dst = self.container_path(name)
        if not self._is_volume(src):
            raise NotFound(
                f"template {template!r} is not built", hint=f"build template {template!r} first"
            )
        self._need_free(dst, f"container {name!r}")
        with translate(f"container {name!r}"):
            self._copy(src, dst, read_only=False)

    def delete_container(self, name: str, step: Step = None) -> None:
        what = f"container {name!r}"
        self._remove(self.container_path(name), what)
        _tell(step, "volume-deleted")
        sdir = self.snapshot_dir(name)
        if sdir.is_dir():
            for entry in sorted(os.listdir(sdir)):
                if not entry.startswith("."):
                    self._remove(sdir / entry, f"snapshot {entry!r} of {what}")
            with translate(f"snapshots of {what}"):
                self._clear_snapshot_dir(sdir)
        _tell(step, "snapshots-deleted")

    def _clear_snapshot_dir(self, sdir: Path) -> None:
        # Only hidden leftovers (side files, trash) remain at this point.
        for entry in os.listdir(sdir):
            p = sdir / entry
            if entry.startswith(hidden_prefixes(TRASH, TMP)):
                self._destroy(p)
            else:
                p.unlink()
        sdir.rmdir()

    def rename_container(self, old: str, new: str, step: Step = None) -> None:
        src, dst = self.container_path(old), self.container_path(new)
        ssrc, sdst = self.snapshot_dir(old), self.snapshot_dir(new)
        self._need_container(old)
        # os.rename silently replaces an empty directory: check first.
        self._need_free(dst, f"container {new!r}")
        self._need_free(sdst, f"snapshots of container {new!r}")
        what = f"container {old!r}"
        with translate(what), Revert(what) as rv:
            os.rename(src, dst)
            rv.undo(lambda: self._rename_back(dst, src, what), f"move {dst} back")
            _tell(step, "volume-moved")
            if ssrc.exists():
                os.rename(ssrc, sdst)
        _tell(step, "snapshots-moved")

    def settle_rename(self, old: str, new: str, forward: bool) -> None:
        pairs = [
            (self.container_path(old), self.container_path(new)),
            (self.snapshot_dir(old), self.snapshot_dir(new)),
        ]
        with translate(f"rename of container {old!r} to {new!r}"):
            for at_old, at_new in pairs:
                src, dst = (at_old, at_new) if forward else (at_new, at_old)
                # Only what is still on the wrong side moves; nothing is
                # ever renamed over an entry.
                if os.path.lexists(src) and not os.path.lexists(dst):
                    log.info("storage recovery: moving %s to %s", src, dst)
                    os.rename(src, dst)

    def clone_container(self, src: str, dst: str) -> None:
        spath = self._need_container(src)
        dpath = self.container_path(dst)
        self._need_free(dpath, f"container {dst!r}")
        with translate(f"container {dst!r}"):
            self._copy(spath, dpath, read_only=False)

    # -- scratch volumes (export, import) -------------------------------------
    def scratch_volume(self, name: str, tag: str) -> Path:
        """An empty volume under a hidden name in containers/, for operation
        `tag` on container `name`; recover() destroys one a crash left."""
        guard_name(name, "container")
        path = self.paths.containers / f"{hidden_name(TMP, tag)}-{name}-{secrets.token_hex(4)}"
        with translate(f"scratch volume for container {name!r}"):
            self._new_volume(path)
        return path

    def scratch_tree(self, path: Path) -> None:
        """An empty volume at `path`, inside a scratch volume."""
        with translate(f"scratch volume {path}"):
            self._new_volume(path)

    def read_only_copy(self, src: Path, dst: Path) -> None:
        """A read-only copy of volume `src` at `dst` inside a scratch volume."""
        with translate(f"copy of {src}"):
            self._copy(src, dst, read_only=True)

    def destroy_scratch(self, path: Path) -> None:
        """Delete a scratch volume with everything in it (idempotent)."""
        if os.path.lexists(path):
            with translate(f"scratch volume {path}"):
                self._destroy(path)

    def adopt_container(
        self, name: str, rootfs: Path, snapshots: list[tuple[str, Path, str]], step: Step = None
    ) -> None:
        """Make the trees of a scratch volume container `name`: `rootfs`
        its rootfs, `snapshots` (name, tree, created_at: ISO 8601) its
        snapshots. Either all are in place or none (the caller's undo is
        delete_container). `step` is told "volume-made"."""
        what = f"container {name!r}"
        dst = self.container_path(name)
        self._need_free(dst, what)
        sdir = self.snapshot_dir(name)
        self._need_free(sdir, f"snapshots of {what}")
        with Revert(what) as rv, translate(what):
            # Idempotent: it removes whichever of the trees are in place.
            rv.undo(lambda: self.delete_container(name), f"delete the trees of {what}")
            for snap, tree, created in snapshots:
                _closed_dir(sdir)
                self._adopt(tree, self.snapshot_path(name, snap), created)
            self._adopt(rootfs, dst, None)
        _tell(step, "volume-made")

    def _adopt(self, src: Path, dst: Path, created: str | None) -> None:
        # A snapshot (created: when it was taken) or the rootfs (None).
        self._copy(src, dst, read_only=created is not None)

    def copy_snapshots(self, src: str, dst: str, snaps: list[str]) -> None:
        """Copies of snapshots `snaps` of container `src` as snapshots of
        `dst` (whose rootfs was just cloned; delete_container undoes both)."""
        for snap in snaps:
            spath = self.snapshot_path(src, snap)
            dpath = self.snapshot_path(dst, snap)
            self._need_free(dpath, f"snapshot {snap!r} of container {dst!r}")
            with translate(f"snapshot {snap!r} of container {dst!r}"):
                _closed_dir(dpath.parent)
                self._copy(spath, dpath, read_only=True)

    # -- snapshots -----------------------------------------------------------
    def create_snapshot(self, name: str, snap: str) -> None:
        dst = self.snapshot_path(name, snap)
        src = self._need_container(name)
        self._need_free(dst, f"snapshot {snap!r} of container {name!r}")
        with translate(f"snapshot {snap!r} of container {name!r}"):
            _closed_dir(dst.parent)
            self._copy(src, dst, read_only=True)

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        sdir = self.snapshot_dir(name)
        if not sdir.is_dir():
            return []
        found: list[tuple[float, str]] = []
        for entry in os.listdir(sdir):
            if entry.startswith("."):
                continue
            with translate(f"snapshot {entry!r} of container {name!r}"):
                found.append((self._created_at(sdir / entry), entry))
        return [SnapshotInfo(n, iso_utc(t)) for t, n in sorted(found)]

    def delete_snapshot(self, name: str, snap: str) -> None:
        self._remove(self.snapshot_path(name, snap), f"snapshot {snap!r} of container {name!r}")

    def restore_snapshot(self, name: str, snap: str, step: Step = None) -> None:
        src = self.snapshot_path(name, snap)
        if not self._is_volume(src):
            raise NotFound(f"container {name!r} has no snapshot {snap!r}")
        root = self._need_container(name)
        aside = self._aside(root, RESTORE)
        what = f"restore of snapshot {snap!r} of container {name!r}"
        # A leftover from a crash while root exists: root is the truth.
        self._remove(aside, what)
        with translate(what):
            with Revert(what) as rv:
                # Rename, not copy: O(1), no space, and it keeps whatever
                # nested volumes the rootfs has, should we have to put it back.
                os.rename(root, aside)
                rv.undo(lambda: self._undo_restore(root, aside, what), f"put {aside} back")
                _tell(step, "moved-aside")
                self._copy(src, root, read_only=False)
            _tell(step, "copied")
        self._cleanup(aside, what)

    def _undo_restore(self, root: Path, aside: Path, what: str) -> None:
        try:
            self._remove(root, what)
        except LxpyError as e:
            log.error("%s: could not remove the partial rootfs %s: %s", what, root, e.message)
            return
        self._rename_back(aside, root, what)

    # -- custom volumes ------------------------------------------------------
    def volume_exists(self, name: str) -> bool:
        return self._is_volume(self.volume_path(name))

    def create_volume(self, name: str) -> None:
        path = self.volume_path(name)
        self._need_free(path, f"volume {name!r}")
        with translate(f"volume {name!r}"):
            self._new_volume(path)
            # Its top is the mount point's root inside: 0755, as /srv is.
            os.chmod(path, 0o755)

    def delete_volume(self, name: str) -> None:
        if not self.volume_exists(name):
            raise NotFound(f"volume {name!r} not found", hint="`lxpy volume list` lists them")
        self._remove(self.volume_path(name), f"volume {name!r}")

    def list_volumes(self) -> list[str]:
        d = self.paths.volumes
        return sorted(e for e in os.listdir(d) if not e.startswith(".") and self._is_volume(d / e))

    # -- crash recovery ------------------------------------------------------
    def recover(self) -> None:
        """Settle what an interrupted operation left behind: put back a
        rootfs or template that was moved aside and never replaced, and
        destroy trash, copies in progress and stale staging volumes.

        Call it when opening the pool, before any operation runs.
        """
        for tree in TREES:
            self._recover_dir(self.path / tree)
        snaps = self.paths.snapshots
        for entry in os.listdir(snaps):
            if not entry.startswith(".") and (snaps / entry).is_dir():
                self._recover_dir(snaps / entry)

    def _recover_dir(self, d: Path) -> None:
        for entry in os.listdir(d):
            if not entry.startswith("."):
                continue
            p = d / entry
            try:
                self._settle(d, entry)
            except (OSError, LxpyError) as e:
                log.warning("storage recovery: could not settle %s: %s", p, e)

    def _settle(self, d: Path, entry: str) -> None:
        p = d / entry
        if mounts_under(p):
            log.warning("storage recovery: leaving %s alone, something is mounted inside", p)
            return
        if entry.startswith(hidden_prefixes(TRASH, TMP, BUILD)):
            log.info("storage recovery: removing %s", p)
            self._destroy(p)
        elif entry.startswith(hidden_prefixes(OLD, RESTORE)):
            real = d / entry.split("-", 1)[1]
            if os.path.lexists(real):
                # The replacement is in place: the old one is garbage.
                log.info("storage recovery: removing %s", p)
                self._remove(p, str(p))
            else:
                log.info("storage recovery: putting %s back at %s", p, real)
                os.rename(p, real)
