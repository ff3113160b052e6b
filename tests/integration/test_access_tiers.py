"""Who may do what through lxpyd's socket: admins (root and group `lxpy`,
root-equivalent), restricted users (group `lxpy-user`) and everyone else.

Real host users and groups, made here with names of their own (the daemon
is told them through its `admin_group` and `user_group` settings), drive
the real `lxpy` command through a real lxpyd as themselves (`runuser`):
an admin, two restricted users and an outsider in neither group.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lxpy.api.client import Client
from lxpy.model.paths import PoolPaths
from tests.conftest import (
    VENV_BIN,
    Daemon,
    info,
    start_daemon,
    stop_containers,
    stop_daemon,
    unmount_all_under,
    wait_for,
)
from tests.simplestreams import Product, Server, build_tree, host_arch, rootfs_tarball

pytestmark = pytest.mark.integration

TIME_BOUND = 300

# What a restricted user may ask for; every other route must answer 403.
# Written out here rather than read from lxpy.daemon.policy: a route added
# to the daemon later fails the walk below until it is refused to them, or
# allowed on purpose here and there.
RESTRICTED_ROUTES = {
    ("GET", "/1.0"),
    ("GET", "/1.0/openapi.json"),
    ("GET", "/1.0/templates"),
    ("GET", "/1.0/templates/{name}"),
    ("GET", "/1.0/networks"),
    ("GET", "/1.0/networks/{name}"),
    ("GET", "/1.0/images"),
    ("GET", "/1.0/images/{ref}"),
    ("GET", "/1.0/remotes"),
    ("GET", "/1.0/remotes/{name}/images"),
    ("GET", "/1.0/events"),
    ("GET", "/1.0/containers"),
    ("POST", "/1.0/containers"),
    *(
        (method, "/1.0/containers/{name}" + tail)
        for method, tail in (
            ("GET", ""),
            ("DELETE", ""),
            ("PATCH", "/config"),
            ("POST", "/rename"),
            ("POST", "/copy"),
            ("GET", "/snapshots"),
            ("POST", "/snapshots"),
            ("POST", "/snapshots/{snap}/restore"),
            ("DELETE", "/snapshots/{snap}"),
            ("POST", "/start"),
            ("POST", "/stop"),
            ("POST", "/restart"),
            ("POST", "/freeze"),
            ("POST", "/unfreeze"),
            ("GET", "/stats"),
            ("GET", "/console/log"),
            ("GET", "/console"),
            ("POST", "/exec"),
            ("GET", "/export"),
            ("GET", "/devices"),
            ("POST", "/devices"),
            ("GET", "/devices/{dev}"),
            ("DELETE", "/devices/{dev}"),
        )
    ),
}


@dataclass
class Lab:
    d: Daemon
    admin_group: str
    user_group: str
    # User names: an admin, two restricted users, one in neither group.
    admin: str
    alice: str
    bob: str
    outsider: str

    def as_user(
        self, user: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`lxpy ARGS` run as host user `user` (with its groups, as at a login)."""
        return subprocess.run(
            ["runuser", "-u", user, "--", str(VENV_BIN / "lxpy"), "--socket", str(self.d.socket)]
            + list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )

    def complete(self, user: str, *words: str) -> list[str]:
        """What TAB offers `user` after `lxpy WORDS` (the bash script's
        `lxpy __complete bash --socket S WORDS`)."""
        res = subprocess.run(
            ["runuser", "-u", user, "--", str(VENV_BIN / "lxpy"), "__complete", "bash"]
            + ["--socket", str(self.d.socket), *words],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert (res.returncode, res.stderr) == (0, ""), res
        return res.stdout.splitlines()

    def ok(self, user: str, *args: str) -> str:
        res = self.as_user(user, *args)
        assert res.returncode == 0, f"{user}: lxpy {' '.join(args)}: {res.stderr}"
        return res.stdout

    def refused(self, user: str, *args: str) -> str:
        """Run a command that must fail; its stderr."""
        res = self.as_user(user, *args)
        assert res.returncode != 0, f"{user}: lxpy {' '.join(args)} succeeded: {res.stdout}"
        return res.stderr

    def python(self, user: str, code: str, **kw: object) -> subprocess.Popen[str]:
        """A Python program (this checkout's lxpy importable) run as `user`."""
        return subprocess.Popen(
            ["runuser", "-u", user, "--", str(VENV_BIN / "python"), "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            **kw,  # type: ignore[call-overload]
        )

    def names(self, user: str) -> set[str]:
        return {c["name"] for c in json.loads(self.ok(user, "list", "--format", "json"))}

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Iterator[Lab]:
    tag = "lxt" + secrets.token_hex(3)
    groups = {"admin": f"{tag}-adm", "user": f"{tag}-usr"}
    users = {
        "admin": (f"{tag}-a", groups["admin"]),
        "alice": (f"{tag}-u1", groups["user"]),
        "bob": (f"{tag}-u2", groups["user"]),
        "outsider": (f"{tag}-n", ""),
    }
    made_groups: list[str] = []
    made_users: list[str] = []
    tmp = tmp_path_factory.mktemp("tiers")
    # The socket where the users can reach it without opening pytest's
    # directories to everyone: a directory of its own, traversable only.
    sock_dir = Path(tempfile.mkdtemp(prefix="lxpy-tiers-", dir="/tmp"))
    d: Daemon | None = None
    try:
        for g in groups.values():
            _run("groupadd", g)
            made_groups.append(g)
        for name, group in users.values():
            extra = ["-G", group] if group else []
            _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", *extra, name)
            made_users.append(name)
        sock_dir.chmod(0o711)
        root = tmp / "root"
        root.mkdir()
        settings = (
            f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ndefault_network = ""\n'
            f'admin_group = "{groups["admin"]}"\nuser_group = "{groups["user"]}"\n'
        )
        d = start_daemon(root, sock_dir / "lxpy.sock", tmp / "lxpyd.log", settings=settings)
        yield Lab(
            d,
            groups["admin"],
            groups["user"],
            **{k: v[0] for k, v in users.items()},
        )
    finally:
        if d is not None:
            stop_daemon(d)
            stop_containers(d.root)
        unmount_all_under(tmp)
        shutil.rmtree(sock_dir, ignore_errors=True)
        for u in made_users:
            subprocess.run(["userdel", u], capture_output=True, timeout=30)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True, timeout=30)


def test_the_socket_admits_the_two_groups_only(lab: Lab) -> None:
    sock = lab.d.socket
    st = os.stat(sock)
    # First gate, the file: root and the admin group by the mode, the
    # restricted group by an ACL entry, nobody else.
    assert stat.S_IMODE(st.st_mode) & 0o007 == 0
    assert st.st_gid == _gid(lab.admin_group)
    acl = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            f"from lxpy.kernel import acl; print(acl.named_groups({str(sock)!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert acl.strip() == str({_gid(lab.user_group): 6})
    assert "Permission denied" in lab.refused(lab.outsider, "list")
    lab.ok(lab.admin, "list")
    lab.ok(lab.alice, "list")
    # Second gate, lxpyd itself: with the file opened to everyone, the
    # outsider is still refused, by its uid and groups from the kernel.
    mode = stat.S_IMODE(st.st_mode)
    os.chmod(sock, 0o666)
    try:
        err = lab.refused(lab.outsider, "list")
        uid = lab.uid(lab.outsider)
        assert f"uid {uid} may not use lxpyd" in err
        assert f"group {lab.admin_group!r}" in err and f"group {lab.user_group!r}" in err
    finally:
        os.chmod(sock, mode)
    assert f"refused uid {uid}" in lab.d.log.read_text()


def test_admins_are_root_equivalent_restricted_users_are_not(lab: Lab) -> None:
    # An admin may make a privileged container: root inside is host root.
    lab.ok(lab.admin, "create", "adm-priv", "-t", "busybox", "--set", "security.privileged=true")
    assert info(lab.d, "adm-priv")["config"]["security.privileged"] is True
    lab.ok(lab.admin, "config", "set", "adm-priv", "security.no_new_privs", "true")
    g = lab.user_group
    # A restricted user may not, neither at create (`--set`, the classic
    # way round) nor later; nor any security.*, raw.* or device key.
    for key, value in (
        ("security.privileged", "true"),
        ("security.idmap.isolated", "false"),
        ("security.syscalls.allow", "mount"),
        ("raw.lxc", "lxc.mount.entry=/ host none bind"),
        ("devices.root.source", "/"),
    ):
        err = lab.refused(lab.alice, "create", "a-bad", "-t", "busybox", "--set", f"{key}={value}")
        assert f"restricted users (group {g}) may not set {key}" in err, err
    assert "a-bad" not in lab.names(lab.admin)
    lab.ok(lab.alice, "create", "a-plain", "-t", "busybox", "--set", "description=mine")
    err = lab.refused(lab.alice, "config", "set", "a-plain", "security.privileged", "true")
    assert f"restricted users (group {g}) may not set security.privileged" in err
    assert f"only root and group {lab.admin_group} may" in err
    lab.ok(lab.admin, "config", "set", "a-plain", "security.no_new_privs", "true")
    err = lab.refused(lab.alice, "config", "unset", "a-plain", "security.no_new_privs")
    assert "may not unset security.no_new_privs" in err
    # The admin's grant stands: she may use it but not copy it with that key.
    err = lab.refused(lab.alice, "copy", "a-plain", "a-plain2")
    assert "may not copy container 'a-plain'" in err and "security.no_new_privs" in err
    # Keys of the container's own may be set.
    lab.ok(lab.alice, "config", "set", "a-plain", "environment.TZ", "UTC")
    lab.ok(lab.alice, "config", "set", "a-plain", "limits.memory", "256MiB")
    config = info(lab.d, "a-plain")["config"]
    assert config["security.no_new_privs"] is True and config["environment.TZ"] == "UTC"
    lab.ok(lab.admin, "destroy", "adm-priv")
    lab.ok(lab.alice, "destroy", "a-plain")


def test_a_restricted_user_runs_an_unprivileged_container_of_their_own(lab: Lab) -> None:
    lab.ok(lab.alice, "create", "a-web", "-t", "busybox")
    ct = json.loads(lab.ok(lab.alice, "info", "a-web", "--format", "json"))
    assert ct["owner"] == {"uid": lab.uid(lab.alice), "restricted": True}
    assert "unprivileged" in ct["security"] and ct["idmap"]["uid_base"] > 0
    text = lab.ok(lab.admin, "info", "a-web")
    assert "owner:" in text and f"{lab.alice} (uid {lab.uid(lab.alice)}, restricted user)" in text
    lab.ok(lab.alice, "start", "a-web")
    # Root inside is an ordinary host ID of the container's range.
    assert lab.ok(lab.alice, "exec", "a-web", "--", "id", "-u").strip() == "0"
    pid = info(lab.d, "a-web")["init_pid"]
    host_uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
    assert host_uid == ct["idmap"]["uid_base"]
    wait_for(lambda: lab.ok(lab.alice, "console", "a-web", "--log"), what="console output")
    lab.ok(lab.alice, "restart", "a-web")
    lab.ok(lab.alice, "snapshot", "create", "a-web", "s1")
    assert "s1" in lab.ok(lab.alice, "snapshot", "list", "a-web")
    # Restoring her running container stops it, restores and starts it again.
    out = lab.ok(lab.alice, "snapshot", "restore", "a-web", "s1", "--timeout", "5")
    assert out == "restored a-web to snapshot s1 and started it again\n"
    assert info(lab.d, "a-web")["state"] == "RUNNING"
    lab.ok(lab.alice, "stop", "a-web", "--force")
    lab.ok(lab.alice, "snapshot", "restore", "a-web", "s1")
    lab.ok(lab.alice, "snapshot", "delete", "a-web", "s1")
    # Renamed, it stays hers; a copy she makes is hers too.
    lab.ok(lab.alice, "rename", "a-web", "a-web2")
    lab.ok(lab.alice, "copy", "a-web2", "a-web3")
    assert lab.names(lab.alice) >= {"a-web2", "a-web3"}
    assert info(lab.d, "a-web3")["owner"] == {"uid": lab.uid(lab.alice), "restricted": True}
    lab.ok(lab.alice, "destroy", "a-web2")
    lab.ok(lab.alice, "destroy", "a-web3")
    assert not {"a-web2", "a-web3"} & lab.names(lab.admin)


def test_restricted_users_neither_see_nor_touch_other_containers(lab: Lab) -> None:
    lab.ok(lab.admin, "create", "adm-x", "-t", "busybox")
    lab.ok(lab.alice, "create", "a-x", "-t", "busybox")
    lab.ok(lab.bob, "create", "b-x", "-t", "busybox")
    lab.ok(lab.admin, "start", "adm-x")
    try:
        assert {"adm-x", "a-x", "b-x"} <= lab.names(lab.admin)
        assert "adm-x" in lab.names("root")
        assert lab.names(lab.alice) == {"a-x"}
        assert lab.names(lab.bob) == {"b-x"}
        # Completion asks lxpyd through the same routes: her names only.
        assert lab.complete(lab.alice, "start", "") == ["a-x"]
        assert lab.complete(lab.alice, "snapshot", "list", "") == ["a-x"]
        assert lab.complete(lab.alice, "snapshot", "restore", "adm-x", "") == []
        for other in ("adm-x", "b-x"):
            for args in (
                ("info", other),
                ("start", other),
                ("stop", other, "--force"),
                ("restart", other),
                ("freeze", other),
                ("exec", other, "--", "true"),
                ("console", other, "--log"),
                ("config", "set", other, "description", "taken"),
                ("snapshot", "create", other, "s"),
                ("snapshot", "list", other),
                ("snapshot", "restore", other, "s", "--timeout", "1"),
                ("rename", other, "a-took"),
                ("copy", other, "a-took"),
                ("destroy", other, "--force"),
            ):
                err = lab.refused(lab.alice, *args)
                # As for a name never used; the hint names her own only.
                assert f"container {other!r} not found" in err, (args, err)
                assert "adm-x" not in err.replace(f"'{other}'", "") and "b-x" not in err.replace(
                    f"'{other}'", ""
                )
        assert info(lab.d, "adm-x")["state"] == "RUNNING"
        assert info(lab.d, "b-x")["config"].get("description") is None
        assert {"adm-x", "a-x", "b-x"} <= lab.names(lab.admin)
        assert "a-took" not in lab.names(lab.admin)
        # A copy an admin makes of her container is the admin's, not hers.
        lab.ok(lab.admin, "copy", "a-x", "adm-copy")
        assert info(lab.d, "adm-copy")["owner"] == {"uid": lab.uid(lab.admin), "restricted": False}
        assert lab.names(lab.alice) == {"a-x"}
        # An admin may act on hers.
        lab.ok(lab.admin, "config", "set", "a-x", "description", "seen by admins")
    finally:
        for name in ("adm-x", "adm-copy", "a-x", "b-x"):
            lab.as_user("root", "destroy", name, "--force")


def test_restricted_users_only_read_templates_networks_and_the_server(lab: Lab) -> None:
    g = lab.user_group
    assert "busybox" in lab.ok(lab.alice, "template", "list")
    lab.ok(lab.alice, "network", "list")
    for args, what in (
        (("template", "build", "busybox", "--force"), "POST /1.0/templates/{name}/build"),
        (("template", "delete", "busybox"), "DELETE /1.0/templates/{name}"),
        (("network", "create", "lxtnet0"), "POST /1.0/networks"),
        (("network", "delete", "lxtnet0"), "DELETE /1.0/networks/{name}"),
        (("stop-all",), "POST /1.0/containers/stop-all"),
    ):
        err = lab.refused(lab.alice, *args)
        assert f"restricted users (group {g}) may not use {what}" in err, err
        assert f"only root and members of group {lab.admin_group!r} may" in err
    assert "lxtnet0" not in lab.ok(lab.admin, "network", "list")
    assert f"refused uid {lab.uid(lab.alice)}" in lab.d.log.read_text()


def test_restricted_users_create_from_cached_images_only(lab: Lab, tmp_path: Path) -> None:
    g = lab.user_group
    lab.ok(lab.admin, "template", "build", "busybox")
    pool = PoolPaths(Path(Client(str(lab.d.socket)).server_info()["storage"]["path"]))
    tar = tmp_path / "root.tar.xz"
    rootfs_tarball(pool.template("busybox"), tar)
    build_tree(tmp_path / "tree", [Product("bb", "1", host_arch(), "default", "2026", tar)])
    with Server(tmp_path / "tree") as server:
        lab.ok(lab.admin, "remote", "add", "lab", server.url)
        assert "lab" in lab.ok(lab.alice, "remote", "list")
        assert "bb/1" in lab.ok(lab.alice, "image", "list", "lab:")
        for args, what in (
            (("image", "pull", "lab:bb/1"), "POST /1.0/images/pull"),
            (("remote", "add", "x", server.url), "POST /1.0/remotes"),
            (("remote", "remove", "lab"), "DELETE /1.0/remotes/{name}"),
        ):
            err = lab.refused(lab.alice, *args)
            assert f"restricted users (group {g}) may not use {what}" in err, err
        # The command pulls first (refused); the API's create is refused too.
        err = lab.refused(lab.alice, "create", "a-img", "--image", "lab:bb/1")
        assert "may not use POST /1.0/images/pull" in err, err
        code = (
            "from lxpy.api.client import Client; from lxpy.errors import LxpyError\n"
            f"c = Client({str(lab.d.socket)!r})\n"
            "try:\n    c.create_container('a-img', None, image='lab:bb/1')\n"
            "except LxpyError as e:\n    print(e.message)\n"
        )
        out, _ = lab.python(lab.alice, code).communicate(timeout=60)
        assert f"restricted users (group {g}) may not download images (lab:bb/1)" in out, out
        assert server.file_requests() == 0
        lab.ok(lab.admin, "image", "pull", "lab:bb/1")
    fp = json.loads(lab.ok(lab.alice, "image", "list", "--format", "json"))[0]["fingerprint"]
    lab.ok(lab.admin, "image", "alias", fp, "bb")
    lab.ok(lab.alice, "create", "a-img", "--image", "bb")
    try:
        assert info(lab.d, "a-img")["owner"] == {"uid": lab.uid(lab.alice), "restricted": True}
        err = lab.refused(lab.alice, "publish", "a-img", "--alias", "mine")
        assert "may not use POST /1.0/images" in err, err
        err = lab.refused(lab.alice, "image", "delete", "bb")
        assert "may not use DELETE /1.0/images/{ref}" in err, err
    finally:
        lab.ok(lab.alice, "destroy", "a-img", "--force")
        lab.ok(lab.admin, "image", "delete", "bb")
        lab.ok(lab.admin, "remote", "remove", "lab")


# Asks each (method, path) read from stdin as JSON; prints [status, code] each.
_ASK = """
import json, sys
from lxpy.api.client import Client
c = Client(sys.argv[1])
out = []
for method, path in json.load(sys.stdin):
    resp = c.open(method, path, {})
    try:
        err = resp.error() if resp.status >= 400 else None
        out.append([resp.status, err and err.code, err and err.message])
    finally:
        resp.close()
print(json.dumps(out))
"""


def test_a_restricted_user_exports_their_own_container_only(lab: Lab, tmp_path: Path) -> None:
    """The backup goes to the caller's own file, written by the client with
    the caller's rights; import stays the admins'."""
    lab.ok(lab.alice, "create", "a-exp", "-t", "busybox")
    lab.ok(lab.bob, "create", "b-exp", "-t", "busybox")
    # A directory of hers (pytest's are root's alone).
    out = Path(tempfile.mkdtemp(prefix="lxpy-alice-"))
    os.chmod(out, 0o755)
    os.chown(out, lab.uid(lab.alice), -1)
    try:
        lab.ok(lab.alice, "export", "-q", "a-exp", str(out / "a.tar.zst"))
        st = (out / "a.tar.zst").stat()
        assert st.st_uid == lab.uid(lab.alice) and st.st_size > 0
        err = lab.refused(lab.alice, "export", "-q", "b-exp", str(out / "b.tar.zst"))
        assert "container 'b-exp' not found" in err, err
        assert not (out / "b.tar.zst").exists() and not (out / "b.tar.zst.part").exists()
        err = lab.refused(lab.alice, "import", "-q", str(out / "a.tar.zst"), "a-imp")
        assert "may not" in err, err
        assert "a-imp" not in lab.names(lab.admin)
        # An admin imports it; the import is the admin's.
        lab.ok(lab.admin, "import", "-q", str(out / "a.tar.zst"), "adm-imp")
        assert info(lab.d, "adm-imp")["owner"] == {"uid": lab.uid(lab.admin), "restricted": False}
    finally:
        for name in ("a-exp", "b-exp", "adm-imp"):
            lab.as_user("root", "destroy", name, "--force")
        shutil.rmtree(out)


def test_every_route_not_allowed_to_restricted_users_answers_403(lab: Lab) -> None:
    lab.ok(lab.alice, "create", "a-walk", "-t", "busybox")
    try:
        doc = json.loads(
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    lab.alice,
                    "--",
                    str(VENV_BIN / "python"),
                    "-c",
                    "import json, sys; from lxpy.api.client import Client; "
                    "print(json.dumps(Client(sys.argv[1]).request('GET', '/1.0/openapi.json')))",
                    str(lab.d.socket),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
                cwd="/",
            ).stdout
        )
        served = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
        assert RESTRICTED_ROUTES <= served
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                assert op["x-restricted-users"] is ((method.upper(), path) in RESTRICTED_ROUTES)
        denied = sorted(served - RESTRICTED_ROUTES)
        # Her own container where a route names one, so that nothing but the
        # policy can be the reason; names that do not exist elsewhere.
        asks = [
            [
                m,
                p.replace("/containers/{name}", "/containers/a-walk")
                .replace("{name}", "lxt-none")
                .replace("{snap}", "s0")
                .replace("{id}", "0" * 32),
            ]
            for m, p in denied
        ]
        proc = lab.python(lab.alice, _ASK.replace("sys.argv[1]", repr(str(lab.d.socket))))
        out, err = proc.communicate(json.dumps(asks), timeout=120)
        assert proc.returncode == 0, err
        answers = json.loads(out)
        assert len(answers) == len(denied) >= 10
        for (method, pattern), (status, code, message) in zip(denied, answers, strict=True):
            assert (status, code) == (403, "forbidden"), (method, pattern, status, message)
            assert f"may not use {method} {pattern}" in message
    finally:
        lab.ok(lab.alice, "destroy", "a-walk", "--force")


