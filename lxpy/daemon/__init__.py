"""lxpyd: the trio supervisor, its registry, operations, events and API server."""
