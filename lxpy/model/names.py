"""Names of containers, snapshots and templates."""

from __future__ import annotations

import re

from lxpy.errors import InvalidArgument

# Hostname label rules (RFC 1123, with a letter first as LXC and Incus ask):
# the container name becomes its hostname and its network name.
_LABEL = re.compile(r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_NAME = 63


def validate_name(name: object, what: str = "container") -> str:
    """Return `name` when it is a valid container (or snapshot, template) name.

    Raises:
        InvalidArgument: naming what is wrong with it.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidArgument(
            f"{what} name {name!r} is {len(name)} characters long; at most {MAX_NAME} are allowed"
        )
    if not _LABEL.fullmatch(name):
        raise InvalidArgument(
            f"invalid {what} name {name!r}",
            hint="use a letter first, then letters, digits and '-', not ending in '-'",
        )
    return name
