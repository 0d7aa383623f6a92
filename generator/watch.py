"""The watcher that replaces etcdwatch: read the whole prefix, apply, wait for changes, repeat.

A watch event is only a signal: after a burst settles, the watcher re-reads a consistent
snapshot at one index and applies it (never an incrementally patched copy). Bursts settle when
the registry has been quiet for `quiet` seconds, or `max_wait` seconds after the first change at
the latest, so a steady trickle of writes still gets applied. An unreachable registry never
means "no services": the last good config stays while the watcher retries with capped backoff.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Error
from .model import Problem
from .pipeline import Rendered
from .registry import HistoryLost, Registry, RegistryUnavailable

Clock = Callable[[], float]
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # seconds between attempts while the registry is away
IDLE_POLL = 0.5  # longest block in wait(), so a stop request is noticed within this


@dataclass(frozen=True, slots=True)
class Timing:
    quiet: float = 0.2
    max_wait: float = 2.0
    resync: float = 300.0  # re-read even without events: a safety net under a silent watch


def settle(
    wait: Callable[[int, float], int | None],
    index: int,
    timing: Timing,
    clock: Clock = time.monotonic,
) -> int:
    """After a first change at `index`, keep taking changes until the registry has been quiet
    for timing.quiet or timing.max_wait has passed since the first; the last index seen.

    `wait(after, timeout)` is Registry.wait. HistoryLost ends the burst at once: the caller
    re-reads everything anyway.
    """
    first = last = clock()
    while True:
        now = clock()
        timeout = min(last + timing.quiet, first + timing.max_wait) - now
        if timeout <= 0:
            return index
        try:
            changed = wait(index, timeout)
        except HistoryLost:
            return index
        if changed is None:
            return index
        index, last = changed, clock()


class Watcher:
    """Runs until stop() (or SIGTERM/SIGINT when started through run())."""

    def __init__(
        self,
        registry: Registry,
        apply: Callable[[Mapping[str, Any]], tuple[Rendered, str]],
        log: Callable[[str], None],
        timing: Timing = Timing(),
    ) -> None:
        self.registry = registry
        self.apply = apply  # builds and applies a snapshot: (what was rendered, what happened)
        self.log = log
        self.timing = timing
        self.stopping = threading.Event()
        self._reachable: bool | None = None
        self._problems: tuple[Problem, ...] | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        self.log(
            f"watching {self.registry.description} (quiet {self.timing.quiet:g} s, "
            f"max wait {self.timing.max_wait:g} s)"
        )
        attempt = 0
        while not self.stopping.is_set():
            try:
                index = self._read_and_apply()
                attempt = 0
                self._follow(index)
            except RegistryUnavailable as error:
                if self._reachable is not False:
                    self.log(
                        f"{error}; keeping the last good config, retrying (backoff up to "
                        f"{BACKOFF[-1]:g} s)"
                    )
                self._reachable = False
            except Exception as error:  # a watcher that dies routes nothing new: log, retry
                self.log(
                    f"internal error: {type(error).__name__}: {error}; keeping the last good "
                    "config, retrying. This is a bug in devtest-router; please report it"
                )
                self._reachable = None
            else:
                continue
            self.stopping.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
            attempt += 1
        self.log("stopped")
        return 0

    def _follow(self, index: int) -> None:
        """Wait for changes after `index`; return when a re-read is due (or on stop)."""
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            try:
                changed = self.registry.wait(index, IDLE_POLL)
            except HistoryLost:
                self.log("the watch fell behind the registry's history; re-reading it in full")
                return
            if changed is not None:
                settle(self.registry.wait, changed, self.timing)
                return
            if time.monotonic() - idle_since >= self.timing.resync:
                return

    def _read_and_apply(self) -> int:
        read = self.registry.read()
        if self._reachable is False:
            self.log(f"{self.registry.description} is reachable again")
        self._reachable = True
        try:
            rendered, outcome = self.apply(read.snapshot)
        except Error as error:  # logged, retried on the next change; never kills the watcher
            self.log(f"apply failed at registry index {read.index}: {error}")
            return read.index
        if rendered.table.problems != self._problems:
            for problem in rendered.table.problems:
                self.log(f"problem: {problem}")
            self._problems = rendered.table.problems
        self.log(f"{outcome} (registry index {read.index})")
        return read.index


def stop_on_signals(watcher: Watcher) -> None:
    """SIGTERM and SIGINT end the watcher after the step in progress (an apply is never cut)."""

    def handler(signum: int, _frame: object) -> None:
        watcher.log(f"{signal.Signals(signum).name} received; stopping")
        watcher.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
