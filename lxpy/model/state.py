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


# Which state may follow which. The daemon's per-container task refuses
# anything else, so a racing pair of requests cannot corrupt the lifecycle.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.STOPPED, State.ERROR}),
    State.RUNNING: frozenset({State.STOPPING, State.FROZEN, State.STOPPED, State.ERROR}),
    State.FROZEN: frozenset({State.RUNNING, State.STOPPING, State.STOPPED, State.ERROR}),
    State.STOPPING: frozenset({State.STOPPED, State.ERROR}),
    State.ERROR: frozenset({State.STOPPED, State.STARTING}),
}


def can_move(old: State, new: State) -> bool:
    return new in TRANSITIONS[old]