# Follows the event stream; one JSON line per event.
_FOLLOW = """
import json, sys
from lxpy.api.client import Client
for ev in Client(SOCKET).events():
    print(json.dumps(ev), flush=True)
"""


def test_the_event_stream_shows_a_restricted_user_their_containers_only(lab: Lab) -> None:
    lab.ok(lab.alice, "create", "a-ev", "-t", "busybox")
    proc = lab.python(lab.alice, _FOLLOW.replace("SOCKET", repr(str(lab.d.socket))))
    seen: list[dict[str, Any]] = []
    os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]

    def read() -> None:
        while line := proc.stdout.readline():  # type: ignore[union-attr]
            seen.append(json.loads(line))

    def marked(mark: str) -> bool:
        # Her own change, repeated until the stream (subscribed at some
        # point after the start) shows it.
        lab.ok(lab.alice, "config", "set", "a-ev", "user.mark", mark)
        read()
        return any(e.get("data", {}).get("set") == ["user.mark"] for e in seen[-5:]) and any(
            e.get("resource") == "containers/a-ev" for e in seen
        )

    try:
        wait_for(lambda: marked("1"), what="her own event")
        before = len(seen)
        # Everything an admin and the other user do now comes before her
        # next event: had it leaked, it would be in the stream by then.
        lab.ok(lab.admin, "create", "adm-ev", "-t", "busybox")
        lab.ok(lab.admin, "start", "adm-ev")
        lab.ok(lab.bob, "create", "b-ev", "-t", "busybox")
        lab.ok(lab.bob, "destroy", "b-ev")
        lab.ok(lab.admin, "template", "build", "busybox")
        # Her old name, taken by an admin's container once she renamed
        # hers: nothing of that one reaches her.
        lab.ok(lab.alice, "rename", "a-ev", "a-ev2")
        lab.ok(lab.admin, "create", "a-ev", "-t", "busybox")
        lab.ok(lab.admin, "config", "set", "a-ev", "user.admin", "1")
        lab.ok(lab.alice, "destroy", "a-ev2")

        def deleted() -> bool:
            read()
            return any(e.get("action") == "container-deleted" for e in seen[before:])

        wait_for(deleted, what="her container's deletion")
        resources = {str(e.get("resource")) for e in seen}
        assert resources == {"containers/a-ev", "containers/a-ev2"}, resources
        renamed = next(i for i, e in enumerate(seen) if e.get("action") == "container-renamed")
        after = [e for e in seen[renamed + 1 :] if e.get("resource") == "containers/a-ev"]
        assert after == [], after
        assert all(e["type"] == "lifecycle" for e in seen)
    finally:
        proc.kill()
        proc.wait()
        for name in ("adm-ev", "a-ev", "a-ev2"):
            lab.as_user("root", "destroy", name, "--force")


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid


HOLD_CONNECTIONS = """
import json, socket, time
from lxpy.daemon.http import MAX_CONNECTIONS_PER_USER

def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(SOCKET)
    return s

def status(s):
    # The status of an answer to a request on `s`, or "closed".
    try:
        s.sendall(b"GET /1.0 HTTP/1.1\\r\\nHost: lxpyd\\r\\n\\r\\n")
        line = s.recv(64)
    except OSError:
        return "closed"
    return line.split(b" ")[1].decode() if line else "closed"

# Held open, no request sent yet: each counts while it is open.
held = [connect() for _ in range(MAX_CONNECTIONS_PER_USER)]
time.sleep(0.5)
out = {"over": status(connect()), "held": status(held[0])}
held[0].close()
for _ in range(100):
    out["after"] = status(connect())
    if out["after"] != "closed":
        break
    time.sleep(0.05)
print(json.dumps(out))
"""


@pytest.mark.parametrize("who", ["alice", "root"])
def test_one_uid_holds_a_bounded_number_of_connections(lab: Lab, who: str) -> None:
    user = "root" if who == "root" else lab.alice
    proc = lab.python(user, HOLD_CONNECTIONS.replace("SOCKET", repr(str(lab.d.socket))))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # A restricted user's connection over the cap is closed before any
    # answer, and a new one is served once one of those held closes. Root
    # (an admin) has no cap. (Users in neither group cannot connect at
    # all: the socket's mode keeps them out.)
    over = "200" if who == "root" else "closed"
    assert json.loads(out) == {"over": over, "held": "200", "after": "200"}


