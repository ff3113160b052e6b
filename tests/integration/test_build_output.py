"""What `lxpy template build` prints: progress, the log only with
--verbose, the end of the log and where it is on failure, and nothing but
"up to date" when there is nothing to build. Against a real lxpyd."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lxpy.api.client import Client
from tests.conftest import Daemon, daemon_in

pytestmark = pytest.mark.integration

PROGRESS = re.compile(r"^\[ *\d+%\] \S")


def test_an_up_to_date_template_is_said_so_with_no_progress(daemon: Daemon) -> None:
    daemon.cli("template", "build", "busybox", timeout=300)

    # The answer to the request is the finished operation: nothing to follow.
    op = Client(daemon.socket, timeout=30).build_template("busybox")
    assert (op["status"], op["stage"], op["progress"]) == ("success", "cached", 1.0)

    res = daemon.cli("template", "build", "busybox")
    assert res.stdout == "template busybox is up to date\n"
    assert res.stderr == ""


def test_the_build_log_is_printed_only_with_verbose(daemon: Daemon) -> None:
    res = daemon.cli("template", "build", "busybox", "--force", timeout=300)
    assert res.stdout.startswith("built template busybox in ")
    lines = res.stderr.splitlines()
    assert lines and all(PROGRESS.match(line) for line in lines), res.stderr
    assert "applet links" not in res.stderr

    res = daemon.cli("template", "build", "busybox", "--force", "--verbose", timeout=300)
    assert res.stdout.startswith("built template busybox in ")
    assert "applet links" in res.stderr
    assert any(PROGRESS.match(line) for line in res.stderr.splitlines())


def test_a_failed_build_shows_the_end_of_its_log_and_where_all_of_it_is(
    tmp_path: Path, test_cache: Path
) -> None:
    defs = tmp_path / "templates"
    defs.mkdir()
    # A tool that fails (tar): its error quotes its last output.
    (defs / "junk.tar").write_text("this is not a tar archive\n" * 10)
    (defs / "junk.toml").write_text('[source]\nkind = "tarball"\npath = "junk.tar"\n')
    # A step after the log's last line that fails: that line is context.
    (defs / "nozone.toml").write_text(
        '[source]\nkind = "busybox"\n[setup]\ntimezone = "Nowhere/Zone"\n'
    )
    settings = f'pool_size = "3GiB"\ndefault_network = ""\ntemplate_dirs = ["{defs}"]\n'
    with daemon_in(tmp_path, settings) as d:
        client = Client(d.socket, timeout=30)

        res = d.cli("template", "build", "nozone", check=False, timeout=300)
        assert res.returncode == 1 and res.stdout == ""
        log = client.template("nozone")["build_log"]
        assert log is not None and "applet links" in Path(log).read_text()
        head = f"the end of the build log (all of it: {log}):\n"
        assert head in res.stderr, res.stderr
        after = res.stderr.split(head, 1)[1].splitlines()
        shown = [line for line in after if line.startswith("  ")]
        assert shown == after[: len(shown)] and shown, res.stderr
        assert "applet links" in shown[-1], res.stderr
        assert "error: setup.timezone: unknown timezone 'Nowhere/Zone'" in res.stderr
        assert "Traceback" not in res.stderr

        res = d.cli("template", "build", "junk", check=False, timeout=300)
        assert res.returncode == 1 and res.stdout == ""
        log = client.template("junk")["build_log"]
        assert log is not None and "not look like a tar archive" in Path(log).read_text()
        # Said once, in the error, and where the whole log is.
        assert res.stderr.count("This does not look like a tar archive") == 1, res.stderr
        assert f"the full build log: {log}\nerror: tar exited with status 2" in res.stderr

        # With --verbose the log was shown as it came: then only where it is.
        res = d.cli("template", "build", "nozone", "--verbose", check=False, timeout=300)
        assert res.returncode == 1
        assert "applet links" in res.stderr
        assert f"the full build log: {client.template('nozone')['build_log']}\n" in res.stderr
        assert "the end of the build log" not in res.stderr
