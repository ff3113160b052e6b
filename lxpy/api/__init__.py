"""Clients of lxpyd's HTTP/JSON API (docs/api.md).

`lxpy.api.calls` describes every call once; `lxpy.api.client` is the
synchronous client the CLI uses and `lxpy.api.aclient` the asyncio one the
TUI uses, both with those calls as methods. Modules here import only the
standard library and lxpy.errors: never daemon code, trio, pyroute2,
btrfsutil or textual, so a client starts fast and runs anywhere.
"""
