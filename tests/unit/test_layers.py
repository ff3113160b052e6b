"""The layer rules of CONVENTIONS.md, checked on the real import graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN_IN_CLIENTS = (
    "trio",
    "h11",
    "pyroute2",
    "btrfsutil",
    "textual",
    "lxpy.daemon",
    "lxpy.storage",
    "lxpy.build",
    "lxpy.runtime",
    "lxpy.network",
)


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["lxpy.cli", "lxpy.api.client"])
def test_clients_never_import_daemon_side_code(module: str) -> None:
    loaded = _modules_after_import(module)
    bad = sorted(m for m in loaded for f in FORBIDDEN_IN_CLIENTS if m == f or m.startswith(f + "."))
    assert bad == []


def test_the_cli_starts_without_typing() -> None:
    # The API calls (lxpy.api.calls) are generic for mypy only: typing and
    # what it brings would add milliseconds to every `lxpy` command.
    assert "typing" not in _modules_after_import("lxpy.cli")


@pytest.mark.parametrize(
    "module",
    [
        "lxpy.model.config",
        "lxpy.model.settings",
        "lxpy.model.template",
        "lxpy.model.state",
        "lxpy.model.paths",
    ],
)
def test_model_is_pure_data(module: str) -> None:
    loaded = _modules_after_import(module)
    heavy = ("trio", "pyroute2", "btrfsutil", "textual")
    assert not [m for m in loaded if m.split(".")[0] in heavy]


def test_core_never_imports_textual() -> None:
    loaded = _modules_after_import("lxpy.daemon.main")
    assert "textual" not in loaded


def test_the_zygote_carries_no_typing_or_pathlib() -> None:
    # Every monitor maps what the zygote imported: typing and pathlib (with
    # the urllib.parse and ipaddress it brings) would add ~1.1 MB to it.
    # _modules_after_import's json is what the zygote imports anyway.
    loaded = _modules_after_import("lxpy.runtime.zygote")
    assert {"typing", "pathlib", "urllib.parse", "ipaddress"} & loaded == set()


def test_the_zygote_defers_what_no_monitor_uses() -> None:
    # As the zygote starts (its prelude, its imports, its warm-up): inspect
    # and what it brings stay out, about 1.3 MB less in every monitor.
    from lxpy.runtime import zygote

    root = str(Path(zygote.__file__).resolve().parents[2])
    code = zygote._PRELUDE.format(root=root) + (
        "import types; from lxpy.runtime import zygote; zygote._warm_up(); "
        "print(' '.join(n for n, m in sys.modules.items() "
        "if type(m) is types.ModuleType))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "lxpy.runtime.monitor" in out
    assert {"inspect", "ast", "dis", "tokenize", "linecache"} & set(out) == set()


def _daemon_imports(lxpy_dir: Path) -> dict[str, set[str]]:
    """Module -> the lxpy.daemon modules it names in an import, read with
    ast from the files under `lxpy_dir`/daemon: imports inside functions and
    under TYPE_CHECKING count too, since a cycle there is a cycle of design
    even when Python happens to load it."""
    import ast

    def module_of(path: Path) -> str:
        parts = list(path.relative_to(lxpy_dir.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {module_of(p): p for p in sorted((lxpy_dir / "daemon").rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from lxpy.daemon import configcheck` names a module;
                # `from lxpy.daemon.state import Daemon` names its module.
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found = subs & files.keys()
                names.update(found or {node.module})
        graph[mod] = {n for n in names if n in files and n != mod}
    return graph


def _import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a path (first module repeated at its end), or []."""
    done: set[str] = set()
    path: list[str] = []

    def visit(mod: str) -> list[str]:
        if mod in path:
            return [*path[path.index(mod) :], mod]
        if mod in done:
            return []
        path.append(mod)
        for dep in sorted(graph[mod]):
            found = visit(dep)
            if found:
                return found
        path.pop()
        done.add(mod)
        return []

    for mod in sorted(graph):
        found = visit(mod)
        if found:
            return found
    return []


def test_the_daemon_has_no_import_cycle() -> None:
    # The shared state imports no subsystem, and subsystems are handed the
    # peers they use (lxpy.daemon.assemble): no module of lxpyd imports one
    # that imports it back, not even inside a function.
    lxpy_dir = Path(__file__).resolve().parents[2] / "lxpy"
    assert _import_cycle(_daemon_imports(lxpy_dir)) == []
