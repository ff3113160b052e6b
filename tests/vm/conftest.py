"""Fixtures for the tests that boot a Debian 12 guest under QEMU.

Every test here is an integration test (root, the Debian mirror for the
first image build) and a `vm` test. A guest that does not boot fails the
test with its console log; it never skips.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.vm.guest import Guest
from tests.vm.image import VmImage, build_image

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the markers must be on before tests/conftest.py looks for
    # `integration` to skip where integration tests cannot run.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.vm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        # Whatever the fixture is named that holds the guest.
        guests = {id(v): v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Guest)}
        for g in guests.values():
            report.sections.append((f"guest console ({g.log})", g.console_tail()))
    return report


@pytest.fixture(scope="session")
def vm_image(test_cache: Path) -> VmImage:
    """The Debian 12 guest image, built into the suite's cache on first use
    (a few minutes) and reused while its inputs stay the same."""
    return build_image(test_cache)


@pytest.fixture(scope="module")
def guest(vm_image: VmImage) -> Iterator[Guest]:
    """One booted guest for the whole module, ssh answering; powered off
    and its overlay removed after the module's last test."""
    with Guest(vm_image) as g:
        yield g
