"""Every call of lxpyd's API (docs/api.md), written once for both clients.

A call is described as a `Call`: method, path (its names quoted), query,
body and how the answer is read. `Calls` holds one `Endpoint` per call; the
sync `Client` (lxpy.api.client, for the CLI) and the asyncio `AsyncClient`
(lxpy.api.aclient, for the TUI) inherit it, so both have the same methods
with the same parameters, and each only runs a `Call` over its own
transport: `client.start_container("web")` answers the container in the
CLI and a coroutine of it in the TUI. A new endpoint is one function here.

Like the sync client, this module imports no `typing` at run time (the CLI
starts in a few milliseconds): the generic parameters and overloads below
exist for mypy only (the descriptors' typed `__get__` is a stub beside
the one that runs).
"""

from __future__ import annotations

from lxpy.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator, Mapping
    from typing import Any, Generic, ParamSpec, TypeVar, overload

    from lxpy.api.aclient import AsyncClient, EventStream
    from lxpy.api.client import Client

    P = ParamSpec("P")
    T = TypeVar("T")
    # A JSON object as lxpyd answers it (docs/api.md names its fields).
    Object = dict[str, Any]
else:

    class Generic:
        """`typing.Generic` at run time: subscripting changes nothing."""

        def __class_getitem__(cls, params: object) -> type:
            return cls

    P = T = None

# RFC 3986 unreserved characters minus '.', so that a name such as '..'
# reaches the daemon as a name to reject, never as a path step.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")


def quote(segment: str, what: str = "name") -> str:
    """Percent-encode one path segment.

    Raises:
        InvalidArgument: for an empty segment, which would change the path's meaning.
    """
    if not segment:
        raise InvalidArgument(f"{what} must not be empty")
    return "".join(
        chr(b) if b in _SAFE else f"%{b:02X}" for b in segment.encode("utf-8", "surrogateescape")
    )


def query_string(query: Mapping[str, object] | None) -> str:
    """`?k=v&...` of `query`: True is sent as 1, None and False are left out."""
    if not query:
        return ""
    parts = []
    for key, value in query.items():
        if value is None or value is False:
            continue
        text = "1" if value is True else str(value)
        parts.append(f"{quote(key)}={quote(text) if text else ''}")
    return "?" + "&".join(parts) if parts else ""


