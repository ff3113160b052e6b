"""How the clients show the API's values to a human.

The CLI and the TUI both import this, so a config value or an owner reads
the same in `lxpy config show`, `lxpy info` and the TUI's detail screen.
Standard library only, and cheap to import (the CLI starts in milliseconds).
"""

from __future__ import annotations

from lxpy.api import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def format_value(value: object) -> str:
    """A config value as a user would type it back into `config set`:
    `lxpybr0` for `["lxpybr0"]`, `true` for True, JSON for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return wire.dumps(value)


def owner_text(owner: Mapping[str, object]) -> str:
    """A container's `owner` object as `alice (uid 1001, restricted user)`;
    the user name is looked up on this host ("?" when it has none)."""
    import pwd

    uid = owner.get("uid")
    try:
        name = pwd.getpwuid(int(uid)).pw_name  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        name = "?"
    tier = "restricted user" if owner.get("restricted") else "admin"
    return f"{name} (uid {uid}, {tier})"


def template_text(template: object) -> str:
    """A container's `template` as shown: its name, or `image 1a2b3c4d5e6f`
    for one made from an image (whose volume is `@FINGERPRINT`)."""
    text = str(template or "")
    return f"image {text[1:13]}" if text.startswith("@") else text or "-"
