"""The removal grace after a reconnect: the pure merge (hold_removals, missing_keys,
during_grace) and the Watcher holding removals back on a real registry file (no server)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from hypothesis import given
from hypothesis import strategies as st
from strategies import arbitrary_snapshots

from generator import resources
from generator.core.config import resolve
from generator.core.errors import UsageError
from generator.core.render import environment
from generator.registry.file import FileRegistry
from generator.watch.engine import Engine
from generator.watch.observe import Outcome
from generator.watch.watcher import (
    KeyPath,
    Timing,
    Watcher,
    count_keys,
    during_grace,
    hold_removals,
    missing_keys,
)

# --------------------------------------------------------------------------
# the merge


def leaves(tree: Mapping[str, Any], at: KeyPath = ()) -> dict[KeyPath, Any]:
    """Every key (leaf) of a snapshot by its path."""
    found: dict[KeyPath, Any] = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            found.update(leaves(value, (*at, name)))
        else:
            found[(*at, name)] = value
    return found


# Few names, so that the two snapshots share paths often, and a leaf in one is often a
# directory in the other.
_names = st.sampled_from(["deployment", "a", "b", "service", "web", "ip", "port", "created"])
_values = st.one_of(st.sampled_from(["1", "2", "10.0.0.1"]), st.none())
trees: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.dictionaries(_names, _values, max_size=3),
    lambda children: st.dictionaries(_names, st.one_of(_values, children), max_size=4),
    max_leaves=25,
)
snapshots = st.one_of(trees, arbitrary_snapshots)


@given(snapshots, snapshots)
def test_merged_holds_every_current_key_with_its_current_value(
    current: dict[str, Any], held: dict[str, Any]
) -> None:
    merged = leaves(hold_removals(current, held))
    for path, value in leaves(current).items():
        assert path in merged and merged[path] == value


@given(snapshots, snapshots)
def test_merged_keys_come_from_current_or_held_and_the_added_ones_are_the_missing_keys(
    current: dict[str, Any], held: dict[str, Any]
) -> None:
    merged = leaves(hold_removals(current, held))
    now, before = leaves(current), leaves(held)
    assert set(merged) <= set(now) | set(before)
    added = set(merged) - set(now)
    assert added == set(missing_keys(current, held))
    assert all(merged[path] == before[path] for path in added)


@given(snapshots, snapshots, st.sampled_from([0.0, -1.0]))
def test_no_grace_left_applies_current_itself(
    current: dict[str, Any], held: dict[str, Any], left: float
) -> None:
    assert during_grace(current, held, left) is current
    assert during_grace(current, None, 30.0) is current


@given(snapshots, snapshots)
def test_the_merge_changes_neither_input_and_is_idempotent(
    current: dict[str, Any], held: dict[str, Any]
) -> None:
    before = copy.deepcopy((current, held))
    merged = during_grace(current, held, 30.0)
    assert (current, held) == before
    assert hold_removals(merged, held) == merged
    assert hold_removals(current, current) is current
    assert hold_removals(current, {}) is current


def test_a_key_is_held_where_current_lacks_it_and_current_wins_everywhere_else() -> None:
    web = {"ip": "10.0.0.1", "port": "80"}
    current = {"deployment": {"kept": {"service": {"web": web}}, "new": {"created": "now"}}}
    held = {
        "deployment": {
            "kept": {"service": {"web": {"ip": "10.0.0.9", "port": "80"}, "api": web}},
            "gone": {"created": "then", "service": {"web": web}},
            "new": "a stray leaf",  # a leaf where current has a directory: current's
        }
    }
    merged = hold_removals(current, held)
    assert merged == {
        "deployment": {
            "kept": {"service": {"web": web, "api": web}},  # web's ip: current's value
            "new": {"created": "now"},
            "gone": {"created": "then", "service": {"web": web}},
        }
    }
    assert merged["deployment"]["new"] is current["deployment"]["new"]  # shared, not copied
    assert hold_removals({"a": "leaf"}, {"a": {"b": "1"}}) == {"a": "leaf"}
    missing = missing_keys(current, held)
    assert sorted(missing) == [
        ("deployment", "gone", "created"),
        ("deployment", "gone", "service", "web", "ip"),
        ("deployment", "gone", "service", "web", "port"),
        ("deployment", "kept", "service", "api", "ip"),
        ("deployment", "kept", "service", "api", "port"),
    ]
    assert count_keys(missing) == (5, 2)


def test_removal_grace_is_a_validated_setting() -> None:
    schema = resources.schema("config")
    assert resolve(schema, {}, {}).removal_grace == 30.0
    assert resolve(schema, {"removal_grace": 0}, {}).removal_grace == 0.0
    assert resolve(schema, {}, {"DEVTEST_ROUTER_REMOVAL_GRACE": "2.5"}).removal_grace == 2.5
    for bad in (-1, 3601, "soon"):
        with pytest.raises(UsageError, match="setting removal_grace"):
            resolve(schema, {"removal_grace": bad}, {})
    # nan passes any minimum and maximum: refused for every number setting, from any source
    with pytest.raises(UsageError, match=r"removal_grace = nan from --removal-grace .* finite"):
        resolve(schema, {"removal_grace": float("nan")}, {})
    variable = "DEVTEST_ROUTER_MAX_REMOVED_FRACTION"
    with pytest.raises(
        UsageError, match=f"max_removed_fraction = nan from environment variable {variable}"
    ):
        resolve(schema, {}, {variable: "nan"})
    with pytest.raises(UsageError, match=r"resync_interval = inf from config file c\.yaml"):
        resolve(schema, {}, {}, {"resync_interval": float("inf")}, "c.yaml")


# --------------------------------------------------------------------------
# the watcher, on a real registry file

CONFIG = resolve(resources.schema("config"), {"domain": "dev.test", "allow_loopback": True}, {})
ENGINE = Engine(CONFIG, resources.schema("snapshot"), environment(resources.template_loader()))


def deployment(port: int) -> dict[str, Any]:
    return {
        "created": "2026-11-28T10:00:00Z",
        "service": {"web": {"ip": "127.0.0.1", "port": str(port)}},
    }


class Recorded:
    """A Watcher in a thread: each apply with the number of log lines said before it."""

    def __init__(self, path: Path, grace: float) -> None:
        self.lines: list[str] = []
        self.applied: list[tuple[int, Mapping[str, Any]]] = []
        self.watcher = Watcher(
            FileRegistry(path), self.apply, self.log, Timing(quiet=0.01, removal_grace=grace)
        )
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)

    def log(self, message: str, level: str = "info", /, **fields: object) -> None:
        self.lines.append(message)

    def apply(self, snapshot: Mapping[str, Any]) -> Outcome:
        self.applied.append((len(self.lines), snapshot))
        return Outcome(ENGINE.build(snapshot), "built", False, False)

    def line(self, text: str) -> int:
        """The index of the first log line that holds `text`, or -1."""
        return next((n for n, line in enumerate(self.lines) if text in line), -1)

    def deployments(self) -> set[str]:
        return set(self.applied[-1][1]["deployment"]) if self.applied else set()


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    return tmp_path / "registry.json"


def write(path: Path, deployments: dict[str, Any]) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(json.dumps({"deployment": deployments}))
    staged.replace(path)


@pytest.fixture
def recorded(request: pytest.FixtureRequest, registry_file: Path) -> Iterator[Recorded]:
    write(registry_file, {"kept": deployment(8001), "gone": deployment(8002)})
    running = Recorded(registry_file, getattr(request, "param", 5.0))
    running.thread.start()
    try:
        wait_for(lambda: running.deployments() == {"kept", "gone"}, 60, what="the first apply")
        yield running
    finally:
        running.watcher.stop()
        running.thread.join(15)


def test_after_a_reconnect_removals_wait_for_the_grace_and_additions_do_not(
    recorded: Recorded, registry_file: Path
) -> None:
    registry_file.unlink()  # the registry is away: a read fails
    wait_for(lambda: recorded.line("no such file") >= 0, 60, what="the outage noticed")
    write(registry_file, {"kept": deployment(8001), "new": deployment(8003)})
    wait_for(lambda: "new" in recorded.deployments(), 60, what="the addition applied")
    started = recorded.line("holding back removals")
    assert started >= 0, recorded.lines
    assert recorded.lines[started] == (
        f"file {registry_file} is readable again after an outage: holding back removals for "
        "5 s (3 keys of 1 deployment missing)"
    )
    assert recorded.deployments() == {"kept", "new", "gone"}  # gone is held, new is added
    # A removal during the grace is held too, and a changed value applies at once.
    changed = deployment(8009)
    write(registry_file, {"kept": changed})
    wait_for(
        lambda: recorded.applied[-1][1]["deployment"]["kept"] == changed,
        60,
        what="the changed port applied",
    )
    ended = recorded.line("removal grace over")
    if ended < 0:  # (the grace may already be over on a very slow machine: then not held)
        assert recorded.deployments() == {"kept", "new", "gone"}
    wait_for(lambda: recorded.deployments() == {"kept"}, 60, what="the grace to end")
    ended = recorded.line("removal grace over")
    assert recorded.lines[ended] == (
        "removal grace over: 6 keys of 2 deployments held back are still missing; removing them"
    )
    for said, snapshot in recorded.applied:
        if started < said <= ended:  # applied during the grace: nothing removed
            assert {"kept", "gone"} <= set(snapshot["deployment"])
    [(said, snapshot)] = [(s, a) for s, a in recorded.applied if s > ended][:1]
    assert snapshot == {"deployment": {"kept": changed}}  # the first apply after the grace
    assert sum("removal grace over" in line for line in recorded.lines) == 1
    assert sum("holding back" in line for line in recorded.lines) == 1


@pytest.mark.parametrize("recorded", [0.0], indirect=True)
def test_a_grace_of_zero_removes_at_once(recorded: Recorded, registry_file: Path) -> None:
    registry_file.unlink()
    wait_for(lambda: recorded.line("no such file") >= 0, 60, what="the outage noticed")
    write(registry_file, {"kept": deployment(8001)})
    wait_for(lambda: recorded.deployments() == {"kept"}, 60, what="the removal applied")
    assert recorded.line(f"file {registry_file} is readable again") >= 0
    assert recorded.line("holding back") < 0


def test_without_an_outage_removals_apply_at_once(recorded: Recorded, registry_file: Path) -> None:
    write(registry_file, {"kept": deployment(8001)})
    wait_for(lambda: recorded.deployments() == {"kept"}, 60, what="the removal applied")
    assert recorded.line("holding back") < 0
