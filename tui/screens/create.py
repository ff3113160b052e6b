"""The create screen: a template, a name, a network; builds the template
first when it is not built, with a progress bar fed by the build operation.

The name is checked as it is typed with the same rules lxpyd applies; what
only the daemon knows (a name already taken, a template that will not build)
comes back as the daemon's own message under the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select

from lxpy.errors import LxpyError, NotFound
from lxpy.model.names import validate_name
from tui.build import BuildProgress, offer_templates
from tui.messages import Connected, OperationUpdate
from tui.screens.modals import NameValidator

if TYPE_CHECKING:
    from tui.app import LxpyApp


# The network choice for none at all; never a valid network name.
NONE = "-"


class CreateScreen(Screen[str | None]):
    """Create a container; dismisses with its name (None when cancelled).

    Args:
        existing: names already taken, to say so before the daemon does.
        template: the template picked at first (else busybox, if there is one).
    """

    BINDINGS = [
        Binding("escape", "cancel", "back"),
        Binding("ctrl+s", "create", "create"),
    ]

    def __init__(self, existing: set[str] | None = None, template: str | None = None) -> None:
        super().__init__()
        self.existing = existing or set()
        self.first_template = template
        self.templates: dict[str, dict[str, Any]] = {}
        self.networks: list[str] | None = None
        self.busy = False

    @property
    def lxpy(self) -> LxpyApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="form"):
            yield Label("Template", classes="field")
            yield Select[str]([], prompt="loading templates ...", id="template")
            yield Label("Name", classes="field")
            yield Input(
                placeholder="letters, digits and '-', a letter first",
                validators=[NameValidator(validate_name)],
                id="name",
            )
            yield Label("", id="problem", classes="problem")
            yield Label("Network", classes="field")
            yield Select[str]([], prompt="checking networks ...", id="network", disabled=True)
            yield BuildProgress(id="build")
            with Horizontal(classes="buttons"):
                yield Button("Create (ctrl+s)", variant="primary", id="create")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "new container"
        self.query_one("#name", Input).focus()
        self.load()

    @on(Connected)
    def _reconnected(self) -> None:
        self.load()

    @work(group="load", exclusive=True)
    async def load(self) -> None:
        """Fill the template and network choices from the daemon."""
        client = self.lxpy.client
        networks: list[Any] | None
        try:
            templates = await client.templates()
            try:
                networks = await client.networks()
            except NotFound:
                networks = None  # this lxpyd manages no networks
        except LxpyError as e:
            self._problem(e)
            return
        select = self.query_one("#template", Select)
        self.templates = offer_templates(select, templates, (self.first_template, "busybox"))
        net = self.query_one("#network", Select)
        if networks is None:
            self.networks = None
            net.prompt = "networks are not managed by this lxpyd"
            net.disabled = True
        else:
            self.networks = [str(n.get("name") if isinstance(n, dict) else n) for n in networks]
            net.set_options([*((n, n) for n in self.networks), ("no network (lo only)", NONE)])
            net.prompt = "the daemon's default network"
            net.disabled = False

    def _problem(self, error: LxpyError | str) -> None:
        if isinstance(error, LxpyError):
            text = error.message + (f"\nhint: {error.hint}" if error.hint else "")
        else:
            text = error
        self.query_one("#problem", Label).update(text)

    @on(Input.Changed, "#name")
    def _name_changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        if result is not None and not result.is_valid and event.value:
            self._problem(result.failure_descriptions[0])
        elif event.value in self.existing:
            self._problem(f"a container named {event.value!r} already exists")
        else:
            self._problem("")

    @on(Input.Submitted, "#name")
    @on(Button.Pressed, "#create")
    def _submit(self) -> None:
        self.action_create()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        if not self.busy:
            self.dismiss(None)

    def action_create(self) -> None:
        if self.busy:
            return
        name = self.query_one("#name", Input).value
        template = self.query_one("#template", Select).value
        if not isinstance(template, str):
            self._problem("pick a template first")
            return
        try:
            validate_name(name)
        except LxpyError as e:
            self._problem(e)
            return
        config: dict[str, object] = {}
        net = self.query_one("#network", Select).value
        if self.networks is not None and isinstance(net, str):
            config["network"] = [] if net == NONE else [net]
        self.create(name, template, config)

    @work(group="create", exclusive=True)
    async def create(self, name: str, template: str, config: dict[str, object]) -> None:
        """Build the template if needed, then create the container."""
        self.busy = True
        self._problem("")
        client = self.lxpy.client
        try:
            if not self.templates.get(template, {}).get("built"):
                if not await self._build(template):
                    return
            self._stage(f"creating {name} ...")
            await client.create_container(name, template, config)
        except LxpyError as e:
            self._problem(e)
            self._stage("")
            return
        finally:
            self.busy = False
        self.dismiss(name)

    async def _build(self, template: str) -> bool:
        problem = await self.query_one(BuildProgress).build(self.lxpy.client, template)
        if problem:
            self._problem(problem)
        return problem is None

    @on(OperationUpdate)
    def _operation(self, msg: OperationUpdate) -> None:
        self.query_one(BuildProgress).operation(msg.operation)

    def _stage(self, text: str) -> None:
        self.query_one(BuildProgress).stage(text)
