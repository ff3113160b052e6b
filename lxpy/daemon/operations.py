"""Operations: long work (a template build) run as a task of the daemon's
nursery, with progress, a bounded in-memory log, cancel, wait and stream.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import trio

from lxpy.daemon.events import EventBus, now_iso
from lxpy.daemon.http import leaf_error
from lxpy.errors import Cancelled, LxpyError, NotFound

log = logging.getLogger("lxpyd.operations")

RUNNING, SUCCESS, FAILURE, CANCELLED = "running", "success", "failure", "cancelled"
LOG_LINES = 5000
KEEP_FINISHED = 100


class Operation:
    """One piece of long work. Its methods are called from the trio thread."""

    def __init__(self, kind: str, resource: str, bus: EventBus) -> None:
        self.id = uuid.uuid4().hex
        self.kind = kind
        self.resource = resource
        self.status = RUNNING
        self.fraction = 0.0
        self.stage = ""
        self.created_at = now_iso()
        self.finished_at: str | None = None
        self.error: LxpyError | None = None
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        # Total lines ever logged: a follower keeps its position as a count,
        # which stays valid when the deque drops old lines.
        self.line_count = 0
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self._changed = trio.Event()
        self._bus = bus

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "resource": self.resource,
            "status": self.status,
            "progress": self.fraction,
            "stage": self.stage,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "error": self.error.to_json() if self.error else None,
        }

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def add_log(self, line: str) -> None:
        self.lines.append(line.rstrip("\n"))
        self.line_count += 1
        self._notify()

    def set_progress(self, fraction: float, stage: str | None = None) -> None:
        self.fraction = min(1.0, max(0.0, float(fraction)))
        if stage is not None:
            self.stage = stage
        self._notify()
        self._bus.operation(self.to_json())

    def finish(self, status: str, error: LxpyError | None = None) -> None:
        self.status = status
        self.error = error
        if status == SUCCESS:
            self.fraction = 1.0
        self.finished_at = now_iso()
        self.done.set()
        self._notify()
        self._bus.operation(self.to_json())

    def raise_if_failed(self) -> None:
        """Raise the operation's error when it did not succeed (for a caller
        that waited for it, such as a create waiting for a template build)."""
        if self.status == CANCELLED:
            raise Cancelled(f"operation {self.id} ({self.kind} {self.resource}) was cancelled")
        if self.status == FAILURE and self.error is not None:
            raise self.error

    async def follow(self) -> AsyncGenerator[dict[str, object], None]:
        """The stream items: log lines so far, then new lines and progress as
        they come, and last the operation itself once it ended."""
        sent = 0
        last: tuple[float, str] | None = None
        while True:
            changed = self._changed
            first = self.line_count - len(self.lines)
            sent = max(sent, first)
            # A list copy: the deque may change while this generator is suspended.
            for line in list(self.lines)[sent - first :]:
                yield {"log": line}
            sent = self.line_count
            now = (self.fraction, self.stage)
            if now != last and self.status == RUNNING:
                last = now
                yield {"progress": self.fraction, "stage": self.stage}
            if self.status != RUNNING and sent == self.line_count:
                yield {"operation": self.to_json()}
                return
            if changed is self._changed:
                await changed.wait()


class Report:
    """What a builder reports through: `.log(line)` and `.progress(fraction, stage)`.

    Safe to call from the trio thread and from worker threads (a builder may
    read a subprocess's output in a thread): those hop back to trio.
    """

    def __init__(self, op: Operation, on_line: Callable[[str], None] | None = None) -> None:
        self._op = op
        self._on_line = on_line
        self._token = trio.lowlevel.current_trio_token()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        else:
            fn(*args)

    def _log(self, line: str) -> None:
        self._op.add_log(line)
        if self._on_line is not None:
            self._on_line(line)

    def log(self, line: str) -> None:
        self._call(self._log, line)

    def progress(self, fraction: float, stage: str | None = None) -> None:
        self._call(self._op.set_progress, fraction, stage)


Work = Callable[[Operation], Awaitable[None]]


class Operations:
    """Running and recently finished operations."""

    def __init__(self, nursery: trio.Nursery, bus: EventBus) -> None:
        self._nursery = nursery
        self._bus = bus
        self._ops: dict[str, Operation] = {}
        self._finished: deque[str] = deque()

    def start(self, kind: str, resource: str, work: Work) -> Operation:
        """Run `work(op)` as a new operation in the daemon's nursery."""
        op = Operation(kind, resource, self._bus)
        self._ops[op.id] = op
        self._bus.operation(op.to_json())
        self._nursery.start_soon(self._run, op, work)
        return op

    def done_now(self, kind: str, resource: str, stage: str) -> Operation:
        """An operation with nothing to do: it ends `success` at `stage` at once,
        so the caller's answer already says so."""
        op = Operation(kind, resource, self._bus)
        self._ops[op.id] = op
        op.set_progress(1.0, stage)
        op.finish(SUCCESS)
        self._forget_old(op)
        return op

    def _forget_old(self, op: Operation) -> None:
        self._finished.append(op.id)
        while len(self._finished) > KEEP_FINISHED:
            self._ops.pop(self._finished.popleft(), None)

    async def _run(self, op: Operation, work: Work) -> None:
        status = SUCCESS
        error: LxpyError | None = None
        try:
            with op.scope:
                await work(op)
            if op.scope.cancelled_caught:
                status, error = CANCELLED, Cancelled("operation cancelled")
                log.info("%s %s cancelled", op.kind, op.resource)
        except Exception as exc:
            e = leaf_error(exc)
            if isinstance(e, LxpyError):
                log.warning("%s %s failed: %s", op.kind, op.resource, e.message)
                status, error = FAILURE, e
            else:
                log.exception("%s %s failed", op.kind, op.resource)
                error = LxpyError(f"{type(e).__name__}: {e}", hint="see lxpyd's log")
                status = FAILURE
        except BaseException:
            # The daemon is stopping: record it, then let trio unwind.
            log.info("%s %s cancelled: lxpyd is stopping", op.kind, op.resource)
            op.finish(CANCELLED, Cancelled("lxpyd is stopping"))
            raise
        op.finish(status, error)
        self._forget_old(op)

    def get(self, op_id: str) -> Operation:
        """Raises NotFound for an unknown (or long forgotten) id."""
        try:
            return self._ops[op_id]
        except KeyError:
            raise NotFound(
                f"operation {op_id!r} not found",
                hint="finished operations are kept for the last 100 only",
            ) from None

    def list(self) -> list[Operation]:
        return sorted(self._ops.values(), key=lambda op: op.created_at)

    def cancel(self, op_id: str) -> Operation:
        """Cancel a running operation (a finished one is left as it is)."""
        op = self.get(op_id)
        op.scope.cancel()
        return op
