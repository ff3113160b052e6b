"""The OpenAPI 3.1 document of lxpyd's API, built from the router's table.

The schemas below describe the objects of docs/api.md; the paths come from
the routes themselves, so the document lists exactly what is served.
"""

from __future__ import annotations

import re

from lxpy import __version__
from lxpy.daemon.devices import TYPES
from lxpy.daemon.http import JSON_TYPE, NDJSON_TYPE, Router
from lxpy.daemon.policy import USER_ROUTES
from lxpy.errors import (
    AlreadyExists,
    Busy,
    Cancelled,
    Forbidden,
    InvalidArgument,
    LxpyError,
    NotFound,
    PoolFull,
    TimedOut,
    Unsupported,
)
from lxpy.model.config import ENV_NAME, KEYS, MAX_KEY, PREFIXES

Schema = dict[str, object]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _obj(props: dict[str, Schema], required: tuple[str, ...] = (), **extra: object) -> Schema:
    return {"type": "object", "properties": props, "required": list(required), **extra}


STR: Schema = {"type": "string"}
NULL_STR: Schema = {"type": ["string", "null"]}
EMPTY: Schema = _obj({}, additionalProperties=False)
NAME: Schema = {"type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"}

# A config key: one of KEYS, or a name in a family of free-form keys (README,
# "Config keys"); each key's own parser judges its value.
CONFIG_KEY: Schema = {
    "type": "string",
    "maxLength": MAX_KEY,
    "anyOf": [
        {"enum": sorted(KEYS)},
        *(
            {"pattern": f"^{re.escape(p)}{ENV_NAME.pattern if p == 'environment.' else '.+'}$"}
            for p in PREFIXES
        ),
    ],
}
CONFIG: Schema = {"type": "object", "propertyNames": CONFIG_KEY, "additionalProperties": True}
BUILD_BODY = _obj(
    {
        "refresh": {"type": "boolean", "default": False},
        # The older name of refresh.
        "force": {"type": "boolean", "default": False},
    }
)
IMAGE_REF: Schema = {
    "type": "string",
    "description": "REMOTE:ALIAS (pulled first if not cached), or a cached image's alias "
    "or fingerprint",
}
CREATE_BODY = _obj(
    {"name": NAME, "template": NAME, "image": IMAGE_REF, "config": CONFIG},
    ("name",),
    description="exactly one of template and image",
    oneOf=[{"required": ["template"]}, {"required": ["image"]}],
)
REMOTE_BODY = _obj(
    {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,30}$"},
        "url": {"type": "string", "description": "http:// or https://, the tree's top"},
        "protocol": {"type": "string", "enum": ["simplestreams"], "default": "simplestreams"},
    },
    ("name", "url"),
)
ALIAS: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._/+-]{0,127}$"}
PULL_BODY = _obj({"image": IMAGE_REF}, ("image",))
PUBLISH_BODY = _obj(
    {
        "container": NAME,
        "snapshot": {"anyOf": [NAME, {"type": "null"}]},
        "aliases": array(ALIAS),
        "description": STR,
    },
    ("container",),
)
ALIASES_BODY = _obj({"add_aliases": array(ALIAS), "remove_aliases": array(STR)})
CONFIG_BODY = _obj({"set": CONFIG, "unset": array(CONFIG_KEY)})
NAME_BODY = _obj({"name": NAME}, ("name",))
COPY_BODY = _obj(
    {
        "name": NAME,
        "instance_only": {
            "type": "boolean",
            "default": False,
            "description": "true: the rootfs alone, without the snapshots",
        },
    },
    ("name",),
)
DEVICE_NAME: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}
DEVICE_CONFIG: Schema = {
    "type": "object",
    "propertyNames": {"pattern": "^[a-z][a-z0-9_.-]{0,62}$"},
    "additionalProperties": {"type": ["string", "boolean", "integer"]},
}
DEVICE_BODY = _obj(
    {
        "name": DEVICE_NAME,
        "type": {"type": "string", "enum": sorted(TYPES)},
        "config": DEVICE_CONFIG,
    },
    ("name", "type"),
)
SNAPSHOT_BODY = _obj(
    {"name": {"anyOf": [NAME, {"type": "null"}], "description": "absent or null: the next snapN"}}
)
STOP_ALL = _obj(
    {"stopped": array(STR), "errors": {"type": "object", "additionalProperties": STR}},
    ("stopped", "errors"),
)
_NULL_INT: Schema = {"type": ["integer", "null"]}
# What a start or a config change did, beside the container object.
START_ANSWER: Schema = {
    "allOf": [
        ref("Container"),
        _obj(
            {
                "started": {
                    "type": "boolean",
                    "description": "false when it was running already (nothing was done)",
                }
            },
            ("started",),
        ),
    ]
}
CONFIG_ANSWER: Schema = {
    "allOf": [
        ref("Container"),
        _obj(
            {
                "deferred": {
                    **array(STR),
                    "description": "the keys of this change that a running container "
                    "gets only at its next start (empty when it is stopped)",
                }
            },
            ("deferred",),
        ),
    ]
}

