"""The keys the watcher keeps (keytree.KeyTree), changed by watch events: after any sequence of
events, the snapshot they make equals a fresh full read at the same index.

First as a pure property (KeyTree against build_snapshot of the same keys), then against real
etcd members, v2 and v3: random puts, deletes, directory (prefix) deletes, lease revokes and TTL
expiries, the events read through the registries' watch(), applied, and compared with a read.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcd as etcd2
import pytest
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception
from etcd3gw.lease import Lease
from harness import LOOPBACK, Etcd, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from generator.core.keys import PREFIX
from generator.registry.base import Read, Registry
from generator.registry.keytree import Change, KeyTree, build_snapshot
from generator.registry.open import open_registry

# ------------------------------------------------------------------------------------------
# pure: KeyTree.apply + snapshot() == build_snapshot of the keys the changes leave

SEGMENTS = st.sampled_from(["a", "b", "service", "web", "ip"])
# Keys spelled with extra slashes too (at either end, doubled): build_snapshot ignores those at
# the ends, so two keys can be one leaf, and KeyTree must keep such keys as they were written.
KEYS = st.builds(
    lambda parts, before, after: PREFIX + before + "/".join(parts) + after,
    st.lists(SEGMENTS, min_size=1, max_size=4),
    st.sampled_from(["/", "/", "/", "//"]),
    st.sampled_from(["", "", "", "/"]),
)
VALUES = st.sampled_from(["", "10.0.0.1", "80", "x"])
CHANGES = st.one_of(
    st.builds(Change, KEYS, VALUES),
    st.builds(Change, KEYS, st.none(), st.booleans()),
    st.just(Change(PREFIX, None, True)),
    st.builds(Change, st.sampled_from(["/other/a", "/deploymentx/a", PREFIX + "/"]), VALUES),
)


def reference(keys: dict[str, str], change: Change) -> None:
    """What etcd does with its keys: a put sets one; a delete removes one, or a subtree."""
    if change.value is not None:
        keys[change.key] = change.value
        return
    keys.pop(change.key, None)
    if change.subtree:
        under = change.key.rstrip("/") + "/"
        for key in [key for key in keys if key.startswith(under)]:
            del keys[key]


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES)), st.lists(st.lists(CHANGES, max_size=6), max_size=8))
def test_kept_keys_make_the_snapshot_of_the_same_keys_read_at_once(
    initial: list[tuple[str, str]], bursts: list[list[Change]]
) -> None:
    keys = dict(initial)  # a read holds each key once
    tree = KeyTree(keys.items())
    assert tree.snapshot() == build_snapshot(keys.items())
    for burst in bursts:
        before = tree.snapshot()
        frozen = repr(before)
        for change in burst:
            reference(keys, change)
        tree.apply(burst)
        assert tree.snapshot() == build_snapshot(keys.items())
        assert repr(before) == frozen  # a snapshot handed out is never changed afterwards


def test_an_unchanged_deployment_is_shared_with_the_snapshot_before() -> None:
    tree = KeyTree([(f"{PREFIX}/a/created", "1"), (f"{PREFIX}/b/created", "2")])
    first = tree.snapshot()
    tree.apply([Change(f"{PREFIX}/b/created", "3")])
    second = tree.snapshot()
    assert second["deployment"]["a"] is first["deployment"]["a"]
    assert second["deployment"]["b"] == {"created": "3"} != first["deployment"]["b"]


# ------------------------------------------------------------------------------------------
# real etcd


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    started = Etcd(Path(tmp_path_factory.mktemp("keytree")) / "etcd")
    try:
        started.start()
        yield started
    finally:
        started.stop()


def follow(registry: Registry, read: Read, fresh: Read) -> KeyTree:
    """The keys of `read` changed by the watch's events up to `fresh`'s index."""
    assert read.keys is not None
    after = read.index
    while after < fresh.index:
        changes = registry.watch(after, 0.3)
        if changes is None or changes.index > fresh.index:
            break  # no event left before the fresh read (v2: its index counts other writes)
        assert changes.changes is not None, f"an event the watcher could not follow at {after}"
        read.keys.apply(changes.changes)
        after = changes.index
    return read.keys


PATHS = ["a", "a/b", "a/b/c", "b", "b/service/web/ip", "b/service/web", "c/created"]


class V3:
    """Writes through the v3 gateway (etcd3gw), as registrants and other tools do."""

    def __init__(self, member: Etcd) -> None:
        self.client = Etcd3Client(host=LOOPBACK, port=member.client_port, api_path="/v3/")
        self.leases: list[int] = []

    def close(self) -> None:
        self.client.session.close()

    def wipe(self) -> None:
        self.client.delete_prefix(PREFIX + "/")

    def expiring(self, key: str) -> None:
        self.client.put(key, "soon gone", lease=self.client.lease(1))

    def op(self, rng: random.Random, ttl: bool) -> None:
        key = f"{PREFIX}/{rng.choice(PATHS)}"
        kind = rng.choice(["put", "put", "put", "delete", "prefix", "lease", "revoke"])
        if kind == "put":
            self.client.put(key, rng.choice(["", "v1", "v2"]))
        elif kind == "delete":
            self.client.delete(key)
        elif kind == "prefix":  # a "directory" delete: one event per key
            self.client.delete_prefix(key + "/")
        elif kind == "lease":
            lease = self.client.lease(1 if ttl else 600)
            self.leases.append(lease.id)
            self.client.put(key, "leased", lease=lease)
        elif self.leases:  # revoke: every key on the lease is deleted in one revision
            with contextlib.suppress(Etcd3Exception):  # not found: it expired already
                Lease(self.leases.pop(), self.client).revoke()


class V2:
    """Writes through etcd's v2 keys API (python-etcd), as the original curl script does."""

    def __init__(self, member: Etcd) -> None:
        self.client = etcd2.Client(host=LOOPBACK, port=member.client_port)

    def close(self) -> None:
        self.client.http.clear()

    def wipe(self) -> None:
        with contextlib.suppress(etcd2.EtcdKeyNotFound):
            self.client.delete(PREFIX, recursive=True)

    def expiring(self, key: str) -> None:
        self.client.write(key, "soon gone", ttl=1)

    def op(self, rng: random.Random, ttl: bool) -> None:
        key = f"{PREFIX}/{rng.choice(PATHS)}"
        kind = rng.choice(["set", "set", "set", "delete", "rmdir", "mkdir", "refresh", "dirttl"])
        expiring = 1 if ttl and rng.random() < 0.4 else None
        try:
            if kind == "set":
                self.client.write(key, rng.choice(["", "v1", "v2"]), ttl=expiring)
            elif kind == "delete":
                self.client.delete(key)
            elif kind == "rmdir":
                self.client.delete(key, recursive=True)
            elif kind == "mkdir":  # replaces a key there (v2 "set" with dir=true)
                self.client.write(key, None, dir=True, ttl=expiring)
            elif kind == "refresh":  # a keepalive: no event
                self.client.refresh(key, 600)
            else:  # a directory's TTL changed: its keys stay
                self.client.write(key, None, dir=True, ttl=expiring or 600, prevExist=True)
        except etcd2.EtcdException:
            pass  # not a directory, not a file, not found: etcd refused, nothing happened


