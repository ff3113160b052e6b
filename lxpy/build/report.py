"""How a build tells its caller what it is doing."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Receives a build's output and progress (called from the trio thread)."""

    def log(self, line: str) -> None:
        """One line of build output (tool output and lxpy's own notes)."""

    def progress(self, fraction: float, stage: str) -> None:
        """Overall progress from 0.0 to 1.0 and the name of the current stage."""
