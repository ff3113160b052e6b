"""The build entry point the daemon calls: a rootfs from a definition.

    await build_rootfs(defn, target, mirror=..., cache_dir=..., report=...)

`target` is an empty writable directory (the storage layer's staging
volume). The build fills it, applies the [setup] steps and, for the slow
kinds, keeps a copy in the build cache. It never blocks the event loop
(file work runs in worker threads) and is cancellable: cancelling kills
every process it started. On failure the caller deletes `target`.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from lxpy.build import busybox, cache, debootstrap, tarball
from lxpy.build.report import Reporter
from lxpy.build.setup import apply_setup
from lxpy.errors import InvalidArgument, LxpyError
from lxpy.model.settings import DEFAULT_SECURITY_MIRROR
from lxpy.model.template import TemplateDef

__all__ = ["CACHED_KINDS", "Reporter", "build_rootfs"]

# Kinds worth caching: busybox builds in well under a second from the host's
# binary, and a tarball of it would be no faster to extract.
CACHED_KINDS = ("debootstrap", "tarball")


def _check_target(target: Path) -> None:
    if not target.is_dir():
        raise InvalidArgument(f"build target {target} is not a directory")
    if any(target.iterdir()):
        raise InvalidArgument(f"build target {target} is not empty")


async def build_rootfs(
    defn: TemplateDef,
    target: Path,
    *,
    mirror: str,
    security_mirror: str = DEFAULT_SECURITY_MIRROR,
    cache_dir: Path | None,
    report: Reporter,
    refresh_cache: bool = False,
) -> None:
    """Build the rootfs of `defn` into the empty directory `target`.

    Args:
        defn: the template definition.
        target: an existing, empty, writable directory.
        mirror: the Debian mirror URL used when the definition names none.
        security_mirror: the same for its -security suites.
        cache_dir: the build cache directory, or None for no cache.
        report: receives every output line and progress by stage.
        refresh_cache: build afresh even when the cache has this digest, and
            replace the cached tarball (a forced rebuild: newer packages).

    Raises:
        InvalidArgument: `target` is not an empty directory, or a setup value
            cannot be applied.
        NotFound: a file or tool the definition needs is missing.
        Unsupported: the host busybox is not static.
        LxpyError: a build step failed (the message says which and why).
        trio.Cancelled: the build was cancelled; its processes are gone.
    """
    started = time.monotonic()
    await trio.to_thread.run_sync(_check_target, target)
    report.progress(0.0, "starting")
    kind = defn.source.kind
    cached: Path | None = None
    if cache_dir is not None and kind in CACHED_KINDS:
        cached = cache.cache_file(cache_dir, defn)
        if not refresh_cache and await trio.to_thread.run_sync(cached.is_file):
            report.progress(0.05, "from cache")
            report.log(f"restoring {defn.name} from the build cache: {cached}")
            await cache.restore(cached, target, report)
            report.log(f"restored in {time.monotonic() - started:.1f}s")
            report.progress(1.0, "done")
            return

    if kind == "busybox":
        await busybox.build(defn, target, report)
    elif kind == "debootstrap":
        await debootstrap.build(defn, target, mirror, security_mirror, report)
    elif kind == "tarball":
        await tarball.build(defn, target, report)
    else:  # the model only admits the kinds above
        raise LxpyError(f"source.kind {kind!r} has no builder")

    report.progress(0.9, "setup")
    for note in await trio.to_thread.run_sync(apply_setup, defn, target):
        report.log(note)

    if cached is not None:
        report.progress(0.95, "caching")
        try:
            await cache.store(target, cached, defn, report)
        except (LxpyError, OSError) as e:
            # The rootfs is fine; only the next build will be slower.
            report.log(f"warning: could not write the build cache: {e}")
    report.log(f"built {defn.name} in {time.monotonic() - started:.1f}s")
    report.progress(1.0, "done")
