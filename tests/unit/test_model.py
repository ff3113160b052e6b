"""Names, config keys, settings and units: what users type, validated."""

from __future__ import annotations

import signal
import tomllib
from pathlib import Path

import pytest

from lxpy.errors import AlreadyExists, InvalidArgument, LxpyError, NotFound
from lxpy.model import tomlw
from lxpy.model.config import Container, parse_value
from lxpy.model.names import validate_name
from lxpy.model.settings import load_settings, settings_from_mapping
from lxpy.model.state import TRANSITIONS, State, can_move
from lxpy.model.units import parse_signal, parse_size, signal_name


@pytest.mark.parametrize("name", ["a", "web", "web-1", "A1", "x" * 63, "db2-eu"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "must not be empty"),
        ("../x", "invalid container name '../x'"),
        ("a b", "invalid container name 'a b'"),
        ("x" * 64, "64 characters long"),
        ("1abc", "invalid"),
        ("-x", "invalid"),
        ("x-", "invalid"),
        ("a_b", "invalid"),
        ("a.b", "invalid"),
        (None, "must not be empty"),
    ],
)
def test_bad_names_say_what_is_wrong(name: object, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_name(name)
    assert fragment in e.value.message


def test_config_round_trips_through_toml() -> None:
    c = Container(
        "web",
        "busybox",
        "2026-11-27T20:00:00Z",
        {
            "hostname": "www",
            "environment.TZ": "Europe/Paris",
            "init.args": ["--log-level", "info"],
            "description": 'quote " and \\ backslash',
        },
    )
    back = Container.from_toml(c.to_toml())
    assert back == c


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("nonsense", "1", "unknown config key 'nonsense'"),
        ("hostname", "bad name", "hostname:"),
        ("init", "sbin/init", "init: expected an absolute path"),
        ("halt_signal", "SIGNOPE", "halt_signal: unknown signal 'SIGNOPE'"),
        ("environment.1X", "v", "not a valid environment variable name"),
        ("description", "two\nlines", "description: must be a single line"),
    ],
)
def test_bad_config_values_name_the_key(key: str, value: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_value(key, value)
    assert fragment in e.value.message


def test_with_config_sets_unsets_and_keeps_the_original() -> None:
    c = Container("web", "busybox", "now", {"hostname": "a"})
    d = c.with_config({"halt_signal": "RTMIN+3"}, ["hostname"])
    assert dict(d.config) == {"halt_signal": "SIGRTMIN+3"}
    assert dict(c.config) == {"hostname": "a"}
    with pytest.raises(InvalidArgument):
        c.with_config({}, ["bogus"])


def test_broken_record_names_its_source() -> None:
    with pytest.raises(InvalidArgument) as e:
        Container.from_toml('name = "web"\ntemplate = "t"\n[config]\nhostname = 5\n', "web.toml")
    assert e.value.message.startswith("web.toml: hostname")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("20G", 20 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("4096", 4096),
        (7, 7),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["-1", "12XB", "lots", True, -5])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(bad, "pool_size")


def test_signals() -> None:
    assert parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    assert parse_signal("pwr") == signal.SIGPWR
    assert parse_signal("10") == 10
    assert signal_name(int(signal.SIGRTMIN) + 3) == "SIGRTMIN+3"
    assert signal_name(int(signal.SIGUSR2)) == "SIGUSR2"
    with pytest.raises(InvalidArgument):
        parse_signal("0")


def test_settings_validation(tmp_path: Path) -> None:
    s = settings_from_mapping({"root": "/srv/lxpy", "storage": "dir", "pool_size": "10GiB"})
    assert s.root == Path("/srv/lxpy") and s.storage == "dir" and s.pool_size == 10 * 2**30
    with pytest.raises(InvalidArgument, match="storage: expected one of auto, btrfs, dir"):
        settings_from_mapping({"storage": "zfs"})
    with pytest.raises(InvalidArgument, match="unknown setting 'rooot'"):
        settings_from_mapping({"rooot": "/x"})
    assert settings_from_mapping({}).ksm is True
    assert settings_from_mapping({"ksm": False}).ksm is False
    with pytest.raises(InvalidArgument, match="ksm: expected true or false, got 'yes'"):
        settings_from_mapping({"ksm": "yes"})
    assert settings_from_mapping({}).read_ahead is True
    assert settings_from_mapping({"read_ahead": False}).read_ahead is False
    with pytest.raises(InvalidArgument, match="read_ahead: expected true or false, got 1"):
        settings_from_mapping({"read_ahead": 1})
    f = tmp_path / "lxpyd.toml"
    f.write_text("pool_size = 'huge'\n")
    with pytest.raises(InvalidArgument, match=f"{f}: pool_size: invalid size"):
        load_settings(f)
    with pytest.raises(InvalidArgument, match="cannot read settings file"):
        load_settings(tmp_path / "missing.toml")


def test_state_machine() -> None:
    assert set(TRANSITIONS) == set(State)
    assert can_move(State.STOPPED, State.STARTING)
    assert not can_move(State.STOPPED, State.RUNNING)
    assert can_move(State.RUNNING, State.FROZEN)
    # A reboot inside: init starts again under the same monitor.
    assert can_move(State.RUNNING, State.STARTING)


def test_the_daemon_refuses_a_move_the_lifecycle_forbids() -> None:
    from pathlib import Path

    from lxpy.daemon.events import EventBus
    from lxpy.daemon.table import ContainerTable
    from lxpy.model.config import Container

    table = ContainerTable(EventBus(), lambda name: Path(f"{name}.toml"))
    table.load({"web": Container("web", "busybox", "now")}, {})
    with pytest.raises(LxpyError, match="cannot go from STOPPED to RUNNING"):
        table.set_state("web", State.RUNNING)
    assert table.states["web"] == State.STOPPED
    table.set_state("web", State.STARTING)
    assert table.states["web"] == State.STARTING


def test_forgetting_a_container_leaves_nothing_of_it() -> None:
    from pathlib import Path

    from lxpy.daemon.events import EventBus
    from lxpy.daemon.table import ContainerTable, RunInfo
    from lxpy.model.config import Container

    table = ContainerTable(EventBus(), lambda name: Path(f"{name}.toml"))
    table.load({"web": Container("web", "busybox", "now")}, {"bad": "unreadable"})
    entry = table.get("web")
    assert entry is not None
    entry.run = RunInfo(1, 2, "", Path("s"))
    entry.last_exit = {"reason": "error"}
    table.reserve("new")
    assert table.known("web") and table.known("bad") and not table.known("new")
    with pytest.raises(AlreadyExists):
        table.reserve("web")
    table.forget("web")
    table.unreserve("new")
    views = (table.records, table.states, table.running, table.last_exits, table.watches)
    assert all("web" not in v and "new" not in v for v in views)
    assert list(table.states) == ["bad"]
    with pytest.raises(NotFound):
        table.require("web")


def test_toml_writer_quotes_and_nests() -> None:
    text = tomlw.dumps({"a": 1, "b c": "x\ty", "t": {"d.e": [1, 2], "f": True}})
    assert tomllib.loads(text) == {"a": 1, "b c": "x\ty", "t": {"d.e": [1, 2], "f": True}}


@pytest.mark.parametrize(
    "text",
    ["\U0001f600", "del\x7fhere", 'quote" and \\', "bell\x07 tab\t nl\n", "ümlaut €"],
)
def test_any_string_a_user_may_set_reads_back(text: str) -> None:
    # A key or value outside the BMP once came back as a surrogate pair
    # that tomllib refuses: the record could no longer be read.
    data = {f"user.{text}": text, "table": {text: [text]}}
    assert tomllib.loads(tomlw.dumps(data)) == data


def test_a_lone_surrogate_is_refused_not_written() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        tomlw.dumps({"user.x": "\ud800"})
