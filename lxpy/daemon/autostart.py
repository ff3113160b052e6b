"""What lxpyd does on its own with containers: `boot.*` keys.

* Autostart: when lxpyd starts (after adopting what still runs), the
  containers with `boot.autostart = true` that are not running are started
  one after another, higher `boot.priority` first, waiting `boot.delay`
  seconds after each.
* Stop all: for a host shutdown, every running container is stopped,
  higher `boot.stop_priority` first; containers of one priority stop side
  by side.
* Restart policy: when init ends without lxpy asking (a crash, a power-off
  inside), `boot.restart` (no, on-failure, always) decides whether the
  container is started again; at most `boot.restart_max` restarts in any
  60 s, then it is left in ERROR with the reason.

Every decision is an event: `container-autostarted`, `container-restarting`,
`container-restart-limit` (besides the `container-state` events).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from lxpy.errors import InvalidArgument, LxpyError
from lxpy.model.limits import Boot, RestartBudget, start_order, stop_order, wants_restart
from lxpy.model.state import State

if TYPE_CHECKING:
    from lxpy.daemon.lifecycle import Lifecycle
    from lxpy.daemon.state import Daemon

log = logging.getLogger("lxpyd.boot")


class BootManager:
    """Autostart, stop-all and the restart policy of daemon `d`'s containers,
    started and stopped by `lifecycle`, which tells it of starts and ends."""

    def __init__(self, d: Daemon, nursery: trio.Nursery, lifecycle: Lifecycle) -> None:
        self.d = d
        self.nursery = nursery
        self.lifecycle = lifecycle
        lifecycle.on_events(client_start=self.forget, ended=self.ended)
        # Restarts done per container, for boot.restart_max.
        self.budgets: dict[str, RestartBudget] = {}

    def _boot(self, name: str) -> Boot | None:
        record = self.d.records.get(name)
        if record is None:
            return None
        try:
            return Boot.from_config(record.config)
        except InvalidArgument as e:
            log.warning("container %s: %s", name, e.message)
            return None

    # -- autostart --------------------------------------------------------------
    async def autostart(self) -> None:
        """Start the autostart containers that do not run, in order."""
        boots = {
            n: b
            for n in sorted(self.d.records)
            if self.d.states.get(n) in (State.STOPPED, State.ERROR) and (b := self._boot(n))
        }
        order = start_order(boots)
        if order:
            log.info("autostart: %s", ", ".join(order))
        for i, name in enumerate(order):
            boot = boots[name]
            try:
                if not await self.lifecycle.start(name):
                    continue  # started by a client meanwhile
            except LxpyError as e:
                # Deleted or broken meanwhile: the others still start.
                log.warning("autostart of %s failed: %s", name, e.message)
                continue
            self.d.bus.lifecycle(
                "container-autostarted",
                f"containers/{name}",
                {"priority": boot.priority, "delay": boot.delay},
            )
            if boot.delay and i < len(order) - 1:
                await trio.sleep(boot.delay)

    # -- stop all ---------------------------------------------------------------
    async def stop_all(self, grace: float) -> dict[str, object]:
        """Stop every running container, higher `boot.stop_priority` first.

        Args:
            grace: seconds each container has to shut down before it is killed.

        Returns:
            {"stopped": [names, in order], "errors": {name: message}}.
        """
        boots = {n: self._boot(n) or Boot() for n in self.lifecycle.runs}
        stopped: list[str] = []
        errors: dict[str, str] = {}

        async def one(name: str) -> None:
            try:
                await self.lifecycle.stop(name, grace)
                stopped.append(name)
            except InvalidArgument:
                pass  # it ended on its own meanwhile
            except LxpyError as e:
                errors[name] = e.message

        for prio, group in itertools.groupby(stop_order(boots), lambda n: boots[n].stop_priority):
            names = list(group)
            log.info("stopping (stop_priority %d): %s", prio, ", ".join(names))
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
        return {"stopped": stopped, "errors": errors}

    # -- restart policy ---------------------------------------------------------
    def forget(self, name: str) -> None:
        """A start asked for by a client: the restart count begins anew."""
        self.budgets.pop(name, None)

    def ended(self, name: str, last_exit: Mapping[str, object] | None) -> None:
        """Container `name` ended (STOPPED) with the monitor's `last_exit`:
        start it again, or leave it in ERROR, as its `boot.restart` says."""
        boot = self._boot(name)
        if boot is None or not wants_restart(boot.restart, last_exit):
            return
        assert last_exit is not None
        budget = self.budgets.setdefault(name, RestartBudget(boot.restart_max))
        budget.max_restarts = boot.restart_max
        detail = str(last_exit.get("detail") or last_exit.get("reason"))
        if not budget.allow(trio.current_time()):
            reason = f"{budget.reason()}; init last {detail.removeprefix('init ')}"
            self.lifecycle.set_last_exit(name, {"reason": "restart-limit", "detail": reason})
            self.d.table.set_state(name, State.ERROR)
            self.d.bus.lifecycle(
                "container-restart-limit", f"containers/{name}", {"detail": reason}
            )
            return
        self.d.bus.lifecycle(
            "container-restarting",
            f"containers/{name}",
            {
                "restart": len(budget.times),
                "policy": boot.restart.value,
                "reason": last_exit.get("reason"),
                "detail": detail,
            },
        )
        self.nursery.start_soon(self._restart, name)

    async def _restart(self, name: str) -> None:
        d = self.d
        failed: dict[str, object] | None = None
        async with d.table.lock(name):
            # A client may have started, stopped or deleted it meanwhile.
            if d.states.get(name) != State.STOPPED or name in self.lifecycle.runs:
                return
            if name not in d.records:
                return
            try:
                await self.lifecycle.start_locked(name)
            except LxpyError as e:
                log.warning("restart of %s failed: %s", name, e.message)
                failed = {"reason": "error", "detail": e.message}
        if failed is not None:
            self.ended(name, failed)
