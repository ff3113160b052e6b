"""How much config a request may store: a key name, a value, a whole config."""

from __future__ import annotations

import pytest

from lxpy.errors import InvalidArgument
from lxpy.model.config import MAX_CONFIG, MAX_KEY, MAX_VALUE, Container, validate_config


def test_a_value_over_the_cap_is_refused_naming_the_key() -> None:
    assert validate_config({"user.note": "x" * MAX_VALUE}) == {"user.note": "x" * MAX_VALUE}
    with pytest.raises(InvalidArgument) as e:
        validate_config({"user.note": "x" * 100_000})
    assert e.value.message.startswith("user.note: the value is 100000 bytes long, at most 8192")
    # Bytes, not characters: what the record holds.
    with pytest.raises(InvalidArgument, match="user.note: the value is 8194 bytes"):
        validate_config({"user.note": "é" * 4097})
    with pytest.raises(InvalidArgument, match="init.args: the value is"):
        validate_config({"init.args": ["y" * 5000, "z" * 5000]})


def test_a_key_name_over_the_cap_is_refused() -> None:
    key = "user." + "k" * (MAX_KEY - 5)
    assert key in validate_config({key: "v"})
    with pytest.raises(InvalidArgument, match=f"is {MAX_KEY + 1} characters long, at most"):
        validate_config({key + "k": "v"})


def test_a_config_over_the_cap_is_refused_but_may_shrink() -> None:
    keys = {f"user.k{i}": "v" * 8000 for i in range(MAX_CONFIG // 8000 + 1)}
    with pytest.raises(InvalidArgument, match="the config would be .* at most 65536"):
        validate_config(keys)
    c = Container("c1", "busybox", "now")
    for i, (key, value) in enumerate(keys.items()):
        if i < len(keys) - 1:
            c = c.with_config({key: value}, [])
    with pytest.raises(InvalidArgument, match="the config would be"):
        c.with_config({"user.last": "v" * 8000}, [])
    # A record written before the cap (read whatever its size) may only shrink.
    big = Container.from_toml(Container("c1", "busybox", "now", config=keys).to_toml())
    assert big.config == keys
    smaller = big.with_config({"user.k0": "short"}, [])
    assert smaller.with_config({}, ["user.k1"]).config.get("user.k1") is None
    with pytest.raises(InvalidArgument, match="the config would be"):
        smaller.with_config({"user.k0": "v" * 8000}, [])