class Call(Generic[T]):
    """One API request, and how its answer is read; `T` is what it answers.

    Args:
        method: HTTP method.
        path: absolute path under /1.0, its segments already quoted.
        body: JSON-able request body, or None.
        query: query parameters (see `query_string`).
        text: the answer is text (the body decoded), not JSON.
    """

    __slots__ = ("method", "path", "body", "query", "text")

    def __init__(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
        text: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.query = query
        self.text = text

    def __repr__(self) -> str:
        return f"Call({self.method} {self.path}{query_string(self.query)}, body={self.body!r})"


class Endpoint(Generic[P, T]):
    """A method of both clients: `build` makes the Call from the method's
    arguments, the client runs it (`Client.run` answers T, `AsyncClient.run`
    a coroutine of T). On the class, the Endpoint itself (`.build` is the
    request without a daemon)."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    if TYPE_CHECKING:

        @overload
        def __get__(self, client: None, owner: type) -> Endpoint[P, T]: ...
        @overload
        def __get__(self, client: Client, owner: type) -> Callable[P, T]: ...
        @overload
        def __get__(
            self, client: AsyncClient, owner: type
        ) -> Callable[P, Coroutine[Any, Any, T]]: ...
        def __get__(self, client: Client | AsyncClient | None, owner: type) -> Any: ...
    else:

        def __get__(self, client, owner):
            return self if client is None else _bound(self.build, client.run)


class StreamEndpoint(Generic[P]):
    """A method of both clients answering an NDJSON stream: an iterator of
    its objects in `Client`, an open `EventStream` in `AsyncClient`."""

    def __init__(self, build: Callable[P, Call[Object]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    if TYPE_CHECKING:

        @overload
        def __get__(self, client: None, owner: type) -> StreamEndpoint[P]: ...
        @overload
        def __get__(self, client: Client, owner: type) -> Callable[P, Iterator[Object]]: ...
        @overload
        def __get__(
            self, client: AsyncClient, owner: type
        ) -> Callable[P, Coroutine[Any, Any, EventStream]]: ...
        def __get__(self, client: Client | AsyncClient | None, owner: type) -> Any: ...
    else:

        def __get__(self, client, owner):
            return self if client is None else _bound(self.build, client.stream)


def _bound(build: Callable[..., Call[Any]], run: Callable[[Call[Any]], Any]) -> Any:
    def call(*args: object, **kwargs: object) -> Any:
        return run(build(*args, **kwargs))

    call.__name__ = call.__qualname__ = build.__name__
    call.__doc__ = build.__doc__
    return call


def container_path(name: str) -> str:
    """The API path of container `name`."""
    return "/1.0/containers/" + quote(name, "container name")


def image_path(ref: str) -> str:
    """The API path of image `ref` (an alias may hold '/')."""
    return f"/1.0/images/{quote(ref, 'image')}"


def _template(name: str) -> str:
    return "/1.0/templates/" + quote(name, "template name")


def _remote(name: str) -> str:
    return "/1.0/remotes/" + quote(name, "remote name")


def _snap(name: str, snapshot: str) -> str:
    return f"{container_path(name)}/snapshots/{quote(snapshot, 'snapshot name')}"


def _dev(name: str, device: str) -> str:
    return f"{container_path(name)}/devices/{quote(device, 'device name')}"


def _vol(name: str) -> str:
    return "/1.0/volumes/" + quote(name, "volume name")


def _op(op_id: str) -> str:
    return "/1.0/operations/" + quote(op_id, "operation id")


def _net(name: str) -> str:
    return "/1.0/networks/" + quote(name, "network name")


def wait_fields(wait: bool, wait_timeout: float | None) -> dict[str, object]:
    """The body fields of a start or restart that waits until the container
    is ready (`wait_timeout` None: the daemon's default)."""
    body: dict[str, object] = {"wait": True} if wait else {}
    if wait_timeout is not None:
        body["wait_timeout"] = wait_timeout
    return body


def export_request(name: str, instance_only: bool = False, optimized: bool = False) -> Call[Object]:
    """The upgrade request of an export (docs/backup.md): the backup file
    comes as stdout frames, the summary as the exit frame."""
    query = {"instance_only": instance_only, "optimized": optimized}
    return Call("GET", container_path(name) + "/export", query=query)


def import_request(name: str | None = None) -> Call[Object]:
    """The upgrade request of an import: the backup file goes as stdin
    frames, the container comes as the exit frame."""
    return Call("POST", "/1.0/containers/import", query={"name": name})


# Endpoint-decorated functions below take no `self`: they only build the
# Call; the client they are read from runs it.
class Calls:
    """The API's calls, as methods of `Client` and `AsyncClient`."""

    # -- the server and templates ---------------------------------------------

    @Endpoint
    def server_info() -> Call[Object]:
        """The server: version, pool, networks, limits."""
        return Call("GET", "/1.0")

    @Endpoint
    def templates() -> Call[list[Object]]:
        return Call("GET", "/1.0/templates")

    @Endpoint
    def template(name: str) -> Call[Object]:
        return Call("GET", _template(name))

    @Endpoint
    def build_template(name: str, refresh: bool = False) -> Call[Object]:
        """Start a template build: the operation (already `success` when cached).
        `refresh` builds afresh from the mirror (current packages), even when
        the template is up to date and its build is cached."""
        return Call("POST", _template(name) + "/build", {"refresh": refresh})

    @Endpoint
    def delete_template(name: str) -> Call[None]:
        return Call("DELETE", _template(name))

    # -- images and remotes -----------------------------------------------------

    @Endpoint
    def remotes() -> Call[list[Object]]:
        return Call("GET", "/1.0/remotes")

    @Endpoint
    def add_remote(name: str, url: str, protocol: str = "simplestreams") -> Call[Object]:
        return Call("POST", "/1.0/remotes", {"name": name, "url": url, "protocol": protocol})

    @Endpoint
    def remove_remote(name: str) -> Call[None]:
        return Call("DELETE", _remote(name))

    @Endpoint
    def remote_images(remote: str, filter: str = "", refresh: bool = False) -> Call[list[Object]]:
        query = {"filter": filter, "refresh": refresh}
        return Call("GET", _remote(remote) + "/images", query=query)

    @Endpoint
    def images() -> Call[list[Object]]:
        return Call("GET", "/1.0/images")

    @Endpoint
    def image(ref: str) -> Call[Object]:
        return Call("GET", image_path(ref))

    @Endpoint
    def delete_image(ref: str) -> Call[None]:
        return Call("DELETE", image_path(ref))

    @Endpoint
    def update_image_aliases(
        ref: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> Call[Object]:
        body = {"add_aliases": list(add or ()), "remove_aliases": list(remove or ())}
        return Call("PATCH", image_path(ref), body)

    @Endpoint
    def pull_image(image: str) -> Call[Object]:
        """Start downloading REMOTE:ALIAS: the operation (`success` when cached)."""
        return Call("POST", "/1.0/images/pull", {"image": image})

    @Endpoint
    def publish(
        container: str,
        snapshot: str | None = None,
        aliases: list[str] | None = None,
        description: str = "",
    ) -> Call[Object]:
        """Make an image of a container (or of its snapshot): the operation."""
        body = {
            "container": container,
            "snapshot": snapshot,
            "aliases": list(aliases or ()),
            "description": description,
        }
        return Call("POST", "/1.0/images", body)

    # -- containers ----------------------------------------------------------------

    @Endpoint
    def containers(stats: bool = False) -> Call[list[Object]]:
        """Every container; with `stats`, the running ones' resource use."""
        return Call("GET", "/1.0/containers", query={"stats": stats})

    @Endpoint
    def container(name: str) -> Call[Object]:
        return Call("GET", container_path(name))

    @Endpoint
    def create_container(
        name: str,
        template: str | None,
        config: Mapping[str, object] | None = None,
        image: str | None = None,
    ) -> Call[Object]:
        """Create from `template`, or from `image` (REMOTE:ALIAS, an alias,
        a fingerprint) when `template` is None."""
        body: dict[str, object] = {"name": name, "config": dict(config or {})}
        body.update({"template": template} if image is None else {"image": image})
        return Call("POST", "/1.0/containers", body)

    @Endpoint
    def delete_container(name: str, force: bool = False) -> Call[None]:
        return Call("DELETE", container_path(name), query={"force": force})

    @Endpoint
    def update_config(
        name: str,
        set_: Mapping[str, object] | None = None,
        unset: list[str] | None = None,
    ) -> Call[Object]:
        """Set and unset config keys of `name`; lxpyd checks them (nothing
        changes when one is refused). The container as it is now."""
        body = {"set": dict(set_ or {}), "unset": list(unset or [])}
        return Call("PATCH", container_path(name) + "/config", body)

    @Endpoint
    def rename_container(name: str, new: str) -> Call[Object]:
        return Call("POST", container_path(name) + "/rename", {"name": new})

    @Endpoint
    def copy_container(source: str, dest: str, instance_only: bool = False) -> Call[Object]:
        body = {"name": dest, "instance_only": instance_only}
        return Call("POST", container_path(source) + "/copy", body)

    # -- running containers ------------------------------------------------------

    @Endpoint
    def start_container(
        name: str, wait: bool = False, wait_timeout: float | None = None
    ) -> Call[Object]:
        """Start `name`; with `wait`, answer once it is ready (README, "Waiting
        for a container"), else once its init runs."""
        return Call("POST", container_path(name) + "/start", wait_fields(wait, wait_timeout))

    @Endpoint
    def stop_container(
        name: str, timeout: float | None = None, force: bool = False
    ) -> Call[Object]:
        """Stop `name`: init gets `timeout` seconds to halt (None: the
        daemon's default), then is killed; `force` kills at once."""
        body: dict[str, object] = {"force": force}
        if timeout is not None:
            body["timeout"] = timeout
        return Call("POST", container_path(name) + "/stop", body)

    @Endpoint
    def restart_container(
        name: str,
        timeout: float | None = None,
        wait: bool = False,
        wait_timeout: float | None = None,
    ) -> Call[Object]:
        """Stop `name` (`timeout`: as for stop_container) and start it again;
        `wait`: as for start_container."""
        body = wait_fields(wait, wait_timeout)
        if timeout is not None:
            body["timeout"] = timeout
        return Call("POST", container_path(name) + "/restart", body)

    @Endpoint
    def stop_all(timeout: float | None = None) -> Call[Object]:
        """Stop every running container in boot.stop_priority order:
        `{"stopped": [...], "errors": {name: message}}`."""
        body = {} if timeout is None else {"timeout": timeout}
        return Call("POST", "/1.0/containers/stop-all", body)

    @Endpoint
    def freeze_container(name: str) -> Call[Object]:
        return Call("POST", container_path(name) + "/freeze")

    @Endpoint
    def unfreeze_container(name: str) -> Call[Object]:
        return Call("POST", container_path(name) + "/unfreeze")

    @Endpoint
    def container_stats(name: str) -> Call[Object | None]:
        """Resource use of a running container (None when it is not running)."""
        return Call("GET", container_path(name) + "/stats")

    @Endpoint
    def console_log(name: str) -> Call[str]:
        """The console output kept since boot (text)."""
        return Call("GET", container_path(name) + "/console/log", text=True)

    # -- snapshots -------------------------------------------------------------------

    @Endpoint
    def snapshots(name: str) -> Call[list[Object]]:
        return Call("GET", container_path(name) + "/snapshots")

    @Endpoint
    def create_snapshot(name: str, snapshot: str | None = None) -> Call[Object]:
        body = {} if snapshot is None else {"name": snapshot}
        return Call("POST", container_path(name) + "/snapshots", body)

    @Endpoint
    def restore_snapshot(name: str, snapshot: str, timeout: float | None = None) -> Call[Object]:
        """Restore a container to a snapshot; a running one is stopped (killed
        after `timeout` s), restored and started again."""
        body = None if timeout is None else {"timeout": timeout}
        return Call("POST", _snap(name, snapshot) + "/restore", body)

    @Endpoint
    def delete_snapshot(name: str, snapshot: str) -> Call[None]:
        return Call("DELETE", _snap(name, snapshot))

    # -- devices and volumes ---------------------------------------------------------

    @Endpoint
    def devices(name: str) -> Call[list[Object]]:
        return Call("GET", container_path(name) + "/devices")

    @Endpoint
    def device(name: str, device: str) -> Call[Object]:
        return Call("GET", _dev(name, device))

    @Endpoint
    def add_device(
        name: str, device: str, type_: str, config: Mapping[str, str] | None = None
    ) -> Call[Object]:
        """Add a device; a running container gets it at once."""
        body = {"name": device, "type": type_, "config": dict(config or {})}
        return Call("POST", container_path(name) + "/devices", body)

    @Endpoint
    def remove_device(name: str, device: str) -> Call[None]:
        return Call("DELETE", _dev(name, device))

    @Endpoint
    def volumes() -> Call[list[Object]]:
        return Call("GET", "/1.0/volumes")

    @Endpoint
    def volume(name: str) -> Call[Object]:
        return Call("GET", _vol(name))

    @Endpoint
    def create_volume(name: str) -> Call[Object]:
        return Call("POST", "/1.0/volumes", {"name": name})

    @Endpoint
    def delete_volume(name: str) -> Call[None]:
        return Call("DELETE", _vol(name))

    # -- operations and events -------------------------------------------------------

    @Endpoint
    def operations() -> Call[list[Object]]:
        return Call("GET", "/1.0/operations")

    @Endpoint
    def operation(op_id: str) -> Call[Object]:
        return Call("GET", _op(op_id))

    @Endpoint
    def wait_operation(op_id: str, timeout: float | None = None) -> Call[Object]:
        """The operation once it has ended, or after `timeout` seconds."""
        query = None if timeout is None else {"timeout": timeout}
        return Call("GET", _op(op_id) + "/wait", query=query)

    @Endpoint
    def cancel_operation(op_id: str) -> Call[None]:
        return Call("DELETE", _op(op_id))

    @StreamEndpoint
    def operation_stream(op_id: str) -> Call[Object]:
        """`{"log": ...}`, `{"progress": ..., "stage": ...}`, then `{"operation": ...}`."""
        return Call("GET", _op(op_id) + "/stream")

    @StreamEndpoint
    def events(types: list[str] | None = None) -> Call[Object]:
        """The event stream (of `types` only, when given)."""
        query = {"type": ",".join(types)} if types else None
        return Call("GET", "/1.0/events", query=query)

    # -- networks ------------------------------------------------------------------

    @Endpoint
    def networks() -> Call[list[Object]]:
        return Call("GET", "/1.0/networks")

    @Endpoint
    def network(name: str) -> Call[Object]:
        return Call("GET", _net(name))

    @Endpoint
    def create_network(name: str, subnet: str | None = None, nat: bool = True) -> Call[Object]:
        """Create a managed network; `subnet` None picks a free /24."""
        body: dict[str, object] = {"name": name, "nat": nat}
        if subnet is not None:
            body["subnet"] = subnet
        return Call("POST", "/1.0/networks", body)

    @Endpoint
    def delete_network(name: str) -> Call[None]:
        return Call("DELETE", _net(name))
