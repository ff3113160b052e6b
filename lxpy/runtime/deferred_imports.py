"""Imports the zygote defers: modules that a module it needs imports, but
that nothing on the zygote's or a monitor's path ever uses.

Every monitor maps what the zygote imported, so each megabyte there is
shared out over every running container. `dataclasses` imports `inspect`
(and with it ast, dis, tokenize and linecache: about 1.3 MB) only to give a
dataclass without a docstring one made from its signature, and every
dataclass lxpy defines has its own. Until something asks for one of its
attributes, a stand-in holds the module's place in sys.modules; then the
real module is imported and answers, so nothing breaks, it only costs the
memory it would have cost anyway.
"""

from __future__ import annotations

import sys
import types

DEFERRED = ("inspect",)


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            # Asked by whatever walks sys.modules (getattr(m, "__file__",
            # None) and the like): not a use of the module.
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(__import__(self.__name__), name)


def defer() -> None:
    """Put stand-ins for DEFERRED in sys.modules (before anything imports them)."""
    for name in DEFERRED:
        if name not in sys.modules:
            stand_in = _StandIn(name)
            # Present, so that `import` finds the module ready and does not
            # ask the stand-in (which would import the real one).
            stand_in.__spec__ = None
            sys.modules[name] = stand_in
