"""What the dashboard shows while lxpyd has no container: the two steps to
the first one, each a button (and a key) that does it.

1. Build a template (the root filesystem containers are snapshots of),
   with the build's progress shown as it goes.
2. Create a container from it (the create screen, that template picked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Label, Select

from lxpy.errors import LxpyError
from tui.build import BuildProgress, offer_templates

if TYPE_CHECKING:
    from tui.app import LxpyApp


class Welcome(VerticalScroll):
    """The first-run panel: build a template, then create a container."""

    BINDINGS = [Binding("b", "build", "build template")]

    @dataclass
    class CreateAsked(Message):
        """The user asked to create a container from `template`."""

        template: str | None

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.templates: dict[str, dict[str, Any]] = {}
        self.building = False

    @property
    def lxpy(self) -> LxpyApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Label("[b]No containers yet.[/b] Two steps to the first one:", classes="title")
        yield Label(
            "1. Build a template: the root filesystem each container starts "
            "as a snapshot of (busybox builds in seconds).",
            classes="step",
        )
        with Horizontal(classes="row"):
            yield Select[str]([], prompt="loading templates ...", id="welcome-template")
            yield Button("Build (b)", variant="primary", id="build")
        yield BuildProgress(id="welcome-build")
        yield Label("", id="welcome-problem", classes="problem")
        yield Label(
            "2. Create a container from it; then s starts it and e opens a shell in it.",
            classes="step",
        )
        with Horizontal(classes="row"):
            yield Button("Create container (n)", id="create")

    def chosen(self) -> str | None:
        value = self.query_one("#welcome-template", Select).value
        return value if isinstance(value, str) else None

    @work(group="welcome-load", exclusive=True)
    async def load(self) -> None:
        """Fill the template choice from lxpyd; a built one is picked first."""
        try:
            templates = await self.lxpy.client.templates()
        except LxpyError as e:
            self._problem(e.message)
            return
        built = sorted(str(t.get("name")) for t in templates if t.get("built"))
        select = self.query_one("#welcome-template", Select)
        self.templates = offer_templates(select, templates, (*built, "busybox"))
        self._next_step()

    def _next_step(self) -> None:
        # Say whether the chosen template is ready, and give the button of
        # the step to do next the focus: enter does it.
        if not self.display or self.building:
            return
        name = self.chosen()
        template = self.templates.get(name or "")
        done = bool(template and template.get("built") and not template.get("stale"))
        self.query_one(BuildProgress).stage(f"{name} is built: on to step 2." if done else "")
        self.query_one("#create" if done else "#build", Button).focus()

    def _problem(self, text: str) -> None:
        self.query_one("#welcome-problem", Label).update(text)

    @on(Select.Changed, "#welcome-template")
    def _template_changed(self) -> None:
        self._problem("")
        self._next_step()

    @on(Button.Pressed, "#build")
    def action_build(self) -> None:
        template = self.chosen()
        if template is None:
            self._problem("pick a template first")
        elif not self.building:
            self.build(template)

    @work(group="welcome-build", exclusive=True)
    async def build(self, template: str) -> None:
        """Build `template`, showing its progress; then reload the choice."""
        self.building = True
        self._problem("")
        progress = self.query_one(BuildProgress)
        try:
            problem = await progress.build(self.lxpy.client, template)
        except LxpyError as e:
            problem = e.message + (f"\nhint: {e.hint}" if e.hint else "")
            progress.stage("")
        finally:
            self.building = False
        if problem:
            self._problem(problem)
        self.load()

    def operation(self, op: dict[str, Any]) -> None:
        """An operation event from the feed (a build's progress)."""
        self.query_one(BuildProgress).operation(op)

    @on(Button.Pressed, "#create")
    def _create(self) -> None:
        self.post_message(self.CreateAsked(self.chosen()))
