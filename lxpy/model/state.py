"""Container lifecycle states."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    FROZEN = "FROZEN"
    ERROR = "ERROR"


# Which state may follow which. ContainerTable.set_state, the one place a
# container's state changes after it is loaded or made, refuses anything
# else: an illegal move is a bug, logged and raised, never a silent jump.
TRANSITIONS: dict[State, frozenset[State]] = {
    # ERROR: a restart limit reached as it ended (boot.restart).
    State.STOPPED: frozenset({State.STARTING, State.ERROR}),
    # STOPPING: a stop asked while its init reboots (same monitor).
    State.STARTING: frozenset({State.RUNNING, State.STOPPED, State.STOPPING, State.ERROR}),
    # STARTING: a reboot inside (a new init under the same monitor).
    State.RUNNING: frozenset(
        {State.STARTING, State.STOPPING, State.FROZEN, State.STOPPED, State.ERROR}
    ),
    State.FROZEN: frozenset({State.RUNNING, State.STOPPING, State.STOPPED, State.ERROR}),
    State.STOPPING: frozenset({State.STOPPED, State.ERROR}),
    State.ERROR: frozenset({State.STOPPED, State.STARTING}),
}


def can_move(old: State, new: State) -> bool:
    return new in TRANSITIONS[old]
