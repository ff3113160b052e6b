"""The real `lxpy` command against a real lxpyd (root, loop-file btrfs pools).

Every test drives the installed console script through `daemon.cli(...)`
(tests/conftest.py), so argument parsing, the HTTP client, the daemon and
storage are exercised together, and checks what changed on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lxpy.api.client import Client
from lxpy.model.paths import PoolPaths
from tests.conftest import VENV_BIN, Daemon

pytestmark = pytest.mark.integration


def cli_json(d: Daemon, *args: str) -> Any:
    return json.loads(d.cli(*args, "--format", "json").stdout)


def fails(d: Daemon, *args: str) -> str:
    """Run a command that must be refused: exit 1, `error:`, no traceback; its stderr."""
    res = d.cli(*args, check=False)
    assert res.returncode == 1, f"lxpy {args}: {res.returncode}\n{res.stdout}{res.stderr}"
    assert res.stderr.startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return res.stderr


def storage_dir(d: Daemon) -> PoolPaths:
    """The pool, where the daemon says it is."""
    info = Client(d.socket, timeout=30).server_info()
    path = Path(info["storage"]["path"])
    assert path.is_dir(), info
    return PoolPaths(path)


def on_disk(d: Daemon) -> dict[str, list[str]]:
    """The volumes under the pool's containers/ and snapshots/ directories."""
    base = storage_dir(d)
    out: dict[str, list[str]] = {}
    for sub, top in (("containers", base.containers), ("snapshots", base.snapshots)):
        if not top.is_dir():
            out[sub] = []
            continue
        names = []
        for entry in sorted(top.iterdir()):
            names.append(entry.name)
            if sub == "snapshots" and entry.is_dir():
                names += [f"{entry.name}/{s.name}" for s in sorted(entry.iterdir())]
        out[sub] = names
    return out


def state(d: Daemon) -> tuple[Any, dict[str, list[str]], str]:
    return cli_json(d, "list"), on_disk(d), d.cli("list").stdout


def build_busybox(d: Daemon) -> None:
    d.cli("template", "build", "busybox", timeout=300)


# -- templates -------------------------------------------------------------------------


def test_template_build_list_and_cached_rebuild(daemon: Daemon) -> None:
    res = daemon.cli("template", "build", "busybox", timeout=300)
    assert "built template busybox" in res.stdout or "up to date" in res.stdout

    built_at = next(t for t in cli_json(daemon, "template", "list") if t["name"] == "busybox")[
        "built_at"
    ]
    res = daemon.cli("template", "build", "busybox", timeout=60)
    assert res.stdout == "template busybox is up to date\n"
    # Not built again: the same build stands.
    tpl = next(t for t in cli_json(daemon, "template", "list") if t["name"] == "busybox")
    assert tpl["built_at"] == built_at

    rows = [line.split(None, 3) for line in daemon.cli("template", "list").stdout.splitlines()]
    assert rows[0] == ["NAME", "BUILT", "STALE", "DESCRIPTION"]
    assert ["busybox", "yes", "no"] == next(r for r in rows if r[0] == "busybox")[:3]
    tpl = next(t for t in cli_json(daemon, "template", "list") if t["name"] == "busybox")
    assert tpl["built"] is True and tpl["stale"] is False

    # --force rebuilds, streaming the log, and leaves it built.
    res = daemon.cli("template", "build", "busybox", "--force", timeout=300)
    assert "built template busybox" in res.stdout

    fails(daemon, "template", "build", "no-such-template")
    daemon.cli("template", "delete", "busybox")
    tpl = next(t for t in cli_json(daemon, "template", "list") if t["name"] == "busybox")
    assert tpl["built"] is False
    assert "busybox" in fails(daemon, "template", "delete", "busybox")


# -- containers -------------------------------------------------------------------------


