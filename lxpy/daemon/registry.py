"""lxpyd's records on disk, under the root:

    containers/NAME.toml   one container record each (lxpy.model.config.Container)
    templates/NAME.json    build metadata of a built template
    templates/NAME.log     the last build log of a template

Writes are atomic (temp file in the same directory, fsync, rename, fsync of
the directory): a crash leaves the old file or the new one, never half of
one. All methods block; the daemon calls them through its file limiter.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lxpy.errors import InvalidArgument, LxpyError
from lxpy.model.config import Container
from lxpy.model.names import validate_name
from lxpy.model.paths import RootPaths
from lxpy.revert import Revert
from lxpy.storage.base import Step

log = logging.getLogger("lxpyd.registry")


def write_atomic(path: Path, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
    """Replace `path` with `data` so that readers and crashes see the old or the new file.

    Without `sync`, a crash of the process still leaves one or the other,
    but a crash of the host may leave neither: for what a host crash
    makes moot anyway.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with Revert(f"write {path}") as rv:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        rv.undo(lambda: tmp.unlink(missing_ok=True), f"remove {tmp}")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # The rename itself is only durable once the directory is synced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    """Container records and template build metadata under `root`."""

    def __init__(self, root: Path) -> None:
        paths = RootPaths(root)
        self.containers = paths.records
        self.templates = paths.template_records
        # Image metadata (FINGERPRINT.json), downloads under way, remotes.
        self.images = paths.images
        self.downloads = paths.downloads
        self.remotes_file = paths.remotes

    def prepare(self) -> None:
        """Create the record directories."""
        for d in (self.containers, self.templates, self.images, self.downloads):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- containers ---------------------------------------------------------
    def record_path(self, name: str) -> Path:
        return self.containers / f"{name}.toml"

    def load_all(self) -> tuple[dict[str, Container], dict[str, str]]:
        """Every record: (good records by name, reasons by name for broken files).

        A broken file does not stop the daemon: its container is reported in
        ERROR with the reason, so the user can see and fix it.
        """
        good: dict[str, Container] = {}
        broken: dict[str, str] = {}
        for f in sorted(self.containers.glob("*.toml")):
            if f.name.startswith("."):
                continue
            try:
                validate_name(f.stem)
            except InvalidArgument:
                log.warning("ignoring %s: %r is not a container name", f, f.stem)
                continue
            try:
                c = Container.from_toml(f.read_text(), str(f))
                if c.name != f.stem:
                    raise InvalidArgument(f"{f}: records container {c.name!r}, not {f.stem!r}")
                good[c.name] = c
            except (LxpyError, OSError, UnicodeDecodeError) as e:
                reason = e.message if isinstance(e, LxpyError) else f"{f}: {e}"
                log.error("broken container record: %s", reason)
                broken[f.stem] = reason
        return good, broken

    def save(self, c: Container) -> None:
        """Write `c`'s record atomically (created or replaced)."""
        write_atomic(self.record_path(c.name), c.to_toml().encode(), 0o600)

    def delete(self, name: str) -> None:
        """Remove `name`'s record; idempotent."""
        self.record_path(name).unlink(missing_ok=True)
        _fsync_dir(self.containers)

    def rename(self, old: str, c: Container, step: Step = None) -> None:
        """Record `c` (the renamed container) and drop `old`'s record; on
        failure the old record is left as it was. `step` is told "recorded"
        and "old-record-removed"."""
        with Revert(f"rename of {old} to {c.name}") as rv:
            self.save(c)
            new = self.record_path(c.name)
            rv.undo(lambda: new.unlink(missing_ok=True), f"remove {new}")
            if step is not None:
                step("recorded")
            self.delete(old)
        if step is not None:
            step("old-record-removed")

    # -- templates ----------------------------------------------------------
    def template_meta(self, name: str) -> dict[str, object] | None:
        """The build metadata of template `name`, None when never built (or unreadable)."""
        return _read_json(self.templates / f"{name}.json", f"template {name}")

    def save_template_meta(self, name: str, meta: dict[str, object]) -> None:
        write_atomic(self.templates / f"{name}.json", json.dumps(meta, indent=1).encode())

    def delete_template_meta(self, name: str) -> None:
        for suffix in (".json", ".log"):
            (self.templates / f"{name}{suffix}").unlink(missing_ok=True)

    def template_log(self, name: str) -> Path:
        return self.templates / f"{name}.log"

    # -- images -------------------------------------------------------------
    def image_meta(self, fingerprint: str) -> dict[str, object] | None:
        """The metadata of image `fingerprint`, None when there is none."""
        return _read_json(self.images / f"{fingerprint}.json", f"image {fingerprint[:12]}")

    def save_image_meta(self, fingerprint: str, meta: dict[str, object]) -> None:
        write_atomic(self.images / f"{fingerprint}.json", json.dumps(meta, indent=1).encode())

    def delete_image_meta(self, fingerprint: str) -> None:
        (self.images / f"{fingerprint}.json").unlink(missing_ok=True)

    def all_image_meta(self) -> dict[str, dict[str, object]]:
        """Every image's metadata by fingerprint."""
        out = {}
        for f in sorted(self.images.glob("*.json")):
            meta = _read_json(f, f"image {f.stem[:12]}")
            if meta is not None:
                out[f.stem] = meta
        return out

    def remotes(self) -> dict[str, object] | None:
        """The image servers as saved (None: never changed, the defaults)."""
        return _read_json(self.remotes_file, "the remotes")

    def save_remotes(self, remotes: dict[str, object]) -> None:
        write_atomic(self.remotes_file, json.dumps(remotes, indent=1).encode())


def _read_json(path: Path, what: str) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable metadata of %s: %s", what, e)
        return None
    return data if isinstance(data, dict) else None
