"""Named step boundaries of lxpyd's multi-step operations, and a debug hook
that kills lxpyd at one of them.

Every operation that changes more than one thing on the host (a volume and
a record, a bridge and its rules) calls `reached(op, step)` after each step.
In normal runs that is a comparison with None. With the environment
variable LXPY_CRASH_AT=OP:STEP set when lxpyd starts, the process SIGKILLs
itself right there, as a crash or `kill -9` would: the crash-recovery test
uses it to prove that the next lxpyd settles every such moment
(tests/integration/test_crash_recovery.py).

STEPS is the list of every boundary; naming one that is not listed is a
bug, so the list and the code cannot drift apart.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "LXPY_CRASH_AT"

# Operation -> its step boundaries, in the order they are reached. "begun":
# its intent is written (lxpy.daemon.journal) and nothing else is done yet.
STEPS: dict[str, tuple[str, ...]] = {
    "create": ("begun", "volume-made", "files-written", "ids-assigned", "recorded"),
    "copy": (
        "begun",
        "volume-made",
        "snapshots-copied",
        "files-written",
        "ids-assigned",
        "recorded",
    ),
    "import": (
        "begun",
        "staged",
        "unpacked",
        "volume-made",
        "files-written",
        "ids-assigned",
        "recorded",
    ),
    "rename": ("begun", "volume-moved", "snapshots-moved", "recorded", "old-record-removed"),
    "delete": ("begun", "volume-deleted", "snapshots-deleted", "record-deleted"),
    "snapshot": ("begun", "snapshot-made"),
    "snapshot-delete": ("begun", "snapshot-deleted"),
    "restore": ("begun", "moved-aside", "copied"),
    "template-build": ("begun", "staged", "built", "old-moved-aside", "sealed", "committed"),
    "image-pull": ("begun", "staged", "unpacked", "sealed", "committed"),
    "image-publish": ("begun", "staged", "sealed", "committed"),
    "network-create": ("begun", "bridge-up", "recorded"),
    # On a running container; the device's type plugs or unplugs it.
    "device-add": ("begun", "plugged", "recorded"),
    "device-remove": ("begun", "unplugged", "recorded"),
    "network-delete": ("begun", "torn-down", "record-removed"),
}

# Read once: a daemon started with it dies at that step, every other is
# unaffected by it.
_CRASH_AT = os.environ.get(CRASH_ENV) or None


def reached(op: str, step: str) -> None:
    """Operation `op` has finished step `step`: die here when told to.

    Raises:
        ValueError: `op`/`step` is not in STEPS (a bug in the caller).
    """
    if step not in STEPS.get(op, ()):
        raise ValueError(f"unknown step boundary {op}:{step}")
    if _CRASH_AT is not None and _CRASH_AT == f"{op}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
