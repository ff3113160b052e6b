"""The shape of devices in a container record (lxpy.model.devices) and the
generic judging of a device type's keys (lxpy.daemon.devices.base)."""

from __future__ import annotations

import pytest

from lxpy.daemon.devices import TYPES, device_type
from lxpy.errors import InvalidArgument
from lxpy.model.config import Container
from lxpy.model.devices import parse_device, parse_devices


def test_values_are_stored_as_the_strings_a_user_types() -> None:
    got = parse_device("www", {"type": "disk", "readonly": True, "size": 3})
    assert got == {"type": "disk", "readonly": "true", "size": "3"}


@pytest.mark.parametrize(
    ("name", "raw", "why"),
    [
        ("www", {"source": "/x"}, "has no type"),
        ("-x", {"type": "disk"}, "invalid device name"),
        ("www", {"type": "disk", "Bad": "1"}, "invalid key 'Bad'"),
        ("www", {"type": "disk", "path": "a\nb"}, "single line"),
        ("www", {"type": "disk", "path": ["a"]}, "expected a string"),
        ("www", "disk", "expected a table"),
    ],
)
def test_a_bad_shape_is_named(name: str, raw: object, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        parse_device(name, raw)


def test_too_many_devices_are_refused() -> None:
    many = {f"d{i}": {"type": "disk"} for i in range(65)}
    with pytest.raises(InvalidArgument, match="at most 64"):
        parse_devices(many)


def test_devices_and_snapshot_devices_round_trip_through_the_record() -> None:
    c = Container("web", "busybox", "t", devices={"www": {"type": "disk", "path": "/w"}})
    c = c.with_snapshot("s0", keep=True).with_device("www", None)
    back = Container.from_toml(c.to_toml(), "web.toml")
    assert back.devices == {}
    assert back.snapshot_devices == {"s0": {"www": {"type": "disk", "path": "/w"}}}
    assert back.with_snapshot("s0", keep=False).snapshot_devices == {}


def test_a_broken_devices_table_names_the_record() -> None:
    text = 'name = "web"\ntemplate = "busybox"\n[devices.www]\nsource = "/x"\n'
    with pytest.raises(InvalidArgument, match=r"web.toml: devices 'www': has no type"):
        Container.from_toml(text, "web.toml")


def test_a_type_judges_its_keys_and_names_the_near_one() -> None:
    disk = device_type("disk")
    assert TYPES["disk"] is disk
    ok = disk.validate("www", {"type": "disk", "source": "/s", "path": "/a//b/", "shift": "no"})
    assert ok == {"type": "disk", "source": "/s", "path": "/a/b", "shift": "false"}
    with pytest.raises(InvalidArgument) as e:
        disk.validate("www", {"source": "/s", "path": "/a", "readonly": "1", "shfit": "1"})
    assert "no key 'shfit'" in e.value.message
    assert e.value.hint is not None and "did you mean 'shift'?" in e.value.hint
    with pytest.raises(InvalidArgument, match="unknown device type 'dsik'") as e2:
        device_type("dsik")
    assert e2.value.hint is not None and "'disk'" in e2.value.hint