def test_container_lifecycle(daemon: Daemon) -> None:
    build_busybox(daemon)
    res = daemon.cli("create", "web", "--template", "busybox", "--set", "user.note=hello")
    assert res.stdout == "created web from template busybox\n"

    lines = daemon.cli("list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "ADDRESSES", "TEMPLATE", "SNAPSHOTS", "CREATED"]
    assert lines[1].split()[:5] == ["web", "STOPPED", "-", "busybox", "0"]
    [ct] = cli_json(daemon, "list")
    assert ct["name"] == "web" and ct["config"]["user.note"] == "hello"
    # The one container object; `stats` (null: not running) only in info,
    # the plain list leaves it out.
    assert cli_json(daemon, "info", "web") == {**ct, "stats": None}
    assert Path(ct["path"]).is_dir()
    info = daemon.cli("info", "web").stdout
    assert "STOPPED" in info and ct["path"] in info and "user.note = hello" in info

    # config: set, show, unset.
    daemon.cli("config", "set", "web", "description", "a web server")
    daemon.cli("config", "set", "web", "environment.TZ", "UTC")
    shown = daemon.cli("config", "show", "web").stdout.splitlines()
    assert "description = a web server" in shown and "environment.TZ = UTC" in shown
    assert daemon.cli("config", "show", "web", "environment.TZ").stdout == "UTC\n"
    daemon.cli("config", "unset", "web", "environment.TZ")
    config = cli_json(daemon, "config", "show", "web")
    assert "environment.TZ" not in config and config["description"] == "a web server"

    # A bad key or a bad value is refused, named, and changes nothing.
    err = fails(daemon, "config", "set", "web", "no.such.key", "1")
    assert "no.such.key" in err
    err = fails(daemon, "config", "set", "web", "hostname", "not a hostname")
    assert "hostname" in err
    err = fails(daemon, "config", "set", "web", "environment.1BAD", "x")
    assert "environment.1BAD" in err
    assert fails(daemon, "config", "unset", "web", "bogus").count("bogus")
    assert cli_json(daemon, "config", "show", "web") == config

    # rename: the console log goes along.
    logs = daemon.paths.logs
    (logs / "web.console.log").write_text("booted as web\n")
    assert daemon.cli("rename", "web", "www").stdout == "renamed web to www\n"
    assert (logs / "www.console.log").read_text() == "booted as web\n"
    assert not (logs / "web.console.log").exists()
    assert "not" in fails(daemon, "info", "web").lower()
    www = cli_json(daemon, "info", "www")
    assert www["config"] == config and Path(www["path"]).is_dir()
    assert not Path(ct["path"]).exists()

    # snapshot create/list/restore/delete, checked on the rootfs.
    marker = Path(www["path"]) / "lxpy-test-marker"
    marker.write_text("before\n")
    assert daemon.cli("snapshot", "create", "www").stdout == "created snapshot www/snap0\n"
    assert cli_json(daemon, "snapshot", "create", "www", "named")["name"] == "named"
    snaps = daemon.cli("snapshot", "list", "www").stdout.splitlines()
    assert snaps[0].split() == ["NAME", "CREATED"]
    assert sorted(line.split()[0] for line in snaps[1:]) == ["named", "snap0"]
    marker.write_text("after\n")
    (Path(www["path"]) / "new-file").write_text("x")
    daemon.cli("snapshot", "restore", "www", "snap0")
    www = cli_json(daemon, "info", "www")
    assert (Path(www["path"]) / "lxpy-test-marker").read_text() == "before\n"
    assert not (Path(www["path"]) / "new-file").exists()
    assert sorted(www["snapshots"]) == ["named", "snap0"]
    fails(daemon, "snapshot", "restore", "www", "nope")
    daemon.cli("snapshot", "delete", "www", "named")
    assert [s["name"] for s in cli_json(daemon, "snapshot", "list", "www")] == ["snap0"]
    fails(daemon, "snapshot", "delete", "www", "named")

    # copy: a clone with the same files, independent of its source.
    copy = cli_json(daemon, "copy", "www", "www2")
    assert copy["name"] == "www2" and copy["template"] == "busybox"
    copied = Path(copy["path"]) / "lxpy-test-marker"
    assert copied.read_text() == "before\n"
    copied.write_text("changed in the copy\n")
    assert (Path(www["path"]) / "lxpy-test-marker").read_text() == "before\n"
    assert sorted(c["name"] for c in cli_json(daemon, "list")) == ["www", "www2"]

    # destroy removes the container, its snapshots and its volumes.
    assert daemon.cli("destroy", "www").stdout == "destroyed www\n"
    daemon.cli("destroy", "www2", "--force")
    assert cli_json(daemon, "list") == []
    header = "NAME  STATE  ADDRESSES  TEMPLATE  SNAPSHOTS  CREATED"
    assert daemon.cli("list").stdout.splitlines() == [header]
    disk = on_disk(daemon)
    assert disk["containers"] == [] and not [s for s in disk["snapshots"] if "/" in s]
    fails(daemon, "destroy", "www")


BAD_NAMES = ["../x", "a b", "", "x" * 64, "-x", "a/b", "x-"]


def test_bad_names_unknown_templates_and_duplicates_change_nothing(daemon: Daemon) -> None:
    build_busybox(daemon)
    daemon.cli("create", "base", "--template", "busybox")
    daemon.cli("create", "other", "--template", "busybox")
    daemon.cli("snapshot", "create", "base", "s1")
    before = state(daemon)

    for bad in BAD_NAMES:
        # `--` so that '-x' is a name, not an option: the daemon must refuse it.
        fails(daemon, "create", "--template", "busybox", "--", bad)
        fails(daemon, "rename", "base", "--", bad)
        fails(daemon, "copy", "base", "--", bad)
        fails(daemon, "snapshot", "create", "base", "--", bad)
        fails(daemon, "info", "--", bad)
        fails(daemon, "destroy", "--", bad)
        fails(daemon, "template", "build", "--", bad)
    # The messages name what is wrong.
    assert "'a b'" in fails(daemon, "create", "--template", "busybox", "a b")
    assert "64" in fails(daemon, "create", "--template", "busybox", "x" * 64)
    assert "empty" in fails(daemon, "create", "--template", "busybox", "")

    err = fails(daemon, "create", "new", "--template", "no-such-template")
    assert "no-such-template" in err
    fails(daemon, "create", "new", "--template", "../busybox")

    # Duplicates.
    assert "base" in fails(daemon, "create", "base", "--template", "busybox")
    assert "other" in fails(daemon, "rename", "base", "other")
    assert "other" in fails(daemon, "copy", "base", "other")
    assert "s1" in fails(daemon, "snapshot", "create", "base", "s1")
    # Unknown sources.
    fails(daemon, "rename", "ghost", "new")
    fails(daemon, "copy", "ghost", "new")
    fails(daemon, "snapshot", "create", "ghost")
    fails(daemon, "snapshot", "list", "ghost")
    fails(daemon, "snapshot", "restore", "base", "ghost")
    fails(daemon, "config", "set", "ghost", "description", "x")

    # Usage errors never reach the daemon: status 2.
    res = daemon.cli("create", "new", "--template", "busybox", "--set", "description", check=False)
    assert res.returncode == 2 and "--set" in res.stderr and "'description'" in res.stderr
    assert daemon.cli("create", "-x", "--template", "busybox", check=False).returncode == 2

    assert state(daemon) == before


def test_daemon_survives_clients_hanging_up_on_streams(daemon: Daemon) -> None:
    # A client may hang up on a stream at any time (docs/api.md): Ctrl-C on
    # `lxpy template build`, or a client that stops after the last line.
    build_busybox(daemon)
    client = Client(daemon.socket, timeout=60)
    for _ in range(10):
        op = client.build_template("busybox", refresh=True)
        for msg in client.operation_stream(op["id"]):
            if "operation" in msg:
                break
        assert client.server_info()["api_version"] == "1.0"
    assert daemon.proc.poll() is None
    assert [t for t in cli_json(daemon, "template", "list") if t["name"] == "busybox"][0]["built"]


# -- the dir backend ------------------------------------------------------------------


def test_dir_backend(dir_daemon: Daemon) -> None:
    d = dir_daemon
    root = d.root
    info = Client(d.socket, timeout=30).server_info()
    assert info["storage"]["backend"] == "dir"
    assert not [
        line for line in Path("/proc/self/mounts").read_text().splitlines() if str(root) in line
    ]
    d.cli("create", "c1", "--template", "busybox", timeout=300)
    c1 = cli_json(d, "info", "c1")
    rootfs = Path(c1["path"])
    assert rootfs.is_dir() and str(rootfs).startswith(str(root))
    (rootfs / "marker").write_text("one")
    d.cli("snapshot", "create", "c1", "s1")
    (rootfs / "marker").write_text("two")
    d.cli("snapshot", "restore", "c1", "s1")
    c1 = cli_json(d, "info", "c1")
    assert (Path(c1["path"]) / "marker").read_text() == "one"
    c2 = cli_json(d, "copy", "c1", "c2")
    assert (Path(c2["path"]) / "marker").read_text() == "one"
    fails(d, "create", "--template", "busybox", "--", "../x")
    d.cli("destroy", "c1")
    d.cli("destroy", "c2")
    assert cli_json(d, "list") == []
    assert not Path(c1["path"]).exists() and not Path(c2["path"]).exists()


# -- no daemon -------------------------------------------------------------------------


def test_cli_without_a_daemon_says_how_to_start_it(tmp_path: Path) -> None:
    sock = tmp_path / "lxpy.sock"
    res = subprocess.run(
        [str(VENV_BIN / "lxpy"), "--socket", str(sock), "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith(f"error: cannot reach lxpyd at {sock}: ")
    assert "hint: start it in the background with `" in res.stderr
    assert f"lxpyd --daemon --socket {sock}`" in res.stderr
    # $LXPY_SOCKET is used when --socket is not given.
    res = subprocess.run(
        [str(VENV_BIN / "lxpy"), "template", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "LXPY_SOCKET": str(sock)},
    )
    assert res.returncode == 1 and f"cannot reach lxpyd at {sock}" in res.stderr


# -- Debian ------------------------------------------------------------------------------


@pytest.mark.slow
def test_debian_template(daemon: Daemon) -> None:
    daemon.cli("template", "build", "debian-bookworm", timeout=1200)
    daemon.cli("create", "deb", "--template", "debian-bookworm", timeout=300)
    ct = cli_json(daemon, "info", "deb")
    assert ct["template"] == "debian-bookworm" and ct["state"] == "STOPPED"
    rootfs = Path(ct["path"])
    assert (rootfs / "etc" / "debian_version").read_text().startswith("12")
    assert (rootfs / "sbin" / "init").exists() or (rootfs / "usr" / "sbin" / "init").exists()
    daemon.cli("destroy", "deb")
    assert cli_json(daemon, "list") == []
