"""A new user's first day with the `lxpy` command, against a real lxpyd.

Config is checked when it is set (not at the next start), and a restart
checks it before it stops the container; errors suggest the name that was
meant and name the command that helps; commands that take one container
take several.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, info, stop_daemon
from tests.integration.test_network import scrub

pytestmark = pytest.mark.integration


@pytest.fixture
def bb(daemon: Daemon) -> Iterator[Daemon]:
    """The conftest daemon with busybox built; whatever networking a test
    made is scrubbed afterwards."""
    daemon.cli("template", "build", "busybox", timeout=300)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)
        scrub(daemon.root)


def refused(d: Daemon, *args: str, status: int = 1) -> tuple[str, str]:
    """Run a command that must fail with `status` and an `error:` line, no
    traceback; its (error, hint) lines."""
    res = d.cli(*args, check=False, timeout=60)
    assert res.returncode == status, f"lxpy {args}: {res.returncode}\n{res.stdout}{res.stderr}"
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    hint = next((line for line in lines if line.startswith("hint: ")), "")
    return error, hint


def config(d: Daemon, name: str) -> dict[str, Any]:
    return json.loads(d.cli("config", "show", name, "--format", "json").stdout)  # type: ignore[no-any-return]


def rootfs(d: Daemon, name: str) -> Path:
    return Path(info(d, name)["path"])


def names(d: Daemon) -> list[str]:
    return sorted(c["name"] for c in json.loads(d.cli("list", "--format", "json").stdout))


# -- 2. did you mean ------------------------------------------------------------------


def test_not_found_errors_suggest_the_name_that_was_meant(bb: Daemon) -> None:
    d = bb
    d.cli("create", "web", "-t", "busybox", "--set", "network=")
    d.cli("snapshot", "create", "web", "before-upgrade")

    error, hint = refused(d, "config", "set", "web", "limits.memroy", "1G")
    assert error == "error: unknown config key 'limits.memroy'"
    assert hint.startswith("hint: did you mean 'limits.memory'?")
    assert "`lxpy config keys`" in hint and "limits.pty" not in hint  # no dump of every key

    assert refused(d, "info", "wbe")[1] == "hint: did you mean 'web'?"
    assert refused(d, "start", "weeb")[1].endswith("did you mean 'web'?")
    hint = refused(d, "snapshot", "restore", "web", "before-upgrad")[1]
    assert hint == "hint: did you mean 'before-upgrade'?"
    assert refused(d, "create", "x", "-t", "busybx")[1] == "hint: did you mean 'busybox'?"
    assert refused(d, "network", "info", "lxpybr")[1].startswith("hint: known networks: none")

    # Commands too (a usage error: status 2).
    error, hint = refused(d, "strat", "web", status=2)
    assert (error, hint) == ("error: unknown command 'strat'", "hint: did you mean 'start'?")
    hint = refused(d, "snapshot", "dlete", "web", "x", status=2)[1]
    assert hint == "hint: did you mean 'snapshot delete'?"
