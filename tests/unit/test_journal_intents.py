"""Intents of lxpy.daemon.journal that need only outlive lxpyd (sync=False),
and what a host crash can leave of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from lxpy.daemon.journal import Journal


def test_an_unsynced_intent_is_there_while_its_operation_runs(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    seen: list[dict[str, object]] = []

    async def run() -> None:
        async with journal.begin("device-add", sync=False, name="web", device="www"):
            seen.extend(data for _path, data in journal.pending())

    trio.run(run)
    assert seen == [{"op": "device-add", "name": "web", "device": "www"}]
    assert journal.pending() == []


def test_an_empty_intent_is_dropped_and_a_garbled_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.directory.mkdir()
    empty = journal.directory / "00000000000000000001-abcd-device-add.json"
    empty.write_bytes(b"")
    garbled = journal.directory / "00000000000000000002-abcd-create.json"
    garbled.write_text("{not json")
    good = journal.directory / "00000000000000000003-abcd-create.json"
    good.write_text(json.dumps({"op": "create", "name": "c1"}))
    assert [p for p, _ in journal.pending()] == [good]
    assert not empty.exists() and garbled.exists()
    assert "is empty (a host crash): removed" in caplog.text
    assert "unreadable" in caplog.text
