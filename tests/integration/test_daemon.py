"""lxpyd as a real process: its HTTP API, streams, lock, socket and signals.

The tests speak HTTP to the socket with a tiny stdlib helper, not the CLI
(which has tests of its own).
"""

from __future__ import annotations

import grp
import http.client
import io
import json
import os
import socket
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lxpy.kernel import apparmor, systemd
from tests.conftest import VENV_BIN, Daemon, daemon_in, start_daemon, stop_daemon

pytestmark = pytest.mark.integration

TIMEOUT = 30


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("lxpyd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(str(self._path))
        self.sock = s


def call(
    sock: Path,
    method: str,
    path: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    timeout: float = 120,
) -> tuple[int, Any]:
    """One request; the status and the decoded JSON answer."""
    conn = _UnixConnection(sock, timeout)
    try:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def ok(sock: Path, method: str, path: str, body: object = None, status: int = 200) -> Any:
    got, data = call(sock, method, path, body)
    assert got == status, f"{method} {path}: {got} {data}"
    return data


class NDJSON:
    """An open NDJSON stream; `next()` is the next object, bounded in time."""

    def __init__(self, sock: Path, path: str, timeout: float = TIMEOUT) -> None:
        self.conn = _UnixConnection(sock, timeout)
        self.conn.request("GET", path)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type") == "application/x-ndjson"

    def next(self) -> Any:
        line = self.resp.readline()
        return json.loads(line) if line else None

    def until(self, pred: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.next()
            assert item is not None, "stream ended"
            if pred(item):
                return item
        raise AssertionError("no matching item in time")

    def close(self) -> None:
        self.conn.close()


def write_busybox(tdir: Path) -> None:
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "mybox.toml").write_text(
        'description = "test busybox"\n[source]\nkind = "busybox"\nbusybox = "/bin/busybox"\n'
    )


@pytest.fixture
def tdaemon(tmp_path: Path, test_cache: Path) -> Iterator[Daemon]:
    """A daemon with a user template directory, tmp_path/templates."""
    tdir = tmp_path / "templates"
    tdir.mkdir()
    settings = f'pool_size = "3GiB"\nbuild_cache = "{test_cache}"\ntemplate_dirs = ["{tdir}"]\n'
    with daemon_in(tmp_path, settings) as d:
        yield d


# -- server ------------------------------------------------------------------

ROUTES = {
    ("get", "/1.0"),
    ("get", "/1.0/openapi.json"),
    ("get", "/1.0/templates"),
    ("get", "/1.0/templates/{name}"),
    ("post", "/1.0/templates/{name}/build"),
    ("delete", "/1.0/templates/{name}"),
    ("get", "/1.0/containers"),
    ("post", "/1.0/containers"),
    ("get", "/1.0/containers/{name}"),
    ("delete", "/1.0/containers/{name}"),
    ("patch", "/1.0/containers/{name}/config"),
    ("post", "/1.0/containers/{name}/rename"),
    ("post", "/1.0/containers/{name}/copy"),
    ("get", "/1.0/containers/{name}/export"),
    ("post", "/1.0/containers/import"),
    ("get", "/1.0/containers/{name}/snapshots"),
    ("post", "/1.0/containers/{name}/snapshots"),
    ("post", "/1.0/containers/{name}/snapshots/{snap}/restore"),
    ("delete", "/1.0/containers/{name}/snapshots/{snap}"),
    ("get", "/1.0/operations"),
    ("get", "/1.0/operations/{id}"),
    ("get", "/1.0/operations/{id}/wait"),
    ("get", "/1.0/operations/{id}/stream"),
    ("delete", "/1.0/operations/{id}"),
    ("get", "/1.0/events"),
    ("get", "/1.0/remotes"),
    ("post", "/1.0/remotes"),
    ("delete", "/1.0/remotes/{name}"),
    ("get", "/1.0/remotes/{name}/images"),
    ("get", "/1.0/images"),
    ("post", "/1.0/images"),
    ("post", "/1.0/images/pull"),
    ("get", "/1.0/images/{ref}"),
    ("patch", "/1.0/images/{ref}"),
    ("delete", "/1.0/images/{ref}"),
    ("get", "/1.0/networks"),
    ("post", "/1.0/networks"),
    ("get", "/1.0/networks/{name}"),
    ("delete", "/1.0/networks/{name}"),
    ("post", "/1.0/containers/{name}/start"),
    ("post", "/1.0/containers/{name}/stop"),
    ("post", "/1.0/containers/{name}/restart"),
    ("post", "/1.0/containers/{name}/freeze"),
    ("post", "/1.0/containers/{name}/unfreeze"),
    ("get", "/1.0/containers/{name}/console/log"),
    ("get", "/1.0/containers/{name}/stats"),
    ("post", "/1.0/containers/stop-all"),
    ("get", "/1.0/containers/{name}/console"),
    ("post", "/1.0/containers/{name}/exec"),
    ("get", "/1.0/containers/{name}/devices"),
    ("post", "/1.0/containers/{name}/devices"),
    ("get", "/1.0/containers/{name}/devices/{dev}"),
    ("delete", "/1.0/containers/{name}/devices/{dev}"),
    ("get", "/1.0/volumes"),
    ("post", "/1.0/volumes"),
    ("get", "/1.0/volumes/{name}"),
    ("delete", "/1.0/volumes/{name}"),
}


def test_info_and_openapi(daemon: Daemon) -> None:
    info = ok(daemon.socket, "GET", "/1.0")
    assert isinstance(info, dict)
    assert info["api_version"] == "1.0"
    assert info["pid"] == daemon.proc.pid
    assert info["root"] == str(daemon.root)
    assert info["storage"]["backend"] == "btrfs"
    assert info["storage"]["instant_snapshot"] is True

    doc = ok(daemon.socket, "GET", "/1.0/openapi.json")
    assert isinstance(doc, dict)
    assert doc["openapi"].startswith("3.1")
    served = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == ROUTES
    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"], (method, path)
            assert op["responses"]["404"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
            # Every reference points at a schema the document defines.
            for ref in _refs(op):
                assert ref.split("/")[-1] in schemas, ref
    create = doc["paths"]["/1.0/containers"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["name"]
    assert body["oneOf"] == [{"required": ["template"]}, {"required": ["image"]}]
    assert "201" in create["responses"]
    stream = doc["paths"]["/1.0/events"]["get"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in stream


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _is_error(data: object, code: str) -> None:
    assert isinstance(data, dict) and set(data) == {"error"}, data
    assert data["error"]["code"] == code
    assert data["error"]["message"]
    assert "hint" in data["error"]


def test_http_errors_and_keepalive(daemon: Daemon) -> None:
    status, data = call(daemon.socket, "GET", "/1.0/nope")
    assert status == 404
    _is_error(data, "not_found")
    status, data = call(daemon.socket, "PUT", "/1.0/containers")
    assert status == 405
    _is_error(data, "invalid_argument")
    status, data = call(daemon.socket, "POST", "/1.0/containers", raw=b"{not json")
    assert status == 400
    _is_error(data, "invalid_argument")
    status, data = call(daemon.socket, "POST", "/1.0/containers", raw=b"[1, 2]")
    assert status == 400
    _is_error(data, "invalid_argument")
    status, data = call(daemon.socket, "GET", "/1.0/containers/missing")
    assert status == 404
    _is_error(data, "not_found")
    status, data = call(daemon.socket, "POST", "/1.0/containers", {"name": "a", "template": "no"})
    assert status == 404
    assert "busybox" in data["error"]["hint"]

    # Several requests on one connection.
    conn = _UnixConnection(daemon.socket, TIMEOUT)
    try:
        for _ in range(3):
            conn.request("GET", "/1.0")
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["api_version"] == "1.0"
    finally:
        conn.close()


def test_second_daemon_refused(daemon: Daemon, tmp_path: Path) -> None:
    res = subprocess.run(
        [str(VENV_BIN / "lxpyd"), "--root", str(daemon.root), "--socket", str(tmp_path / "2.sock")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 1
    assert (
        f"error: another lxpyd is already running for {daemon.root} (pid {daemon.proc.pid})"
        in res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "2.sock").exists()


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('storage = "zfs"\n')
    res = subprocess.run(
        [str(VENV_BIN / "lxpyd"), "--config", str(conf), "--root", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "storage" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("setting", "host_has_it", "without", "with_"),
    [
        (
            "systemd_scopes",
            systemd.available,
            "systemd does not run here",
            "containers run in systemd scopes",
        ),
        (
            "apparmor",
            apparmor.enabled,
            "this kernel runs no AppArmor",
            "run under AppArmor profile lxpy-container",
        ),
    ],
)
def test_a_feature_set_on_needs_the_host_to_have_it(
    tmp_path: Path, setting: str, host_has_it: Callable[[], bool], without: str, with_: str
) -> None:
    # "on" fails loudly where "auto" would fall back quietly.
    settings = f'{setting} = "on"\npool_size = "3GiB"\ndefault_network = ""\n'
    if host_has_it():
        with daemon_in(tmp_path, settings) as d:
            assert with_ in d.log.read_text()
        return
    conf = tmp_path / "on.toml"
    conf.write_text(settings)
    res = subprocess.run(
        [str(VENV_BIN / "lxpyd"), "--config", str(conf), "--root", str(tmp_path / "r")]
        + ["--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 1, res.stderr
    assert f"error: {setting} is on, but {without}" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # Refused before anything was made: no pool, no socket.
    assert not (tmp_path / "s.sock").exists()
    assert not (tmp_path / "r" / "pool").exists()


def test_socket_mode_and_sigterm(daemon: Daemon) -> None:
    st = daemon.socket.stat()
    assert stat.S_ISSOCK(st.st_mode)
    try:
        gid = grp.getgrnam("lxpy").gr_gid
    except KeyError:
        assert stat.S_IMODE(st.st_mode) == 0o600
    else:
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
    lock = daemon.paths.lock
    assert lock.read_text().strip() == str(daemon.proc.pid)

    events = NDJSON(daemon.socket, "/1.0/events")
    daemon.proc.terminate()
    assert daemon.proc.wait(timeout=TIMEOUT) == 0
    assert not daemon.socket.exists()
    # An open stream ends when the daemon stops.
    assert events.next() is None
    events.close()
    log = daemon.log.read_text()
    assert "Traceback" not in log
    # Not a terminal: sd-daemon priority prefixes, no timestamps.
    assert "<6>lxpyd: " in log


# -- containers and events -----------------------------------------------------


def test_lifecycle_events(daemon: Daemon) -> None:
    sock = daemon.socket
    events = NDJSON(sock, "/1.0/events?type=lifecycle")
    try:
        made = ok(
            sock, "POST", "/1.0/containers",
            {"name": "web", "template": "busybox", "config": {"user.a": "1"}}, 201,
        )  # fmt: skip
        assert made["state"] == "STOPPED" and made["config"] == {"user.a": "1"}
        ev = events.until(lambda e: e["action"] == "container-created")
        assert ev["type"] == "lifecycle" and ev["resource"] == "containers/web"

        status, err = call(sock, "POST", "/1.0/containers", {"name": "web", "template": "busybox"})
        assert status == 409
        _is_error(err, "already_exists")

        ok(sock, "PATCH", "/1.0/containers/web/config", {"set": {"hostname": "h1"}})
        events.until(lambda e: e["action"] == "container-updated")
        snap = ok(sock, "POST", "/1.0/containers/web/snapshots", {}, 201)
        assert snap["name"] == "snap0"
        ev = events.until(lambda e: e["action"] == "snapshot-created")
        assert ev["data"] == {"snapshot": "snap0"}
        ok(sock, "POST", "/1.0/containers/web/snapshots/snap0/restore")
        events.until(lambda e: e["action"] == "snapshot-restored")
        renamed = ok(sock, "POST", "/1.0/containers/web/rename", {"name": "web2"})
        assert renamed["snapshots"] == ["snap0"]
        ev = events.until(lambda e: e["action"] == "container-renamed")
        assert ev["data"] == {"old": "web", "new": "web2"}
        ok(sock, "POST", "/1.0/containers/web2/copy", {"name": "web3"}, 201)
        ev = events.until(lambda e: e["action"] == "container-copied")
        assert ev["data"] == {"source": "web2"}
        ok(sock, "DELETE", "/1.0/containers/web2/snapshots/snap0")
        events.until(lambda e: e["action"] == "snapshot-deleted")
        ok(sock, "DELETE", "/1.0/containers/web3")
        ev = events.until(lambda e: e["action"] == "container-deleted")
        assert ev["resource"] == "containers/web3"
        names = [c["name"] for c in ok(sock, "GET", "/1.0/containers")]
        assert names == ["web2"]
    finally:
        events.close()


def test_records_atomic_and_reloaded(daemon: Daemon, tmp_path: Path) -> None:
    sock = daemon.socket
    ok(sock, "POST", "/1.0/containers", {"name": "keep", "template": "busybox"}, 201)
    ok(sock, "PATCH", "/1.0/containers/keep/config", {"set": {"environment.TZ": "UTC"}})
    records = daemon.paths.records
    # Only finished files: no temporary file left beside them.
    assert sorted(p.name for p in records.iterdir()) == ["keep.toml"]
    assert '"environment.TZ" = "UTC"' in (records / "keep.toml").read_text()
    (records / "broken.toml").write_text("name = [\n")

    stop_daemon(daemon)
    assert daemon.proc.returncode == 0
    again = start_daemon(
        daemon.root, daemon.socket, daemon.log,
        settings=(daemon.root.parent / f"{daemon.root.name}-lxpyd.toml").read_text(),
    )  # fmt: skip
    try:
        c = ok(sock, "GET", "/1.0/containers/keep")
        assert c["config"] == {"environment.TZ": "UTC"}
        assert c["state"] == "STOPPED"
        bad = ok(sock, "GET", "/1.0/containers/broken")
        assert bad["state"] == "ERROR"
        assert "not valid TOML" in bad["error"]
        # A broken record can still be deleted.
        ok(sock, "DELETE", "/1.0/containers/broken")
        assert not (records / "broken.toml").exists()
    finally:
        stop_daemon(again)


def test_create_validates_before_storage(daemon: Daemon) -> None:
    sock = daemon.socket
    status, err = call(
        sock, "POST", "/1.0/containers",
        {"name": "x1", "template": "busybox", "config": {"nope": "1"}},
    )  # fmt: skip
    assert status == 400
    _is_error(err, "invalid_argument")
    # Nothing was built or made for a rejected request.
    assert ok(sock, "GET", "/1.0/templates/busybox")["built"] is False
    assert not daemon.paths.pool.container("x1").exists()
    assert not daemon.paths.record("x1").exists()


# -- templates and operations ---------------------------------------------------


def test_build_stream_and_cache(daemon: Daemon) -> None:
    sock = daemon.socket
    op = ok(sock, "POST", "/1.0/templates/busybox/build", {}, 202)
    assert op["kind"] == "template-build" and op["resource"] == "templates/busybox"
    done = ok(sock, "GET", f"/1.0/operations/{op['id']}/wait?timeout=60")
    assert done["status"] == "success", done

    # The stream of a finished operation replays its log, then the operation.
    stream = NDJSON(sock, f"/1.0/operations/{op['id']}/stream")
    items = []
    while (item := stream.next()) is not None:
        items.append(item)
    stream.close()
    logs = [i["log"] for i in items if "log" in i]
    assert logs, items
    assert items[-1]["operation"]["status"] == "success"
    assert (daemon.paths.template_records / "busybox.log").read_text().splitlines() == logs

    tpl = ok(sock, "GET", "/1.0/templates/busybox")
    assert tpl["built"] is True and tpl["stale"] is False
    assert tpl["built_digest"] == tpl["digest"]
    assert isinstance(tpl["build_seconds"], float)

    again = ok(sock, "POST", "/1.0/templates/busybox/build", {}, 202)
    done = ok(sock, "GET", f"/1.0/operations/{again['id']}/wait?timeout=60")
    assert done["status"] == "success" and done["stage"] == "cached"

    ok(sock, "DELETE", "/1.0/templates/busybox")
    status, err = call(sock, "DELETE", "/1.0/templates/busybox")
    assert status == 404
    _is_error(err, "not_found")


def _partial_tar() -> bytes:
    """The first half of a tar archive: tar reading it waits for the rest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = os.urandom(4 << 20)
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()[: 2 << 20]


@contextmanager
def slow_build(d: Daemon, tmp_path: Path) -> Iterator[tuple[str, NDJSON]]:
    """A build of template `slow` stopped half way through extracting its
    archive: tar gets half an archive through a pipe held open, so it waits
    until the build is cancelled. Yields the operation id and its stream."""
    fifo = tmp_path / "slow.tar"
    os.mkfifo(fifo)
    (tmp_path / "templates" / "slow.toml").write_text(
        f'[source]\nkind = "tarball"\npath = "{fifo}"\n'
    )
    stop = threading.Event()

    def feed() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(_partial_tar())
                f.flush()
                stop.wait(TIMEOUT)
        except OSError:
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    stream = None
    try:
        op = ok(d.socket, "POST", "/1.0/templates/slow/build", {}, 202)
        stream = NDJSON(d.socket, f"/1.0/operations/{op['id']}/stream")
        stream.until(lambda i: i.get("stage") == "extracting")
        # Part of the archive has landed in the staging volume.
        staging = d.paths.pool.staging("slow")
        deadline = time.monotonic() + TIMEOUT
        while not (staging / "big.bin").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (staging / "big.bin").exists()
        yield op["id"], stream
    finally:
        if stream is not None:
            stream.close()
        stop.set()
        feeder.join(TIMEOUT)


def _no_tar_left(d: Daemon) -> None:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(d.root.parent / "slow.tar") not in ps.stdout


def test_cancel_build_leaves_nothing(tdaemon: Daemon, tmp_path: Path) -> None:
    sock = tdaemon.socket
    with slow_build(tdaemon, tmp_path) as (op_id, stream):
        status, err = call(sock, "POST", "/1.0/templates/slow/build", {})
        assert status == 409
        _is_error(err, "busy")
        status, err = call(sock, "DELETE", "/1.0/templates/slow")
        assert status == 409

        ok(sock, "DELETE", f"/1.0/operations/{op_id}")
        last = stream.until(lambda i: "operation" in i)
        assert last["operation"]["status"] == "cancelled"
        assert last["operation"]["error"]["code"] == "cancelled"

    _no_tar_left(tdaemon)
    assert list(tdaemon.paths.pool.templates.iterdir()) == []
    tpl = ok(sock, "GET", "/1.0/templates/slow")
    assert tpl["built"] is False and tpl["built_at"] is None
    assert not (tdaemon.paths.template_records / "slow.json").exists()
    # The daemon serves on, and a new template file is seen at once.
    write_busybox(tmp_path / "templates")
    ok(sock, "POST", "/1.0/containers", {"name": "after", "template": "mybox"}, 201)


def test_sigterm_during_build_leaves_nothing(tdaemon: Daemon, tmp_path: Path) -> None:
    with slow_build(tdaemon, tmp_path) as (_, stream):
        tdaemon.proc.terminate()
        assert tdaemon.proc.wait(timeout=TIMEOUT) == 0
        # Streams end with the daemon.
        while stream.next() is not None:
            pass
    _no_tar_left(tdaemon)
    assert list(tdaemon.paths.pool.templates.iterdir()) == []
    assert not tdaemon.socket.exists()
    log = tdaemon.log.read_text()
    assert "template-build templates/slow cancelled" in log
    assert "Traceback" not in log


def test_clients_hanging_up_on_streams(daemon: Daemon) -> None:
    sock = daemon.socket
    op = ok(sock, "POST", "/1.0/templates/busybox/build", {}, 202)
    ok(sock, "GET", f"/1.0/operations/{op['id']}/wait?timeout=60")
    for _ in range(20):
        for path in (f"/1.0/operations/{op['id']}/stream", "/1.0/events"):
            stream = NDJSON(sock, path)
            if "operations" in path:
                assert stream.next() is not None
            stream.close()
        assert ok(sock, "GET", "/1.0")["api_version"] == "1.0"
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.log.read_text()
