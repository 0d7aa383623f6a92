"""The watcher follows the registry by its events (keytree.KeyTree), reading it in full only at
start, after the history was lost and every resync interval; what it applies is always what a
full read gives. A real etcd (v2 and v3) and the real pipeline; no nginx (apply only builds).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, Etcd, wait_for
from test_registry import _write_v2_noise, entry

from generator import resources
from generator.core.config import resolve
from generator.core.render import environment
from generator.registry.base import Changes, Entry, Read, Registry, Removal
from generator.registry.open import open_registry
from generator.watch.engine import Engine
from generator.watch.observe import Outcome
from generator.watch.watcher import Timing, Watcher

pytestmark = pytest.mark.integration

CONFIG = resolve(resources.schema("config"), {"domain": "dev.test", "allow_loopback": True}, {})
ENGINE = Engine(CONFIG, resources.schema("snapshot"), environment(resources.template_loader()))


class Counted:
    """A registry that counts its full reads."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.description = registry.description
        self.reads = 0

    def read(self) -> Read:
        self.reads += 1
        return self.registry.read()

    def wait(self, after: int, timeout: float) -> int | None:
        return self.registry.wait(after, timeout)

    def watch(self, after: int, timeout: float) -> Changes | None:
        return self.registry.watch(after, timeout)

    def register(self, entry: Entry, ttl: int) -> None:
        self.registry.register(entry, ttl)

    def keepalive(self, entry: Entry, ttl: int) -> str | None:
        return self.registry.keepalive(entry, ttl)

    def deregister(self, entry: Entry, force: bool = False) -> Removal:
        return self.registry.deregister(entry, force)

    def close(self) -> None:
        self.registry.close()


class Running:
    """A Watcher in a thread, its applies recorded; `gate` holds an apply while cleared."""

    def __init__(self, registry: Counted, timing: Timing) -> None:
        self.registry = registry
        self.applied: list[Mapping[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.holding = threading.Event()
        self.watcher = Watcher(registry, self.apply, lambda *args, **fields: None, timing)
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)

    def apply(self, snapshot: Mapping[str, Any]) -> Outcome:
        if not self.gate.is_set():
            self.holding.set()
            self.gate.wait(30)
        self.applied.append(snapshot)
        return Outcome(ENGINE.build(snapshot), "built", False, False)

    def caught_up(self, reader: Registry) -> bool:
        return bool(self.applied) and self.applied[-1] == reader.read().snapshot


@pytest.fixture(params=["etcd", "etcd3"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def watching(scheme: str, etcd: Etcd) -> Iterator[tuple[Running, Registry, Etcd]]:
    """(the running watcher, a second registry client to write and read with, etcd)."""
    url = f"{scheme}://{LOOPBACK}:{etcd.client_port}"
    writer = open_registry(url, timeout=5.0)
    writer.register(entry(deployment="before"), ttl=30)
    running = Running(Counted(open_registry(url, timeout=5.0)), Timing(quiet=0.05))
    running.thread.start()
    try:
        wait_for(lambda: running.applied, timeout=60, what="the first apply")
        yield running, writer, etcd
    finally:
        running.gate.set()
        running.watcher.stop()
        running.thread.join(15)
        running.registry.close()
        writer.close()


def test_changes_are_applied_from_events_without_reading_everything_again(
    watching: tuple[Running, Registry, Etcd],
) -> None:
    running, writer, _ = watching
    for service in ("web", "api", "db"):
        writer.register(entry(deployment="feat-y", service=service), ttl=30)
    writer.deregister(entry(deployment="feat-y", service="api"))
    writer.deregister(entry(deployment="before"))
    wait_for(lambda: running.caught_up(writer), timeout=60, what="the changes applied")
    assert set(running.applied[-1]["deployment"]) == {"feat-y"}
    assert running.registry.reads == 1  # only the first read; the rest came from events


def test_a_lost_history_is_read_in_full(
    scheme: str, watching: tuple[Running, Registry, Etcd], tmp_path: Path
) -> None:
    running, writer, etcd = watching
    running.gate.clear()  # the next apply waits: the watcher falls behind
    writer.register(entry(deployment="first"), ttl=30)
    wait_for(running.holding.is_set, timeout=60, what="an apply held")
    writer.register(entry(deployment="second"), ttl=30)
    writer.register(entry(deployment="third"), ttl=30)  # v3 keeps the compaction's revision
    if scheme == "etcd":
        _write_v2_noise(etcd, 1010)  # v2 keeps the last 1000 events
    else:
        etcd.v3("kv/compaction", {"revision": writer.read().index})
    running.gate.set()
    wait_for(lambda: running.caught_up(writer), timeout=60, what="the history re-read")
    assert {"first", "second", "third"} <= set(running.applied[-1]["deployment"])
    assert running.registry.reads == 2


def test_the_registry_is_read_in_full_every_resync_interval(scheme: str, etcd: Etcd) -> None:
    registry = Counted(open_registry(f"{scheme}://{LOOPBACK}:{etcd.client_port}", timeout=5.0))
    running = Running(registry, Timing(quiet=0.05, resync=0.5))
    running.thread.start()
    try:
        wait_for(lambda: registry.reads >= 3, timeout=60, what="two resyncs")
    finally:
        running.watcher.stop()
        running.thread.join(15)
        registry.close()


def test_a_v2_quiet_period_shorter_than_a_member_check_ends_as_no_change(etcd: Etcd) -> None:
    """A burst's quiet period (0.05 s by default) is waited for as is, not rounded up to the
    time after which a silent member counts as failed; that takes a longer wait. (v3 gives
    etcd that time to confirm the watch, then waits only until the quiet period ends.)"""
    registry = open_registry(f"etcd://{LOOPBACK}:{etcd.client_port}", timeout=2.0)
    try:
        index = registry.read().index
        etcd.pause()
        try:
            assert registry.wait(index, 0.05) is None
        finally:
            etcd.resume()
    finally:
        registry.close()
