"""Adding a device to a container from the detail screen.

The dialog takes what `lxpy device add NAME DEV TYPE KEY=VALUE...` takes:
a device name, a type and its keys as `key=value` words. lxpyd judges it
(an unknown key, a missing source, a path outside the rootfs): a refusal
is shown under the fields with the daemon's message and hint, nothing is
changed, and the dialog stays open to fix it. A running container gets
the device at once.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label

from lxpy.cli.devices import DEVICE_KEYS
from tui.screens.modals import SendScreen


def parse_words(text: str) -> dict[str, str]:
    """`key=value key=value` as a mapping.

    Raises:
        ValueError: a word without `=`, naming it.
    """
    out: dict[str, str] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        out[key] = value
    return out


class DeviceAddScreen(SendScreen):
    """Add a device to container `name`; dismisses with True once lxpyd
    took it, False when cancelled."""

    def compose(self) -> ComposeResult:
        with Grid(classes="dialog"):
            yield Label(f"Add a device to {self.container}", classes="question")
            yield Input(placeholder="device name, e.g. www", id="dev")
            yield Input(
                "disk",
                placeholder="type: " + ", ".join(DEVICE_KEYS),
                suggester=SuggestFromList(list(DEVICE_KEYS)),
                id="type",
            )
            yield Input(placeholder="keys, e.g. source=/srv/www path=/var/www", id="keys")
            yield Label(self._keys_help("disk"), id="help", classes="help")
            yield Label("", id="problem", classes="problem")
            with Horizontal(classes="buttons"):
                yield Button("Add (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#dev", Input))

    @staticmethod
    def _keys_help(kind: str) -> str:
        keys = DEVICE_KEYS.get(kind)
        return f"{kind} keys: {', '.join(keys)}" if keys else ""

    @on(Input.Changed, "#type")
    def _type_changed(self, event: Input.Changed) -> None:
        self.query_one("#help", Label).update(self._keys_help(event.value.strip()))

    @on(Input.Submitted, "#dev")
    @on(Input.Submitted, "#type")
    def _next(self, event: Input.Submitted) -> None:
        self.focus_next()

    @on(Input.Submitted, "#keys")
    @on(Button.Pressed, "#save")
    def _submit(self) -> None:
        problem = self.query_one("#problem", Label)
        dev = self.query_one("#dev", Input).value.strip()
        kind = self.query_one("#type", Input).value.strip()
        try:
            keys = parse_words(self.query_one("#keys", Input).value)
        except ValueError as e:
            problem.update(str(e))
            return
        if not dev or not kind:
            problem.update("a device needs a name and a type")
            return
        self.save(dev, kind, keys)

    @work(group="save", exclusive=True)
    async def save(self, dev: str, kind: str, keys: dict[str, str]) -> None:
        """Send the device to lxpyd."""
        await self.send(
            "adding ...", lambda: self.lxpy.client.add_device(self.container, dev, kind, keys)
        )
