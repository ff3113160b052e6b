"""`lxpy template list`, `build` and `delete`."""

from __future__ import annotations

import time

from lxpy.cli.operations import cancel, follow_operation
from lxpy.cli.output import print_json, print_table, yes_no
from lxpy.cli.parse import arg, command
from lxpy.errors import Cancelled, LxpyError, from_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


TEMPLATE = arg("name", metavar="NAME", help="template name")


@command("template list", "list templates and whether they are built", formats=True)
def cmd_template_list(client: Client, args: argparse.Namespace) -> None:
    tpls = client.templates()
    if args.format == "json":
        print_json(tpls)
        return
    print_table(
        ("NAME", "BUILT", "STALE", "DESCRIPTION"),
        (
            (
                t.get("name", ""),
                yes_no(t.get("built")),
                yes_no(t.get("stale")) if t.get("built") else "-",
                t.get("description") or "",
            )
            for t in sorted(tpls, key=lambda t: str(t.get("name", "")))
        ),
    )


@command(
    "template build",
    "build a template (nothing to do when it is up to date, unless --force)",
    TEMPLATE,
    arg("-f", "--force", action="store_true", help="rebuild even when up to date"),
    formats=True,
)
def cmd_template_build(client: Client, args: argparse.Namespace) -> int | None:
    started = time.monotonic()
    op = client.build_template(args.name, force=args.force)
    if op.get("status") == "running":
        try:
            op = follow_operation(client, op)
        except KeyboardInterrupt:
            return cancel(client, op, f"the build of template {args.name}")
    status = op.get("status")
    if status == "failure":
        err = op.get("error")
        if isinstance(err, dict):
            raise from_json(err)
        raise LxpyError(f"building template {args.name} failed")
    if status == "cancelled":
        raise Cancelled(f"the build of template {args.name} was cancelled")
    if args.format == "json":
        print_json(op)
    elif op.get("stage") == "cached":
        print(f"template {args.name} is up to date")
    else:
        print(f"built template {args.name} in {time.monotonic() - started:.1f} s")
    return None


@command("template delete", "delete a built template", TEMPLATE)
def cmd_template_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_template(args.name)
    print(f"deleted template {args.name}")
