"""Shell completion for `lxpy`: bash, zsh and fish.

`lxpy completion SHELL` prints a small script for SHELL. At each TAB the
script runs `lxpy __complete SHELL WORD...` with the words of the command
line up to the cursor (the last one is the word being completed, maybe
empty) and offers what that prints: a candidate a line, as
`VALUE<TAB>DESCRIPTION` for zsh and fish, and a line `:files` when a file
name is wanted. One engine in Python rather than three generated scripts,
as cobra-based tools (Incus, kubectl) do it: commands and options come
from the real parser (lxpy.cli.parse's command table), so what lxpy accepts and
what completes cannot drift apart, and container, snapshot, template,
network and config-key names come from lxpyd in the same process. The
daemon gets a short timeout; when it does not answer, names complete to
nothing and nothing is printed on the terminal.
"""

from __future__ import annotations

import os
import sys

from lxpy.api.client import Client
from lxpy.api.text import format_value
from lxpy.cli.devices import DEVICE_KEYS
from lxpy.cli.parse import REMAINDER, arg, build_parser, command
from lxpy.errors import LxpyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

SHELLS = ("bash", "zsh", "fish")
FILES = ":files"
# Seconds to wait for the daemon: a TAB must never hang.
TIMEOUT = 2.0

# Where the package installs each script.
INSTALL_PATHS = {
    "bash": "usr/share/bash-completion/completions/lxpy",
    "zsh": "usr/share/zsh/vendor-completions/_lxpy",
    "fish": "usr/share/fish/vendor_completions.d/lxpy.fish",
}

# Positionals that name something new: nothing to offer.
_NEW = {
    ("create", "name"),
    ("copy", "dest"),
    ("rename", "new"),
    ("network create", "name"),
    ("remote add", "name"),
    ("remote add", "url"),
    ("image alias", "alias"),
    ("snapshot create", "snapshot"),
    ("import", "name"),
    ("device add", "device"),
    ("volume create", "volume"),
}

Candidates = list[tuple[str, str]]


class Names:
    """Names from lxpyd, for completion: every failure is an empty list."""

    def __init__(self, socket: str | None) -> None:
        self.client = Client(socket, timeout=TIMEOUT)

    def _ask(self, fn: Callable[[], list[dict[str, Any]]], key: str, desc: str) -> Candidates:
        try:
            items = fn()
        except (LxpyError, OSError, ValueError):
            return []
        return sorted((str(i.get(key, "")), str(i.get(desc) or "")) for i in items)

    def containers(self) -> Candidates:
        return self._ask(self.client.containers, "name", "state")

    def templates(self) -> Candidates:
        return self._ask(self.client.templates, "name", "description")

    def images(self) -> Candidates:
        try:
            items = self.client.images()
        except (LxpyError, OSError, ValueError):
            return []
        return sorted(
            (str(ref), str(i.get("description") or ""))
            for i in items
            for ref in [*(i.get("aliases") or ()), str(i.get("fingerprint", ""))[:12]]
        )

    def remotes(self) -> Candidates:
        return self._ask(self.client.remotes, "name", "url")

    def networks(self) -> Candidates:
        return self._ask(self.client.networks, "name", "subnet")

    def snapshots(self, container: str) -> Candidates:
        return self._ask(lambda: self.client.snapshots(container), "name", "created_at")

    def volumes(self) -> Candidates:
        return self._ask(self.client.volumes, "name", "path")

    def devices(self, container: str) -> Candidates:
        return self._ask(lambda: self.client.devices(container), "name", "type")

    def config(self, container: str) -> Candidates:
        """The keys set on `container`, with their values."""
        try:
            config = self.client.container(container).get("config") or {}
        except (LxpyError, OSError, ValueError):
            return []
        return sorted((k, format_value(v)) for k, v in config.items())


def all_keys() -> Candidates:
    """Every config key, and the families' prefixes (`environment.`)."""
    from lxpy.cli.config import config_keys

    return [(str(k["key"]).removesuffix("*"), str(k["meaning"])) for k in config_keys()]


# -- the engine -------------------------------------------------------------------


