"""`lxpy template list`, `build` and `delete`."""

from __future__ import annotations

import sys
import time

from lxpy.cli.operations import Progress, cancel, follow_operation
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
    "build a template (nothing to do when it is up to date, unless --refresh)",
    TEMPLATE,
    arg(
        "-r",
        "--refresh",
        "-f",
        "--force",
        dest="refresh",
        action="store_true",
        help="rebuild from the mirror with current packages, even when up to date "
        "(containers made afterwards get it; existing ones keep theirs)",
    ),
    arg(
        "-v",
        "--verbose",
        action="store_true",
        help="print the build log as it runs (else only progress, and on failure its end)",
    ),
    formats=True,
)
def cmd_template_build(client: Client, args: argparse.Namespace) -> int | None:
    started = time.monotonic()
    op = client.build_template(args.name, refresh=args.refresh)
    progress = Progress(show_log=args.verbose)
    if op.get("status") == "running":
        try:
            op = follow_operation(client, op, progress)
        except KeyboardInterrupt:
            return cancel(client, op, f"the build of template {args.name}")
    status = op.get("status")
    if status == "failure":
        err = op.get("error")
        error = from_json(err) if isinstance(err, dict) else None
        _show_build_log(client, args.name, progress, error.message if error else "")
        raise error or LxpyError(f"building template {args.name} failed")
    if status == "cancelled":
        raise Cancelled(f"the build of template {args.name} was cancelled")
    if args.format == "json":
        print_json(op)
    elif op.get("stage") == "cached":
        print(f"template {args.name} is up to date")
    else:
        print(f"built template {args.name} in {time.monotonic() - started:.1f} s")
    return None


def _show_build_log(client: Client, name: str, progress: Progress, error: str) -> None:
    # A failed build: the end of its log says what went wrong, unless it
    # was all shown (--verbose) or the error quotes it (a tool that failed);
    # the whole of it stays in a file.
    try:
        where = client.template(name).get("build_log")
    except LxpyError:
        where = None
    lines = list(progress.tail)
    if progress.show_log or not lines or lines[-1] in error:
        if where:
            print(f"the full build log: {where}", file=sys.stderr)
        return
    print(
        "the end of the build log" + (f" (all of it: {where}):" if where else ":"), file=sys.stderr
    )
    for line in lines:
        print(f"  {line}", file=sys.stderr)


@command("template delete", "delete a built template", TEMPLATE)
def cmd_template_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_template(args.name)
    print(f"deleted template {args.name}")
