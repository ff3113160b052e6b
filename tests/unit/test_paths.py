"""lxpy.model.paths: the layout on disk, pinned.

Why: an upgraded lxpyd adopts the containers, records and pools an older
one left, so a path that moves loses them.
"""

from __future__ import annotations

from pathlib import Path

from lxpy.model.network import root_id
from lxpy.model.paths import HIDDEN, RootPaths, RunPaths, hidden_prefixes, host_ids_file


def test_the_run_dir_is_per_root() -> None:
    rid = root_id("/var/lib/lxpy")
    run = RunPaths.of(Path("/var/lib/lxpy"))
    assert run.dir == Path("/run/lxpy") / rid
    assert run.monitor_socket("web") == run.dir / "containers/web/monitor.sock"
    assert run.state_file("web") == run.dir / "containers/web/state.json"
    assert run.netns("web") == run.dir / "netns/web"
    assert run.userns("web") == run.dir / "userns/web"
    assert run.nics("web") == run.dir / "nics/web.json"
    assert run.network("br") == run.dir / "networks/br"
    assert (run.zygote_socket, run.zygote_pages, run.zygote_pid) == (
        run.dir / "zygote.sock",
        run.dir / "zygote.sock.pages",
        run.dir / "zygote.pid",
    )
    assert RunPaths.of(Path("/srv/other")).dir != run.dir


def test_the_root_and_its_pool() -> None:
    root = Path("/var/lib/lxpy")
    p = RootPaths(root)
    assert p.run == RunPaths.of(root)
    assert p.record("web") == root / "containers/web.toml"
    assert p.console_log("web") == root / "logs/web.console.log"
    assert p.network_record("br") == root / "networks/br.toml"
    assert p.downloads == root / "images/downloads"
    assert (p.intents, p.spool, p.remotes) == (
        root / "intents",
        root / "spool",
        root / "remotes.json",
    )
    assert (p.pool_dir, p.pool_image) == (root / "pool", root / "pool.img")
    assert p.pool.container("web") == root / "pool/containers/web"
    assert p.pool.snapshot("web", "s1") == root / "pool/snapshots/web/s1"
    assert p.pool.volume("data") == root / "pool/volumes/data"
    assert p.pool.image("ab12") == root / "pool/templates/@ab12"
    assert p.pool.staging("base") == root / "pool/templates/.build-base"
    assert hidden_prefixes(*HIDDEN) == (".build-", ".old-", ".restore-", ".trash-", ".tmp-")
    assert host_ids_file(root) == Path("/var/lib/lxpy-idmap") / f"{root_id(str(root))}.json"
