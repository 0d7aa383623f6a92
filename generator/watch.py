"""The watcher that replaces etcdwatch: read the whole prefix, apply, wait for changes, repeat.

A watch event is only a signal: after a burst settles, the watcher re-reads a consistent
snapshot at one index and applies it (never an incrementally patched copy). Bursts settle when
the registry has been quiet for `quiet` seconds, or `max_wait` seconds after the first change at
the latest, so a steady trickle of writes still gets applied. An unreachable registry never
means "no services": the last good config stays while the watcher retries with capped backoff.
What happens is told to an Observer (observe.py): /healthz and /metrics are kept at the edge.
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
from .observe import Observer, Outcome, Unobserved, problem_fields
from .registry import HistoryLost, Registry
from .streams import Log

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


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row (1 or more)."""
    return BACKOFF[min(failures, len(BACKOFF)) - 1]


class Watcher:
    """Runs until stop() (or SIGTERM/SIGINT when started through run())."""

    def __init__(
        self,
        registry: Registry,
        apply: Callable[[Mapping[str, Any]], Outcome],
        log: Log,
        timing: Timing = Timing(),
        observer: Observer | None = None,
    ) -> None:
        self.registry = registry
        self.apply = apply  # builds and applies a snapshot
        self.log = log
        self.timing = timing
        self.observer: Observer = observer or Unobserved()  # metrics and health, if served
        self.stopping = threading.Event()
        self._trouble: str | None = None  # what went wrong last, said once until it changes
        self._problems: tuple[Problem, ...] | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        self.log(
            f"watching {self.registry.description} (quiet {self.timing.quiet:g} s, "
            f"max wait {self.timing.max_wait:g} s)",
            registry=self.registry.description,
        )
        failures = 0
        while not self.stopping.is_set():
            try:
                index, applied = self._read_and_apply()
                # A failed apply is tried again after a backoff even if nothing changes (nginx
                # may be restarting); otherwise the next read waits for a change or the resync.
                failures = 0 if applied else failures + 1
                self._follow(index, self.timing.resync if applied else backoff(failures))
                continue
            except Error as error:  # unreachable or unreadable registry: nothing is changed
                self.observer.registry_failed(str(error))
                self._say_once(f"{error}; keeping the last good config, retrying")
            except Exception as error:  # a watcher that dies routes nothing new: log, retry
                self._say_once(
                    f"internal error: {type(error).__name__}: {error}; keeping the last good "
                    "config, retrying. This is a bug in devtest-router; please report it"
                )
            failures += 1
            self.stopping.wait(backoff(failures))
        self.log("stopped")
        return 0

    def _say_once(self, trouble: str) -> None:
        if trouble != self._trouble:
            self.log(trouble, "error", registry=self.registry.description)
        self._trouble = trouble

    def _follow(self, index: int, patience: float) -> None:
        """Wait for changes after `index`; return when a re-read is due: after a settled
        change, a lost history, `patience` seconds without events, or a stop."""
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            try:
                changed = self.registry.wait(index, IDLE_POLL)
            except HistoryLost:
                self.log(
                    "the watch fell behind the registry's history; re-reading it in full",
                    "warning",
                    registry_index=index,
                )
                return
            if changed is not None:
                settle(self.registry.wait, changed, self.timing)
                return
            if time.monotonic() - idle_since >= patience:
                return

    def _read_and_apply(self) -> tuple[int, bool]:
        """Read the registry and apply it: (the read's index, whether the apply succeeded)."""
        read = self.registry.read()
        self.observer.registry_read(read.index)
        if self._trouble is not None:
            self.log(
                f"{self.registry.description} is readable again",
                registry=self.registry.description,
                registry_index=read.index,
            )
            self._trouble = None
        started = time.monotonic()
        try:
            outcome = self.apply(read.snapshot)
        except Exception as error:
            self.observer.apply_failed(_one_line(error), time.monotonic() - started)
            if not isinstance(error, Error):
                raise  # a bug: logged as one by run()
            # logged and retried; never the end of the watcher
            self.log(
                f"apply failed at registry index {read.index}: {error}",
                "error",
                registry_index=read.index,
            )
            return read.index, False
        self.observer.applied(outcome, time.monotonic() - started)
        rendered = outcome.rendered
        fields = {"registry_index": read.index, "snapshot": rendered.snapshot_id}
        if rendered.table.problems != self._problems:
            for problem in rendered.table.problems:
                self.log(f"problem: {problem}", "warning", **fields, **problem_fields(problem))
            self._problems = rendered.table.problems
        self.log(
            f"{outcome.message} (registry index {read.index})",
            **fields,
            result="changed" if outcome.changed else "unchanged",
            routes=len(rendered.table.routes),
            problems=len(rendered.table.problems),
        )
        return read.index, True


def _one_line(error: Exception) -> str:
    if isinstance(error, Error):
        return str(error)
    return f"internal error: {type(error).__name__}: {error}"


def stop_on_signals(watcher: Watcher) -> None:
    """SIGTERM and SIGINT end the watcher after the step in progress (an apply is never cut).

    The handler only sets a flag: printing from a signal handler can collide with a print in
    progress (a reentrant call), and then the stop would be lost.
    """

    def handler(_signum: int, _frame: object) -> None:
        watcher.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
