"""Backup files over the framed stream (docs/backup.md), client side.

`export` receives the file as stdout frames and writes it to the caller's
file object; `import_` sends the caller's file as stdin frames, then an
empty one, and waits for lxpyd's answer. The file never passes through a
host path lxpyd opens. Both tell `progress` the bytes moved so far.
"""

from __future__ import annotations

from lxpy.api.streams import (
    ERROR,
    EXIT,
    STDIN,
    STDOUT,
    FrameDecoder,
    frame,
    open_stream,
    parse_json,
)
from lxpy.errors import LxpyError, from_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    from lxpy.api.client import Client

    Progress = Callable[[int], None]

CHUNK = 1 << 20
EXPORT_PATH = "/1.0/containers/{name}/export"
IMPORT_PATH = "/1.0/containers/import"


def query(**flags: object) -> str:
    """The query string of a transfer request (flags true: 1; None: left out)."""
    from lxpy.api.client import quote

    parts = []
    for key, value in flags.items():
        if value is True:
            parts.append(f"{key}=1")
        elif isinstance(value, str):
            parts.append(f"{key}={quote(value)}")
    return "?" + "&".join(parts) if parts else ""


def _ended(kind: int, payload: bytes) -> dict[str, Any] | None:
    """The answer an exit frame carries; raises the error of an error frame."""
    if kind == ERROR:
        raise from_json(parse_json(payload, "error"))
    if kind == EXIT:
        return parse_json(payload, "exit")
    return None


def export(
    client: Client,
    name: str,
    out: IO[bytes],
    instance_only: bool = False,
    optimized: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the backup of container `name` to `out`; lxpyd's summary
    (size, snapshots).

    Raises:
        LxpyError: what lxpyd refused or what failed, in its words.
        DaemonUnavailable: lost the connection before the end.
    """
    from lxpy.api.client import lost, quote

    path = EXPORT_PATH.format(name=quote(name)) + query(
        instance_only=instance_only, optimized=optimized
    )
    sock, early = open_stream(client, "GET", path)
    decoder = FrameDecoder()
    moved = 0
    data = early
    try:
        while True:
            for kind, payload in decoder.feed(data):
                if kind == STDOUT:
                    out.write(payload)
                    moved += len(payload)
                    if progress is not None:
                        progress(moved)
                elif (answer := _ended(kind, payload)) is not None:
                    return answer
            data = sock.recv(CHUNK)
            if not data:
                raise lost(client.socket_path, f"the export ended after {moved} bytes")
    finally:
        sock.close()


def import_(
    client: Client,
    src: IO[bytes],
    name: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Send the backup file `src`; the container lxpyd made of it.

    Raises:
        LxpyError: what lxpyd refused (a name in use, a damaged file), in
            its words; nothing was made.
        DaemonUnavailable: lost the connection before the answer.
    """
    from lxpy.api.client import lost

    sock, early = open_stream(client, "POST", IMPORT_PATH + query(name=name))
    moved = 0
    try:
        try:
            while chunk := src.read(CHUNK):
                sock.sendall(frame(STDIN, chunk))
                moved += len(chunk)
                if progress is not None:
                    progress(moved)
            sock.sendall(frame(STDIN, b""))
        except OSError:
            # lxpyd stopped reading: its answer says why.
            pass
        decoder = FrameDecoder()
        data = early
        while True:
            for kind, payload in decoder.feed(data):
                if (answer := _ended(kind, payload)) is not None:
                    return answer
            data = sock.recv(CHUNK)
            if not data:
                raise lost(client.socket_path, "no answer to the import")
    except LxpyError:
        raise
    except OSError as e:
        raise lost(client.socket_path, e.strerror or str(e)) from None
    finally:
        sock.close()
