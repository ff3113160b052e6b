"""Shell completion for real: bash runs the completion function of
`lxpy completion bash` (COMP_WORDS, COMP_CWORD, COMPREPLY) against a real
lxpyd with containers, snapshots, a template and a network; fish completes
with `complete -C`; zsh runs its function with zsh's completion builtins
(_describe, _files, compdef) replaced by ones that print what they get.

zsh and fish come from the Debian mirror as packages unpacked into the
test's directory (`apt-get download`, kept in the test cache): nothing is
installed on the host.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, Daemon, info, stop_daemon
from tests.integration.test_network import free_subnet, net_name, scrub

pytestmark = pytest.mark.integration

LXPY = str(VENV_BIN / "lxpy")
SHELL_PACKAGES = ("zsh", "zsh-common", "fish", "fish-common", "libpcre2-32-0")


@pytest.fixture(scope="module")
def shells(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with zsh and fish unpacked from their Debian packages."""
    cache = test_cache / "shells"
    cache.mkdir(exist_ok=True)
    if not all(list(cache.glob(f"{p}_*.deb")) for p in SHELL_PACKAGES):
        res = subprocess.run(
            ["apt-get", "download", *SHELL_PACKAGES],
            cwd=cache,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"apt-get download failed:\n{res.stderr}"
    root = tmp_path_factory.mktemp("shells")
    for p in SHELL_PACKAGES:
        deb = sorted(cache.glob(f"{p}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    return root


@pytest.fixture
def world(daemon: Daemon) -> Iterator[tuple[Daemon, str]]:
    """web (running, snapshots s1 and s2, two keys set), db (stopped), the
    busybox template built, and a network of the test's own."""
    d = daemon
    net = net_name()
    try:
        d.cli("template", "build", "busybox", timeout=300)
        d.cli("create", "web", "-t", "busybox", "--set", "environment.TZ=UTC")
        d.cli("config", "set", "web", "user.team", "ops")
        d.cli("create", "db", "-t", "busybox")
        d.cli("start", "web")
        d.cli("snapshot", "create", "web", "s1")
        d.cli("snapshot", "create", "web", "s2")
        d.cli("network", "create", net, "--subnet", free_subnet())
        yield d, net
    finally:
        d.cli("network", "delete", net, check=False)
        stop_daemon(d)
        scrub(d.root)


def bash_complete(
    *words: str, env: dict[str, str] | None = None, cwd: Path | None = None, prog: str = LXPY
) -> list[str]:
    """COMPREPLY of the lxpy completion function for the command line
    `words` (the last one being completed) after `prog` as typed."""
    script = subprocess.run(
        [LXPY, "completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    call = (
        f"{script}\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
        'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        '_lxpy || exit 9\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", call, "bash", prog, *words],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )
    assert res.returncode == 0 and res.stderr == "", res
    return [line for line in res.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_names_from_the_daemon(
    world: tuple[Daemon, str], tmp_path: Path
) -> None:
    d, net = world
    s = ("--socket", str(d.socket))
    env = {**os.environ, "LXPY_SOCKET": str(d.socket)}

    top = bash_complete("")
    assert {"create", "start", "snapshot", "template", "network", "completion"} <= set(top)
    assert not {"web", "db"} & set(top)
    assert bash_complete("sn") == ["snapshot"]
    assert bash_complete("snapshot", "") == ["create", "list", "restore", "delete"]
    assert set(bash_complete("stop", "--")) == {"--help", "--timeout", "--force"}
    assert bash_complete("completion", "") == ["bash", "zsh", "fish"]
    # `lxpy` typed but not on PATH (a checkout): the lxpy that wrote the script.
    plain = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    assert bash_complete("sn", prog="lxpy", env=plain) == ["snapshot"]

    # Names from the daemon: by --socket, or $LXPY_SOCKET.
    assert bash_complete(*s, "start", "") == ["db", "web"]
    assert bash_complete("info", "w", env=env) == ["web"]
    assert bash_complete(*s, "start", "db", "") == ["db", "web"]  # several names
    assert bash_complete(*s, "snapshot", "restore", "web", "") == ["s1", "s2"]
    assert bash_complete(*s, "snapshot", "delete", "db", "") == []
    assert {"busybox", "debian-bookworm"} <= set(bash_complete(*s, "create", "x", "-t", ""))
    assert bash_complete(*s, "template", "build", "bus") == ["busybox"]
    assert bash_complete(*s, "network", "info", "") == [net]
    assert bash_complete(*s, "config", "set", "web", "network", "") == [net]
    assert bash_complete(*s, "config", "set", "web", "limits.mem") == [
        "limits.memory",
        "limits.memory.swap",
    ]
    set_keys = sorted(info(d, "web")["config"])
    assert {"environment.TZ", "user.team"} <= set(set_keys)
    assert bash_complete(*s, "config", "unset", "web", "") == set_keys
    assert "user.team" in bash_complete(*s, "config", "set", "web", "user.")
    assert bash_complete(*s, "create", "web2", "--set", "environment") == ["environment."]

    # New names, the command inside exec and plain numbers: nothing to offer.
    assert bash_complete(*s, "create", "") == []
    assert bash_complete(*s, "snapshot", "create", "web", "") == []
    assert bash_complete(*s, "copy", "web", "") == []
    assert bash_complete(*s, "exec", "web", "--", "") == []
    assert bash_complete(*s, "stop", "web", "--timeout", "") == []

    # --socket takes a file name.
    (tmp_path / "here.sock").touch()
    assert bash_complete("--socket", f"{tmp_path}/he") == [f"{tmp_path}/here.sock"]

    # No daemon: names complete to nothing, and nothing is printed.
    gone = ("--socket", str(tmp_path / "no-daemon.sock"))
    assert bash_complete(*gone, "start", "") == []
    assert bash_complete(*gone, "sto") == ["stop", "stop-all"]


def test_zsh_and_fish_scripts_parse_and_complete(world: tuple[Daemon, str], shells: Path) -> None:
    d, _net = world
    zsh = shells / "bin" / "zsh"
    fish = shells / "usr" / "bin" / "fish"
    fish_env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(shells / "usr" / "lib" / "x86_64-linux-gnu"),
        "LXPY_SOCKET": str(d.socket),
    }
    zsh_script = subprocess.run(
        [LXPY, "completion", "zsh"], capture_output=True, text=True, check=True
    ).stdout
    fish_script = subprocess.run(
        [LXPY, "completion", "fish"], capture_output=True, text=True, check=True
    ).stdout
    assert zsh_script.startswith("#compdef lxpy\n")
    for shell, args, text in (
        (zsh, ["-n"], zsh_script),
        (fish, ["--no-config", "-n"], fish_script),
    ):
        res = subprocess.run(
            [str(shell), *args], input=text, capture_output=True, text=True, env=fish_env
        )
        assert res.returncode == 0 and res.stderr == "", (shell, res)

    # fish: its own completion machinery, `lxpy` not on PATH (the script
    # falls back to the lxpy that wrote it).
    def fish_complete(line: str) -> list[str]:
        res = subprocess.run(
            [str(fish), "--no-config", "-c", f"{fish_script}\ncomplete -C '{line}'"],
            capture_output=True,
            text=True,
            timeout=60,
            env=fish_env,
        )
        assert res.returncode == 0 and res.stderr == "", res
        return res.stdout.splitlines()

    assert fish_complete("lxpy sn") == [
        "snapshot\tcreate, list, restore and delete snapshots of a container"
    ]
    assert fish_complete("lxpy start ") == ["db\tSTOPPED", "web\tRUNNING"]
    assert [c.split("\t")[0] for c in fish_complete("lxpy snapshot restore web ")] == ["s1", "s2"]
    assert "--force\tkill it at once" in fish_complete("lxpy stop --")

    # zsh: the function as compsys calls it, with the builtins it hands
    # candidates to replaced by ones that print them.
    def zsh_complete(*words: str) -> list[str]:
        module_path = shells / "usr" / "lib" / "x86_64-linux-gnu" / "zsh" / "5.9"
        quoted = " ".join(f"'{w}'" for w in words)
        prog = (
            f"module_path=({module_path})\n"
            "compdef() { : }\n"
            '_describe() { local -a a; a=("${(@P)4}"); print -rl -- "${a[@]}" }\n'
            "_files() { print -r -- FILES }\n"
            f"{zsh_script}\n"
            f"words=(lxpy {quoted}); CURRENT=${{#words}}; _lxpy\n"
        )
        res = subprocess.run(
            [str(zsh), "-f", "-c", prog], capture_output=True, text=True, timeout=60, env=fish_env
        )
        assert res.returncode == 0 and res.stderr == "", res
        return res.stdout.splitlines()

    assert zsh_complete("start", "") == ["db:STOPPED", "web:RUNNING"]
    snaps = zsh_complete("snapshot", "restore", "web", "")
    assert [c.split(":")[0] for c in snaps] == ["s1", "s2"]
    assert zsh_complete("--socket", "") == ["FILES"]
    (weight,) = zsh_complete("config", "set", "web", "limits.cpu.w")
    assert weight.startswith("limits.cpu.weight:") and len(weight) > len("limits.cpu.weight:")
