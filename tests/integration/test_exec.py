"""exec and console of running containers, through a real lxpyd and the CLI.

The command runs inside every namespace and cgroup of the container, with
its stdio, environment, user and exit status passed through exactly; the
console is driven in a real pty as a person would. Every test is bounded by
an alarm; the `daemon` fixture stops what a failed test left running.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lxpy.api.client import Client
from lxpy.api.streams import EXIT, STDIN, STDOUT, FrameDecoder, frame, open_stream, parse_json
from lxpy.errors import Busy, InvalidArgument, NotFound
from tests.conftest import (
    VENV_BIN,
    Daemon,
    named_cgroup_hierarchy,
    unmount_named_cgroup_hierarchy,
    wait_for,
)

pytestmark = pytest.mark.integration


# Every test here ends within this many seconds (tests/conftest.py).
TIME_BOUND = 180


@pytest.fixture
def bb(daemon: Daemon) -> Daemon:
    """The daemon with a running busybox container `bb`."""
    daemon.cli("create", "bb", "-t", "busybox")
    daemon.cli("start", "bb")
    return daemon


def lxpy(d: Daemon) -> list[str]:
    return [str(VENV_BIN / "lxpy"), "--socket", str(d.socket)]


def ex(
    d: Daemon, *args: str, input: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """`lxpy exec bb ARGS` with pipes (no tty: stdin is not a terminal)."""
    return subprocess.run(
        [*lxpy(d), "exec", "bb", *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
    )


def init_pid(d: Daemon, name: str = "bb") -> int:
    return int(json.loads(d.cli("info", name, "--format", "json").stdout)["init_pid"])


def test_exit_codes_and_stream_separation(bb: Daemon) -> None:
    assert ex(bb, "--", "true").returncode == 0
    assert ex(bb, "--", "sh", "-c", "exit 3").returncode == 3
    assert ex(bb, "--", "sh", "-c", "kill -9 $$").returncode == 128 + 9
    res = ex(bb, "--", "sh", "-c", "echo out; echo err >&2; echo out2")
    assert (res.returncode, res.stdout, res.stderr) == (0, b"out\nout2\n", b"err\n")
    res = ex(bb, "--", "no-such-command")
    assert res.returncode == 127 and b"command not found" in res.stderr


def test_stdin_passes_through_exactly(bb: Daemon) -> None:
    data = bytes(range(256)) * 4096 + os.urandom(3 * 65536 + 7)  # ~1.2 MB, binary
    res = ex(bb, "--", "cat", input=data, timeout=60)
    assert res.returncode == 0
    assert res.stdout == data
    # EOF reaches the command: wc sees every byte and ends.
    res = ex(bb, "--", "wc", "-c", input=data)
    assert res.stdout.split() == [str(len(data)).encode()]
    # A command that does not read its input still ends, with its status.
    assert ex(bb, "--", "sh", "-c", "exit 5", input=data).returncode == 5


def test_environment_is_clean_and_settable(bb: Daemon) -> None:
    env = dict(os.environ, SECRET_HOST_VAR="leak")
    res = subprocess.run(
        [*lxpy(bb), "exec", "bb", "--", "env"], env=env, capture_output=True, timeout=30
    )
    seen = dict(line.split("=", 1) for line in res.stdout.decode().splitlines())
    assert "SECRET_HOST_VAR" not in seen and "TERM" not in seen
    assert seen["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert seen["container"] == "lxpy" and seen["HOME"] == "/root"
    res = ex(bb, "--env", "A=1", "--env", "B=x y=z", "--", "sh", "-c", 'echo "$A|$B"')
    assert res.stdout == b"1|x y=z\n"


def test_cwd_and_user(bb: Daemon) -> None:
    assert ex(bb, "--cwd", "/etc", "--", "pwd").stdout == b"/etc\n"
    res = ex(bb, "--cwd", "/nonexistent", "--", "pwd")
    assert res.returncode == 1 and b"does not exist" in res.stderr
    # A user made inside the container is looked up in its /etc/passwd.
    add = (
        "echo alice:x:1234:1234::/home/alice:/bin/sh >> /etc/passwd"
        " && echo alice:x:1234: >> /etc/group && mkdir -p /home/alice"
        " && chown 1234:1234 /home/alice"
    )
    made = ex(bb, "--", "sh", "-c", add)
    assert made.returncode == 0, made.stderr
    res = ex(bb, "--user", "alice", "--", "sh", "-c", 'id; pwd; echo "$HOME $USER"')
    lines = res.stdout.decode().splitlines()
    assert lines[0].startswith("uid=1234(alice) gid=1234(alice)"), lines
    assert lines[1:] == ["/home/alice", "/home/alice alice"]
    assert ex(bb, "--user", "1234", "--", "id", "-u").stdout == b"1234\n"
    res = ex(bb, "--user", "nobody-here", "--", "id")
    assert res.returncode == 1 and b"does not exist in the container" in res.stderr


def test_runs_in_the_containers_namespaces_and_cgroups(bb: Daemon) -> None:
    pid = init_pid(bb)
    script = "echo $$; ps -o pid,comm; cat /proc/self/cgroup; hostname; readlink /proc/1/exe"
    out = ex(bb, "--", "sh", "-c", script).stdout.decode().splitlines()
    my_pid = int(out[0])
    # In the container's pid namespace: small pids, init is PID 1, the shell is listed.
    assert 1 < my_pid < 1000
    assert any(line.split() == [str(my_pid), "sh"] for line in out[1:])
    # Its cgroup namespace root is the container's cgroup, on every hierarchy.
    cgroups = [line for line in out if re.match(r"^\d+:[^:]*:/", line)]
    assert cgroups and all(line.rsplit(":", 1)[1] == "/" for line in cgroups)
    assert "bb" in out
    # Host-side: each namespace and the root are init's.
    proc = subprocess.Popen(
        [*lxpy(bb), "exec", "bb", "--", "sleep", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        host = _wait_child_sleep(pid)
        for ns in ("mnt", "uts", "ipc", "net", "pid", "cgroup"):
            assert os.readlink(f"/proc/{host}/ns/{ns}") == os.readlink(f"/proc/{pid}/ns/{ns}"), ns
        assert os.readlink(f"/proc/{host}/root") == "/"
        assert os.stat(f"/proc/{host}/root/").st_ino == os.stat(f"/proc/{pid}/root/").st_ino
        cg = Path(f"/proc/{host}/cgroup").read_text()
        assert all("lxpy.payload.bb" in line for line in cg.splitlines()), cg
    finally:
        # The client goes away: the daemon hangs up and the command is killed.
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _sleepers(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sleepers(pid)


def _sleepers(init: int, seconds: int = 30) -> list[int]:
    """Host pids of `sleep SECONDS` processes in init's pid namespace."""
    ns = os.readlink(f"/proc/{init}/ns/pid")
    cmdline = f"sleep\0{seconds}\0".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if (p / "cmdline").read_bytes() == cmdline and os.readlink(p / "ns/pid") == ns:
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _wait_child_sleep(init: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if found := _sleepers(init):
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the exec'd sleep did not show up")


Step = tuple[bytes, bytes] | tuple[bytes, bytes, Callable[[], object]]


def _pty_run(argv: list[str], send: list[Step], timeout: float = 20) -> tuple[int, bytes]:
    """Run argv on a new pty; for each (wait_for, then_type[, ready]), wait
    until the output shows `wait_for` (and `ready()` holds, when given),
    then type `then_type`. Returns status and output."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    seen = 0  # each marker is looked for after the previous one
    deadline = time.monotonic() + timeout
    steps = list(send)
    try:
        while True:
            if steps and (at := out.find(steps[0][0], seen)) >= 0:
                seen = at + len(steps[0][0])
                step = steps.pop(0)
                if len(step) == 3:
                    wait_for(step[2], timeout, f"what {step[1]!r} is typed for")
                os.write(fd, step[1])
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; output so far: {out!r}")
            r, _, _ = select.select([fd], [], [], min(left, 0.2))
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                out += chunk
        _pid, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), out
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_tty_exec(bb: Daemon) -> None:
    # Without -t but on a terminal, a tty is the default.
    code, out = _pty_run(
        [*lxpy(bb), "exec", "bb", "--", "sh", "-c", "tty; test -t 0 && echo IS-A-TTY; exit 4"],
        [],
    )
    assert code == 4, out
    assert re.search(rb"/dev/pts/\d+\r\n", out) and b"IS-A-TTY" in out, out
    # -t with pipes around: still a terminal inside, output comes back on stdout.
    res = ex(bb, "-t", "--", "sh", "-c", "tty; stty size")
    assert res.returncode == 0 and re.match(rb"/dev/pts/\d+\r\n\d+ \d+\r\n", res.stdout)
    # An interactive shell: typed input, ^C reaching the command inside
    # (once it runs), exit.
    init = init_pid(bb)
    code, out = _pty_run(
        [*lxpy(bb), "exec", "bb", "-t", "--", "sh"],
        [
            (b"# ", b"echo $((6*7))\r"),
            (b"42", b"sleep 100\r"),
            (b"sleep 100\r\n", b"\x03", lambda: _sleepers(init, 100)),
            (b"# ", b"exit 7\r"),
        ],
    )
    assert code == 7, out
    # -T forces pipes even on a terminal.
    code, out = _pty_run([*lxpy(bb), "exec", "bb", "-T", "--", "sh", "-c", "test -t 0"], [])
    assert code == 1, out


def test_console_attach_and_detach(bb: Daemon) -> None:
    # The boot output (busybox: the getty's prompt) is in the log.
    deadline = time.monotonic() + 10
    while "login:" not in bb.cli("console", "bb", "--log").stdout:
        assert time.monotonic() < deadline, "no login prompt in the console log"
        time.sleep(0.05)
    code, out = _pty_run(
        [*lxpy(bb), "console", "bb"],
        [(b"Ctrl-a q to detach", b"\r"), (b"login:", b"\x01q")],
    )
    assert code == 0, out
    assert b"Connected to the console of bb" in out and b"login:" in out
    # Logging resumed after the detach.
    ex(bb, "--", "sh", "-c", "echo after-detach-marker > /dev/console")
    deadline = time.monotonic() + 10
    while "after-detach-marker" not in bb.cli("console", "bb", "--log").stdout:
        assert time.monotonic() < deadline, "console output after the detach was not logged"
        time.sleep(0.05)


def test_second_console_is_busy(bb: Daemon) -> None:
    client = Client(bb.socket)
    sock, early = open_stream(client, "GET", "/1.0/containers/bb/console")
    try:
        with pytest.raises(Busy):
            open_stream(client, "GET", "/1.0/containers/bb/console")[0].close()
        # Raw frames: type into the console, read it back.
        sock.sendall(frame(STDIN, b"\r"))
        got = _read_until(sock, early, b"login:")
        assert b"login:" in got
    finally:
        sock.close()
    # Once the first client is gone, the console is free again.
    deadline = time.monotonic() + 5
    while True:
        try:
            open_stream(client, "GET", "/1.0/containers/bb/console")[0].close()
            break
        except Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _read_until(sock: Any, early: bytes, marker: bytes, timeout: float = 10) -> bytes:
    decoder = FrameDecoder()
    out = b""
    data = early
    sock.settimeout(timeout)
    while marker not in out:
        for kind, payload in decoder.feed(data):
            if kind == STDOUT:
                out += payload
        if marker in out:
            break
        data = sock.recv(65536)
        assert data, out
    return out


def test_api_errors_before_the_upgrade(bb: Daemon) -> None:
    client = Client(bb.socket)
    with pytest.raises(NotFound):
        open_stream(client, "POST", "/1.0/containers/nope/exec", {"command": ["true"]})
    with pytest.raises(InvalidArgument):
        open_stream(client, "POST", "/1.0/containers/bb/exec", {"command": []})
    # Without the upgrade headers, a plain request is refused with a hint.
    with pytest.raises(InvalidArgument, match="Upgrade"):
        client.request("POST", "/1.0/containers/bb/exec", {"command": ["true"]})
    bb.cli("create", "off", "-t", "busybox")
    res = bb.cli("exec", "off", "--", "true", check=False)
    assert res.returncode == 1 and "not running" in res.stderr
    bb.cli("freeze", "bb")
    try:
        res = bb.cli("exec", "bb", "--", "true", check=False)
        assert res.returncode == 1 and "FROZEN" in res.stderr
    finally:
        bb.cli("unfreeze", "bb")
    # A raw exec over the API: stdin frames in, stdout and exit frames out.
    sock, early = open_stream(
        client, "POST", "/1.0/containers/bb/exec", {"command": ["cat"], "tty": False}
    )
    try:
        sock.sendall(frame(STDIN, b"abc") + frame(STDIN, b""))
        decoder, out, code, data = FrameDecoder(), b"", None, early
        sock.settimeout(10)
        while code is None:
            for kind, payload in decoder.feed(data):
                if kind == STDOUT:
                    out += payload
                elif kind == EXIT:
                    code = parse_json(payload, "exit")["code"]
            if code is None:
                data = sock.recv(65536)
                assert data
        assert (out, code) == (b"abc", 0)
    finally:
        sock.close()


@pytest.mark.slow
def test_exec_in_debian(daemon: Daemon) -> None:
    d = daemon
    d.cli("template", "build", "debian-bookworm", timeout=1800)
    d.cli("create", "deb", "-t", "debian-bookworm")
    # Once it has booted (systemd said so), systemctl reaches its bus.
    d.cli("start", "deb", "--wait")
    res = subprocess.run(
        [*lxpy(d), "exec", "deb", "--", "systemctl", "is-system-running"],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert res.stdout.strip() == b"running", res
    res = subprocess.run(
        [
            *lxpy(d),
            "exec",
            "deb",
            "--",
            "sh",
            "-c",
            "cat /proc/self/cgroup; id -un; cat /proc/1/comm",
        ],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    out = res.stdout.decode()
    assert res.returncode == 0 and "root" in out and "systemd" in out, res


def test_console_and_exec_end_when_the_container_stops(bb: Daemon) -> None:
    client = Client(bb.socket)
    sock, _early = open_stream(client, "GET", "/1.0/containers/bb/console")
    proc = subprocess.Popen(
        [*lxpy(bb), "exec", "bb", "--", "sleep", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_child_sleep(init_pid(bb))
        bb.cli("stop", "bb", "--timeout", "5")
        # The console stream ends: the daemon hangs up.
        sock.settimeout(15)
        while sock.recv(65536):
            pass
        # The exec'd command ended with the container: init's shutdown
        # sends it SIGTERM (or the final cgroup kill SIGKILL).
        assert proc.wait(timeout=15) in (128 + 15, 128 + 9)
    finally:
        sock.close()
        proc.kill()
        proc.wait(timeout=10)


def test_exec_after_a_cgroup_hierarchy_it_started_in_is_unmounted(
    daemon: Daemon, tmp_path: Path
) -> None:
    # A named hierarchy mounted for a while (by an admin, or a tool) holds
    # the containers started meanwhile; once it is gone, exec joins the
    # cgroups that are left instead of failing on the missing one.
    with named_cgroup_hierarchy(tmp_path / "named") as (mnt, name):
        daemon.cli("create", "nh", "-t", "busybox")
        daemon.cli("start", "nh")
        pid = init_pid(daemon, "nh")
        held = [p for p in mnt.rglob("cgroup.procs") if str(pid) in p.read_text().split()]
        assert held, "the container's init is not in the named hierarchy"
        unmount_named_cgroup_hierarchy(mnt, name)
        res = subprocess.run(
            [
                *lxpy(daemon),
                "exec",
                "nh",
                "--",
                "sh",
                "-c",
                "cat /proc/1/cgroup; cat /proc/self/cgroup",
            ],
            input=b"",
            capture_output=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        # In init's cgroups, on every hierarchy that is left (the test's
        # named ones, gone or going, aside).
        lines = [ln for ln in res.stdout.decode().splitlines() if "name=lxpytest" not in ln]
        init, command = lines[: len(lines) // 2], lines[len(lines) // 2 :]
        assert command == init and any(ln.startswith("0::") for ln in init), lines
        # And it stops as ever.
        daemon.cli("stop", "nh")
        assert json.loads(daemon.cli("info", "nh", "--format", "json").stdout)["state"] == "STOPPED"
