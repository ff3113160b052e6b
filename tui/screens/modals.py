"""Small modal screens: a yes/no confirmation, a one-field prompt, and the
base of dialogs that send a change to lxpyd."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Input, Label

from lxpy.errors import LxpyError

if TYPE_CHECKING:
    from tui.app import LxpyApp


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True only for yes."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__(classes="modal")
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Grid(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class NameValidator(Validator):
    """Runs a check that raises LxpyError; its message is the failure text."""

    def __init__(self, check: Callable[[str], object], allow_empty: bool = False) -> None:
        super().__init__()
        self.check = check
        self.allow_empty = allow_empty

    def validate(self, value: str) -> ValidationResult:
        if self.allow_empty and not value:
            return self.success()
        try:
            self.check(value)
        except LxpyError as e:
            return self.failure(e.message)
        return self.success()


class PromptScreen(ModalScreen[str | None]):
    """Ask for one value; dismisses with it (None when cancelled).

    Args:
        question: the label above the field.
        placeholder: shown in the empty field.
        check: raises LxpyError for a bad value; run as the user types.
        allow_empty: an empty answer is valid (the daemon picks a default).
    """

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(
        self,
        question: str,
        placeholder: str = "",
        check: Callable[[str], object] | None = None,
        allow_empty: bool = False,
    ) -> None:
        super().__init__(classes="modal")
        self.question = question
        self.placeholder = placeholder
        self.check = check
        self.allow_empty = allow_empty

    def compose(self) -> ComposeResult:
        validators = [NameValidator(self.check, self.allow_empty)] if self.check else []
        with Grid(classes="dialog"):
            yield Label(self.question, classes="question")
            yield Input(placeholder=self.placeholder, validators=validators, id="answer")
            yield Label("", id="problem", classes="problem")

    @on(Input.Changed, "#answer")
    def _changed(self, event: Input.Changed) -> None:
        problem = self.query_one("#problem", Label)
        if event.validation_result and not event.validation_result.is_valid:
            problem.update(event.validation_result.failure_descriptions[0])
        else:
            problem.update("")

    @on(Input.Submitted, "#answer")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.validation_result and not event.validation_result.is_valid:
            return
        if not event.value and not self.allow_empty:
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SendScreen(ModalScreen[bool]):
    """A dialog that sends one change of container `name` to lxpyd: it
    dismisses with True once lxpyd took it, False when cancelled, and shows
    a refusal (the daemon's message and hint) in its `#problem` label while
    it stays open to fix it. Subclasses compose the fields, a `#problem`
    label and a `#cancel` button, and call `send` from a worker."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, name: str) -> None:
        super().__init__(classes="modal")
        self.container = name
        self.saving = False

    @property
    def lxpy(self) -> LxpyApp:
        return self.app  # type: ignore[return-value]

    async def send(self, busy: str, change: Callable[[], Awaitable[object]]) -> None:
        """Run `change` (one call to lxpyd), saying `busy` meanwhile; close
        on success, else say why in place."""
        if self.saving:
            return
        self.saving = True
        problem = self.query_one("#problem", Label)
        problem.update(busy)
        try:
            await change()
        except LxpyError as e:
            problem.update(e.message + (f"\nhint: {e.hint}" if e.hint else ""))
            return
        finally:
            self.saving = False
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if not self.saving:
            self.dismiss(False)
