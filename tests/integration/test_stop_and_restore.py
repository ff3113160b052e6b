"""What lxpy says about a stop it asked for, against a real lxpyd."""

from __future__ import annotations

import pytest

from tests.conftest import Daemon, info, wait_for

pytestmark = pytest.mark.integration


def running_busybox(d: Daemon, name: str = "web") -> dict[str, object]:
    d.cli("template", "build", "busybox", timeout=300)
    d.cli("create", name, "--template", "busybox")
    d.cli("start", name)
    return info(d, name)


def test_a_stop_lxpy_asked_for_says_so_and_a_halt_inside_says_inside(daemon: Daemon) -> None:
    running_busybox(daemon)

    res = daemon.cli("stop", "web")
    assert res.stdout == "stopped web\n"
    assert info(daemon, "web")["last_exit"] == {"reason": "stopped", "detail": "stopped by lxpy"}
    assert "halt or power-off" not in daemon.cli("info", "web").stdout

    daemon.cli("start", "web")
    daemon.cli("restart", "web")
    ct = info(daemon, "web")
    assert ct["state"] == "RUNNING"
    assert ct["last_exit"] == {"reason": "restarted", "detail": "restarted by lxpy"}

    res = daemon.cli("stop", "web", "--force")
    assert res.stdout == "stopped web (killed at once)\n"
    assert info(daemon, "web")["last_exit"] == {
        "reason": "stopped",
        "detail": "stopped by lxpy (killed at once)",
    }

    # An init that does not act on the halt signal is killed after the timeout.
    daemon.cli("config", "set", "web", "halt_signal", "SIGWINCH")
    daemon.cli("start", "web")
    res = daemon.cli("stop", "web", "--timeout", "1")
    assert res.stdout == "stopped web (killed: still running after the 1 s timeout)\n"

    # A power-off from inside is still told apart.
    daemon.cli("config", "unset", "web", "halt_signal")
    daemon.cli("start", "web")
    daemon.cli("exec", "web", "-T", "--", "poweroff", check=False)
    wait_for(lambda: info(daemon, "web")["state"] == "STOPPED", 30, "web to power off")
    assert info(daemon, "web")["last_exit"] == {
        "reason": "poweroff",
        "detail": "halt or power-off requested inside the container",
    }
