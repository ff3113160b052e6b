"""Templates: list, build (as an operation), delete.

A build stages into a fresh volume and commits it only when the builder
succeeded; on failure or cancel the staging volume is removed in a shielded
scope, so no half-built template is ever visible. The build is an intent of
the daemon's journal: after a crash, the next lxpyd writes the metadata of
a template committed just before it (lxpy.daemon.recovery). Definitions are re-read
on every request, so a user's new or edited file is seen at once.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import IO

import trio

from lxpy.build.builder import build_rootfs
from lxpy.daemon.events import now_iso
from lxpy.daemon.operations import Operation, Report
from lxpy.daemon.state import Daemon
from lxpy.errors import Busy, LxpyError, NotFound, is_full
from lxpy.model.suggest import not_found_hint
from lxpy.model.template import TemplateDef, load_templates

log = logging.getLogger("lxpyd.templates")

BUILD_KIND = "template-build"


# Less than this free in the pool after a failed build: the builder's tools
# (tar, debootstrap) ran out of space, whatever their exit status says.
_NEARLY_FULL = 1 << 20


def _no_space(path: str | Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


class Templates:
    def __init__(self, d: Daemon) -> None:
        self.d = d
        # Running builds by template name: one at a time per template.
        self.building: dict[str, Operation] = {}

    async def definitions(self) -> dict[str, TemplateDef]:
        """All template definitions, read afresh.

        Raises:
            InvalidArgument: a definition file is invalid (naming it).
        """
        return await self.d.files(load_templates, self.d.settings.template_dirs)

    async def find(self, name: str) -> TemplateDef:
        """The definition of `name`.

        Raises:
            NotFound: with the known names as a hint.
        """
        defs = await self.definitions()
        if name not in defs:
            raise NotFound(
                f"template {name!r} not found",
                hint=not_found_hint(name, defs, "known templates", "`lxpy template list`"),
            )
        return defs[name]

    async def describe(self, defn: TemplateDef) -> dict[str, object]:
        """The API's template object for `defn`."""
        meta = await self.d.files(self.d.registry.template_meta, defn.name) or {}
        built = await self.d.storage(self.d.backend.template_exists, defn.name)
        digest = await self.d.files(defn.digest)
        built_digest = meta.get("digest") if built else None
        log = self.d.registry.template_log(defn.name)
        return {
            "name": defn.name,
            "description": defn.description,
            "kind": defn.source.kind,
            "file": defn.file,
            "built": built,
            "stale": bool(built and built_digest != digest),
            "digest": digest,
            "built_digest": built_digest,
            "built_at": meta.get("built_at") if built else None,
            "build_seconds": meta.get("build_seconds") if built else None,
            "build_log": str(log) if await self.d.files(log.exists) else None,
        }

    async def list_all(self) -> list[dict[str, object]]:
        return [await self.describe(t) for _, t in sorted((await self.definitions()).items())]

    async def get(self, name: str) -> dict[str, object]:
        return await self.describe(await self.find(name))

    async def start_build(self, name: str, force: bool) -> Operation:
        """Start building template `name` as an operation.

        Raises:
            NotFound: no such template.
            Busy: it is being built already.
        """
        defn = await self.find(name)
        self._require_idle(name)
        cached = not force and await self._up_to_date(defn)
        self._require_idle(name)  # one may have started meanwhile
        if cached:
            # Answered as done: nothing to follow, no progress to show.
            return self.d.ops.done_now(BUILD_KIND, f"templates/{name}", "cached")
        return self._start(defn, force)

    def _require_idle(self, name: str) -> None:
        if name in self.building:
            raise Busy(
                f"template {name!r} is being built already",
                hint=f"follow operation {self.building[name].id}",
            )

    async def _up_to_date(self, defn: TemplateDef) -> bool:
        """Whether `defn` is built from the definition as it is now."""
        d = self.d
        if not await d.storage(d.backend.template_exists, defn.name):
            return False
        meta = await d.files(d.registry.template_meta, defn.name) or {}
        return bool(meta.get("digest") == await d.files(defn.digest))

    async def ensure_built(self, name: str) -> None:
        """Build template `name` unless it is built; join a running build.

        Raises:
            LxpyError: the build failed or was cancelled.
        """
        op = self.building.get(name)
        if op is None:
            if await self.d.storage(self.d.backend.template_exists, name):
                return
            defn = await self.find(name)
            # Looked up again after the awaits: another request may have
            # started the build meanwhile, and two builds must never share a
            # staging volume.
            op = self.building.get(name) or self._start(defn, force=False)
        await op.done.wait()
        op.raise_if_failed()

    def _start(self, defn: TemplateDef, force: bool) -> Operation:
        async def work(op: Operation) -> None:
            try:
                await self._build(op, defn, force)
            finally:
                self.building.pop(defn.name, None)

        op = self.d.ops.start(BUILD_KIND, f"templates/{defn.name}", work)
        self.building[defn.name] = op
        return op

    async def _build(self, op: Operation, defn: TemplateDef, force: bool) -> None:
        d, name = self.d, defn.name
        if not force and await self._up_to_date(defn):
            op.set_progress(1.0, "cached")
            return
        digest = await d.files(defn.digest)
        # What was there before (None: nothing): recovery tells by it
        # whether a crash came before or after the commit.
        before = await d.storage(d.backend.template_identity, name)
        # The log file is written by its own task so a slow disk never holds
        # up the builder; the channel is unbounded for the same reason.
        send, recv = trio.open_memory_channel[str](math.inf)
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_log, d.registry.template_log(name), recv)
            with send:
                report = Report(op, send.send_nowait)
                op.set_progress(0.0, "preparing")
                async with d.journal.begin(
                    "template-build", name=name, digest=digest, before=before
                ) as intent:
                    target = await d.storage(d.backend.begin_template, name)
                    intent.undo(
                        lambda: d.storage(d.backend.abort_template, name),
                        f"remove the staging volume of template {name}",
                    )
                    intent.step("staged")
                    try:
                        await build_rootfs(
                            defn,
                            Path(target),
                            mirror=d.settings.mirror,
                            security_mirror=d.settings.security_mirror,
                            cache_dir=d.settings.build_cache,
                            report=report,
                            # A forced build means "from the source again",
                            # not "unpack the cached tarball again".
                            refresh_cache=force,
                        )
                    except BaseException as e:
                        # Asked before the staging volume goes (the undo):
                        # its files may be what filled the pool.
                        with trio.CancelScope(shield=True):
                            full = is_full(e) or (
                                isinstance(e, Exception) and await d.storage(_no_space, target)
                            )
                            where = f"building template {name!r}"
                            err = await d.pool_full(where) if full else None
                        if err is not None:
                            raise err from e
                        raise
                    intent.step("built")
                    # Once committing, finish: a cancel now would leave a
                    # template without its metadata.
                    with trio.CancelScope(shield=True):
                        await d.storage(d.backend.commit_template, name, intent.step)
                        meta = {
                            "digest": digest,
                            "built_at": now_iso(),
                            "build_seconds": round(time.monotonic() - started, 3),
                        }
                        await d.files(d.registry.save_template_meta, name, meta)
                        intent.step("committed")
        d.bus.lifecycle("template-built", f"templates/{name}", {"digest": digest})

    async def _write_log(self, path: Path, recv: trio.MemoryReceiveChannel[str]) -> None:
        f: IO[str] = await self.d.files(path.open, "w")
        try:
            async for line in recv:
                batch = [line]
                while True:
                    try:
                        batch.append(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                text = "".join(x if x.endswith("\n") else x + "\n" for x in batch)
                try:
                    await self.d.files(f.write, text)
                    await self.d.files(f.flush)
                except (OSError, LxpyError) as e:
                    # The build matters more than its log file (a full
                    # pool says so itself): keep going.
                    log.warning("cannot write %s: %s", path, e)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.d.files(f.close)
                except (OSError, LxpyError) as e:
                    log.warning("cannot write %s: %s", path, e)

    async def delete(self, name: str) -> None:
        """Delete the built template `name` (its definition stays).

        Raises:
            Busy: it is being built.
            NotFound: it is not built.
        """
        if name in self.building:
            raise Busy(f"template {name!r} is being built", hint="cancel the build first")
        if not await self.d.storage(self.d.backend.template_exists, name):
            raise NotFound(f"template {name!r} is not built")
        await self.d.storage(self.d.backend.delete_template, name)
        await self.d.files(self.d.registry.delete_template_meta, name)
        self.d.bus.lifecycle("template-deleted", f"templates/{name}")
