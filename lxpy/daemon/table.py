"""What lxpyd holds in memory about its containers: one entry per name in
one table (ContainerTable), with the state machine (lxpy.model.state)
enforced in the one method that changes a state once it is known.

An entry holds the record (or why its record file cannot be read), the
lifecycle state, a running container's processes and the watch that
follows its monitor, why its init last ended, how a stop under way was
asked for, and the lock that serializes requests on it. A name being
created, copied or renamed to has an entry too (reserved), with no
record and no state yet. Forgetting a container drops its entry: nothing
about it can be left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from lxpy.daemon.events import EventBus
from lxpy.errors import AlreadyExists, InvalidArgument, LxpyError, NotFound
from lxpy.model.config import Container
from lxpy.model.state import State, can_move
from lxpy.model.suggest import not_found_hint

log = logging.getLogger("lxpyd")

T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    """A running container as lxpyd knows it: its processes and monitor socket."""

    init_pid: int
    monitor_pid: int
    # ISO 8601, UTC: when init (last) started.
    started_at: str
    socket: Path


@dataclass
class Watch:
    """What the daemon holds for a container whose monitor it follows."""

    socket: Path
    # Set by the watcher once the container has ended and is cleaned up.
    ended: trio.Event = field(default_factory=trio.Event)
    # Whether its init said this boot is done (lxpy.runtime.readiness), as
    # the monitor last reported; `changed` fires (and is replaced) when it
    # changes or the container ends.
    ready: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.changed.set()
            self.changed = trio.Event()


@dataclass(frozen=True)
class StopAsked:
    """How lxpy asked a container to stop: killed at once, or after `grace` s."""

    force: bool
    grace: float


@dataclass
class Entry:
    """Everything lxpyd holds in memory about one container (module docstring)."""

    name: str
    # Its record; None while the name is only reserved, or when broken.
    record: Container | None = None
    # Why its record file cannot be read ("": it can).
    broken: str = ""
    # Its lifecycle state; None while the name is only reserved. Changed
    # through ContainerTable.set_state alone.
    state: State | None = None
    # Its monitor runs (RUNNING, FROZEN, STOPPING, or STARTING during a
    # reboot): its processes and socket.
    run: RunInfo | None = None
    # The watch on its monitor (lxpy.daemon.lifecycle), while followed.
    watch: Watch | None = None
    # Why init last ended (kept after it stopped).
    last_exit: dict[str, object] | None = None
    # How a stop under way was asked for (for last_exit's detail).
    stop_asked: StopAsked | None = None
    # A create, copy or rename to this name is under way.
    reserved: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)

    def held(self) -> bool:
        """Whether it stands for anything: a container, or a name taken."""
        return self.record is not None or bool(self.broken) or self.reserved


class _Column(Mapping[str, T]):
    """A read-only view of one field of the table's entries, holding the
    names where that field is set."""

    def __init__(self, entries: dict[str, Entry], get: Callable[[Entry], T | None]) -> None:
        self._entries = entries
        self._get = get

    def __getitem__(self, name: str) -> T:
        entry = self._entries.get(name)
        value = self._get(entry) if entry is not None else None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (n for n, e in list(self._entries.items()) if self._get(e) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ContainerTable:
    """The in-memory state of every container of one daemon, one entry per
    name; `bus` hears of every state change.

    Its read-only views (`records`, `broken`, `states`, `running`,
    `watches`, `last_exits`) map names to one field of their entry.
    """

    def __init__(self, bus: EventBus, record_path: Callable[[str], Path]) -> None:
        self.bus = bus
        # Where a container's record file is (named when it is broken).
        self._record_path = record_path
        self._entries: dict[str, Entry] = {}
        self.records: Mapping[str, Container] = _Column(self._entries, lambda e: e.record)
        self.broken: Mapping[str, str] = _Column(self._entries, lambda e: e.broken or None)
        self.states: Mapping[str, State] = _Column(self._entries, lambda e: e.state)
        self.running: Mapping[str, RunInfo] = _Column(self._entries, lambda e: e.run)
        self.watches: Mapping[str, Watch] = _Column(self._entries, lambda e: e.watch)
        self.last_exits: Mapping[str, dict[str, object]] = _Column(
            self._entries, lambda e: e.last_exit
        )

    # -- entries ----------------------------------------------------------------
    def load(self, records: Mapping[str, Container], broken: Mapping[str, str]) -> None:
        """Know the containers of the registry: `records` (STOPPED until
        adopted) and `broken`, name -> why its record cannot be read (ERROR)."""
        for name, record in records.items():
            self._entries[name] = Entry(name, record=record, state=State.STOPPED)
        for name, why in broken.items():
            self._entries[name] = Entry(name, broken=why, state=State.ERROR)

    def get(self, name: str) -> Entry | None:
        """The entry of container (or reserved name) `name`, if any."""
        return self._entries.get(name)

    def put(self, record: Container) -> None:
        """Hold `record` as its container's record now: a new one (STOPPED,
        made on a name reserved for it) or a changed one."""
        entry = self._entries.setdefault(record.name, Entry(record.name))
        entry.record = record
        if entry.state is None:
            entry.state = State.STOPPED

    def rename(self, old: str, record: Container) -> None:
        """Container `old` is now `record.name` (reserved for it): its
        record, state and last exit move to that name's entry."""
        entry = self._entries.pop(old)
        moved = self._entries.setdefault(record.name, Entry(record.name))
        moved.record, moved.state, moved.last_exit = record, entry.state, entry.last_exit

    def forget(self, name: str) -> None:
        """Drop everything held in memory about container `name`."""
        self._entries.pop(name, None)

    def known(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and (entry.record is not None or bool(entry.broken))

    def require(self, name: str) -> Container:
        """The record of container `name`.

        Raises:
            NotFound: no such container.
            LxpyError: its record file is broken (with the reason).
        """
        entry = self._entries.get(name)
        if entry is not None and entry.broken:
            raise InvalidArgument(
                f"container {name!r} has a broken record: {entry.broken}",
                hint=f"fix {self._record_path(name)} and restart lxpyd, or delete the container",
            )
        if entry is None or entry.record is None:
            raise NotFound(
                f"container {name!r} not found",
                hint=not_found_hint(name, self.states, "known containers", "`lxpy list`"),
            )
        return entry.record

    def reserve(self, name: str) -> None:
        """Claim `name` for a container being made.

        Raises:
            AlreadyExists: a container has it, or is being made with it.
        """
        entry = self._entries.setdefault(name, Entry(name))
        if entry.held():
            raise AlreadyExists(
                f"container {name!r} already exists", hint="pick another name or delete it first"
            )
        entry.reserved = True

    def unreserve(self, name: str) -> None:
        """The make that reserved `name` is over (made or not)."""
        entry = self._entries.get(name)
        if entry is None:
            return
        entry.reserved = False
        if not entry.held() and not entry.lock.locked():
            del self._entries[name]

    def lock(self, name: str) -> trio.Lock:
        """The lock that serializes requests on container `name`.

        A name no container has nor is being made with gets a lock of its
        own, kept nowhere: the request finds nothing there (require()
        refuses it), and a name asked for in vain leaves no entry behind.
        """
        entry = self._entries.get(name)
        return entry.lock if entry is not None else trio.Lock()

    # -- the state machine ------------------------------------------------------
    def found(self, name: str, state: State) -> None:
        """Container `name` was found in `state` as lxpyd started (a monitor
        that outlived the previous lxpyd, or one that died with it): its
        first state in this daemon, not a move."""
        self._entries[name].state = state

    def set_state(self, name: str, new: State) -> None:
        """Move container `name` to state `new` and tell the event bus.

        Raises:
            LxpyError: it has no state (a bug), or the lifecycle does not
                allow that move (model/state.TRANSITIONS): a bug, logged;
                nothing changes.
        """
        entry = self._entries.get(name)
        old = entry.state if entry is not None else None
        if entry is None or old is None:
            log.error("container %s: %s for a container not known", name, new)
            raise LxpyError(f"internal error: container {name!r} has no state to leave")
        if old != new and not can_move(old, new):
            log.error("container %s: %s -> %s is not a move of its lifecycle", name, old, new)
            raise LxpyError(f"internal error: container {name!r} cannot go from {old} to {new}")
        entry.state = new
        if old != new:
            self.bus.lifecycle(
                "container-state", f"containers/{name}", {"old": str(old), "new": str(new)}
            )
