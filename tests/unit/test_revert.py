"""lxpy.revert: undos run last first on a failure, never on success, and an
undo's own failure never hides the error of the operation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from lxpy.revert import AsyncRevert, Revert


def test_undos_run_last_first_when_the_body_fails() -> None:
    ran: list[str] = []
    with pytest.raises(ValueError, match="step 3"), Revert("op") as rv:
        rv.undo(lambda: ran.append("one"), "undo one")
        rv.undo(lambda: ran.append("two"), "undo two")
        raise ValueError("step 3")
    assert ran == ["two", "one"]


def test_a_body_that_succeeds_runs_no_undo() -> None:
    ran: list[str] = []
    with Revert("op") as rv:
        rv.undo(lambda: ran.append("one"), "undo one")
    assert ran == []


def test_a_failed_undo_is_logged_and_the_original_error_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError(5, "the disk is gone")

    with pytest.raises(ValueError, match="the step"), Revert("make thing") as rv:
        rv.undo(lambda: ran.append("first"), "undo first")
        rv.undo(broken, "remove the thing")
        raise ValueError("the step")
    # The undo before the broken one still ran.
    assert ran == ["first"]
    assert "make thing: undo failed: remove the thing" in caplog.text
    assert "the disk is gone" in caplog.text


def test_a_keyboard_interrupt_runs_the_undos() -> None:
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt), Revert("op") as rv:
        rv.undo(lambda: ran.append("one"), "undo one")
        raise KeyboardInterrupt
    assert ran == ["one"]


def test_revert_runs_each_undo_once() -> None:
    ran: list[str] = []
    rv = Revert("op")
    rv.undo(lambda: ran.append("one"), "undo one")
    assert rv.revert() is True
    assert rv.revert() is True
    assert ran == ["one"]


def test_async_undos_run_last_first_and_a_failed_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def note(what: str) -> None:
        ran.append(what)

    async def broken() -> None:
        raise OSError(5, "the disk is gone")

    async def run() -> None:
        async with AsyncRevert("op") as rv:
            rv.undo(lambda: note("one"), "undo one")
            rv.undo(broken, "undo broken")
            rv.undo(lambda: note("three"), "undo three")
            raise ValueError("the step")

    with pytest.raises(ValueError, match="the step"):
        trio.run(run)
    assert ran == ["three", "one"]
    assert "op: undo failed: undo broken" in caplog.text


def test_async_success_runs_no_undo() -> None:
    ran: list[str] = []

    async def note() -> None:
        ran.append("undo")

    async def run() -> None:
        async with AsyncRevert("op") as rv:
            rv.undo(note, "undo")

    trio.run(run)
    assert ran == []


def test_a_cancel_runs_the_undos_shielded() -> None:
    ran: list[str] = []

    async def slow_undo() -> None:
        # Would raise Cancelled at once were it not shielded.
        await trio.lowlevel.checkpoint()
        ran.append("undone")

    async def run() -> None:
        with trio.CancelScope() as scope:
            async with AsyncRevert("op") as rv:
                rv.undo(slow_undo, "slow undo")
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught

    trio.run(run)
    assert ran == ["undone"]


def test_the_sync_helper_loads_no_trio() -> None:
    # kernel, storage and network use it: they run without trio.
    code = "import json, sys, lxpy.revert; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "trio" not in json.loads(out.stdout)
