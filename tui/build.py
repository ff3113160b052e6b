"""Templates on screen: the choice of one, and a build followed with its
stage and a progress bar.

The create screen builds a template that is not built before creating
from it; the first-run panel builds one on its own. Both offer the
templates and show a build the same way: fed by the build operation's own
stream and, should that be cut short, by the operation events of the
app's feed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar, Select

if TYPE_CHECKING:
    from lxpy.api.aclient import AsyncClient


def template_label(t: dict[str, Any]) -> str:
    if not t.get("built"):
        state = "not built: built first"
    elif t.get("stale"):
        state = "built, definition changed"
    else:
        state = "built"
    return f"{t.get('name')} ({state})"


def offer_templates(
    select: Select[str], templates: Iterable[dict[str, Any]], prefer: Iterable[str | None]
) -> dict[str, dict[str, Any]]:
    """Offer `templates` in `select`, each saying whether it is built; the
    choice stays, else it is the first of `prefer` there is. The templates
    by name."""
    by_name = {str(t["name"]): t for t in templates if t.get("name")}
    keep = select.value
    select.set_options((template_label(t), n) for n, t in sorted(by_name.items()))
    select.prompt = "pick a template"
    for pick in (keep, *prefer):
        if isinstance(pick, str) and pick in by_name:
            select.value = pick
            break
    return by_name


class BuildProgress(Vertical):
    """What a build (or the step after it) is doing, and how far it got."""

    DEFAULT_CSS = """
    BuildProgress {
        height: auto;
    }
    BuildProgress #stage {
        margin-top: 1;
        height: auto;
    }
    BuildProgress #progress {
        display: none;
    }
    BuildProgress.-building #progress {
        display: block;
    }
    """

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.op_id: str | None = None

    def compose(self) -> ComposeResult:
        yield Label("", id="stage")
        yield ProgressBar(total=1.0, show_eta=False, id="progress")

    def stage(self, text: str) -> None:
        self.query_one("#stage", Label).update(text)

    def progress(self, fraction: object, stage: object) -> None:
        """Show a progress report (either part may be missing)."""
        if isinstance(fraction, int | float):
            self.query_one("#progress", ProgressBar).update(progress=float(fraction))
        if stage:
            self.stage(str(stage))

    def operation(self, op: dict[str, Any]) -> None:
        """An operation event from the feed: shown when it is this build's."""
        if self.op_id is not None and op.get("id") == self.op_id:
            self.progress(op.get("progress"), op.get("stage"))

    async def build(self, client: AsyncClient, template: str) -> str | None:
        """Build `template` (at once done when it is up to date), showing how
        it goes; None once it is built, else why it is not.

        Raises:
            LxpyError: when lxpyd refuses the build or cannot be reached.
        """
        self.add_class("-building")
        self.query_one("#progress", ProgressBar).update(progress=0.0)
        self.stage(f"building template {template} ...")
        op = await client.build_template(template)
        self.op_id = str(op["id"])
        if op.get("status") == "running":
            async with await client.operation_stream(self.op_id) as stream:
                async for msg in stream:
                    if "progress" in msg or "stage" in msg:
                        self.progress(msg.get("progress"), msg.get("stage"))
                    elif "operation" in msg:
                        op = msg["operation"]
        if op.get("status") == "running":
            op = await client.wait_operation(self.op_id, timeout=20)
        if op.get("status") != "success":
            err = op.get("error") or {}
            self.stage("")
            self.remove_class("-building")
            return (
                f"building template {template} ended {op.get('status')}: "
                f"{err.get('message', 'no reason given')}"
            )
        self.progress(1.0, f"template {template} is built")
        return None
