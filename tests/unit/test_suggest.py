"""Did you mean: the suggestion logic behind not-found hints and unknown commands."""

from __future__ import annotations

import pytest

from lxpy.model.config import KEYS, PREFIXES
from lxpy.model.suggest import MAX_LISTED, did_you_mean, distance, nearest, not_found_hint

COMMANDS = ["create", "list", "info", "destroy", "start", "stop", "restart", "freeze", "exec"]


@pytest.mark.parametrize(
    ("a", "b", "edits"),
    [
        ("web", "web", 0),
        ("Web", "web", 0),  # case is not an edit
        ("memroy", "memory", 1),  # two neighbours swapped
        ("strat", "start", 1),
        ("stp", "stop", 1),
        ("destory", "destroy", 1),
        ("web", "db", 2),
        ("", "abc", 3),
        ("abc", "", 3),
        ("kitten", "sitting", 3),
        ("ca", "abc", 3),  # no swap across an insertion (optimal string alignment)
    ],
)
def test_distance(a: str, b: str, edits: int) -> None:
    assert distance(a, b) == edits
    assert distance(b, a) == edits


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("strat", ["start"]),
        ("stp", ["stop"]),
        ("destory", ["destroy"]),
        ("lst", ["list"]),
        ("restrat", ["restart"]),
        ("fre", ["freeze"]),  # a prefix of three letters or more
        ("xyzzy", []),
        ("s", []),  # one letter is near nothing in particular
    ],
)
def test_nearest_command(word: str, expected: list[str]) -> None:
    assert nearest(word, COMMANDS) == expected


def test_nearest_config_key() -> None:
    keys = list(KEYS)
    assert nearest("limits.memroy", keys) == ["limits.memory"]
    assert nearest("limits.cpus", keys) == ["limits.cpu"]
    # The last part alone finds the dotted key.
    assert nearest("memory", keys) == ["limits.memory"]
    assert nearest("hostnme", keys) == ["hostname"]
    assert nearest("completely.unrelated", keys) == []


def test_nearest_keeps_only_the_best_and_at_most_three() -> None:
    names = ["web1", "web2", "web3", "web4", "webby"]
    assert nearest("web5", names) == ["web1", "web2", "web3"]
    assert nearest("web1", ["web1", "web2"]) == ["web2"]  # the word itself is not suggested


def test_did_you_mean_wording() -> None:
    assert did_you_mean("wbe", ["web", "db"]) == "did you mean 'web'?"
    assert did_you_mean("web3", ["web1", "web2"]) == "did you mean 'web1' or 'web2'?"
    assert did_you_mean("web9", ["web1", "web2", "web3"]) == (
        "did you mean 'web1', 'web2' or 'web3'?"
    )
    assert did_you_mean("zzz", ["web"]) is None


def test_not_found_hint() -> None:
    lister = "`lxpy list`"
    known = "known containers"
    assert not_found_hint("wbe", ["web", "db"], known, lister) == "did you mean 'web'?"
    # Nothing near: a few names are listed, many are not.
    assert not_found_hint("zzz", ["web", "db"], known, lister) == "known containers: db, web"
    many = [f"c{i:02}x" for i in range(MAX_LISTED + 1)]
    assert not_found_hint("zzz", many, known, lister) == "`lxpy list` lists them"
    assert not_found_hint("zzz", [], known, lister) == "known containers: none"


def test_prefixed_key_families_are_candidates_too() -> None:
    # lookup_key offers `environment.TZ` for `enviroment.TZ`: the family's
    # prefix with the rest of what was typed.
    rest = "TZ"
    candidates = [*KEYS, *(p + rest for p in PREFIXES)]
    assert nearest("enviroment.TZ", candidates) == ["environment.TZ"]
