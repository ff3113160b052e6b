"""Running a piece of a test in a forked child (seccomp filters, namespaces
and credentials change the whole process, so they are tried in a child)."""

from __future__ import annotations

import os
import pickle
import select
import signal
from collections.abc import Callable
from typing import Any


def in_child(fn: Callable[[], Any], timeout: float = 10) -> Any:
    """Run fn in a forked child and return its result (or raise its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = ("ok", fn())
            except BaseException as e:  # noqa: B036 - report anything
                out = ("err", repr(e))
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b""
        while True:
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("child timed out")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if not data:
        raise AssertionError(f"child died without an answer (wait status {status:#x})")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise AssertionError(f"child raised {value}")
    return value
