"""The host-wide record of ID blocks, and picking a range against it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from lxpy.daemon.hostids import Block, HostIds
from lxpy.daemon.security import _pick
from lxpy.errors import Busy, LxpyError
from lxpy.kernel.idranges import IdRange
from lxpy.model.security import SecurityConfig

ALLOWED = [IdRange(1_000_000, 1_000_000_000)]


def roots(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        (tmp_path / n).mkdir()
        out.append(tmp_path / n)
    return out


def test_each_daemon_sees_the_others_blocks(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    a_root, b_root = roots(tmp_path, "a", "b")
    a, b = HostIds(a_root, reg), HostIds(b_root, reg)
    web = Block(str(a_root), "web", 1_065_536, 1_065_536, 65536)
    assert a.publish([web]) == []
    assert b.publish([]) == [web]
    # Its own entry is not among "the others", and an empty one goes.
    with a.locked() as others:
        assert others == []
    assert sorted(p.name for p in reg.iterdir()) == sorted(["lock", a.path.name])
    a.write([])
    assert not a.path.exists()


def test_the_entry_of_a_root_that_is_gone_is_dropped(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    a_root, b_root = roots(tmp_path, "a", "b")
    a = HostIds(a_root, reg)
    a.publish([Block(str(a_root), "web", 1_065_536, 1_065_536, 65536)])
    a_root.rmdir()
    assert HostIds(b_root, reg).publish([]) == []
    assert not a.path.exists()


def test_an_unreadable_entry_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = tmp_path / "reg"
    (b_root,) = roots(tmp_path, "b")
    reg.mkdir()
    (reg / "junk.json").write_text("{")
    (reg / "odd.json").write_text(json.dumps({"root": str(b_root), "blocks": [{}]}))
    assert HostIds(b_root, reg).publish([]) == []
    assert "unreadable" in caplog.text


def test_one_daemon_at_a_time_holds_the_record(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    a_root, b_root = roots(tmp_path, "a", "b")
    inside, waited = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait()
        with HostIds(b_root, reg).locked():
            waited.set()

    t = threading.Thread(target=other)
    t.start()
    with HostIds(a_root, reg).locked():
        inside.set()
        assert not waited.wait(0.2)
    t.join(5)
    assert waited.is_set()


def test_pick_leaves_out_every_daemons_blocks() -> None:
    theirs = Block("/srv/other", "db", 1_065_536, 1_065_536, 65536)
    rec = _pick("/var/lib/lxpy", "web", SecurityConfig.from_config({}), "idmapped", [theirs],
                ALLOWED, ALLOWED)  # fmt: skip
    assert (rec.uid_base, rec.gid_base, rec.isolated) == (1_131_072, 1_131_072, True)
    # The shared range is the same for every daemon, and not recorded.
    shared = _pick("/var/lib/lxpy", "s", SecurityConfig.from_config(
        {"security.idmap.isolated": "false"}), "idmapped", [theirs], ALLOWED, ALLOWED)  # fmt: skip
    assert (shared.uid_base, shared.isolated) == (1_000_000, False)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        (1_100_000, "overlaps the range 1065536..1131071 of container 'db' of the lxpyd at /srv/o"),
        (1_000_000, "overlaps the range 1000000..1065535 of non-isolated containers"),
    ],
)
def test_a_fixed_base_on_another_block_is_refused(base: int, message: str) -> None:
    theirs = Block("/srv/o", "db", 1_065_536, 1_065_536, 65536)
    sec = SecurityConfig.from_config({"security.idmap.base": str(base)})
    with pytest.raises(Busy, match=message) as e:
        _pick("/var/lib/lxpy", "web", sec, "idmapped", [theirs], ALLOWED, ALLOWED)
    assert e.value.hint


def test_a_fixed_base_on_a_block_of_the_same_daemon_names_the_container() -> None:
    mine = Block("/var/lib/lxpy", "db", 1_065_536, 1_065_536, 65536)
    sec = SecurityConfig.from_config({"security.idmap.base": "1100000"})
    with pytest.raises(Busy, match="of container 'db'$"):
        _pick("/var/lib/lxpy", "web", sec, "idmapped", [mine], ALLOWED, ALLOWED)


def test_a_record_that_cannot_be_made_says_where(tmp_path: Path) -> None:
    (a_root,) = roots(tmp_path, "a")
    (tmp_path / "file").write_text("")
    with pytest.raises(LxpyError, match="host-wide record of ID ranges in .*file/reg") as e:
        HostIds(a_root, tmp_path / "file" / "reg").publish([])
    assert e.value.hint
