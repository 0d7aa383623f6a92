"""A long-running process keeps per-deployment work (issue: apply cost follows the change).

The property: after any sequence of registry edits, what the warm Engine builds (engine.Build,
the cache around the pipeline's stages) is what the plain composition of those stages
(pipeline.build) builds from the same snapshot, byte for byte: the text, the routing table and
its problems, the snapshot id and the plan; and the warm check passes exactly when the cold one
does.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import instances
import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from generator import resources
from generator.core.config import resolve
from generator.core.errors import InternalError
from generator.core.pipeline import Rendered, build, make_plan, plan_between, route_destination
from generator.core.render import Fragment, environment
from generator.core.snapshot import ALIAS_BOMB, TOO_DEEP, loads
from generator.memory import release_free_memory
from generator.nginx import apply
from generator.nginx.apply import Checker, checked_text
from generator.site import pages as site
from generator.site.writer import SiteWriter
from generator.watch.engine import Engine

CONFIG = resolve(resources.schema("config"), {"domain": "dev.test", "allow_loopback": True}, {})
TEMPLATES = environment(resources.template_loader())
SCHEMA = resources.schema("snapshot")
SITE_TEMPLATES = site.environment(resources.template_loader())

# One registry edit: (what, branch, service, value). Edits that collide, half-write, remove and
# re-add are all in here, since those are the paths where kept work could go stale.
edits = st.tuples(
    st.sampled_from(
        ["set-deployment", "remove-deployment", "set-service", "remove-service", "set-created"]
    ),
    strategies.branch_names,
    strategies.service_names,
    st.one_of(strategies.deployments, strategies.services, strategies.created_strings),
)


# Broken values: what reading a registry can leave in a snapshot besides good entries. Junk where
# a deployment, a service or a created time goes, values longer than max_value_bytes, and the
# deployments reading refuses (too deep, an alias bomb, a key given twice).
_DUPLICATE = loads('{"deployment": {"d": {"created": "x", "created": "y"}}}')["deployment"]["d"]
_LIMIT = 256  # the smallest max_value_bytes: a long value is an oversized one
_long_values = st.sampled_from(["10.0.0.1" + " " * _LIMIT, "x" * (_LIMIT + 1), "é" * 200])
broken_values = st.one_of(
    strategies.trees,
    strategies.leaves,
    _long_values,
    st.fixed_dictionaries({"ip": _long_values, "port": st.just("80")}),
    st.fixed_dictionaries(
        {"service": st.fixed_dictionaries({"web": st.fixed_dictionaries({"ip": _long_values})})}
    ),
    st.sampled_from([TOO_DEEP, ALIAS_BOMB, _DUPLICATE]),
    st.integers(),
    st.booleans(),
)
broken_edits = st.tuples(
    st.sampled_from(["set-deployment", "set-service", "set-created"]),
    strategies.branch_names,
    strategies.service_names,
    broken_values,
)


# /deployment/<branch>/public set to true, false or a value it refuses, or removed (None); the
# branch is one of the snapshot's when it has one (else the edit would mostly miss).
public_edits = st.tuples(
    st.just("set-public"),
    st.one_of(strategies.branch_names, st.none()),
    strategies.service_names,
    st.sampled_from(["true", "false", "yes", None]),
)
# Access control on (basic auth and a client network): the public map is in the file.
ACCESS_CONFIG = resolve(
    resources.schema("config"),
    {
        "domain": "dev.test",
        "allow_loopback": True,
        "basic_auth_file": "/etc/devtest-router/htpasswd",
        "client_networks": ["10.0.0.0/8"],
    },
    {},
)


def edited(snapshot: dict[str, Any], edit: tuple[str, str, str, Any]) -> dict[str, Any]:
    what, branch, service, value = edit
    result = copy.deepcopy(snapshot)
    if what == "set-public":
        found = result["deployment"]
        if branch is None or branch not in found:
            branch = next(iter(sorted(found, key=str)), branch)
        entry = found.get(branch)
        if isinstance(entry, dict):
            if value is None:
                entry.pop("public", None)
            else:
                entry["public"] = value
        return result
    if what.endswith("-instance"):
        instances.edited_instance(result, edit)
        return result
    found = result["deployment"]
    if what == "set-deployment":
        found[branch] = value
    elif what == "remove-deployment":
        found.pop(branch, None) if branch in found else found.pop(next(iter(found), ""), None)
    elif what == "set-created" and isinstance(found.get(branch), dict):
        found[branch]["created"] = value
    elif isinstance(found.get(branch), dict):
        services = found[branch].setdefault("service", {})
        if not isinstance(services, dict):
            return result
        if what == "set-service":
            services[service] = value
        else:
            services.pop(service, None)
    return result


WARM_EXAMPLES = settings(
    max_examples=examples(120),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@WARM_EXAMPLES
@given(
    st.one_of(
        strategies.realistic_snapshots,
        strategies.colliding_snapshots(),
        instances.instance_snapshots,
    ),
    st.lists(st.one_of(edits, instances.instance_edits), min_size=1, max_size=8),
)
def test_warm_builds_are_byte_for_byte_the_cold_build(
    start: dict[str, Any], steps: list[tuple[str, str, str, Any]]
) -> None:
    assert_warm_is_cold(start, steps)


@WARM_EXAMPLES
@given(
    instances.instance_snapshots,
    st.lists(
        st.one_of(instances.instance_edits, instances.instance_edits, edits),
        min_size=1,
        max_size=8,
    ),
)
def test_warm_builds_are_the_cold_build_as_instances_come_and_go(
    start: dict[str, Any], steps: list[tuple[str, str, str, Any]]
) -> None:
    """The same property, from services with several instances, mostly instance edits: an
    instance added or removed, an upstream group made, changed and gone."""
    assert_warm_is_cold(start, steps)


@settings(WARM_EXAMPLES, max_examples=80)
@given(
    st.one_of(
        strategies.arbitrary_snapshots,
        strategies.realistic_snapshots,
        instances.instance_snapshots,
    ),
    st.lists(
        st.one_of(broken_edits, edits, instances.instance_edits),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([_LIMIT, 4096]),
)
def test_the_kept_build_is_the_composed_stages_over_broken_values(
    start: dict[str, Any], steps: list[tuple[str, str, str, Any]], limit: int
) -> None:
    """The same property through edits that break values: junk deployments, services and
    created times, values over max_value_bytes (the smallest limit makes more of them) and the
    deployments reading refuses, coming, going and mended, beside good edits."""
    assert_warm_is_cold(start, steps, dataclasses.replace(CONFIG, max_value_bytes=limit))


@settings(WARM_EXAMPLES, max_examples=80)
@given(
    st.one_of(strategies.realistic_snapshots, strategies.colliding_snapshots()),
    st.lists(st.one_of(public_edits, public_edits, edits), min_size=1, max_size=8),
)
def test_warm_builds_are_the_cold_build_as_deployments_turn_public_and_back(
    start: dict[str, Any], steps: list[tuple[str, str, str, Any]]
) -> None:
    """The same property with access control on, through /deployment/<branch>/public edits:
    the public map (kept per label by the warm build) follows every flip, including labels
    two branches share."""
    assert_warm_is_cold(start, steps, ACCESS_CONFIG)


def assert_warm_is_cold(
    start: dict[str, Any], steps: list[tuple[str, str, str, Any]], settings: Any = CONFIG
) -> None:
    engine = Engine(settings, SCHEMA, TEMPLATES)
    snapshot = start
    cold_before: Rendered | None = None
    with tempfile.TemporaryDirectory() as folder:
        config = dataclasses.replace(settings, site_dir=folder)
        writer = SiteWriter(config, SITE_TEMPLATES)  # kept, as the watcher keeps it
        previous: Rendered | None = None
        for step in [None, *steps]:
            if step is not None:
                snapshot = edited(snapshot, step)
            warm = engine.build(snapshot)
            cold = build(snapshot, settings, SCHEMA, TEMPLATES)
            assert warm.text == cold.text
            assert warm.table == cold.table
            assert warm.table.problems == cold.table.problems
            assert warm.snapshot_id == cold.snapshot_id
            assert warm.skeleton == cold.skeleton and warm.fragments == cold.fragments
            assert warm.public == cold.public
            assert dict(warm.deployments or {}) == dict(cold.deployments or {})
            engine.check(warm)  # the warm check, parsing only what changed, passes like the cold
            assert checked_text(cold, settings) == cold.text
            # the site the kept writer leaves in the folder is the one a cold run renders
            writer.apply(warm.table, warm.deployments)
            assert _files(Path(folder)) == site.render_site(cold.table, config, SITE_TEMPLATES)
            if previous is not None:  # the plan from what changed is the plan from all routes
                routes = {str(r.host): route_destination(r) for r in previous.table.routes}
                plan = plan_between(previous, warm)
                assert plan == make_plan(previous.text, routes, warm)
                assert cold_before is not None  # the plan of the composed stages: the same
                assert plan == plan_between(cold_before, cold)
                if _blocks(previous) != _blocks(warm):  # a group's servers changed: a route did
                    assert plan.added or plan.removed or plan.changed
            previous, cold_before = warm, cold


def _blocks(rendered: Rendered) -> str:
    return "".join(part.blocks for part in rendered.fragments)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_the_warm_check_still_catches_a_changed_fragment() -> None:
    snapshot = {
        "deployment": {
            "a": {"service": {"web": {"ip": "127.0.0.1", "port": "8001"}}},
            "b": {"service": {"web": {"ip": "127.0.0.1", "port": "8002"}}},
        }
    }
    engine = Engine(CONFIG, SCHEMA, TEMPLATES)
    good = engine.build(snapshot)
    engine.check(good)
    # The same routing table, but one deployment's lines say something else: only that
    # fragment is new to the checker, and it must be parsed and refused.
    first, *rest = good.fragments
    forged = Fragment(first.lines.replace("127.0.0.1:8001", "127.0.0.1:9999"))
    bad = Rendered(
        good.snapshot_id,
        good.table,
        good.text,
        good.skeleton,
        (first._replace(lines=forged), *rest),
    )
    with pytest.raises(InternalError, match="maps to"):
        engine.check(bad)


def test_unchanged_deployments_are_not_validated_again() -> None:
    engine = Engine(CONFIG, SCHEMA, TEMPLATES)
    snapshot = {
        "deployment": {
            f"b{n}": {"service": {"web": {"ip": "127.0.0.1", "port": str(8000 + n)}}}
            for n in range(20)
        }
    }
    engine.build(snapshot)
    calls: list[str] = []
    original = engine.build._validator.deployment

    def counting(name: str, value: Any) -> Any:
        calls.append(name)
        return original(name, value)

    engine.build._validator.deployment = counting  # type: ignore[method-assign]
    changed = copy.deepcopy(snapshot)
    changed["deployment"]["b7"]["service"]["web"]["port"] = "9007"
    engine.build(changed)
    assert calls == ["b7"]


def test_free_heap_pages_go_back_to_the_system() -> None:
    # Freed blocks below glibc's mmap threshold stay in the heap; with a block still in use
    # after them, only malloc_trim hands their pages back (the watcher calls it after applies).
    blocks = [bytearray(100_000) for _ in range(400)]
    del blocks[:-1]
    assert release_free_memory() is True


_HEAP_GROWTH = """
import ctypes, sys
from generator.memory import keep_large_blocks_apart
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
if sys.argv[1] == "set":
    assert keep_large_blocks_apart()
