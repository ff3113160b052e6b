"""Setting one config key of a container from the detail screen.

lxpyd checks the value, as it does for `lxpy config set`: the dialog sends
what was typed, and a value it refuses leaves the config as it was, with the
daemon's message and hint shown under the field (the dialog stays open to
fix it). The key's meaning and when a change takes effect come from the
config model, as `lxpy config set --help` would say.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label

from lxpy.errors import LxpyError
from lxpy.model.config import KEYS, PREFIXES, lookup_key
from tui.screens.modals import SendScreen


def key_help(key: str, running: bool) -> str:
    """What `key` means and, for a running container, when a change applies;
    "" for a key lxpyd does not know (it says so on save)."""
    try:
        decl = lookup_key(key)
    except LxpyError:
        return ""
    if not running:
        return decl.doc
    when = "applies at once" if decl.live else "takes effect at the next start"
    return f"{decl.doc}\nOn this running container a change {when}."


class ConfigEditScreen(SendScreen):
    """Set one config key of container `name`; dismisses with True once
    lxpyd took the value, False when cancelled.

    Args:
        name: the container.
        key: the key to set, or None to ask for it too (adding a key).
        value: the current value, as `lxpy config show` prints it.
        running: whether the container runs (the help says when it applies).
    """

    def __init__(self, name: str, key: str | None, value: str = "", running: bool = False) -> None:
        super().__init__(name)
        self.key = key
        self.value = value
        self.running = running

    def compose(self) -> ComposeResult:
        with Grid(classes="dialog"):
            if self.key is None:
                yield Label(f"Set a config key of {self.container}", classes="question")
                names = [*KEYS, *PREFIXES]
                yield Input(
                    placeholder="key, e.g. limits.memory",
                    suggester=SuggestFromList(names, case_sensitive=False),
                    id="key",
                )
            else:
                yield Label(f"Set {self.key} of {self.container}", classes="question")
            yield Label(key_help(self.key or "", self.running), id="help", classes="help")
            yield Input(self.value, placeholder="value", id="value")
            yield Label("", id="problem", classes="problem")
            with Horizontal(classes="buttons"):
                yield Button("Save (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        # At once (focus() would wait for the queue): keys typed as soon as
        # the dialog shows go into its first field.
        self.set_focus(self.query_one("#key" if self.key is None else "#value", Input))

    def chosen_key(self) -> str:
        if self.key is not None:
            return self.key
        return self.query_one("#key", Input).value.strip()

    @on(Input.Changed, "#key")
    def _key_changed(self) -> None:
        self.query_one("#help", Label).update(key_help(self.chosen_key(), self.running))
        self.query_one("#problem", Label).update("")

    @on(Input.Submitted, "#key")
    def _key_submitted(self) -> None:
        if self.chosen_key():
            self.set_focus(self.query_one("#value", Input))

    @on(Input.Submitted, "#value")
    @on(Button.Pressed, "#save")
    def _submit(self) -> None:
        key = self.chosen_key()
        if not key:
            self.query_one("#problem", Label).update("type the key to set first")
            self.set_focus(self.query_one("#key", Input))
            return
        self.save(key, self.query_one("#value", Input).value)

    @work(group="save", exclusive=True)
    async def save(self, key: str, value: str) -> None:
        """Send the value to lxpyd."""
        await self.send(
            "saving ...",
            lambda: self.lxpy.client.update_config(self.container, set_={key: value}),
        )
