"""The build cache: finished rootfs trees as tarballs named by definition hash.

`<cache_dir>/<name>-<digest>.tar` holds the rootfs after setup. An
unchanged definition is restored from it instead of bootstrapped again; a
changed one gets a new digest, and its older tarballs are removed once the
new one is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import trio

from lxpy.build.proc import run_logged
from lxpy.build.report import Reporter
from lxpy.build.tarball import EXTRACT_FLAGS
from lxpy.model.template import TemplateDef

_CREATE_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")


def cache_file(cache_dir: Path, defn: TemplateDef) -> Path:
    """Where the built rootfs of `defn` is (or would be) cached."""
    return cache_dir / f"{defn.name}-{defn.digest()}.tar"


def stale_files(cache_dir: Path, name: str, keep: Path) -> list[Path]:
    """Cached tarballs of template `name` other than `keep` (blocking)."""
    # The digest is matched exactly, so template "debian" never claims
    # "debian-bookworm-<digest>.tar".
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{64}\.tar")
    return [
        p
        for p in cache_dir.iterdir()
        if pattern.fullmatch(p.name) and p.name != keep.name and p.is_file()
    ]


def _remove_stale(cache_dir: Path, name: str, keep: Path) -> list[Path]:
    old = stale_files(cache_dir, name, keep)
    for p in old:
        p.unlink(missing_ok=True)
    return old


async def restore(cached: Path, target: Path, report: Reporter) -> None:
    """Extract a cached rootfs into the empty `target`.

    Raises:
        LxpyError: tar failed (the damaged tarball is removed so the next
            build bootstraps afresh).
    """
    try:
        await run_logged(["tar", "-C", str(target), *EXTRACT_FLAGS, "-xf", str(cached)], report.log)
    except Exception:  # not cancellation: a cancelled restore keeps the file
        await trio.to_thread.run_sync(lambda: cached.unlink(missing_ok=True))
        report.log(f"removed damaged cache file {cached}")
        raise


async def store(target: Path, cached: Path, defn: TemplateDef, report: Reporter) -> None:
    """Write the built rootfs to `cached` atomically (temporary file, then
    rename) and remove the template's older cache files.

    Raises:
        LxpyError: tar failed (the temporary file is removed).
        OSError: the cache directory is not writable.
    """
    await trio.to_thread.run_sync(lambda: cached.parent.mkdir(parents=True, exist_ok=True))
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    argv = ["tar", "-C", str(target), *_CREATE_FLAGS, "-cf", str(tmp), "."]
    try:
        await run_logged(argv, report.log)
        await trio.to_thread.run_sync(os.replace, tmp, cached)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
    for old in await trio.to_thread.run_sync(_remove_stale, cached.parent, defn.name, cached):
        report.log(f"removed old cache file {old}")
    report.log(f"cached the rootfs in {cached}")
