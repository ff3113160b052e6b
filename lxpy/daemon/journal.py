"""Intents of lxpyd's multi-step operations, and the undo of their steps.

An operation that changes several things (create: a volume, files in it,
an ID block, a record) first writes down what it is about to do:

    ROOT/intents/SEQ-OP.json    {"op": "create", "name": "web", ...}

atomically and fsynced before its first step, and removes it after its
last. Each step registers its undo beside it (`Intent.undo`; an Intent
is an lxpy.revert.AsyncRevert), as Incus's revert does: an error or a
cancel runs the undos in reverse, shielded, and removes the intent. A
crash runs nothing, and the next lxpyd finds the intent and settles it
before it lists anything (lxpy.daemon.recovery): it completes the
operation once its point of no return is passed, and undoes it otherwise.

Operations that storage alone keeps whole by its hidden names (snapshot,
snapshot delete, restore: see lxpy.storage.tree) use the same helper
without a file (`durable=False`), for their undo and their step names.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from lxpy.daemon import crashpoint
from lxpy.daemon.registry import write_atomic
from lxpy.errors import PoolFull, is_full, pool_full
from lxpy.model.paths import RootPaths
from lxpy.revert import AsyncRevert

log = logging.getLogger("lxpyd.journal")


class Intent(AsyncRevert):
    """One operation under way: its step names and its registered undos
    (lxpy.revert.AsyncRevert, run by Journal.begin on an error or a cancel)."""

    def __init__(self, op: str, path: Path | None) -> None:
        super().__init__(op)
        self.path = path

    def step(self, name: str) -> None:
        """Step `name` of this operation is done (see lxpy.daemon.crashpoint).
        Safe to call from a worker thread."""
        crashpoint.reached(self.op, name)


Blocking = Callable[..., Awaitable[Any]]


class Journal:
    """The intents of the daemon at `root`, in `root`/intents.

    `run` runs its blocking file calls in a worker thread: the daemon's
    own (Daemon.files), so that an intent that finds no room says the
    pool is full, and where.
    """

    def __init__(self, root: Path, run: Blocking | None = None) -> None:
        self.directory = RootPaths(root).intents
        self._run: Blocking = run or trio.to_thread.run_sync

    def _write(self, op: str, fields: dict[str, object], sync: bool = True) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Names sort in the order the operations began.
        path = self.directory / f"{time.time_ns():020d}-{secrets.token_hex(2)}-{op}.json"
        write_atomic(path, json.dumps({"op": op, **fields}).encode(), 0o600, sync)
        return path

    def pending(self) -> list[tuple[Path, dict[str, object]]]:
        """The intents a crash left, oldest first. Blocking."""
        out: list[tuple[Path, dict[str, object]]] = []
        if not self.directory.is_dir():
            return out
        for f in sorted(self.directory.glob("*.json")):
            if f.name.startswith("."):
                continue
            try:
                raw = f.read_bytes()
                if not raw:
                    # Only an intent written without sync can be empty: a
                    # host crash cut it short, and what it was about (a
                    # running container) ended with the host.
                    log.warning("intent %s is empty (a host crash): removed", f)
                    f.unlink(missing_ok=True)
                    continue
                data = json.loads(raw)
                if not isinstance(data, dict) or not isinstance(data.get("op"), str):
                    raise ValueError("no operation named")
            except (OSError, ValueError) as e:
                # Written atomically, so never half a file: someone's hand.
                log.error("intent %s is unreadable (%s): left alone", f, e)
                continue
            out.append((f, data))
        return out

    def done(self, path: Path) -> None:
        """Remove a settled intent. Blocking.

        No fsync: an intent that comes back after a power cut is settled
        again, and settling is idempotent.
        """
        path.unlink(missing_ok=True)

    @asynccontextmanager
    async def begin(
        self, op: str, durable: bool = True, sync: bool = True, **fields: object
    ) -> AsyncIterator[Intent]:
        """Run the body as operation `op` (a name in crashpoint.STEPS) with
        the intent `fields`, written before the body starts when `durable`;
        without `sync` it is not flushed to disk: for an operation on what
        a host crash ends anyway (a running container), where it need
        only outlive lxpyd.

        On an error or a cancel the body's undos run; the intent goes once
        they all worked (one that failed leaves it, for the next start).
        """
        what = f"{op} {fields.get('name', '')}".strip()
        try:
            path = await self._run(self._write, op, fields, sync) if durable else None
        except OSError as e:
            if is_full(e):
                raise pool_full(what) from e
            raise
        except PoolFull as e:
            # The daemon's runner said where: add what was being done.
            raise pool_full(what, e.where) from e
        intent = Intent(op, path)
        intent.step("begun")
        try:
            yield intent
        except BaseException:
            if await intent.revert() and path is not None:
                with trio.CancelScope(shield=True):
                    await self._run(self.done, path)
            raise
        if path is not None:
            with trio.CancelScope(shield=True):
                await self._run(self.done, path)