ERROR_CODES = [
    cls.code
    for cls in (
        InvalidArgument,
        NotFound,
        Forbidden,
        AlreadyExists,
        Busy,
        Cancelled,
        LxpyError,
        Unsupported,
        PoolFull,
        TimedOut,
    )
]

# What a remote's image and a cached one both say of themselves.
_IMAGE_FIELDS: dict[str, Schema] = {
    "fingerprint": STR,
    "aliases": array(STR),
    "distribution": STR,
    "release": STR,
    "architecture": STR,
    "variant": STR,
    "version": STR,
}

SCHEMAS: dict[str, Schema] = {
    "ErrorDetail": _obj(
        {"code": {"type": "string", "enum": ERROR_CODES}, "message": STR, "hint": NULL_STR},
        ("code", "message", "hint"),
    ),
    "Error": _obj({"error": ref("ErrorDetail")}, ("error",)),
    "Info": _obj(
        {
            "api_version": STR,
            "version": STR,
            "root": STR,
            "storage": _obj(
                {"backend": STR, "path": STR, "instant_snapshot": {"type": "boolean"}},
                ("backend", "path", "instant_snapshot"),
            ),
            "pid": {"type": "integer"},
        },
        ("api_version", "version", "root", "storage", "pid"),
    ),
    "Template": _obj(
        {
            "name": STR,
            "description": STR,
            "kind": {"type": "string", "enum": ["busybox", "debootstrap", "tarball"]},
            "file": STR,
            "built": {"type": "boolean"},
            "stale": {"type": "boolean"},
            "digest": STR,
            "built_digest": NULL_STR,
            "built_at": NULL_STR,
            "build_seconds": {"type": ["number", "null"]},
            "build_log": {
                "type": ["string", "null"],
                "description": "the log file of its last build, if any",
            },
        },
        ("name", "kind", "built", "stale", "digest"),
    ),
    "Remote": _obj(
        {"name": STR, "url": STR, "protocol": {"type": "string", "enum": ["simplestreams"]}},
        ("name", "url", "protocol"),
    ),
    "RemoteImage": _obj(
        {
            **_IMAGE_FIELDS,
            "size": {"type": "integer"},
            "rootfs_type": STR,
            "product": STR,
        },
        ("fingerprint", "aliases", "architecture", "version", "size"),
    ),
    "Image": _obj(
        {
            **_IMAGE_FIELDS,
            "description": STR,
            "size": _NULL_INT,
            "created_at": STR,
            "source": {"type": ["object", "null"], "description": "the remote it came from"},
            "published_from": {
                "type": ["object", "null"],
                "description": "the container (and snapshot) it was published from",
            },
        },
        ("fingerprint", "aliases", "architecture", "created_at"),
    ),
    "Container": _obj(
        {
            "name": STR,
            "template": STR,
            "state": {
                "type": "string",
                "enum": ["STOPPED", "STARTING", "RUNNING", "STOPPING", "FROZEN", "ERROR"],
            },
            "created_at": STR,
            "config": {"type": "object", "additionalProperties": True},
            "snapshots": array(STR),
            "path": STR,
            "devices": {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": STR},
                "description": "its devices: name -> {type, key: value}",
            },
            "owner": {
                "type": ["object", "null"],
                "properties": {"uid": {"type": "integer"}, "restricted": {"type": "boolean"}},
                "description": "who made it: a uid, and whether a restricted user (group "
                "lxpy-user), the only ones besides admins who see it; null for containers "
                "made before owners were recorded (admins' only)",
            },
            "error": {
                "type": ["string", "null"],
                "description": "why the container is in ERROR (e.g. a broken record file)",
            },
            "init_pid": {"type": ["integer", "null"]},
            "started_at": NULL_STR,
            "addresses": array(STR),
            "last_exit": {
                "type": ["object", "null"],
                "properties": {"reason": STR, "detail": STR},
                "description": "why init last ended (stopped: by lxpy, restarted: by "
                "lxpy, poweroff, reboot, killed, exited, error, monitor-lost, restart-limit)",
            },
            "stats": {
                "oneOf": [{"type": "null"}, ref("Stats")],
                "description": "resource use while it runs; in the list only with "
                "?stats=1, and without disk use",
            },
        },
        ("name", "template", "state", "created_at", "config", "snapshots", "path"),
    ),
    "Stats": _obj(
        {
            "at": {"type": "number", "description": "Unix time of the reading"},
            "cpu_seconds": {"type": ["number", "null"]},
            "memory_bytes": _NULL_INT,
            "memory_peak_bytes": _NULL_INT,
            "memory_limit_bytes": _NULL_INT,
            "swap_bytes": _NULL_INT,
            "oom_kills": _NULL_INT,
            "processes": _NULL_INT,
            "processes_limit": _NULL_INT,
            "network": {
                "type": "object",
                "additionalProperties": _obj(
                    {
                        "rx_bytes": {"type": "integer"},
                        "tx_bytes": {"type": "integer"},
                        "rx_packets": {"type": "integer"},
                        "tx_packets": {"type": "integer"},
                    }
                ),
            },
            "disk_bytes": _NULL_INT,
            "disk_exclusive_bytes": _NULL_INT,
        },
        ("cpu_seconds", "memory_bytes", "processes", "network"),
    ),
    "Snapshot": _obj({"name": STR, "created_at": STR}, ("name", "created_at")),
    "Volume": _obj(
        {
            "name": STR,
            "pool": STR,
            "path": STR,
            "used_by": {**array(STR), "description": "containers with a disk on it"},
        },
        ("name", "pool", "path", "used_by"),
    ),
    "Device": _obj(
        {
            "name": STR,
            "type": STR,
            "config": {"type": "object", "additionalProperties": STR},
            "active": {
                "type": "boolean",
                "description": "in effect in the running container now (false while it is "
                "stopped, or for a required=false disk whose source was missing at start)",
            },
        },
        ("name", "type", "config", "active"),
    ),
    "Operation": _obj(
        {
            "id": STR,
            "kind": STR,
            "resource": STR,
            "status": {"type": "string", "enum": ["running", "success", "failure", "cancelled"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "stage": STR,
            "created_at": STR,
            "finished_at": NULL_STR,
            "error": {"oneOf": [{"type": "null"}, ref("ErrorDetail")]},
        },
        ("id", "kind", "resource", "status", "progress", "stage", "created_at"),
    ),
    "OperationStreamItem": {
        "oneOf": [
            _obj({"log": STR}, ("log",)),
            _obj({"progress": {"type": "number"}, "stage": STR}, ("progress", "stage")),
            _obj({"operation": ref("Operation")}, ("operation",)),
        ]
    },
    "Event": {
        "oneOf": [
            _obj(
                {
                    "type": {"const": "lifecycle"},
                    "timestamp": STR,
                    "action": STR,
                    "resource": STR,
                    "data": {"type": "object"},
                },
                ("type", "timestamp", "action", "resource", "data"),
            ),
            _obj(
                {"type": {"const": "operation"}, "timestamp": STR, "operation": ref("Operation")},
                ("type", "timestamp", "operation"),
            ),
        ]
    },
}

_REASONS = {
    101: "Switching Protocols: the framed stream follows",
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Invalid argument",
    403: "Forbidden: not root nor in group lxpy or lxpy-user, or a restricted user "
    "(lxpy-user) asking what only admins may",
    404: "Not found",
    405: "Method not allowed (the Allow header lists what the path serves)",
    408: "Request timeout: the request did not arrive whole in time",
    409: "Already exists or busy",
    413: "Request body too large (at most 4 MiB)",
    414: "URL too long (at most 8 KiB)",
    415: "Unsupported media type: a body not sent as application/json",
    431: "Request header fields too large (at most 16 KiB)",
    499: "Cancelled",
    500: "Internal error",
    501: "Unsupported on this host",
    504: "Not ready in time: what was waited for did not happen (the error says what)",
    507: "Storage pool full: nothing was changed",
}
# Every request may be refused so; the HTTP layer answers these before the
# route's handler runs (lxpy.daemon.httpread), or the handler on failure.
_ANY_ERRORS = (400, 403, 404, 405, 408, 409, 413, 414, 431, 500)


def _error_response(status: int) -> Schema:
    return {"description": _REASONS[status], "content": {JSON_TYPE: {"schema": ref("Error")}}}


def document(router: Router) -> dict[str, object]:
    """The OpenAPI 3.1 document for every route of `router`."""
    paths: dict[str, dict[str, object]] = {}
    for route in router.routes:
        op: dict[str, object] = {
            "summary": route.summary,
            "operationId": _operation_id(route.method, route.pattern),
            # Whether members of group lxpy-user may use it (docs/security.md).
            "x-restricted-users": (route.method, route.pattern) in USER_ROUTES,
        }
        params: list[Schema] = [
            {"name": n, "in": "path", "required": True, "schema": STR}
            for n in re.findall(r"\{(\w+)\}", route.pattern)
        ]
        params += [
            {"name": n, "in": "query", "required": False, "description": doc, "schema": STR}
            for n, doc in route.query
        ]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": False,
                "content": {JSON_TYPE: {"schema": route.body}},
            }
        media = route.media or (NDJSON_TYPE if route.stream else JSON_TYPE)
        ok: Schema = {"description": _REASONS[route.status]}
        if route.response is not None:
            ok["content"] = {media: {"schema": route.response}}
        responses: dict[str, object] = {str(route.status): ok}
        errors = list(_ANY_ERRORS)
        if route.body is not None:
            errors.append(415)
        if route.method != "GET":
            # Changes may need the host's features, and space in the pool.
            errors += [501, 507]
        if route.pattern.startswith("/1.0/operations") or route.pattern.endswith(
            ("/build", "/pull")
        ):
            errors.append(499)
        if route.body is not None and "wait" in route.body.get("properties", {}):  # type: ignore[operator]
            # A start or restart that waits for the container to be ready.
            errors.append(504)
        for status in sorted(errors):
            responses[str(status)] = _error_response(status)
        allow = {"Allow": {"description": "the methods the path serves", "schema": STR}}
        responses["405"] = {**_error_response(405), "headers": allow}
        op["responses"] = responses
        paths.setdefault(route.pattern, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lxpyd API",
            "version": __version__,
            "description": "lxpy's system-container daemon, HTTP/1.1 + JSON on a unix socket.",
        },
        "servers": [{"url": "http://lxpyd"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def _operation_id(method: str, pattern: str) -> str:
    words = [w.strip("{}") for w in pattern.split("/")[2:] if w]
    return method.lower() + "".join(w.replace(".", "_").replace("-", "_").title() for w in words)
