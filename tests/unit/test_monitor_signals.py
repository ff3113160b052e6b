"""When the monitor repeats a signal to init (Monitor._signal_init).

The kernel drops a signal to a pid namespace's init that init neither
handles nor blocks. Whether init takes it is read from /proc before the
signal is sent; these tests play an init whose masks change at the moment
the signal goes, the window the real race lives in.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from lxpy.runtime import monitor as monitor_mod
from lxpy.runtime.monitor import Monitor
from lxpy.runtime.spec import LaunchSpec


class Init:
    """An init that starts taking `sig` when a signal reaches it."""

    def __init__(self, takes: bool) -> None:
        self.takes = takes
        self.sent: list[int] = []
        self.delivered: list[int] = []

    def catches(self, _pid: int, _sig: int) -> bool:
        return self.takes

    def kill(self, _pid: int, sig: int) -> None:
        self.sent.append(sig)
        if self.takes:
            self.delivered.append(sig)
        self.takes = True


Play = Callable[[bool], tuple[Monitor, "Init"]]


@pytest.fixture
def play(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], tuple[Monitor, Init]]:
    """A monitor whose init is an Init that takes signals from the start or not."""

    def _play(takes: bool) -> tuple[Monitor, Init]:
        init = Init(takes)
        monkeypatch.setattr(monitor_mod, "_catches", init.catches)
        monkeypatch.setattr(monitor_mod.os, "kill", init.kill)
        spec = LaunchSpec(name="sig", rootfs="/nonexistent", control_socket="/nonexistent")
        mon = Monitor(spec)
        mon.init_pid = 4242
        return mon, init

    return _play


def test_a_signal_sent_before_init_took_it_is_repeated(play: Play) -> None:
    mon, init = play(False)
    mon._signal_init(signal.SIGTERM)
    # Dropped by the kernel, though init shows the signal taken by now.
    assert init.delivered == []
    assert mon.pending_signal == signal.SIGTERM
    mon._signal_init(signal.SIGTERM)
    assert init.delivered == [signal.SIGTERM]
    assert mon.pending_signal is None


def test_a_signal_init_takes_is_sent_once(play: Play) -> None:
    mon, init = play(True)
    mon._signal_init(signal.SIGINT)
    assert init.sent == [signal.SIGINT]
    assert mon.pending_signal is None


def test_sigkill_is_never_repeated(play: Play) -> None:
    mon, _init = play(False)
    mon._signal_init(signal.SIGKILL)
    assert mon.pending_signal is None
