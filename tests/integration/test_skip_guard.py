"""A run that requires the integration tests (LXPY_REQUIRE_INTEGRATION=1,
as scripts/test sets) fails when any of them did not run, whichever way it
dropped out. Each case runs pytest on a small module made here, with the
suite's conftest loaded as a plugin. Integration tests themselves: without
root every one of them is skipped, so a run where all ran needs root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

INTEGRATION = """
import pytest
pytestmark = pytest.mark.integration
"""


def _pytest(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_case.py").write_text(INTEGRATION + body)
    env = {**os.environ, "LXPY_REQUIRE_INTEGRATION": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


def test_a_run_where_all_ran_passes(tmp_path: Path) -> None:
    res = _pytest(tmp_path, "def test_one():\n    pass\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "did not run" not in res.stdout


@pytest.mark.parametrize(
    ("body", "args", "why"),
    [
        ("def test_one():\n    pytest.skip('no root')\n", (), "test_one (did not run)"),
        (
            "@pytest.fixture\ndef dep():\n    pytest.skip('no btrfs')\n"
            "def test_one(dep):\n    pass\n",
            (),
            "test_one (did not run)",
        ),
        (
            "pytest.skip('no btrfs', allow_module_level=True)\n",
            (),
            "test_case.py (skipped as it was collected)",
        ),
        ("pytest.importorskip('no_such_module')\n", (), "(skipped as it was collected)"),
        ("def test_one():\n    pass\n", ("-k", "nothing"), "test_one (deselected)"),
        ("def test_one():\n    pass\n", ("-m", "not integration"), "test_one (deselected)"),
    ],
    ids=["skip", "fixture-skip", "module-skip", "importorskip", "-k", "-m"],
)
def test_a_run_where_one_dropped_out_fails(
    tmp_path: Path, body: str, args: tuple[str, ...], why: str
) -> None:
    res = _pytest(tmp_path, body, *args)
    assert res.returncode == pytest.ExitCode.TESTS_FAILED, res.stdout + res.stderr
    assert "this run requires them all" in res.stdout
    assert why in res.stdout, res.stdout