def test_restricted_users_add_no_device_that_reaches_the_host(lab: Lab) -> None:
    g = lab.user_group
    lab.ok(lab.alice, "create", "a-dev", "-t", "busybox")
    share = lab.d.root.parent / "a-share"
    share.mkdir(exist_ok=True)
    err = lab.refused(
        lab.alice, "device", "add", "a-dev", "www", "disk", f"source={share}", "path=/srv"
    )
    assert f"restricted users (group {g}) may not add disk device 'www'" in err, err
    assert "host paths" in err
    # Nor a published port, a host node or another NIC.
    for args, what in (
        (["http", "proxy", "listen=tcp:0.0.0.0:18080", "connect=tcp:127.0.0.1:80"], "ports"),
        (["fuse", "unix-char", "source=/dev/fuse"], "a host device"),
        (["lan", "nic", "nictype=macvlan", "parent=lo", "name=eth1"], "host interface"),
    ):
        err = lab.refused(lab.alice, "device", "add", "a-dev", *args)
        assert f"may not add {args[1]} device {args[0]!r}" in err and what in err, err
    assert lab.ok(lab.alice, "device", "list", "a-dev", "--format", "json").strip() == "[]"
    # An admin may; she sees it and may take it out, but not copy it with it.
    lab.ok(lab.admin, "device", "add", "a-dev", "www", "disk", f"source={share}", "path=/srv")
    assert "source=" in lab.ok(lab.alice, "device", "list", "a-dev")
    err = lab.refused(lab.alice, "copy", "a-dev", "a-dev2")
    assert "may not copy container 'a-dev' with disk device 'www'" in err, err
    lab.ok(lab.alice, "device", "remove", "a-dev", "www")
    lab.ok(lab.alice, "copy", "a-dev", "a-dev2")
    # Another user's container has no devices to her.
    err = lab.refused(lab.bob, "device", "list", "a-dev")
    assert "not found" in err
    lab.ok(lab.alice, "destroy", "a-dev", "a-dev2")
