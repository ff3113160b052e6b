"""The completion engine (lxpy.cli.completion) on the real command table,
with names from a stand-in for lxpyd, and the scripts it writes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lxpy import cli
from lxpy.cli.completion import FILES, SHELLS, Candidates, candidates, run_hidden, script
from lxpy.cli.parse import new_parser


class Names:
    """What a daemon with containers web and db would answer."""

    sockets: list[str | None] = []

    def __init__(self, socket: str | None) -> None:
        Names.sockets.append(socket)

    def containers(self) -> Candidates:
        return [("db", "STOPPED"), ("web", "RUNNING")]

    def templates(self) -> Candidates:
        return [("busybox", "BusyBox")]

    def networks(self) -> Candidates:
        return [("lab", "10.9.0.0/24")]

    def snapshots(self, container: str) -> Candidates:
        return [(f"{container}-s1", "")]

    def config(self, container: str) -> Candidates:
        return [("user.team", "ops")]

    def devices(self, container: str) -> Candidates:
        return [(f"{container}-www", "disk")]

    def volumes(self) -> Candidates:
        return [("pgdata", "")]


def values(*words: str) -> list[str]:
    return [v for v, _ in candidates(words, Names)]  # type: ignore[arg-type]


def test_commands_and_groups_come_from_the_command_table() -> None:
    tops = list(dict.fromkeys(c.path[0] for c in cli.COMMANDS))
    assert values("") == tops
    assert values("sn") == ["snapshot"]
    for group in cli.GROUPS:
        assert values(group, "") == [c.path[1] for c in cli.COMMANDS if c.path[0] == group]
    assert set(values("-")) == {"-h", "--help", "--socket", "--version"}
    assert values("no-such-command", "") == []


@pytest.mark.parametrize("cmd", cli.COMMANDS, ids=lambda c: " ".join(c.path))
def test_every_option_of_every_command_completes(cmd: cli.Command) -> None:
    parser = new_parser(prog="lxpy")
    cli.add_arguments(parser, cmd)
    flags = {f for a in parser._actions for f in a.option_strings}
    assert set(values(*cmd.path, "-")) == flags


def test_names_by_what_each_argument_names() -> None:
    assert values("start", "") == ["db", "web"]
    assert values("stop", "web", "") == ["db", "web"]
    assert values("info", "w") == ["web"]
    assert values("rename", "") == ["db", "web"]
    assert values("copy", "") == ["db", "web"]
    assert values("create", "x", "-t", "") == ["busybox"]
    assert values("create", "x", "--template", "b") == ["busybox"]
    assert values("template", "build", "") == ["busybox"]
    assert values("network", "delete", "") == ["lab"]
    assert values("snapshot", "restore", "web", "") == ["web-s1"]
    assert values("config", "unset", "web", "") == ["user.team"]
    assert values("config", "show", "web", "") == ["user.team"]
    assert "limits.memory" in values("config", "set", "web", "")
    assert "environment." in values("config", "set", "web", "env")
    assert values("config", "set", "web", "network", "") == ["lab"]
    assert values("config", "set", "web", "hostname", "") == []
    assert values("create", "x", "--set", "hostn") == ["hostname="]
    assert values("list", "--format", "") == ["table", "json"]
    assert values("completion", "") == ["bash", "zsh", "fish"]


def test_new_names_and_free_values_offer_nothing() -> None:
    assert values("create", "") == []
    assert values("copy", "web", "") == []
    assert values("rename", "web", "") == []
    assert values("network", "create", "") == []
    assert values("snapshot", "create", "web", "") == []
    assert values("exec", "web", "--", "") == []
    assert values("exec", "web", "") == []
    assert values("stop", "web", "--timeout", "") == []
    assert values("start", "web", "--bogus", "") == ["db", "web"]


def test_the_socket_is_taken_from_the_line_and_files_complete_it() -> None:
    assert candidates(["--socket", ""], Names) == [(FILES, "")]  # type: ignore[arg-type]
    Names.sockets.clear()
    values("--socket", "/x.sock", "start", "")
    values("--socket=/y.sock", "start", "")
    values("start", "")
    assert Names.sockets == ["/x.sock", "/y.sock", None]


def test_backup_files_complete_as_files() -> None:
    assert values("export", "") == ["db", "web"]
    assert candidates(["export", "web", ""], Names) == [(FILES, "")]  # type: ignore[arg-type]
    assert candidates(["import", ""], Names) == [(FILES, "")]  # type: ignore[arg-type]
    # The name of the container an import makes is a new one.
    assert values("import", "web.tar.zst", "") == []


def test_hidden_command_prints_per_shell(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_hidden(["bash", "snapshot", "l"]) == 0
    assert capsys.readouterr().out == "list\n"
    assert run_hidden(["fish", "snapshot", "l"]) == 0
    assert capsys.readouterr().out == "list\tlist a container's snapshots\n"
    assert run_hidden(["zsh", "--socket", ""]) == 0
    assert capsys.readouterr().out == ":files\n"
    assert run_hidden(["bash", "zzz"]) == 0
    assert capsys.readouterr().out == ""


def test_no_daemon_offers_no_names_and_says_nothing() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lxpy.cli",
            "__complete",
            "bash",
            "--socket",
            "/nonexistent/s",
            "start",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


@pytest.mark.parametrize("shell", SHELLS)
def test_scripts_name_the_fallback_program_quoted(shell: str) -> None:
    text = script(shell, "/opt/my lxpy/bin/lxpy")
    assert "'/opt/my lxpy/bin/lxpy'" in text
    assert "@FALLBACK@" not in text
    assert "__complete " + shell in text


def test_the_bash_script_parses() -> None:
    res = subprocess.run(["bash", "-n"], input=script("bash"), capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == ""


def test_devices_and_volumes_complete() -> None:
    assert values("device", "show", "web", "") == ["web-www"]
    assert values("device", "remove", "db", "d") == ["db-www"]
    assert values("device", "add", "web", "www", "") == [
        "disk",
        "nic",
        "proxy",
        "unix-block",
        "unix-char",
    ]
    assert values("device", "add", "web", "www", "disk", "pa") == ["path="]
    assert values("device", "add", "web", "www", "disk", "path=/x", "re") == [
        "readonly=",
        "required=",
    ]
    assert values("device", "add", "web", "") == []
    assert values("volume", "delete", "") == ["pgdata"]
    assert values("volume", "create", "") == []
