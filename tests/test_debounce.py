"""The debounce rule of the watcher, run against a scripted registry and a fake clock (no sleep)."""

from __future__ import annotations

import pytest

from generator.registry.base import HistoryLost
from generator.watch.watcher import Timing, debounce


class Script:
    """A registry whose changes arrive at scripted times, and the clock they arrive by."""

    def __init__(self, changes: list[float]) -> None:
        self.changes = changes  # times at which the registry changes after the first one
        self.now = 0.0
        self.index = 1

    def clock(self) -> float:
        return self.now

    def wait(self, after: int, timeout: float) -> int | None:
        if self.changes and self.changes[0] <= self.now + timeout:
            self.now = max(self.now, self.changes.pop(0))
            self.index += 1
            return self.index
        self.now += timeout
        return None


TIMING = Timing(quiet=0.2, max_wait=2.0)


def test_a_lone_change_ends_its_burst_after_the_quiet_period() -> None:
    script = Script([])
    assert debounce(script.wait, 1, TIMING, script.clock) == 1
    assert script.now == pytest.approx(0.2)


def test_a_burst_ends_after_its_last_change_plus_the_quiet_period() -> None:
    script = Script([0.1, 0.25, 0.3])
    assert debounce(script.wait, 1, TIMING, script.clock) == 4
    assert script.now == pytest.approx(0.5)


def test_a_steady_trickle_is_applied_after_max_wait_at_the_latest() -> None:
    script = Script([0.15 * step for step in range(1, 100)])
    debounce(script.wait, 1, TIMING, script.clock)
    assert script.now == pytest.approx(2.0)
    assert script.changes, "changes after max_wait are left for the next round"


def test_a_lost_history_ends_the_burst_at_once() -> None:
    def wait(after: int, timeout: float) -> int | None:
        raise HistoryLost

    assert debounce(wait, 7, TIMING, lambda: 0.0) == 7


def test_zero_quiet_period_takes_no_second_look() -> None:
    script = Script([0.0])
    debounce(script.wait, 1, Timing(quiet=0.0, max_wait=2.0), script.clock)
    assert script.changes == [0.0]