big = bytearray(4 << 20)
del big  # glibc raises its mmap threshold to the size of a mapped block freed (4 MB here)
before = libc.sbrk(0)
blocks = [bytearray(512 << 10) for _ in range(8)]
print(libc.sbrk(0) - before)
"""


@pytest.mark.parametrize(("how", "heap_grows"), [("set", False), ("default", True)])
def test_large_blocks_get_their_own_mapping_once_set(how: str, heap_grows: bool) -> None:
    # In a process of its own: the setting lasts for the life of the process.
    done = subprocess.run(
        [sys.executable, "-c", _HEAP_GROWTH, how], capture_output=True, text=True, check=True
    )
    assert (int(done.stdout) >= 4 << 20) is heap_grows, done.stdout


@pytest.mark.parametrize("forged_at", [None, 0, -1])
def test_long_lines_are_parsed_in_two_processes_and_either_one_refuses(
    forged_at: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = {
        "deployment": {
            f"b{n}": {"service": {"web": {"ip": "127.0.0.1", "port": str(8000 + n)}}}
            for n in range(40)
        }
    }
    rendered = build(snapshot, CONFIG, SCHEMA, TEMPLATES)
    fragments = list(rendered.fragments)
    if forged_at is not None:  # a forged fragment in the first half, or in the second
        part = fragments[forged_at]
        lines = Fragment(part.lines.replace("127.0.0.1:80", "127.0.0.1:99"))
        fragments[forged_at] = part._replace(lines=lines)
    forged = dataclasses.replace(rendered, fragments=tuple(fragments))
    monkeypatch.setattr(apply, "PARALLEL_FROM", 0)
    checker = Checker()
    if forged_at is None:
        checker(forged, CONFIG, tmp_path)
    else:
        with pytest.raises(InternalError, match="maps to"):
            checker(forged, CONFIG, tmp_path)
    # both halves were parsed, each in its own folder (the second by the forked process)
    assert (tmp_path / "routes-1" / "included.conf").is_file()
    assert (tmp_path / "routes-2" / "included.conf").is_file()


def test_without_a_process_to_spare_the_check_runs_in_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fork fails with EAGAIN under a container's pids.max (root ignores RLIMIT_NPROC, so the
    # failure is injected): the check still runs, here, and no pipe descriptor is left open
    snapshot = {
        "deployment": {
            f"b{n}": {"service": {"web": {"ip": "127.0.0.1", "port": str(8000 + n)}}}
            for n in range(40)
        }
    }
    rendered = build(snapshot, CONFIG, SCHEMA, TEMPLATES)

    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(apply, "PARALLEL_FROM", 0)
    monkeypatch.setattr(apply.os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd"))
    Checker()(rendered, CONFIG, tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before
    assert (tmp_path / "routes" / "included.conf").is_file()  # parsed in one process
    assert not (tmp_path / "routes-1").exists()


def test_a_failure_in_the_checking_process_names_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = {
        "deployment": {
            f"b{n}": {"service": {"web": {"ip": "127.0.0.1", "port": str(8000 + n)}}}
            for n in range(40)
        }
    }
    rendered = build(snapshot, CONFIG, SCHEMA, TEMPLATES)
    monkeypatch.setattr(apply, "PARALLEL_FROM", 0)
    (tmp_path / "routes-2").mkdir()  # the forked process cannot make its folder
    with pytest.raises(InternalError, match=r"half of the routes failed \(FileExistsError: "):
        Checker()(rendered, CONFIG, tmp_path)
