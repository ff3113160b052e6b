"""Did you mean: the known names nearest to a mistyped one.

Used for the hints of not-found errors (containers, snapshots, templates,
networks, config keys) and of unknown commands. Stdlib only and no
imports at all: the CLI loads it only when it has an error to explain.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Most names a not-found hint lists when none is near the one asked for;
# past that, the hint names the command that lists them.
MAX_LISTED = 8


def distance(a: str, b: str) -> int:
    """Edits from `a` to `b`: insertions, deletions, substitutions and swaps
    of two neighbours (`memroy` -> `memory` is one), case ignored."""
    a, b = a.lower(), b.lower()
    if a == b:
        return 0
    # Three rows of the optimal-string-alignment table are enough.
    before: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], before[j - 2] + 1)
        before, prev = prev, cur
    return prev[len(b)]


def _score(word: str, candidate: str) -> int | None:
    """How far `candidate` is from `word` (lower is nearer); None when it is
    too far to suggest. A dotted candidate is also compared by its tail
    (`memory` is near `limits.memory`), and a word of three letters or
    more that starts a candidate counts as near (`snap` for `snapshot`)."""
    # Up to a third of the word may be wrong, as cargo and git allow.
    limit = max(1, len(word) // 3)
    parts = candidate.split(".")
    tails = [".".join(parts[i:]) for i in range(len(parts))]
    best = min(distance(word, t) for t in tails)
    if best <= limit:
        return best
    if len(word) >= 3 and candidate.lower().startswith(word.lower()):
        return limit + 1
    return None


def nearest(word: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """The candidates nearest to `word`, best first (at most `limit`, all
    equally near); [] when none is near enough to be what was meant."""
    scored: dict[str, int] = {}
    for c in candidates:
        if c == word:
            continue
        s = _score(word, c)
        if s is not None:
            scored[c] = s
    if not scored:
        return []
    best = min(scored.values())
    return sorted(c for c, s in scored.items() if s == best)[:limit]


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """`did you mean 'web'?` (or two or three names), or None when no
    candidate is near `word`."""
    near = nearest(word, candidates)
    return phrase(near) if near else None


def phrase(names: list[str]) -> str:
    """`did you mean 'a'?`, `did you mean 'a' or 'b'?`, `... 'a', 'b' or 'c'?`"""
    quoted = [f"'{n}'" for n in names]
    if len(quoted) == 1:
        return f"did you mean {quoted[0]}?"
    return f"did you mean {', '.join(quoted[:-1])} or {quoted[-1]}?"


def not_found_hint(word: str, candidates: Iterable[str], known: str, lister: str) -> str:
    """The hint of a not-found error for `word`: the nearest names, else
    the names themselves when they are few (`known: a, b`), else the command
    `lister` that lists them.

    For example ("wbe", names, "known containers", "`lxpy list`").
    """
    names = sorted(set(candidates))
    near = did_you_mean(word, names)
    if near:
        return near
    if len(names) <= MAX_LISTED:
        return f"{known}: {', '.join(names) or 'none'}"
    return f"{lister} lists them"
