"""lxpy's own errors.

Every layer raises these (never a bare OSError) once a failure has a meaning
a human can act on. The API maps them to HTTP status codes and back, so the
CLI prints the same message and hint the daemon produced.
"""

from __future__ import annotations

import errno


class LxpyError(Exception):
    """Base error: a message for the human and an optional hint."""

    code = "error"
    status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class InvalidArgument(LxpyError):
    code = "invalid_argument"
    status = 400


class NotFound(LxpyError):
    code = "not_found"
    status = 404


class AlreadyExists(LxpyError):
    code = "already_exists"
    status = 409


class Busy(LxpyError):
    code = "busy"
    status = 409


class Unsupported(LxpyError):
    code = "unsupported"
    status = 501


class PoolFull(LxpyError):
    """The storage pool (or the filesystem holding lxpyd's records) has no
    space left: nothing was changed, and the request works again once
    space is freed. Made by pool_full()."""

    code = "pool_full"
    status = 507
    # What was being done, and where the space ran out (the pool's path and
    # what is left on it), as given to pool_full().
    what = ""
    where = ""


def is_full(e: BaseException) -> bool:
    """Whether `e` says a write found no space left (ENOSPC, EDQUOT).

    Every write of lxpyd's own (records, intents, logs, files in a rootfs,
    volumes) goes to the pool or the root beside it, through Daemon.files,
    Daemon.storage or the intent journal, which turn this into pool_full().
    """
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def pool_full(what: str = "", where: str = "") -> PoolFull:
    """The error for a write that found the pool full while working on
    `what`; `where` names the pool and the room left on it."""
    message = "storage pool is full" + (f" ({what})" if what else "")
    err = PoolFull(
        message + (f": {where}" if where else ""),
        hint="free space in it (delete snapshots, containers or templates you no longer "
        "need; `lxpy info NAME` shows a container's disk use) or grow it "
        "(btrfs filesystem resize), then try again",
    )
    err.what, err.where = what, where
    return err


class Forbidden(LxpyError):
    """The caller may not use lxpyd (not root, in neither group lxpy nor
    lxpy-user), or a restricted user (lxpy-user) asks what only admins may."""

    code = "forbidden"
    status = 403


class Cancelled(LxpyError):
    code = "cancelled"
    status = 499


class TimedOut(LxpyError):
    """What a request waited for did not happen in the time it allowed
    (`lxpy start --wait`): the message says what was not ready; nothing
    was undone."""

    code = "timeout"
    status = 504


class DaemonUnavailable(LxpyError):
    """The client could not reach lxpyd."""

    code = "daemon_unavailable"
    status = 503


_BY_CODE: dict[str, type[LxpyError]] = {
    cls.code: cls
    for cls in (
        LxpyError,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Busy,
        Unsupported,
        PoolFull,
        Forbidden,
        Cancelled,
        TimedOut,
        DaemonUnavailable,
    )
}


def from_json(data: dict[str, object]) -> LxpyError:
    """Rebuild an error sent by the daemon (the client side of to_json)."""
    cls = _BY_CODE.get(str(data.get("code")), LxpyError)
    hint = data.get("hint")
    return cls(str(data.get("message", "unknown error")), str(hint) if hint else None)
