"""`lxpy export` and `lxpy import`: a container with its snapshots as one file."""

from __future__ import annotations

import os
import sys
import time

from lxpy.cli.output import print_json
from lxpy.cli.parse import NAME, arg, command
from lxpy.errors import InvalidArgument, LxpyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lxpy.api.client import Client


# What one read of the backup file sends as one frame.
CHUNK = 1 << 20


class Meter:
    """Bytes moved, with the rate, on stderr: redrawn in place on a
    terminal, a line every few seconds elsewhere (and one at the end)."""

    def __init__(self, verb: str, total: int | None = None) -> None:
        self.verb = verb
        self.total = total
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.shown = 0.0
        self.moved = 0

    def text(self) -> str:
        from lxpy.model.units import format_size

        elapsed = max(time.monotonic() - self.start, 1e-6)
        size = format_size(self.moved)
        if self.total:
            size += f" of {format_size(self.total)} ({self.moved * 100 // self.total}%)"
        return f"{self.verb}: {size}, {format_size(self.moved / elapsed)}/s"

    def __call__(self, moved: int) -> None:
        self.moved = moved
        now = time.monotonic()
        if now - self.shown < (0.2 if self.tty else 5.0):
            return
        self.shown = now
        sys.stderr.write(f"\r\x1b[K{self.text()}" if self.tty else self.text() + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + self.text() + "\n")
        sys.stderr.flush()


@command(
    "export",
    "write a container, its config and its snapshots to one backup file",
    NAME,
    arg("file", metavar="FILE", help="the file to write (.tar.zst); - for stdout"),
    arg("--instance-only", action="store_true", help="leave the snapshots out"),
    arg(
        "--optimized",
        action="store_true",
        help="btrfs send streams, incremental between snapshots (btrfs pools only; "
        "imported only into a btrfs pool)",
    ),
    arg("-q", "--quiet", action="store_true", help="no progress on stderr"),
)
def cmd_export(client: Client, args: argparse.Namespace) -> None:
    meter = None if args.quiet else Meter(f"exporting {args.name}")
    if args.file == "-":
        if sys.stdout.isatty():
            raise InvalidArgument("will not write a backup to a terminal", hint="redirect stdout")
        out = sys.stdout.buffer
        client.export_container(args.name, out.write, args.instance_only, args.optimized, meter)
        out.flush()
    else:
        # Written beside, and renamed when whole: a failed export leaves
        # no file that looks like a backup.
        part = f"{args.file}.part"
        try:
            with open(part, "xb") as f:
                client.export_container(
                    args.name, f.write, args.instance_only, args.optimized, meter
                )
            os.replace(part, args.file)
        except FileExistsError:
            raise InvalidArgument(
                f"{part} exists: another export is writing it, or one was cut short",
                hint=f"remove {part} if no export is running",
            ) from None
        except BaseException:
            if os.path.exists(part):
                os.unlink(part)
            raise
    if meter is not None:
        meter.done()


@command(
    "import",
    "make a container of a backup file (from `lxpy export`)",
    arg("file", metavar="FILE", help="the backup file; - for stdin"),
    arg("name", metavar="NAME", nargs="?", help="the new container's name (default: its own)"),
    arg("-q", "--quiet", action="store_true", help="no progress on stderr"),
    formats=True,
)
def cmd_import(client: Client, args: argparse.Namespace) -> None:
    if args.file == "-":
        src = sys.stdin.buffer
        total = None
    else:
        try:
            src = open(args.file, "rb")  # noqa: SIM115
        except OSError as e:
            raise LxpyError(f"cannot read {args.file}: {e.strerror or e}") from None
        total = os.fstat(src.fileno()).st_size
    meter = None if args.quiet else Meter(f"importing {args.file}", total)
    try:
        ct = client.import_container(iter(lambda: src.read(CHUNK), b""), args.name, meter)
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if meter is not None:
        meter.done()
    if args.format == "json":
        print_json(ct)
        return
    snaps = ct.get("snapshots") or []
    print(f"imported {ct.get('name')} with {len(snaps)} snapshot{'s' * (len(snaps) != 1)}")
