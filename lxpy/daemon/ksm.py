"""ksmd in bursts: merge what new monitors wrote alike, then rest.

Monitors mark their memory mergeable (lxpy.kernel.ksm). ksmd scans
continuously while it runs, about 2% of a CPU here whether it watches one
monitor or fifty, yet once a monitor's pages are merged there is little
left for it to find. So after a start, lxpyd runs ksmd until a full scan
has merged nothing new twice in a row, then stops it; merged pages stay
merged. A start during a burst extends it. ksmd merges nothing in its
first two scans of a page (it takes a page only once its checksum held
from one scan to the next), so those do not count as quiet.

A ksmd that runs without lxpy having started it (the admin's, or another
program's) is left alone: it merges the monitors' pages anyway. The file
KSMD_MARKER (lxpy.model.paths) says lxpy started it, so whichever lxpyd ends the
burst (several may run on different roots) may stop it, and an lxpyd that
finds ksmd stopped in the middle of its own burst starts it again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from lxpy.kernel import ksm

log = logging.getLogger("lxpy.ksm")

POLL = 1.0  # seconds between looks at ksmd's counters
QUIET_SCANS = 2  # full scans without a new merge that end a burst
FIRST_SCANS = 3  # full scans after a start before quiet ones count


class Ksmd:
    """Runs ksmd in bursts after starts (see the module docstring)."""

    def __init__(
        self, marker: Path, ksm_dir: str | os.PathLike[str] = ksm.KSM, poll: float = POLL
    ) -> None:
        self.marker = marker
        self.ksm_dir = ksm_dir
        self.poll = poll
        self._wake = trio.Event()
        self._kicked = False

    def kick(self) -> None:
        """A monitor started: have ksmd merge its pages."""
        self._kicked = True
        self._wake.set()

    async def run(self) -> None:
        """Serve kicks until cancelled (a burst in progress is ended)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._burst()
            except OSError as e:
                log.warning("ksmd: %s; monitors' pages stay unmerged", e)

    async def _burst(self) -> None:
        state = ksm.run_state(self.ksm_dir)
        if state is None or (state == "1" and not self.marker.exists()):
            return  # no KSM here, or a ksmd that is not ours merges already
        try:
            self._start()
            self._kicked = False
            scans, sharing = ksm.progress(self.ksm_dir)
            since_kick = quiet = 0
            while since_kick < FIRST_SCANS or quiet < QUIET_SCANS:
                await trio.sleep(self.poll)
                if ksm.run_state(self.ksm_dir) != "1":
                    self._start()  # another lxpyd ended its burst before ours
                if self._kicked:
                    self._kicked = False
                    since_kick = quiet = 0
                now_scans, now_sharing = ksm.progress(self.ksm_dir)
                if now_scans == scans:
                    continue
                since_kick += now_scans - scans
                quiet = quiet + 1 if now_sharing <= sharing else 0
                scans, sharing = now_scans, max(sharing, now_sharing)
            log.debug("ksmd: merged, %d pages sharing; stopping it", sharing)
        finally:
            self._stop()

    def _start(self) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.touch()
        ksm.set_running(True, self.ksm_dir)

    def _stop(self) -> None:
        # Only a ksmd lxpy started: if the marker went, another lxpyd
        # stopped it already. The marker goes first: removed after, it
        # could take with it the one another lxpyd, finding ksmd stopped
        # mid-burst, had just made when starting ksmd again, and that
        # ksmd would then be left running.
        if not self.marker.exists():
            return
        self.marker.unlink(missing_ok=True)
        try:
            ksm.set_running(False, self.ksm_dir)
        except OSError as e:
            log.warning("ksmd: cannot stop it: %s", e)
