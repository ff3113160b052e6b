"""A new user's first day with the `lxpy` command, against a real lxpyd.

Config is checked when it is set (not at the next start), and a restart
checks it before it stops the container; errors suggest the name that was
meant and name the command that helps; commands that take one container
take several.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxpy.api.client import Client
from tests.conftest import Daemon, info, stop_daemon
from tests.integration.test_network import free_subnet, net_name, scrub

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
    return json.loads(d.cli("config", "show", name, "--format", "json").stdout)


def rootfs(d: Daemon, name: str) -> Path:
    return Path(info(d, name)["path"])


def names(d: Daemon) -> list[str]:
    return sorted(c["name"] for c in json.loads(d.cli("list", "--format", "json").stdout))


# -- 1. config checked when it is set -------------------------------------------------


def test_a_network_that_does_not_exist_is_refused_on_set_and_create(bb: Daemon) -> None:
    d = bb
    d.cli("create", "db", "-t", "busybox", "--set", "network=")
    before = config(d, "db")
    error, hint = refused(d, "config", "set", "db", "network", "nosuchnet")
    assert error == "error: network 'nosuchnet' not found"
    assert "`lxpy network create nosuchnet`" in hint
    assert config(d, "db") == before

    # A near name is suggested.
    lab = net_name()
    d.cli("network", "create", lab, "--subnet", free_subnet())
    error, hint = refused(d, "config", "set", "db", "network", lab + "x")
    assert f"did you mean '{lab}'?" in hint
    d.cli("config", "set", "db", "network", lab)
    assert config(d, "db")["network"] == [lab]

    # Create checks it too, and makes nothing.
    refused(d, "create", "web", "-t", "busybox", "--set", "network=nosuchnet")
    assert names(d) == ["db"]


def test_ipv4_address_is_checked_against_the_subnet_and_other_containers(bb: Daemon) -> None:
    d = bb
    lab, subnet = net_name(), free_subnet()
    d.cli("network", "create", lab, "--subnet", subnet)
    prefix = subnet.rsplit(".", 1)[0]
    d.cli("create", "a", "-t", "busybox", "--set", f"network={lab}")
    d.cli("create", "b", "-t", "busybox", "--set", f"network={lab}")

    error, hint = refused(d, "config", "set", "a", "ipv4.address", "192.0.2.9")
    assert "is not usable on network" in error and "pick an address from" in hint
    error, _ = refused(d, "config", "set", "a", "ipv4.address", f"{prefix}.1")  # the gateway
    assert "is not usable" in error
    d.cli("config", "set", "a", "ipv4.address", f"{prefix}.50")

    # Free means not pinned by another container either.
    error, _ = refused(d, "config", "set", "b", "ipv4.address", f"{prefix}.50")
    assert error == f"error: ipv4.address {prefix}.50 on network {lab} is pinned by container 'a'"
    error, _ = refused(
        d,
        "create",
        "c",
        "-t",
        "busybox",
        "--set",
        f"network={lab}",
        "--set",
        f"ipv4.address={prefix}.50",
    )
    assert "pinned by container 'a'" in error
    assert names(d) == ["a", "b"]

    # A pinned address needs a network: dropping the network is refused.
    error, hint = refused(d, "config", "set", "a", "network", "")
    assert "pins" in error and "joins no network" in error and "unset ipv4.address" in hint
    assert config(d, "a")["network"] == [lab]


def test_init_is_looked_up_in_the_rootfs_without_leaving_it(bb: Daemon) -> None:
    d = bb
    d.cli("create", "web", "-t", "busybox", "--set", "network=")
    root = rootfs(d, "web")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    (root / "plain").write_text("not a program\n")
    # An absolute link is resolved inside the rootfs: a program on the
    # host at that path is not the container's.
    host_program = d.root.parent / "host-program"
    host_program.write_text("#!/bin/sh\n")
    host_program.chmod(0o755)
    (root / "escape").symlink_to(host_program)
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    (root / "myinit").symlink_to("/bin/busybox")
    for path, problem in (
        ("/nosuch", "does not exist"),
        ("/etc", "is a directory, not a program"),
        ("/fifo", "is a FIFO, not a program"),  # looked at, never opened: no hang
        ("/null", "is a character device, not a program"),
        ("/plain", "is not executable"),
        ("/escape", "does not exist"),
        ("/loop1", "too many levels of symlinks"),
    ):
        error, hint = refused(d, "config", "set", "web", "init", path)
        assert error.startswith(f"error: init: {path} in the rootfs of container 'web' "), error
        assert problem in error, error
        assert "`lxpy config unset web init`" in hint
    assert "init" not in config(d, "web")
    d.cli("config", "set", "web", "init", "/myinit")
    assert config(d, "web")["init"] == "/myinit"

    # On create, the template's rootfs is where it is looked for.
    error, _ = refused(d, "create", "db", "-t", "busybox", "--set", "init=/nosuch")
    assert error == "error: init: /nosuch in template 'busybox' does not exist"
    assert names(d) == ["web"]


def test_restart_checks_the_config_before_it_stops_the_container(bb: Daemon) -> None:
    d = bb
    d.cli("create", "web", "-t", "busybox", "--set", "network=")
    root = rootfs(d, "web")
    # busybox runs the applet its argv[0] names: a copy named `init` boots.
    (root / "opt").mkdir(exist_ok=True)
    (root / "opt" / "init").write_bytes((root / "bin" / "busybox").read_bytes())
    (root / "opt" / "init").chmod(0o755)
    d.cli("config", "set", "web", "init", "/opt/init")
    d.cli("start", "web")
    pid = info(d, "web")["init_pid"]

    # Gone from the rootfs since it was set: the start would fail, so the
    # restart refuses before it stops anything.
    (root / "opt" / "init").unlink()
    error, hint = refused(d, "restart", "web")
    assert error == "error: init: /opt/init in the rootfs of container 'web' does not exist"
    ct = info(d, "web")
    assert (ct["state"], ct["init_pid"]) == ("RUNNING", pid)

    # Fixed, it restarts.
    d.cli("config", "unset", "web", "init")
    d.cli("restart", "web")
    ct = info(d, "web")
    assert ct["state"] == "RUNNING" and ct["init_pid"] != pid


def test_a_change_a_running_container_gets_later_says_so(bb: Daemon) -> None:
    d = bb
    d.cli("create", "web", "-t", "busybox", "--set", "network=")
    # Stopped: everything applies at its next start; nothing to say.
    assert d.cli("config", "set", "web", "hostname", "www").stdout == ""
    d.cli("start", "web")
    out = d.cli("config", "set", "web", "hostname", "front").stdout
    assert (
        out
        == "hostname takes effect at the next start of web (`lxpy restart web` restarts it now)\n"
    )
    out = d.cli("config", "unset", "web", "hostname").stdout
    assert out.startswith("hostname takes effect at the next start of web")
    # Limits reach a running container at once.
    assert d.cli("config", "set", "web", "limits.memory", "64MiB").stdout == ""
    # The API says which keys wait for the next start.
    client = Client(d.socket, timeout=30)
    answer = client.update_config(
        "web", {"limits.memory": "96MiB", "user.x": "1", "init.args": "-s"}
    )
    assert answer["deferred"] == ["init.args"]
    assert answer["config"]["limits.memory"] == "96MiB"


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


# -- 3. hints that name the right command ---------------------------------------------


def test_hints_name_the_command_to_run(bb: Daemon) -> None:
    d = bb
    d.cli("create", "web", "-t", "busybox", "--set", "network=")
    error, hint = refused(d, "snapshot", "delete", "web", "nosnap")
    assert error == "error: container 'web' has no snapshot 'nosnap'"
    assert hint == "hint: its snapshots: none" and "/1.0/" not in hint

    d.cli("start", "web")
    error, hint = refused(d, "destroy", "web")
    assert error == "error: cannot delete container 'web' while it is RUNNING"
    assert hint == "hint: stop it first (`lxpy stop web`), or use `lxpy destroy --force web`"
    assert names(d) == ["web"]


def test_starting_a_running_container_does_nothing_and_succeeds(bb: Daemon) -> None:
    d = bb
    d.cli("create", "web", "-t", "busybox", "--set", "network=")
    d.cli("create", "db", "-t", "busybox", "--set", "network=")
    d.cli("start", "web")
    pid = info(d, "web")["init_pid"]
    res = d.cli("start", "web")
    assert res.stdout == f"web is already running (init pid {pid})\n"
    assert info(d, "web")["init_pid"] == pid
    # Among others: the running one is left alone, the others start.
    out = d.cli("start", "web", "db").stdout.splitlines()
    assert f"web is already running (init pid {pid})" in out
    assert any(line.startswith("started db (init pid ") for line in out)
    answer = Client(d.socket, timeout=30).start_container("web")
    assert answer["started"] is False and answer["init_pid"] == pid

    # Frozen is not running: it is thawed, not started.
    d.cli("freeze", "web")
    error, hint = refused(d, "start", "web")
    assert error == "error: container 'web' is frozen"
    assert hint == "hint: thaw it: lxpy unfreeze web"
    assert info(d, "web")["state"] == "FROZEN"


def test_config_keys_are_listed_with_their_meaning(bb: Daemon) -> None:
    d = bb
    keys = json.loads(d.cli("config", "keys", "--format", "json").stdout)
    by_name = {k["key"]: k for k in keys}
    assert by_name["limits.memory"]["live"] is True
    assert by_name["hostname"]["live"] is False
    assert "environment.*" in by_name and by_name["network"]["meaning"]
    table = d.cli("config", "keys").stdout.splitlines()
    assert table[0].split() == ["KEY", "APPLIES", "MEANING"]
    assert any(line.split()[:3] == ["limits.memory", "at", "once"] for line in table)
    assert any(line.split()[:3] == ["hostname", "next", "start"] for line in table)
    helptext = d.cli("config", "set", "--help").stdout
    for key in by_name:
        assert key in helptext


# -- 4. several names -----------------------------------------------------------------


def test_commands_take_several_names(bb: Daemon) -> None:
    d = bb
    for n in ("a", "b"):
        d.cli("create", n, "-t", "busybox", "--set", "network=")
    d.cli("start", "a", "b")
    pids = {n: info(d, n)["init_pid"] for n in ("a", "b")}

    assert sorted(d.cli("freeze", "a", "b").stdout.splitlines()) == ["froze a", "froze b"]
    assert {info(d, n)["state"] for n in ("a", "b")} == {"FROZEN"}
    assert sorted(d.cli("unfreeze", "a", "b").stdout.splitlines()) == ["unfroze a", "unfroze b"]
    out = d.cli("restart", "a", "b").stdout.splitlines()
    assert sorted(line.split(" (")[0] for line in out) == ["restarted a", "restarted b"]
    assert all(info(d, n)["init_pid"] != pids[n] for n in ("a", "b"))

    for s in ("s1", "s2", "s3"):
        d.cli("snapshot", "create", "a", s)
    out = d.cli("snapshot", "delete", "a", "s1", "s2").stdout.splitlines()
    assert sorted(out) == ["deleted snapshot a/s1", "deleted snapshot a/s2"]

    # One that fails: the others are done, each failure is reported, exit 1.
    res = d.cli("snapshot", "delete", "a", "s3", "nosnap", check=False)
    assert res.returncode == 1
    assert res.stdout == "deleted snapshot a/s3\n"
    assert "error: nosnap: container 'a' has no snapshot 'nosnap'" in res.stderr
    assert "error: 1 of 2 failed: nosnap" in res.stderr
    assert [
        s["name"] for s in json.loads(d.cli("snapshot", "list", "a", "--format", "json").stdout)
    ] == []

    res = d.cli("freeze", "a", "nosuch", check=False)
    assert res.returncode == 1 and "error: nosuch: container 'nosuch' not found" in res.stderr
    d.cli("unfreeze", "a")

    # destroy: running ones only with --force; several at once.
    res = d.cli("destroy", "a", "b", check=False)
    assert res.returncode == 1 and "error: 2 of 2 failed: a, b" in res.stderr
    assert "--force" in res.stderr
    assert names(d) == ["a", "b"]
    out = d.cli("destroy", "a", "b", "--force").stdout.splitlines()
    assert sorted(out) == ["destroyed a", "destroyed b"]
    assert names(d) == []
