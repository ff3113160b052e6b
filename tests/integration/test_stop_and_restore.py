"""What lxpy says about a stop it asked for, and snapshot restore of a
running container (a stateless restart), against a real lxpyd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, info, wait_for

pytestmark = pytest.mark.integration


def running_busybox(d: Daemon, name: str = "web") -> dict[str, object]:
    d.cli("template", "build", "busybox", timeout=300)
    d.cli("create", name, "--template", "busybox")
    d.cli("start", name)
    return info(d, name)


def test_a_stop_lxpy_asked_for_says_so_and_a_halt_inside_says_inside(daemon: Daemon) -> None:
    running_busybox(daemon)

    res = daemon.cli("stop", "web")
    assert res.stdout == "stopped web\n"
    assert info(daemon, "web")["last_exit"] == {"reason": "stopped", "detail": "stopped by lxpy"}
    assert "halt or power-off" not in daemon.cli("info", "web").stdout

    daemon.cli("start", "web")
    daemon.cli("restart", "web")
    ct = info(daemon, "web")
    assert ct["state"] == "RUNNING"
    assert ct["last_exit"] == {"reason": "restarted", "detail": "restarted by lxpy"}

    res = daemon.cli("stop", "web", "--force")
    assert res.stdout == "stopped web (killed at once)\n"
    assert info(daemon, "web")["last_exit"] == {
        "reason": "stopped",
        "detail": "stopped by lxpy (killed at once)",
    }

    # An init that does not act on the halt signal is killed after the timeout.
    daemon.cli("config", "set", "web", "halt_signal", "SIGWINCH")
    daemon.cli("start", "web")
    res = daemon.cli("stop", "web", "--timeout", "1")
    assert res.stdout == "stopped web (killed: still running after the 1 s timeout)\n"

    # A power-off from inside is still told apart.
    daemon.cli("config", "unset", "web", "halt_signal")
    daemon.cli("start", "web")
    daemon.cli("exec", "web", "-T", "--", "poweroff", check=False)
    wait_for(lambda: info(daemon, "web")["state"] == "STOPPED", 30, "web to power off")
    assert info(daemon, "web")["last_exit"] == {
        "reason": "poweroff",
        "detail": "halt or power-off requested inside the container",
    }


def test_restore_of_a_running_container_stops_restores_and_starts_it(daemon: Daemon) -> None:
    before = running_busybox(daemon)
    daemon.cli("snapshot", "create", "web", "s1")
    rootfs = Path(str(before["path"]))
    (rootfs / "root" / "after-s1").write_text("written after the snapshot\n")

    res = daemon.cli("snapshot", "restore", "web", "s1")
    assert res.stdout == "restored web to snapshot s1 and started it again\n"
    ct = info(daemon, "web")
    assert ct["state"] == "RUNNING"
    assert ct["init_pid"] != before["init_pid"]
    assert not (rootfs / "root" / "after-s1").exists()
    assert ct["last_exit"] == {
        "reason": "restarted",
        "detail": "restarted by lxpy to restore snapshot s1",
    }
    # The restarted container works.
    assert daemon.cli("exec", "web", "-T", "--", "echo", "up").stdout == "up\n"

    # Frozen: the same.
    daemon.cli("freeze", "web")
    (rootfs / "root" / "after-s1").write_text("again\n")
    daemon.cli("snapshot", "restore", "web", "s1", "--timeout", "5")
    assert info(daemon, "web")["state"] == "RUNNING"
    assert not (rootfs / "root" / "after-s1").exists()

    # Stopped: restored and left stopped.
    daemon.cli("stop", "web")
    (rootfs / "root" / "after-s1").write_text("again\n")
    res = daemon.cli("snapshot", "restore", "web", "s1")
    assert res.stdout == "restored web to snapshot s1\n"
    assert info(daemon, "web")["state"] == "STOPPED"
    assert not (rootfs / "root" / "after-s1").exists()


def running_with_a_broken_snapshot(
    d: Daemon, snap: str, spoil: Callable[[Path], Callable[[], None]]
) -> Path:
    """Container web with snapshot `snap` taken while `spoil` had broken its
    rootfs, then mended (by what `spoil` returned) and running, with
    /root/marker written since; returns its rootfs."""
    d.cli("template", "build", "busybox", timeout=300)
    d.cli("create", "web", "--template", "busybox")
    rootfs = Path(str(info(d, "web")["path"]))
    mend = spoil(rootfs)
    d.cli("snapshot", "create", "web", snap)
    mend()
    d.cli("start", "web")
    (rootfs / "root" / "marker").write_text("live\n")
    return rootfs


def without_init(rootfs: Path) -> Callable[[], None]:
    init = rootfs / "sbin" / "init"
    target = init.readlink()
    init.unlink()
    return lambda: init.symlink_to(target)


def proc_a_file(rootfs: Path) -> Callable[[], None]:
    # A start that fails in the launch itself (no check before it sees
    # it): /proc is no directory to mount proc on.
    proc = rootfs / "proc"
    proc.rmdir()
    proc.write_text("")

    def mend() -> None:
        proc.unlink()
        proc.mkdir()

    return mend


def test_restore_to_a_snapshot_its_start_would_refuse_leaves_it_running(daemon: Daemon) -> None:
    # As a restart does, the restore of a running container checks first
    # what the start after it would refuse: here, init missing from the
    # snapshot. Nothing is stopped or restored.
    rootfs = running_with_a_broken_snapshot(daemon, "noinit", without_init)
    pid = info(daemon, "web")["init_pid"]

    res = daemon.cli("snapshot", "restore", "web", "noinit", check=False)
    assert res.returncode == 1, res
    assert res.stderr.startswith(
        "error: init: /sbin/init in snapshot 'noinit' of container 'web' does not exist"
    ), res.stderr
    ct = info(daemon, "web")
    assert (ct["state"], ct["init_pid"]) == ("RUNNING", pid)
    assert (rootfs / "root" / "marker").exists() and (rootfs / "sbin" / "init").is_symlink()


def test_restore_whose_start_fails_keeps_the_restored_files_and_says_so(daemon: Daemon) -> None:
    rootfs = running_with_a_broken_snapshot(daemon, "noproc", proc_a_file)

    res = daemon.cli("snapshot", "restore", "web", "noproc", check=False)
    assert res.returncode == 1, res
    assert res.stderr.startswith(
        "error: restored container 'web' to snapshot 'noproc', but it did not start again: "
    ), res.stderr
    assert "/proc" in res.stderr, res.stderr
    assert "hint: the restored files stay and it is stopped; `lxpy start web` once" in res.stderr
    assert "Traceback" not in res.stderr
    ct = info(daemon, "web")
    assert ct["state"] == "STOPPED"
    assert (rootfs / "proc").is_file()
    assert not (rootfs / "root" / "marker").exists()
    assert ct["snapshots"] == ["noproc"]
