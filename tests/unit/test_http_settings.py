"""The API server's timeouts as settings (lxpyd.toml)."""

from __future__ import annotations

import pytest

from lxpy.errors import InvalidArgument
from lxpy.model.settings import Settings, settings_from_mapping


def test_timeouts_default_and_parse() -> None:
    assert (Settings().http_idle_timeout, Settings().http_request_timeout) == (60.0, 30.0)
    s = settings_from_mapping({"http_idle_timeout": 5, "http_request_timeout": 0.5})
    assert (s.http_idle_timeout, s.http_request_timeout) == (5.0, 0.5)


@pytest.mark.parametrize("value", [0, -1, True, "5", 1e12])
def test_a_timeout_must_be_seconds_above_zero(value: object) -> None:
    with pytest.raises(InvalidArgument) as e:
        settings_from_mapping({"http_request_timeout": value}, "lxpyd.toml")
    assert e.value.message == (
        f"lxpyd.toml: http_request_timeout: expected a number of seconds above 0, got {value!r}"
    )
