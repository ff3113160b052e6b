"""The tarball kind: import a rootfs archive (any compression tar detects)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from lxpy.build.proc import run_logged
from lxpy.build.report import Reporter
from lxpy.errors import LxpyError, NotFound
from lxpy.model.template import TemplateDef

# Flags shared by every rootfs extraction: keep numeric owners (the host's
# user names mean nothing inside the rootfs), permissions, ACLs and all
# extended attributes (file capabilities live in security.capability, which
# tar restores only when asked to include every namespace).
EXTRACT_FLAGS = (
    "--numeric-owner",
    "--same-owner",
    "--same-permissions",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (blocking)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def extract(archive: Path, target: Path, report: Reporter) -> None:
    """Unpack `archive` into `target` as root, keeping owners and attributes.

    Raises:
        LxpyError: tar failed.
    """
    await run_logged(["tar", "-C", str(target), *EXTRACT_FLAGS, "-xf", str(archive)], report.log)


async def build(defn: TemplateDef, target: Path, report: Reporter) -> None:
    """Fill `target` from the definition's archive, checking its sha256 first.

    Raises:
        NotFound: the archive does not exist.
        LxpyError: the checksum does not match, or tar failed.
    """
    src = defn.source
    archive = Path(src.path)
    if not await trio.to_thread.run_sync(archive.exists):
        raise NotFound(f"source.path: {archive} does not exist")
    if src.sha256:
        report.progress(0.05, "verifying")
        actual = await trio.to_thread.run_sync(sha256_file, archive)
        if actual != src.sha256.lower():
            raise LxpyError(
                f"source.sha256 mismatch for {archive}: expected {src.sha256.lower()}, "
                f"got {actual}",
                hint="the archive changed or is damaged; if the change is intended, "
                "update source.sha256",
            )
        report.log(f"sha256 of {archive} verified")
    report.progress(0.2, "extracting")
    await extract(archive, target, report)
    report.log(f"extracted {archive}")
