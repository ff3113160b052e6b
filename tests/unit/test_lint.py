"""ruff (lint and format) and mypy run over the whole tree as part of the
tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


TREE = ["lxpy", "tui", "tests", "bench"]


def test_ruff_check() -> None:
    res = subprocess.run(
        [str(BIN / "ruff"), "check", *TREE], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format() -> None:
    res = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", *TREE], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy() -> None:
    res = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
