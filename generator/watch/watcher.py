"""The watcher that replaces etcdwatch: read the whole prefix, apply, wait for changes, repeat.

It keeps the keys it read (keytree.KeyTree) and applies the watch's events to them, so a change
costs what the change is, not what the registry is: the snapshot built from the events is the
one a full read at the same index would give. It reads everything again when it cannot follow
the events: at start and after the registry was away, when the history was lost (etcd v2
cleared the index, v3 compacted), after an event of a shape it does not know, for a registry
that only says "changed" (a file), and every `resync` seconds. Bursts are debounced (one apply once
the registry has been quiet for `quiet` seconds, or `max_wait` seconds after the first change at
the latest), so a steady trickle of writes still gets applied. An unreachable registry never
means "no services": the last good config stays while the watcher retries with capped backoff.
What happens is told to an Observer (observe.py): /healthz and /metrics are kept at the edge.

Removal grace. When the registry was away longer than the registrations' TTL, it comes back
without them (etcd v2 expires the keys at once; v3 renews every lease at its restart, so the
keys of a client that does not come back go one TTL later), and the clients write them again
within a third of their TTL. So after a reconnect (a read failed, then a read succeeded) the
watcher holds removals back for `removal_grace` seconds: it applies the current
snapshot plus every key of the last snapshot it applied before the outage that is now missing
(hold_removals: a merge at key level, the current value wins). Additions and changed values
apply at once. Removals that come during the grace are held too, until its end: the grace
covers the time the clients need to come back, and a removal seen then may just as well be an
expiry caused by the outage (a v3 lease renewed at the restart runs out one TTL later). When
the grace ends the current snapshot is applied, with or without an event. One log line when a
grace starts and one when it ends. A watch that fails while reads succeed is no outage (the
registry answered; no key expired for it): it starts no grace, and backs off like any failure
until a watch answers again, said in one line when it starts and one when it ends.

The grace and the safety threshold's window (pipeline.removal_refusal, removal_window) compose:
what is still missing when a grace ends goes in one apply, judged with the removals of the
window before it. If that is more than max_removed_fraction of the routes (registrations that
did not come back within the grace: their clients cannot reach the registry, or it was wiped),
the apply is refused and the last config stays, as for any mass removal; --force, or
registrations coming back, end it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from generator.core.errors import Error
from generator.core.model import Problem
from generator.core.words import counted
from generator.registry.base import Changes, HistoryLost, Read, Registry, present
from generator.registry.keytree import Change
from generator.resources import schema
from generator.streams import Log
from generator.watch.observe import Observer, Outcome, Unobserved, problem_fields

Clock = Callable[[], float]
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # seconds between attempts while the registry is away
IDLE_POLL = 0.5  # longest block in wait(), so a stop request is noticed within this


def _default(setting: str) -> float:
    """A setting's default, as schema/config.schema.json gives it (the one place it is set)."""
    return float(schema("config")["properties"][setting]["default"])


@dataclass(frozen=True, slots=True)
class Timing:
    """The watcher's timing settings (seconds); defaults as in the config schema."""

    quiet: float = _default("quiet_period")
    max_wait: float = _default("max_wait")
    resync: float = _default("resync_interval")  # read in full at least this often
    removal_grace: float = _default("removal_grace")  # after a reconnect, hold removals back