Writer = Callable[[Etcd], Any]
APIS: dict[str, tuple[str, Writer]] = {"v2": ("etcd", V2), "v3": ("etcd3", V3)}


@pytest.fixture(params=sorted(APIS))
def api(request: pytest.FixtureRequest, member: Etcd) -> Iterator[tuple[Registry, Any]]:
    scheme, make = APIS[str(request.param)]
    registry = open_registry(f"{scheme}://{LOOPBACK}:{member.client_port}", timeout=5.0)
    writer = make(member)
    try:
        yield registry, writer
    finally:
        writer.close()
        registry.close()


@pytest.mark.integration
@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 30))
def test_events_from_etcd_make_the_snapshot_a_full_read_gives(
    api: tuple[Registry, Any], seed: int, count: int
) -> None:
    registry, writer = api
    writer.wipe()
    rng = random.Random(seed)
    for _ in range(rng.randrange(8)):  # something there before the read
        writer.op(rng, ttl=False)
    read = registry.read()
    for _ in range(count):
        writer.op(rng, ttl=False)
    fresh = registry.read()
    assert follow(registry, read, fresh).snapshot() == fresh.snapshot


@pytest.mark.integration
def test_ttl_expiries_make_the_snapshot_a_full_read_gives(api: tuple[Registry, Any]) -> None:
    registry, writer = api
    writer.wipe()
    rng = random.Random(20261128)
    read = registry.read()
    for _ in range(4):
        for _ in range(25):
            writer.op(rng, ttl=True)
        time.sleep(2.5)  # the TTLs (1 s) run out and etcd expires the keys
        fresh = registry.read()
        assert follow(registry, read, fresh).snapshot() == fresh.snapshot
        read = fresh
    # Keys that can only leave by expiring: the events said so.
    writer.wipe()
    read = registry.read()
    for number in range(3):
        writer.expiring(f"{PREFIX}/gone{number}/created")
    assert len(registry.read().snapshot["deployment"]) == 3
    wait_for(lambda: not registry.read().snapshot["deployment"], what="the TTLs (1 s) to run out")
    fresh = registry.read()
    assert fresh.snapshot == {"deployment": {}}
    assert follow(registry, read, fresh).snapshot() == fresh.snapshot


@pytest.mark.integration
def test_a_v3_event_without_a_value_is_an_empty_value(member: Etcd) -> None:
    """The gateway leaves out empty values and the PUT type (proto3 defaults)."""
    registry = open_registry(f"etcd3://{LOOPBACK}:{member.client_port}", timeout=5.0)
    client = Etcd3Client(host=LOOPBACK, port=member.client_port, api_path="/v3/")
    try:
        client.delete_prefix(PREFIX + "/")
        read = registry.read()
        client.put(f"{PREFIX}/e/created", "")
        changes = registry.watch(read.index, 5)
        assert changes is not None
        assert changes.changes == (Change(f"{PREFIX}/e/created", ""),)
    finally:
        client.session.close()
        registry.close()
