"""The actions on one container that the dashboard and the detail screen
share: the same keys, offered in the same states, doing the same calls.

A screen says which container its keys act on (`acting_on`); the keys that
do not apply to that container's state are hidden from the footer, so it
lists exactly what can be done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from lxpy.errors import LxpyError
from lxpy.model.names import validate_name
from tui.screens.modals import ConfirmScreen, PromptScreen

if TYPE_CHECKING:
    from tui.app import LxpyApp

# Which states each container action makes sense in (None: any state).
ACTION_STATES: dict[str, frozenset[str] | None] = {
    "start": frozenset({"STOPPED", "ERROR"}),
    "stop": frozenset({"RUNNING", "FROZEN", "STARTING"}),
    "restart": frozenset({"RUNNING"}),
    "freeze": frozenset({"RUNNING"}),
    "unfreeze": frozenset({"FROZEN"}),
    "console": frozenset({"RUNNING"}),
    "shell": frozenset({"RUNNING"}),
    "snapshot": None,
}

# The keys both screens bind, in footer order.
LIFECYCLE_BINDINGS = [
    Binding("s", "start", "start"),
    Binding("x", "stop", "stop"),
    Binding("r", "restart", "restart"),
    Binding("f", "freeze", "freeze"),
    Binding("f", "unfreeze", "thaw"),
]
TERMINAL_BINDINGS = [
    Binding("c", "console", "console"),
    Binding("e", "shell", "shell"),
]

PALETTE = (
    ("start", "Start", "boot the container"),
    ("stop", "Stop", "shut the container down (asks first)"),
    ("restart", "Restart", "stop and start again"),
    ("freeze", "Freeze", "pause every process of the container"),
    ("unfreeze", "Unfreeze", "resume the container's processes"),
    ("snapshot", "Snapshot", "take a snapshot"),
    ("console", "Console", "attach to the console; the TUI comes back on detach"),
    ("shell", "Shell", "run /bin/sh inside; the TUI comes back when it exits"),
)


class ContainerScreen(Screen[None]):
    """A screen whose keys act on one container at a time."""

    # The actions the screen offers, with the states each applies in, and
    # their command palette entries.
    ACTIONS: dict[str, frozenset[str] | None] = ACTION_STATES
    PALETTE: tuple[tuple[str, str, str], ...] = PALETTE

    @property
    def lxpy(self) -> LxpyApp:
        return self.app  # type: ignore[return-value]

    def acting_on(self) -> tuple[str, dict[str, Any]] | None:
        """The name and object of the container the keys act on, if any."""
        raise NotImplementedError

    def online(self) -> bool:
        """Whether lxpyd answers (actions are off while it does not)."""
        return self.lxpy.connected

    def after_hand_over(self) -> None:
        """Called when the terminal comes back from the console or a shell."""

    def can(self, action: str) -> bool:
        """Whether `action` applies to the container the keys act on."""
        target = self.acting_on()
        if target is None or not self.online():
            return False
        states = self.ACTIONS.get(action)
        return states is None or target[1].get("state") in states

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Actions that do not apply are hidden, so the footer fits 80 columns.
        if action in self.ACTIONS:
            return self.can(action)
        return True

    def _target(self, action: str) -> str | None:
        target = self.acting_on()
        return target[0] if target and self.can(action) else None

    def palette_commands(self) -> Iterable[SystemCommand]:
        """Command palette entries for the container the keys act on."""
        target = self.acting_on()
        if target is None:
            return
        for action, title, help in self.PALETTE:
            if self.check_action(action, ()):
                yield SystemCommand(f"{title} {target[0]}", help, getattr(self, f"action_{action}"))

    @work(group="actions")
    async def _act(
        self,
        name: str,
        doing: str,
        done: str,
        call: Callable[[], Awaitable[object]],
        then: Callable[[], object] | None = None,
    ) -> None:
        """Run `call`, saying what it does and how it ended; `then` after a
        success."""
        self.notify(f"{doing} {name} ...", timeout=2)
        try:
            await call()
        except LxpyError as e:
            self.notify(
                e.message + (f"\nhint: {e.hint}" if e.hint else ""),
                title=f"{doing} {name} failed",
                severity="error",
                timeout=8,
            )
            return
        self.notify(f"{done} {name}", timeout=3)
        if then is not None:
            then()

    def action_start(self) -> None:
        if name := self._target("start"):
            self._act(name, "starting", "started", lambda: self.lxpy.client.start_container(name))

    def action_stop(self) -> None:
        if not (name := self._target("stop")):
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._act(
                    name, "stopping", "stopped", lambda: self.lxpy.client.stop_container(name)
                )

        self.app.push_screen(ConfirmScreen(f"Stop container {name}?", yes="Stop"), answer)

    def action_restart(self) -> None:
        if name := self._target("restart"):
            self._act(
                name, "restarting", "restarted", lambda: self.lxpy.client.restart_container(name)
            )

    def action_freeze(self) -> None:
        if name := self._target("freeze"):
            self._act(name, "freezing", "froze", lambda: self.lxpy.client.freeze_container(name))

    def action_unfreeze(self) -> None:
        if name := self._target("unfreeze"):
            self._act(
                name, "unfreezing", "unfroze", lambda: self.lxpy.client.unfreeze_container(name)
            )

    def action_snapshot(self) -> None:
        if not (name := self._target("snapshot")):
            return

        def answer(snap: str | None) -> None:
            if snap is not None:
                self._act(
                    name,
                    "snapshotting",
                    "took a snapshot of",
                    lambda: self.lxpy.client.create_snapshot(name, snap or None),
                )

        prompt = PromptScreen(
            f"Snapshot of {name} (empty for the next snapN):",
            placeholder="snapshot name",
            check=lambda v: validate_name(v, "snapshot"),
            allow_empty=True,
        )
        self.app.push_screen(prompt, answer)

    def _hand_over(self, *args: str) -> None:
        try:
            status = self.lxpy.run_cli(*args)
        except Exception as e:  # SuspendNotSupported (no terminal), a missing python
            self.notify(f"cannot hand the terminal over: {e}", severity="error")
            return
        if status != 0:
            self.notify(f"`lxpy {' '.join(args)}` ended with status {status}", severity="warning")
        self.after_hand_over()

    def action_console(self) -> None:
        if name := self._target("console"):
            self._hand_over("console", name)

    def action_shell(self) -> None:
        if name := self._target("shell"):
            self._hand_over("exec", name, "-t", "--", "/bin/sh")
