"""Settling the operations a crash interrupted, when lxpyd starts.

Storage has settled its hidden names already (TreeBackend.recover: trash
destroyed, a rootfs or template moved aside put back or dropped). What is
left are the intents (lxpy.daemon.journal), each settled by the one rule
of its operation, before the records are read, so nothing half-made is
ever listed and no name is left taken:

    create, copy,    the record exists: done. Else its volume, snapshots
    import           and console log go (its ID block was only claimed,
                     and the host-wide record is rewritten from the
                     records at start).
    rename           the new record exists: finish (old record, volume,
                     snapshots, console log to the new name). Else move
                     the volume and snapshots back.
    delete           the volume is still there: the container stays. Else
                     finish (snapshots, record, console log, run dir).
    template-build   a template volume that is not the one from before the
                     build is the new one: its metadata is written.
    image-pull       the image volume is there: its metadata (kept in the
                     intent) is written. Else nothing is left (storage
                     recovery removes the staging volume).
    image-publish    the image volume is there without metadata: it goes.
    (downloads)      a verified download no pull uses any more goes; an
                     interrupted one (.part) stays to be resumed.
    network-create   no record: its dnsmasq, bridge and files go.
    network-delete   finish: dnsmasq, bridge, record and files go.

Every rule is idempotent: a crash while settling is settled again.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lxpy.daemon.events import now_iso
from lxpy.daemon.journal import Journal
from lxpy.daemon.registry import Registry
from lxpy.errors import LxpyError
from lxpy.model.images import is_fingerprint
from lxpy.model.network import Network
from lxpy.model.paths import RootPaths, image_volume, rotated_log
from lxpy.storage.base import Backend

log = logging.getLogger("lxpyd.recovery")

Fields = dict[str, object]


class Settler:
    """What the container and template rules work on (blocking calls)."""

    def __init__(self, backend: Backend, registry: Registry, paths: RootPaths) -> None:
        self.backend = backend
        self.registry = registry
        # Console logs (NAME.console.log, .1) and per-container run dirs.
        self.paths = paths

    def _logs_of(self, name: str) -> list[Path]:
        log_ = self.paths.console_log(name)
        return [log_, rotated_log(log_)]

    def _has_record(self, name: str) -> bool:
        return self.registry.record_path(name).exists()

    def create(self, f: Fields) -> str:
        name = str(f["name"])
        if self._has_record(name):
            return "completed"
        self.backend.delete_container(name)
        for p in self._logs_of(name):
            p.unlink(missing_ok=True)
        return "undone"

    def rename(self, f: Fields) -> str:
        old, new = str(f["name"]), str(f["new"])
        if not self._has_record(new):
            self.backend.settle_rename(old, new, forward=False)
            return "undone"
        self.backend.settle_rename(old, new, forward=True)
        self.registry.delete(old)
        for src, dst in zip(self._logs_of(old), self._logs_of(new), strict=True):
            if src.exists() and not dst.exists():
                src.replace(dst)
        return "completed"

    def delete(self, f: Fields) -> str:
        name = str(f["name"])
        # The rootfs leaves its name in one rename, the point of no return.
        if self.backend.container_exists(name):
            return "undone"
        self.backend.delete_container(name)
        self.registry.delete(name)
        for p in self._logs_of(name):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.paths.run.container(name), ignore_errors=True)
        return "completed"

    def template_build(self, f: Fields) -> str:
        name = str(f["name"])
        now = self.backend.template_identity(name)
        if now is None or now == f.get("before"):
            return "undone"
        meta = self.registry.template_meta(name) or {}
        if meta.get("digest") != f.get("digest"):
            self.registry.save_template_meta(
                name, {"digest": f.get("digest"), "built_at": now_iso(), "build_seconds": None}
            )
        return "completed"

    def image_pull(self, f: Fields) -> str:
        fp = str(f["name"])
        # Its verified downloads are no use once the pull has ended either way.
        files = f.get("files")
        for sha in files if isinstance(files, list) else []:
            if is_fingerprint(str(sha)):
                (self.registry.downloads / str(sha)).unlink(missing_ok=True)
        if not self.backend.template_exists(image_volume(fp)):
            return "undone"
        meta = f.get("meta")
        if self.registry.image_meta(fp) is None and isinstance(meta, dict):
            self.registry.save_image_meta(fp, meta)
        return "completed"

    def clean_downloads(self) -> None:
        """Remove the verified downloads a crash left between a download
        and its pull's intent: no pull runs at start, and a later pull
        downloads again. A `.part` stays, to be resumed."""
        d = self.registry.downloads
        for p in d.iterdir() if d.is_dir() else []:
            if not p.name.endswith(".part"):
                log.info("recovery: removing the download %s", p)
                p.unlink(missing_ok=True)

    def image_publish(self, f: Fields) -> str:
        fp = str(f["name"])
        if self.registry.image_meta(fp) is not None:
            return "completed"
        # Published without its metadata: its aliases and source are
        # unknown, so it is no image anyone asked for.
        self.backend.delete_template(image_volume(fp))
        return "undone"


def settle_containers(journal: Journal, s: Settler) -> None:
    """Settle the container and template intents. Blocking; call it before
    the records are loaded."""
    rules: dict[str, Callable[[Fields], str]] = {
        "create": s.create,
        "copy": s.create,
        "import": s.create,
        "rename": s.rename,
        "delete": s.delete,
        "template-build": s.template_build,
        "image-pull": s.image_pull,
        "image-publish": s.image_publish,
    }
    _settle(journal, rules)
    s.clean_downloads()


class NetworkTable(Protocol):
    """What settling network intents works on: lxpy.daemon.networks.Networks
    (named by its shape, since that module calls this one)."""

    nets: dict[str, Network]

    def remove_leftovers(self, name: str) -> None: ...

    def apply_table(self) -> None: ...


def settle_networks(journal: Journal, nets: NetworkTable) -> None:
    """Settle the network intents. Blocking; call it once the network
    records are loaded and before any is brought up."""

    def create(f: Fields) -> str:
        name = str(f["name"])
        if name in nets.nets:
            return "completed"
        nets.remove_leftovers(name)
        return "undone"

    def delete(f: Fields) -> str:
        nets.nets.pop(str(f["name"]), None)
        nets.remove_leftovers(str(f["name"]))
        return "completed"

    if _settle(journal, {"network-create": create, "network-delete": delete}):
        # The table as the records say (none left: no table).
        nets.apply_table()


def _settle(journal: Journal, rules: dict[str, Callable[[Fields], str]]) -> int:
    settled = 0
    for path, fields in journal.pending():
        op = str(fields["op"])
        rule = rules.get(op)
        if rule is None:
            continue
        try:
            outcome = rule(fields)
        except (OSError, LxpyError, KeyError) as e:
            # Left for the next start; everything else goes on.
            log.error("recovery: cannot settle %s (%s): %s", op, path.name, e)
            continue
        name = fields.get("name")
        log.warning("recovery: %s of %s, cut short by a crash: %s", op, name, outcome)
        journal.done(path)
        settled += 1
    return settled
