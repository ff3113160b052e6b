"""`lxpy start --wait` and `lxpy restart --wait`: they return once the
container is ready, through a real lxpyd and the real CLI.

Ready is: its init said the boot is done (systemd: READY=1 on
/run/host/notify; busybox: rcS writes READY=1 to /run/host/ready) and, on
a network, eth0 holds its address. Each check looks at the container
right after the command returned, without waiting or retrying: what
--wait promises must already hold. The containers run on a network of
the test's own (the Lab of test_network_e2e), and busybox ones cover
each launch path: unprivileged on a network (a pinned user namespace),
unprivileged on none (init cloned into its namespaces) and privileged.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxpy.api.client import Client
from lxpy.errors import InvalidArgument
from tests.conftest import Daemon
from tests.integration.test_network_e2e import Lab, ipv4_of, lab_on

pytestmark = pytest.mark.integration

# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 300

# A boot script that takes its time: without a wait for the boot, a
# command right after `lxpy start` finds no /run/booted.
SLOW_BOOT = '#!/bin/sh\n[ "$1" = start ] && sleep 1 && echo done > /run/booted\nexit 0\n'


@pytest.fixture
def lab(daemon: Daemon, tmp_path: Path) -> Iterator[Lab]:
    with lab_on(daemon, tmp_path) as it:
        yield it


def _rootfs(lab: Lab, name: str) -> Path:
    return Path(lab.info(name)["path"])


def _write(root: Path, rel: str, text: str, mode: int = 0o755) -> None:
    path = root / rel
    path.write_text(text)
    path.chmod(mode)


def _in(lab: Lab, name: str, *argv: str) -> str:
    res = lab.run_in(name, *argv)
    assert res.returncode == 0, (argv, res.stdout, res.stderr)
    return res.stdout.strip()


def _started(out: str, name: str, verb: str = "started") -> list[str]:
    """The addresses a `start --wait` line names: `started NAME (init pid N), ready ADDR...`."""
    head, _, ready = out.strip().partition("), ready")
    assert head.startswith(f"{verb} {name} (init pid "), out
    return ready.split()


def test_busybox_start_wait_returns_once_booted_on_every_launch_path(lab: Lab) -> None:
    lab.make_network()
    lab.cli("template", "build", "busybox")
    net, plain, priv = lab.names("net", "plain", "priv")
    lab.create(net, "busybox")
    lab.create(plain, "busybox", "network=")
    lab.create(priv, "busybox", "network=", "security.privileged=true")
    for name in (net, plain, priv):
        _write(_rootfs(lab, name), "etc/init.d/S50slow", SLOW_BOOT)
        out = lab.cli("start", name, "--wait").stdout
        addrs = _started(out, name)
        # Every boot script ran to its end, and the boot said so through the
        # FIFO lxpy made for it.
        assert _in(lab, name, "cat", "/run/booted") == "done"
        pid = lab.info(name)["init_pid"]
        ready = os.stat(f"/proc/{pid}/root/run/host/ready", follow_symlinks=False)
        assert stat.S_ISFIFO(ready.st_mode)
        if name == net:
            # eth0 holds the address the output names, from the test's subnet.
            assert addrs and ipaddress.IPv4Address(addrs[0]) in lab.subnet, out
            assert ipv4_of(pid) == addrs[0]
        else:
            assert addrs == [], out
    # A restart waits again, for the new boot.
    old = lab.info(net)["init_pid"]
    out = lab.cli("restart", net, "--wait").stdout
    addrs = _started(out, net, "restarted")
    new = lab.info(net)["init_pid"]
    assert new != old
    assert _in(lab, net, "cat", "/run/booted") == "done"
    assert ipv4_of(new) == addrs[0]


def test_debian_start_wait_then_systemctl_answers_running(lab: Lab) -> None:
    # The README's example: straight after `lxpy start --wait`, systemd
    # answers on its bus and the boot is over.
    lab.make_network()
    lab.d.cli("template", "build", "debian-bookworm", timeout=1800)
    (deb,) = lab.names("deb")
    lab.create(deb, "debian-bookworm")
    for verb in ("start", "restart"):
        out = lab.cli(verb, deb, "--wait").stdout
        addrs = _started(out, deb, verb + "ed")
        assert _in(lab, deb, "systemctl", "is-system-running") == "running"
        assert addrs and ipv4_of(lab.info(deb)["init_pid"]) == addrs[0]
        assert _in(lab, deb, "systemctl", "--failed", "--plain", "--no-legend") == ""


def test_wait_timeout_names_what_is_not_ready(lab: Lab) -> None:
    lab.make_network()
    lab.cli("template", "build", "busybox")
    silent, offline = lab.names("silent", "offline")
    # A boot that never says it is done: rcS without its last step.
    lab.create(silent, "busybox")
    rcs = _rootfs(lab, silent) / "etc/init.d/rcS"
    rcs.write_text(rcs.read_text().replace("echo READY=1", ": no word"))
    res = lab.cli("start", silent, "--wait", "--timeout", "1", check=False)
    assert res.returncode == 1, res
    assert f"container '{silent}' was not ready within 1 s" in res.stderr, res.stderr
    assert "its init did not say that it finished booting" in res.stderr
    assert "/run/host/ready" in res.stderr  # the hint says how to say it
    # Nothing was undone: it runs, and a stop works as ever.
    assert lab.info(silent)["state"] == "RUNNING"
    lab.cli("stop", silent)
    # A boot that is done but never asks for an address (no DHCP client).
    lab.create(offline, "busybox")
    (_rootfs(lab, offline) / "etc/init.d/S40network").unlink()
    res = lab.cli("start", offline, "--wait", "--timeout", "2", check=False)
    assert res.returncode == 1, res
    assert "eth0 does not hold" in res.stderr, res.stderr
    assert f"on network {lab.net}" in res.stderr
    assert lab.info(offline)["state"] == "RUNNING"


def test_wait_ends_when_the_container_stops(lab: Lab) -> None:
    lab.cli("template", "build", "busybox")
    (gone,) = lab.names("gone")
    lab.create(gone, "busybox", "network=")
    # Its boot powers it off at once (reboot(2): init ends before rcS does).
    off = '#!/bin/sh\n[ "$1" = start ] && poweroff -f\n'
    _write(_rootfs(lab, gone), "etc/init.d/S50off", off)
    res = lab.cli("start", gone, "--wait", check=False)
    assert res.returncode == 1, res
    assert f"container '{gone}' stopped before it was ready" in res.stderr, res.stderr
    assert "(halt or power-off requested inside the container)" in res.stderr
    assert lab.info(gone)["state"] == "STOPPED"


def test_bad_wait_arguments_are_refused_and_start_nothing(lab: Lab) -> None:
    lab.cli("template", "build", "busybox")
    (box,) = lab.names("box")
    lab.create(box, "busybox", "network=")
    client = Client(str(lab.d.socket))
    path = f"/1.0/containers/{box}/start"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"wait": "yes"}, "'wait' must be true or false"),
        ({"wait": True, "wait_timeout": -1}, "'wait_timeout' must be a number of seconds >= 0"),
        ({"wait": True, "wait_timeout": "5"}, "'wait_timeout' must be a number"),
        ({"wait_timeout": 5}, "'wait_timeout' needs 'wait': true"),
    ]
    for body, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            client.request("POST", path, body)
        with pytest.raises(InvalidArgument, match=message):
            client.request("POST", f"/1.0/containers/{box}/restart", body)
    assert lab.info(box)["state"] == "STOPPED"
    for argv, message in (
        (("start", box, "--timeout", "5"), "--timeout needs --wait"),
        (("start", box, "--wait", "--timeout", "-1"), "--timeout must be 0 or more"),
        (("restart", box, "--wait-timeout", "5"), "--wait-timeout needs --wait"),
    ):
        res = lab.cli(*argv, check=False)
        assert res.returncode == 2 and message in res.stderr, res
    assert lab.info(box)["state"] == "STOPPED"
