"""Fixtures of the TUI tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.tui.fakeapi import NOW, FakeLxpyd

FIXED_NOW = datetime.fromisoformat(NOW.replace("Z", "+00:00")).astimezone(UTC)


def fixed_clock() -> datetime:
    return FIXED_NOW


@pytest.fixture
def fake_lxpyd(tmp_path: Path) -> Iterator[FakeLxpyd]:
    """A fixed-data lxpyd stand-in on a socket under tmp_path."""
    fake = FakeLxpyd(tmp_path / "fake.sock").start()
    try:
        yield fake
    finally:
        fake.stop()
