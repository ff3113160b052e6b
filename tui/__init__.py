"""lxpy-tui: a live console for the containers of a host, on Textual.

It talks to lxpyd only through lxpy.api.aclient and never imports daemon
code.
"""
