"""lxpyd's ksmd bursts (lxpy.daemon.ksm) against a stand-in for
/sys/kernel/mm/ksm: a directory of the same files, and a task playing
ksmd that counts scans and merges while `run` is 1."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from lxpy.daemon.ksm import Ksmd
from lxpy.kernel import ksm

POLL = 0.01


class FakeKsm:
    def __init__(self, root: Path, run: str = "0") -> None:
        self.dir = root / "ksm"
        self.dir.mkdir()
        self.write("run", run)
        self.write("full_scans", "0")
        self.write("pages_sharing", "0")
        self.to_merge = 0  # pages the next scans will still merge
        self.idle_scans = 0  # scans after a start that merge nothing yet
        self._idle_left = 0

    def write(self, name: str, value: object) -> None:
        (self.dir / name).write_text(f"{value}\n")

    def read(self, name: str) -> int:
        return int((self.dir / name).read_text())

    async def kernel(self) -> None:
        """One full scan per poll, half a poll after lxpyd's looks, while
        running; each merges 100 pages of what is left."""
        await trio.sleep(POLL / 2)
        while True:
            await trio.sleep(POLL)
            if self.read("run") != 1:
                continue
            if self._idle_left > 0:
                self._idle_left -= 1
                merged = 0
            else:
                merged = min(100, self.to_merge)
            self.to_merge -= merged
            self.write("pages_sharing", self.read("pages_sharing") + merged)
            self.write("full_scans", self.read("full_scans") + 1)

    def started(self, pages: int) -> None:
        """A monitor started: `pages` to merge, after the idle scans."""
        self.to_merge += pages
        self._idle_left = self.idle_scans


def _parts(tmp_path: Path, run: str = "0") -> tuple[FakeKsm, Path, Ksmd]:
    fake = FakeKsm(tmp_path, run)
    marker = tmp_path / "ksmd.started"
    return fake, marker, Ksmd(marker, fake.dir, poll=POLL)


async def _until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # 5 s
        if cond():
            return
        await trio.sleep(POLL / 4)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.trio
async def test_a_burst_runs_ksmd_until_nothing_more_merges(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake, marker, ksmd = _parts(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.kernel)
        nursery.start_soon(ksmd.run)
        fake.started(5000)
        ksmd.kick()
        await _until(lambda: fake.read("run") == 1 and marker.exists(), "ksmd started")
        # Stopped by another lxpyd mid-burst: started again.
        fake.write("run", 0)
        await _until(lambda: fake.read("run") == 1, "ksmd started again")
        await _until(lambda: fake.read("run") == 0, "the burst to end")
        assert fake.to_merge == 0 and fake.read("pages_sharing") == 5000
        assert not marker.exists()
        # The next start runs another burst.
        fake.started(300)
        ksmd.kick()
        await _until(lambda: fake.read("run") == 1, "the second burst")
        await _until(lambda: fake.read("run") == 0, "the second burst to end")
        assert fake.read("pages_sharing") == 5300 and not marker.exists()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_ksmd_lxpy_did_not_start_is_left_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake, marker, ksmd = _parts(tmp_path, run="1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ksmd.run)
        ksmd.kick()
        await trio.sleep(POLL * 5)
        assert fake.read("run") == 1 and not marker.exists()
        nursery.cancel_scope.cancel()
    assert fake.read("run") == 1


@pytest.mark.trio
async def test_lxpyd_ending_mid_burst_stops_the_ksmd_it_started(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake, marker, ksmd = _parts(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ksmd.run)  # no kernel task: the burst never settles
        ksmd.kick()
        await _until(lambda: fake.read("run") == 1, "ksmd started")
        nursery.cancel_scope.cancel()
    assert fake.read("run") == 0 and not marker.exists()


@pytest.mark.trio
async def test_no_ksm_in_the_kernel_is_no_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ksmd = Ksmd(tmp_path / "ksmd.started", tmp_path / "missing", poll=POLL)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ksmd.run)
        ksmd.kick()
        await trio.sleep(POLL * 3)
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "ksmd.started").exists()


@pytest.mark.trio
async def test_a_burst_outlasts_the_scans_that_cannot_merge_yet(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # ksmd merges a page only from its second scan of it on; quiet scans
    # before that must not end the burst.
    fake, marker, ksmd = _parts(tmp_path)
    fake.idle_scans = 2  # a start in the middle of a scan: two to wait
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.kernel)
        nursery.start_soon(ksmd.run)
        fake.started(300)
        ksmd.kick()
        await _until(lambda: fake.read("run") == 1, "ksmd started")
        await _until(lambda: fake.read("run") == 0, "the burst to end")
        assert fake.read("pages_sharing") == 300
        nursery.cancel_scope.cancel()


def test_a_ksmd_restarted_while_a_burst_ends_keeps_its_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two lxpyds: `mine` ends its burst; the other, mid-burst, finds ksmd
    # stopped at that moment and starts it again (marker, then run = 1).
    # Whatever the order, a running ksmd must keep its marker, or no lxpyd
    # would ever stop it.
    fake, marker, mine = _parts(tmp_path)
    other = Ksmd(marker, fake.dir, poll=POLL)
    mine._start()
    real_set_running = ksm.set_running

    def set_running(on: bool, ksm_dir: str | os.PathLike[str] = ksm.KSM) -> None:
        real_set_running(on, ksm_dir)
        if not on:
            monkeypatch.setattr(ksm, "set_running", real_set_running)
            other._start()

    monkeypatch.setattr(ksm, "set_running", set_running)
    mine._stop()
    assert fake.read("run") == 1 and marker.exists()
    other._stop()
    assert fake.read("run") == 0 and not marker.exists()
