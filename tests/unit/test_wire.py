"""lxpy.api.wire's JSON against the json package's, which it stands in for."""

from __future__ import annotations

import json
import math
import random

import pytest

from lxpy.api import wire


def _value(rnd: random.Random, depth: int = 0) -> object:
    kinds = ["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 4 else [])
    kind = rnd.choice(kinds)
    if kind == "str":
        alphabet = 'ab "\\/\n\t\x01é€😀'
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(8)))
    if kind == "int":
        return rnd.choice([0, -1, 7, 2**70, -(2**64)])
    if kind == "float":
        return rnd.choice([0.5, -1e300, 1e-7, 3.141592653589793, 1.0])
    if kind == "bool":
        return rnd.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {f"k{i}é": _value(rnd, depth + 1) for i in range(rnd.randrange(4))}


def test_dumps_and_loads_match_the_json_package() -> None:
    rnd = random.Random(3)
    for _ in range(500):
        value = _value(rnd)
        text = wire.dumps(value)
        assert text == json.dumps(value)
        assert wire.loads(text) == value
        assert wire.loads(" \n" + text.encode().decode() + "\r\n\t") == value
        assert wire.loads(json.dumps(value, indent=2).encode()) == value


def test_nan_and_infinity_read_as_json_reads_them() -> None:
    assert wire.dumps([math.inf, -math.inf]) == "[Infinity, -Infinity]"
    assert math.isnan(wire.loads("NaN"))
    assert wire.loads("[-Infinity]") == [-math.inf]


@pytest.mark.parametrize(
    "text", ["", "   ", "{", '{"a": }', "[1,]", "1 2", '"x', "nul", '{"a": 1}}']
)
def test_what_is_not_one_json_value_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        wire.loads(text)


def test_values_without_a_json_form_are_refused() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        wire.dumps({"a": {1, 2}})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        wire.dumps(loop)
