"""Talking to a container's monitor from lxpyd: one command on its control
socket (the protocol is lxpy.runtime.control's), and the JSON lines a
watch reads from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from lxpy.errors import DaemonUnavailable, LxpyError
from lxpy.runtime.control import check_reply, gone


class Lines:
    """JSON lines from a trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def next(self) -> Any:
        """The next JSON value, or None at end of stream."""
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf[:] = rest
        return json.loads(line)


async def monitor_request(
    path: Path, cmd: str, wait: float = 10.0, **args: object
) -> dict[str, object]:
    """One command to a monitor's control socket (see lxpy.runtime.control).

    Raises:
        DaemonUnavailable: nothing answers on `path`, or the monitor ended
            before it answered.
        LxpyError (or a subclass): the monitor's error, or no answer in `wait` s.
    """
    try:
        with trio.fail_after(wait):
            try:
                stream = await trio.open_unix_socket(str(path))
            except OSError as e:
                raise DaemonUnavailable(
                    f"no monitor answers on {path}: {e.strerror or e}",
                    hint="the container is probably not running",
                ) from None
            async with stream:
                # A monitor that ends meanwhile breaks the send or the read.
                try:
                    await stream.send_all((json.dumps({"cmd": cmd, **args}) + "\n").encode())
                    reply = await Lines(stream).next()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    reply = None
    except trio.TooSlowError:
        raise LxpyError(f"the monitor did not answer {cmd!r} within {wait:g} s") from None
    if reply is None:
        raise gone(cmd)
    return check_reply(reply)