class _Line:
    """Where the words before the cursor leave the parser."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.path: list[str] = []
        self.socket: str | None = None
        self.positionals: list[str] = []
        # An option whose value is the word being completed.
        self.pending: argparse.Action | None = None
        self.dashdash = False


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    import argparse

    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _walk(parser: argparse.ArgumentParser, words: Sequence[str]) -> _Line | None:
    """Follow `words` through the parser; None when they name no command."""
    line = _Line(parser)
    for w in words:
        if line.pending is not None:
            if line.pending.dest == "socket":
                line.socket = w
            line.pending = None
        elif line.dashdash:
            line.positionals.append(w)
        elif w == "--":
            line.dashdash = True
        elif w.startswith("-") and len(w) > 1:
            name, eq, value = w.partition("=")
            action = line.parser._option_string_actions.get(name)
            if action is None or action.nargs == 0:
                continue
            if not eq:
                line.pending = action
            elif action.dest == "socket":
                line.socket = value
        elif (sub := _subparsers(line.parser)) is not None:
            if w not in sub.choices:
                return None
            line.parser = sub.choices[w]
            line.path.append(w)
        else:
            line.positionals.append(w)
    return line


def _positional(parser: argparse.ArgumentParser, index: int) -> argparse.Action | None:
    """The positional argument that takes the `index`th positional word."""
    at = 0
    for action in parser._actions:
        if action.option_strings:
            continue
        if action.nargs in ("*", "+", REMAINDER):
            return action  # it takes every word from here
        if index == at:
            return action
        at += 1
    return None


def _kind(path: Sequence[str], action: argparse.Action) -> str:
    """What a positional argument names."""
    where = " ".join(path)
    group = path[0] if len(path) == 2 else ""
    if (where, action.dest) in _NEW or action.nargs == REMAINDER:
        return ""
    if action.choices:
        return "choices"
    if action.metavar == "FILE":
        return "files"
    if group == "template" or action.metavar == "TEMPLATE":
        return "templates"
    if group == "network":
        return "networks"
    if action.metavar == "IMAGE":
        return "images"
    if action.metavar == "REMOTE":
        return "remotes"
    if action.metavar == "SNAP":
        return "snapshots"
    if action.metavar == "VOLUME":
        return "volumes"
    if action.metavar == "DEV":
        return "devices"
    if where == "device add" and action.dest in ("type", "config"):
        return "device-" + action.dest
    if group == "config" and action.dest == "key":
        return "keys" if where == "config set" else "set-keys"
    if where == "config set" and action.dest == "value":
        return "value"
    if action.metavar in ("NAME", "OLD", "SRC"):
        return "containers"
    return ""


def _options(parser: argparse.ArgumentParser) -> Candidates:
    import argparse

    return [
        (flag, a.help or "")
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        for flag in a.option_strings
    ]


def _option_value(action: argparse.Action, names: Names) -> Candidates:
    if action.choices:
        return [(str(c), "") for c in action.choices]
    if action.metavar == "TEMPLATE":
        return names.templates()
    if action.metavar == "IMAGE":
        return names.images()
    if action.metavar == "KEY=VALUE" and action.dest == "config":
        return [(k if k.endswith(".") else k + "=", d) for k, d in all_keys()]
    return []


def candidates(words: Sequence[str], names: Callable[[str | None], Names] = Names) -> Candidates:
    """What may come at the last of `words` (the words after `lxpy`, the
    last being completed): (value, description) pairs; (FILES, "") asks for
    file names. `names` makes the source of names for a socket."""
    *before, cur = words or [""]
    line = _walk(build_parser(before), before)
    if line is None:
        return []
    found: Candidates
    if line.pending is not None:
        if line.pending.dest == "socket":
            return [(FILES, "")]
        found = _option_value(line.pending, names(line.socket))
    elif cur.startswith("-") and not line.dashdash:
        found = _options(line.parser)
    elif (sub := _subparsers(line.parser)) is not None:
        found = [(a.dest, a.help or "") for a in sub._choices_actions]
    else:
        found = _positional_values(line, names)
    seen: set[str] = set()
    out = []
    for value, desc in found:
        if value.startswith(cur) and value not in seen:
            seen.add(value)
            out.append((value, " ".join(desc.split())))
    return out


def _positional_values(line: _Line, names: Callable[[str | None], Names]) -> Candidates:
    action = _positional(line.parser, len(line.positionals))
    kind = "" if action is None else _kind(line.path, action)
    if action is None or not kind:
        return []
    if kind == "choices":
        return [(str(c), "") for c in action.choices or ()]
    if kind == "files":
        return [(FILES, "")]
    src = names(line.socket)
    first = line.positionals[0] if line.positionals else ""
    if kind == "containers":
        return src.containers()
    if kind == "templates":
        return src.templates()
    if kind == "networks":
        return src.networks()
    if kind == "images":
        return src.images()
    if kind == "remotes":
        return src.remotes()
    if kind == "snapshots":
        return src.snapshots(first)
    if kind == "devices":
        return src.devices(first)
    if kind == "volumes":
        return src.volumes()
    if kind == "device-type":
        return [(t, "") for t in sorted(DEVICE_KEYS)]
    if kind == "device-config":
        kind_of = line.positionals[2] if len(line.positionals) > 2 else ""
        return [(k + "=", "") for k in DEVICE_KEYS.get(kind_of, ())]
    if kind == "set-keys":
        return src.config(first)
    if kind == "keys":
        return src.config(first) + all_keys()
    # config set NAME KEY VALUE: the values that name something.
    if line.positionals[1:2] == ["network"]:
        return src.networks()
    return []


def run_hidden(argv: Sequence[str]) -> int:
    """`lxpy __complete SHELL WORD...`: print the candidates; always 0."""
    shell, words = (argv[0], argv[1:]) if argv else ("bash", [])
    try:
        found = candidates(words)
    except Exception:  # a TAB prints nothing rather than a traceback
        return 0
    lines = []
    for value, desc in found:
        if value == FILES or shell == "bash" or not desc:
            lines.append(value)
        else:
            lines.append(f"{value}\t{desc}")
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


# -- the scripts ------------------------------------------------------------------


def this_program() -> str:
    """The lxpy being run, as an absolute path when it is a file named lxpy
    (a checkout's .venv/bin/lxpy), else plain `lxpy`."""
    me = os.path.abspath(sys.argv[0] or "lxpy")
    return me if os.path.basename(me) == "lxpy" and os.access(me, os.X_OK) else "lxpy"


def script(shell: str, program: str = "lxpy") -> str:
    """The completion script for `shell`; it runs the `lxpy` the user typed
    when that is a command, else `program`."""
    import shlex  # only here: it brings `re`, which no other command needs

    return _SCRIPTS[shell].replace("@FALLBACK@", shlex.quote(program))


@command(
    "completion",
    "print the shell completion script (bash, zsh or fish); see README.md",
    arg("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish"),
)
def cmd_completion(client: Client, args: argparse.Namespace) -> None:
    sys.stdout.write(script(args.shell, this_program()))


_BASH = r"""# bash completion for lxpy (written by `lxpy completion bash`)   -*- shell-script -*-
# At each TAB, `lxpy __complete bash WORD...` prints the candidates: commands
# and options from lxpy's parser, names from lxpyd (none when it does not
# answer).

_lxpy() {
    local prog=${COMP_WORDS[0]} cur=${COMP_WORDS[COMP_CWORD]} line
    # The lxpy as typed when it is a command, else the one that wrote this.
    [[ $(type -t -- "$prog") == file ]] || prog=@FALLBACK@
    COMPREPLY=()
    while IFS= read -r line; do
        if [[ $line == :files ]]; then
            compopt -o filenames 2>/dev/null
            while IFS= read -r line; do
                COMPREPLY+=("$line")
            done < <(compgen -f -- "$cur")
        else
            COMPREPLY+=("$line")
        fi
    done < <("$prog" __complete bash "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)
    # A key's family (environment.) or KEY= goes on without a space.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[.=] ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}
complete -F _lxpy lxpy
"""

_ZSH = r"""#compdef lxpy
# zsh completion for lxpy (written by `lxpy completion zsh`). At each TAB,
# `lxpy __complete zsh WORD...` prints the candidates with descriptions:
# commands and options from lxpy's parser, names from lxpyd (none when it
# does not answer). In $fpath as _lxpy, or sourced after compinit.

_lxpy() {
    local prog=${words[1]} line value desc
    local -a out items joined
    # The lxpy as typed when it is a command, else the one that wrote this.
    (( $+commands[$prog] )) || [[ $prog == */* && -f $prog && -x $prog ]] || prog=@FALLBACK@
    out=("${(@f)$("$prog" __complete zsh "${(@Q)words[2,CURRENT]}" 2>/dev/null)}")
    for line in $out; do
        [[ -n $line ]] || continue
        if [[ $line == :files ]]; then
            _files
            continue
        fi
        value=${line%%$'\t'*}
        desc=${line#*$'\t'}
        [[ $desc == $line ]] && desc=
        value=${value//:/\\:}
        # A key's family (environment.) or KEY= goes on without a space.
        if [[ $value == *[.=] ]]; then
            joined+=("$value${desc:+:$desc}")
        else
            items+=("$value${desc:+:$desc}")
        fi
    done
    (( $#items )) && _describe -t lxpy lxpy items
    (( $#joined )) && _describe -t lxpy lxpy joined -S ''
    return 0
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _lxpy "$@"
else
    compdef _lxpy lxpy
fi
"""

_FISH = r"""# fish completion for lxpy (written by `lxpy completion fish`). At each
# TAB, `lxpy __complete fish WORD...` prints the candidates with
# descriptions: commands and options from lxpy's parser, names from lxpyd
# (none when it does not answer).

function __lxpy_complete
    set -l words (commandline -opc)
    set -l prog $words[1]
    set -e words[1]
    # The lxpy as typed when it is a command, else the one that wrote this.
    command -q -- $prog; or set prog @FALLBACK@
    set -l cur (commandline -ct)
    for line in ($prog __complete fish $words "$cur" 2>/dev/null)
        if test "$line" = :files
            __fish_complete_path "$cur"
        else
            printf '%s\n' $line
        end
    end
end

complete -c lxpy -f -a '(__lxpy_complete)'
"""

_SCRIPTS = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}
