"""The undo of multi-step host changes, registered beside each step.

A change that takes several steps (make a bridge, give it an address, bring
it up) registers how to reverse each step right after the step succeeds, as
Incus's revert (shared/revert) does:

    with Revert(f"bridge {name}") as rv:
        make_bridge(name)
        rv.undo(lambda: delete_bridge(name), f"delete bridge {name}")
        add_address(name)

When the body raises (any exception, KeyboardInterrupt and a cancel
included), the undos run, last first; an undo's own failure is logged and
the next one still runs, and the error raised stays the body's. When the
body ends normally nothing runs, and the undos stay registered: `revert()`
runs them later should a step after the block fail (a start whose devices
are set up, then its spawn fails).

`Revert` is for synchronous code (kernel, storage, network; what lxpyd runs
in worker threads); `AsyncRevert` is the same for trio code (`async with`),
its undos shielded from cancellation. lxpy.daemon.journal's Intent is an
AsyncRevert that also names its steps and keeps a record on disk.

This module imports nothing beyond the standard library, and trio only
when an AsyncRevert runs its undos (inside trio, where it is loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, Self, TypeVar

log = logging.getLogger("lxpy.revert")

_Fn = TypeVar("_Fn")


class Undos(Generic[_Fn]):
    """The undos registered so far for operation `op` (named in the log),
    in the order their steps were done. Shared by Revert and AsyncRevert."""

    def __init__(self, op: str) -> None:
        self.op = op
        self._undos: list[tuple[_Fn, str]] = []

    def undo(self, fn: _Fn, what: str) -> None:
        """Register how to reverse the step just done (`what`, for the log)."""
        self._undos.append((fn, what))

    def _take(self) -> list[tuple[_Fn, str]]:
        # Last first, and each runs once even if revert is called again.
        todo = self._undos[::-1]
        self._undos.clear()
        return todo

    def _failed(self, what: str) -> None:
        # Called inside the undo's `except`: the log gets its traceback.
        log.exception("%s: undo failed: %s", self.op, what)


class Revert(Undos[Callable[[], object]]):
    """Undos of synchronous steps; a context manager that runs them when
    its body raises (see the module docstring)."""

    def revert(self) -> bool:
        """Run the undos, last first; returns whether every one succeeded
        (a failure is logged, and the next undo still runs)."""
        ok = True
        for fn, what in self._take():
            try:
                fn()
            except Exception:
                self._failed(what)
                ok = False
        return ok

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.revert()


class AsyncRevert(Undos[Callable[[], Awaitable[object]]]):
    """Undos of steps in trio code; an async context manager that runs them,
    shielded from cancellation, when its body raises."""

    async def revert(self) -> bool:
        """Run the undos, last first, even while cancelled; returns whether
        every one succeeded (a failure is logged, and the next undo still
        runs)."""
        # Why here: the sync side (kernel, storage, network) must not load
        # trio; whoever awaits this runs inside trio already.
        import trio

        ok = True
        with trio.CancelScope(shield=True):
            for fn, what in self._take():
                try:
                    await fn()
                except Exception:
                    self._failed(what)
                    ok = False
        return ok

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            await self.revert()
