"""The OpenAPI document matches what lxpyd accepts and answers: schemathesis
generates requests for every endpoint from GET /1.0/openapi.json, sends
them to a real lxpyd, and checks each answer: never a 5xx (but the 504 of a
start or restart whose wait for readiness ran out, which the document
names), and its status, Content-Type, header fields and body as the
document says.

The daemon runs in a network namespace of its own (`unshare --net`), so
that the managed networks the fuzzing creates (bridges, nftables tables,
dnsmasq) are made and removed there, out of the host's way; its mirror is
a closed port, so a build of a Debian template fails at once instead of
fetching from the network. Path parameters are drawn from the random
ones and from objects that exist (a running container, a snapshot, a
network, an operation), so that requests reach the handlers, not only the
404s. The daemon is the test's own: destroying, renaming or stopping what
it holds is what fuzzing may do.

Requests go over the unix socket through a requests transport adapter
(no TCP port is opened: anything listening on one would let any local
user talk to a root daemon).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import urllib3
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lxpy.model.paths import RunPaths
from tests.conftest import Daemon, daemon_in

pytestmark = pytest.mark.integration

# Per operation and generation mode: enough to reach each handler's
# branches, bounded so the whole run takes a few minutes on a busy host.
EXAMPLES = 30
BASE = "http://lxpyd"
TIMEOUT = 120


@schemathesis.check
def not_a_server_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx is a fault, but for a wait for readiness that ran out: a
    request asking to wait (`wait`, with any `wait_timeout` down to 0)
    for a container to boot gets 504 `timeout` when it is not ready by
    then, and the container runs on."""
    asked_to_wait = isinstance(case.body, dict) and case.body.get("wait") is True
    if asked_to_wait and response.status_code == 504:
        assert response.json()["error"]["code"] == "timeout", response.text
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_fault,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__("lxpyd", *args, **kwargs)
        self._path = path

    def _new_conn(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(self._path)
        return s


class _UnixPool(urllib3.HTTPConnectionPool):
    def __init__(self, path: str) -> None:
        super().__init__("lxpyd")
        self._path = path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self._path, timeout=self.timeout.connect_timeout)


class UnixAdapter(HTTPAdapter):
    """requests' transport to an HTTP server on a unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._pool = _UnixPool(path)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> _UnixPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def _provide(d: Daemon, session: requests.Session) -> None:
    """What the path parameters name, made again where fuzzing removed it:
    the busybox template, `c1` running with snapshot `s1`, network `lab`."""

    def missing(path: str) -> bool:
        return session.get(BASE + path, timeout=TIMEOUT).status_code == 404

    if missing("/1.0/containers/c1"):
        d.cli("create", "c1", "-t", "busybox", "--set", "user.a=1")
    if missing("/1.0/containers/c1/snapshots/s1"):
        d.cli("snapshot", "create", "c1", "s1", check=False)
    if session.get(BASE + "/1.0/containers/c1", timeout=TIMEOUT).json()["state"] == "STOPPED":
        d.cli("start", "c1", check=False)
    if missing("/1.0/networks/lab"):
        d.cli("network", "create", "lab", "--subnet", "10.201.7.0/24")


@pytest.fixture(scope="module")
def lxpyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    settings = 'default_network = ""\nmirror = "http://127.0.0.1:9/debian"\n'
    tmp = tmp_path_factory.mktemp("schema")
    # The networks fuzzing made went with the namespace; their files in the
    # run directory go after the daemon.
    run = RunPaths.of((tmp / "root").absolute()).dir
    with daemon_in(
        tmp,
        settings,
        after_stop=lambda: shutil.rmtree(run, ignore_errors=True),
        prefix=("unshare", "--net", "--"),
    ) as d:
        d.cli("template", "build", "busybox")
        yield d
        d.cli("stop-all", check=False)


@pytest.fixture(scope="module")
def session(lxpyd: Daemon) -> Iterator[requests.Session]:
    s = requests.Session()
    s.mount(BASE, UnixAdapter(str(lxpyd.socket)))
    yield s
    s.close()


@pytest.fixture(scope="module")
def api(lxpyd: Daemon, session: requests.Session) -> Any:
    _provide(lxpyd, session)
    doc = session.get(BASE + "/1.0/openapi.json", timeout=TIMEOUT).json()
    ops = session.get(BASE + "/1.0/operations", timeout=TIMEOUT).json()
    known = {
        "name": ["c1", "busybox", "lab"],
        "snap": ["s1"],
        "id": [op["id"] for op in ops],
    }
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=BASE)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])

    @schema.hook
    def before_generate_path_parameters(ctx: Any, strategy: Any) -> Any:
        def known_or_not(params: dict[str, Any] | None) -> Any:
            if not params:
                return st.just(params)
            return st.fixed_dictionaries(
                {k: st.sampled_from([v, *known.get(k, [])]) for k, v in params.items()}
            )

        return strategy.flatmap(known_or_not)

    return schema


schema = schemathesis.pytest.from_fixture("api")


def _stream(case: Any, session: requests.Session) -> requests.Response:
    """A stream's answer (events, an operation's): its head, not its body,
    which may never end."""
    kwargs = case.as_transport_kwargs(base_url=BASE)
    resp = session.request(**kwargs, stream=True, timeout=TIMEOUT)
    if resp.status_code == 200:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        resp.close()
    return resp


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    # Each run from scratch: no examples kept in the checkout between runs.
    database=None,
)
def test_every_endpoint_answers_as_documented(
    case: Any, lxpyd: Daemon, session: requests.Session
) -> None:
    _provide(lxpyd, session)
    if case.path in ("/1.0/events", "/1.0/operations/{id}/stream"):
        resp = _stream(case, session)
        if resp.status_code == 200:
            return
        case.validate_response(resp, checks=CHECKS)
        return
    checks = CHECKS + ([negative_data_rejection] if case.meta.generation.mode.is_negative else [])
    case.call_and_validate(session=session, checks=checks, timeout=TIMEOUT)


def test_the_daemon_survived(lxpyd: Daemon, session: requests.Session) -> None:
    # After the fuzzing: no connection's trouble was logged as a failure
    # either (a 5xx is caught above, a broken connection only here).
    assert session.get(BASE + "/1.0", timeout=TIMEOUT).json()["pid"] == lxpyd.proc.pid
    log = lxpyd.log.read_text()
    assert "Traceback" not in log, log[-5000:]
