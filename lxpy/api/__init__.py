"""Clients of lxpyd's HTTP/JSON API (docs/api.md).

`lxpy.api.client` is the synchronous client the CLI uses. Modules here import
only the standard library and lxpy.errors: never daemon code, trio,
pyroute2, btrfsutil or textual, so a client starts fast and runs anywhere.
"""
