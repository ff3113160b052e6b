"""Backup files over the framed stream (docs/backup.md), client side.

An export receives the file as stdout frames, an import sends it as stdin
frames and then an empty one; either ends with lxpyd's answer in an exit
frame (or its error in an error frame). The file never passes through a
host path lxpyd opens. `Receiver` reads what comes back, whatever moves
the bytes; `export` and `import_` run it over the sync client's socket
(the asyncio client has its own loop around it, lxpy.api.aclient).
"""

from __future__ import annotations

from lxpy.api.calls import export_request, import_request, query_string
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
    from collections.abc import Callable, Iterable
    from typing import Any

    from lxpy.api.calls import Call, Object
    from lxpy.api.client import Client

    Progress = Callable[[int], None]

CHUNK = 1 << 20


class Receiver:
    """The frames lxpyd sends back on a backup stream.

    Args:
        write: where the file's pieces go (an export), or None.
        progress: told the bytes written so far.
    """

    def __init__(
        self, write: Callable[[bytes], object] | None = None, progress: Progress | None = None
    ) -> None:
        self._decoder = FrameDecoder()
        self._write = write
        self._progress = progress
        self.moved = 0

    def feed(self, data: bytes) -> Object | None:
        """Take `data`; lxpyd's answer once its exit frame has come.

        Raises:
            LxpyError: the error an error frame carries, or a broken frame.
        """
        for kind, payload in self._decoder.feed(data):
            if kind == STDOUT and self._write is not None:
                self._write(payload)
                self.moved += len(payload)
                if self._progress is not None:
                    self._progress(self.moved)
            elif kind == ERROR:
                raise from_json(parse_json(payload, "error"))
            elif kind == EXIT:
                return parse_json(payload, "exit")
        return None


def upgrade_target(call: Call[Any]) -> str:
    """The path with its query string of an upgrade request."""
    return call.path + query_string(call.query)


def export(
    client: Client,
    name: str,
    write: Callable[[bytes], object],
    instance_only: bool = False,
    optimized: bool = False,
    progress: Progress | None = None,
) -> Object:
    """Write the backup of container `name` to `write`; lxpyd's summary
    (size, snapshots).

    Raises:
        LxpyError: what lxpyd refused or what failed, in its words.
        DaemonUnavailable: lost the connection before the end.
    """
    from lxpy.api.client import lost

    call = export_request(name, instance_only, optimized)
    sock, data = open_stream(client, call.method, upgrade_target(call))
    receiver = Receiver(write, progress)
    try:
        while (answer := receiver.feed(data)) is None:
            data = sock.recv(CHUNK)
            if not data:
                raise lost(client.socket_path, f"the export ended after {receiver.moved} bytes")
        return answer
    finally:
        sock.close()


def import_(
    client: Client,
    chunks: Iterable[bytes],
    name: str | None = None,
    progress: Progress | None = None,
) -> Object:
    """Send the backup file given as `chunks`; the container lxpyd made of it.

    Raises:
        LxpyError: what lxpyd refused (a name in use, a damaged file), in
            its words; nothing was made.
        DaemonUnavailable: lost the connection before the answer.
    """
    from lxpy.api.client import lost

    call = import_request(name)
    sock, data = open_stream(client, call.method, upgrade_target(call))
    moved = 0
    try:
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                sock.sendall(frame(STDIN, chunk))
                moved += len(chunk)
                if progress is not None:
                    progress(moved)
            sock.sendall(frame(STDIN, b""))
        except OSError:
            # lxpyd stopped reading: its answer says why.
            pass
        receiver = Receiver()
        while (answer := receiver.feed(data)) is None:
            data = sock.recv(CHUNK)
            if not data:
                raise lost(client.socket_path, "no answer to the import")
        return answer
    except LxpyError:
        raise
    except OSError as e:
        raise lost(client.socket_path, e.strerror or str(e)) from None
    finally:
        sock.close()