def debounce(
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


_ABSENT = object()
KeyPath = tuple[str, ...]  # a key's path in a snapshot: ("deployment", <branch>, "service", ...)


def hold_removals(current: Mapping[str, Any], held: Mapping[str, Any]) -> Mapping[str, Any]:
    """`current` plus every key (leaf) of `held` that `current` lacks, merged at key level: where
    both have a value, or one a directory and the other a value, current's wins.

    Neither input is changed; a directory to which nothing is added is current's own object
    (so an unchanged deployment stays the object the pipeline compared last time).
    """
    merged: dict[str, Any] | None = None
    for name, old in held.items():
        new = current.get(name, _ABSENT)
        if new is _ABSENT:
            value = old
        elif isinstance(new, Mapping) and isinstance(old, Mapping) and new is not old:
            value = hold_removals(new, old)
            if value is new:
                continue
        else:
            continue
        if merged is None:
            merged = dict(current)
        merged[name] = value
    return current if merged is None else merged


def missing_keys(
    current: Mapping[str, Any], held: Mapping[str, Any], at: KeyPath = ()
) -> list[KeyPath]:
    """The paths of the keys (leaves) of `held` that hold_removals adds to `current`."""
    found: list[KeyPath] = []
    for name, old in held.items():
        new = current.get(name, _ABSENT)
        if new is _ABSENT:
            found.extend(_leaves(old, (*at, name)))
        elif isinstance(new, Mapping) and isinstance(old, Mapping) and new is not old:
            found.extend(missing_keys(new, old, (*at, name)))
    return found


def _leaves(value: Any, at: KeyPath) -> list[KeyPath]:
    if not isinstance(value, Mapping):
        return [at]
    return [path for name, child in value.items() for path in _leaves(child, (*at, name))]


def during_grace(
    current: Mapping[str, Any], held: Mapping[str, Any] | None, grace_left: float
) -> Mapping[str, Any]:
    """What the watcher applies: `current`, plus the missing keys of `held` (the last snapshot
    applied) while `grace_left` seconds of a removal grace are left."""
    if held is None or grace_left <= 0:
        return current
    return hold_removals(current, held)


def count_keys(paths: list[KeyPath]) -> tuple[int, int]:
    """(keys, deployments they belong to) for the paths of snapshot keys."""
    deployments = {path[1] for path in paths if len(path) > 1 and path[0] == "deployment"}
    return len(paths), len(deployments)


def _keys_of(paths: list[KeyPath]) -> str:
    keys, deployments = count_keys(paths)
    return f"{counted(keys, 'key')} of {counted(deployments, 'deployment')}"


class _Burst:
    """Registry.watch as debounce() wants it (an index or None), keeping the changes seen; a
    change it cannot follow (or a lost history) marks the burst for a full read."""

    def __init__(self, registry: Registry, first: Changes) -> None:
        self.registry = registry
        self.changes: list[Change] = []
        self.known = True
        self.add(first)

    def add(self, changes: Changes) -> None:
        if changes.changes is None:
            self.known = False
        elif self.known:
            self.changes.extend(changes.changes)

    def __call__(self, after: int, timeout: float) -> int | None:
        try:
            changes = self.registry.watch(after, timeout)
        except HistoryLost:
            self.known = False
            raise
        if changes is None:
            return None
        self.add(changes)
        return changes.index


class Watcher:
    """Runs until stop() (or SIGTERM/SIGINT when started through run())."""

    def __init__(
        self,
        registry: Registry,
        apply: Callable[[Mapping[str, Any]], Outcome],
        log: Log,
        timing: Timing = Timing(),
        observer: Observer | None = None,
        allow_empty: bool = False,
    ) -> None:
        self.registry = registry
        self.apply = apply  # builds and applies a snapshot
        self.log = log
        self.timing = timing
        self.observer: Observer = observer or Unobserved()  # metrics and health, if served
        self.allow_empty = allow_empty  # an absent /deployment prefix is no services
        self.stopping = threading.Event()
        self._trouble: str | None = None  # what went wrong last, said once until it changes
        self._problems: tuple[Problem, ...] | None = None
        self._read_at = time.monotonic()  # when the registry was last read in full
        self._applied: Mapping[str, Any] | None = None  # the last snapshot applied (held keys too)
        self._outage = False  # a read failed since the last read that succeeded
        self._grace_until: float | None = None  # while set, removals are held back until then
        self._failures = 0  # registry failures in a row (reads or watches) since a watch answered

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        self.log(
            f"watching {self.registry.description} (quiet {self.timing.quiet:g} s, "
            f"max wait {self.timing.max_wait:g} s, removal grace "
            f"{self.timing.removal_grace:g} s)",
            registry=self.registry.description,
        )
        apply_failures = 0
        read: Read | None = None  # what to apply next; None: read the registry in full
        while not self.stopping.is_set():
            reading = False
            try:
                if read is None:
                    reading = True
                    read = self._read()
                    reading = False
                applied = self._apply(read)
                # A failed apply is tried again after a backoff even if nothing changes (nginx
                # may be restarting); otherwise the next read waits for a change or the resync.
                apply_failures = 0 if applied else apply_failures + 1
                patience = self.timing.resync if applied else backoff(apply_failures)
                read = self._follow(read, patience)
                continue
            except Error as error:  # unreachable or unreadable registry: nothing is changed
                # Only a failed read is an outage (for the removal grace): a watch that fails
                # while reads succeed loses no key.
                self._outage = self._outage or reading
                self.observer.registry_failed(str(error))
                self._say_once(f"{error}; keeping the last good config, retrying")
            except Exception as error:  # a watcher that dies routes nothing new: log, retry
                self._say_once(
                    f"internal error: {type(error).__name__}: {error}; keeping the last good "
                    "config, retrying. This is a bug in devtest-router; please report it"
                )
            read = None  # after a failure the kept keys may have missed events: read them all
            # Failures in a row count until a watch answers again, not until a read does: a
            # watch that keeps failing while reads succeed backs off as far as any failure.
            self._failures += 1
            self.stopping.wait(backoff(self._failures))
        self.log("stopped")
        return 0

    def _say_once(self, trouble: str) -> None:
        if trouble != self._trouble:
            self.log(trouble, "error", registry=self.registry.description)
        self._trouble = trouble

    def _answered(self) -> None:
        """A watch answered (a change, none in time, or a lost history): the registry works
        again as a whole. Ends the failures in a row, and a trouble that a read did not end (a
        failing watch), said in one line."""
        self._failures = 0
        if self._trouble is not None:
            self.log(
                f"watching {self.registry.description} again",
                registry=self.registry.description,
            )
            self._trouble = None

    def _follow(self, read: Read, patience: float) -> Read | None:
        """Wait for changes after `read`; the keys changed by a debounced burst of them, or None
        when a full read is due: the events cannot be followed (a lost history, an unknown
        event, no keys kept), `patience` seconds without events, the resync, or a stop. When a
        removal grace ends first, `read` itself: applied again, without the held keys."""
        due = min(time.monotonic() + patience, self._read_at + self.timing.resync)
        while not self.stopping.is_set():
            now = time.monotonic()
            if self._grace_until is not None and now >= self._grace_until:
                return read
            if now >= due:
                break
            poll = min(IDLE_POLL, due - now)
            if self._grace_until is not None:
                poll = min(poll, self._grace_until - now)
            try:
                changed = self.registry.watch(read.index, poll)
            except HistoryLost:
                self._answered()
                self.log(
                    "the watch fell behind the registry's history; re-reading it in full",
                    "warning",
                    registry_index=read.index,
                )
                return None
            self._answered()
            if changed is not None:
                burst = _Burst(self.registry, changed)
                index = debounce(burst, changed.index, self.timing)
                if not burst.known or read.keys is None:
                    return None
                read.keys.apply(burst.changes)
                return Read(read.keys.snapshot(), index, read.keys)
        return None

    def _read(self) -> Read:
        """The whole registry, read at one index."""
        read = present(self.registry.read(), self.registry.description, self.allow_empty)
        self._read_at = time.monotonic()
        return read

    def _apply(self, read: Read) -> bool:
        """Apply what was read (in full or from events): whether the apply succeeded."""
        self.observer.registry_read(read.index)
        if self._outage:  # a read failed before this one
            self._readable_again(read)
        snapshot = self._with_held_keys(read)
        started = time.monotonic()
        try:
            outcome = self.apply(snapshot)
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
            return False
        self.observer.applied(outcome, time.monotonic() - started)
        self._applied = snapshot
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
        return True

    def _readable_again(self, read: Read) -> None:
        """Say the registry answers again; after an outage, start a removal grace (if on, and
        if anything was applied before it)."""
        fields: dict[str, object] = {
            "registry": self.registry.description,
            "registry_index": read.index,
        }
        message = f"{self.registry.description} is readable again"
        grace = self.timing.removal_grace
        if self._outage and grace > 0 and self._applied is not None:
            missing = missing_keys(read.snapshot, self._applied)
            self._grace_until = time.monotonic() + grace
            keys, deployments = count_keys(missing)
            message += (
                f" after an outage: holding back removals for {grace:g} s "
                f"({_keys_of(missing)} missing)"
            )
            fields.update(removal_grace=grace, held_keys=keys, held_deployments=deployments)
        self.log(message, **fields)
        self._trouble = None
        self._outage = False

    def _with_held_keys(self, read: Read) -> Mapping[str, Any]:
        """The snapshot to apply: what was read, plus the keys held back while a removal grace
        lasts; the end of a grace is said here, once."""
        if self._grace_until is None:
            return read.snapshot
        left = self._grace_until - time.monotonic()
        if left <= 0:
            self._grace_until = None
            gone = missing_keys(read.snapshot, self._applied) if self._applied else []
            keys, deployments = count_keys(gone)
            self.log(
                "removal grace over: "
                + (
                    f"{_keys_of(gone)} held back are still missing; removing them"
                    if gone
                    else "no held-back key is missing any more"
                ),
                registry_index=read.index,
                held_keys=keys,
                held_deployments=deployments,
            )
        return during_grace(read.snapshot, self._applied, left)


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
