"""Issue 10 with the watcher running: real etcd (v2 and v3), real nginx, real backends.

A deep key, oversized values or a YAML billion laughs cost only their own deployment: every
other deployment keeps routing, on events and on full reads (a restarted watcher), and the
watcher's memory stays proportional to what the registry holds.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Backend, Etcd, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples
from watch_harness import BIN, DOMAIN, KINDS, Frontend, registry_url

from generator.core.snapshot import MAX_DEPTH
from generator.registry.base import Entry
from generator.registry.open import open_registry

pytestmark = pytest.mark.integration


def register(url: str, name: str, backend: Backend) -> None:
    registry = open_registry(url)
    try:
        registry.register(Entry(name, "web", "127.0.0.1", backend.port, "2026-11-28T10:00:00Z"), 0)
    finally:
        registry.close()


def deep(name: str, levels: int) -> str:
    return f"/deployment/{name}/" + "a/" * (levels - 1) + "v"


def no_internal_error(router: Frontend) -> None:
    log = router.log.read_text(errors="replace")
    assert "internal error" not in log and "Traceback" not in log, router.log_tail()


@KINDS
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 600, 1_500])
def test_a_deep_key_costs_only_its_deployment_on_events_and_full_reads(
    kind: str,
    levels: int,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("before", "after", "restarted")
    url = registry_url(kind, etcd)
    router = frontend(url)
    register(url, "before", web["before"])
    router.wait_route(f"before-web.{DOMAIN}", "before")

    etcd.put(kind, deep("deepy", levels), "1")  # an event
    register(url, "after", web["after"])
    router.wait_route(f"after-web.{DOMAIN}", "after")
    router.wait_route(f"before-web.{DOMAIN}", "before")
    no_internal_error(router)

    router.stop()  # a restarted watcher reads everything in full
    restarted = frontend(url)
    register(url, "restarted", web["restarted"])
    restarted.wait_route(f"restarted-web.{DOMAIN}", "restarted")
    restarted.wait_route(f"before-web.{DOMAIN}", "before")
    no_internal_error(restarted)
    wait_for(
        lambda: "/deployment/deepy: nests deeper than" in restarted.log.read_text(),
        30,
        what=f"the deep deployment's problem in the log:\n{restarted.log_tail()}",
    )

    snapshot = subprocess.run(
        [str(BIN), "snapshot", "--registry", url], capture_output=True, text=True, timeout=120
    )
    assert snapshot.returncode == 0, snapshot.stderr
    assert json.loads(snapshot.stdout)["deployment"]["deepy"].startswith("nests deeper than")


LAUGHS = """deployment:
  good: {created: "2026-11-28T10:00:00Z", service: {web: {ip: 127.0.0.1, port: "PORT"}}}
  lol:
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_file_watcher_holding_a_billion_laughs_routes_the_rest_and_stops_on_sigterm(
    tmp_path: Path,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    good = backends("good")["good"]
    path = tmp_path / "registry.yaml"
    path.write_text(LAUGHS.replace("PORT", str(good.port)))
    router = frontend(f"file:{path}")
    router.wait_route(f"good-web.{DOMAIN}", "good")
    assert router.process is not None
    router.process.send_signal(signal.SIGTERM)
    assert router.process.wait(60) == 0, router.log_tail()
    no_internal_error(router)


@KINDS
def test_twenty_stray_keys_of_1_mb_cost_their_keys_and_memory_about_their_size(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    """The issue's reproduction: 20 stray keys of 1 MB under one deployment took the watcher
    from 45 MB to 2.47 GB. Now each is a problem (the key is ignored, the deployment routes),
    and the watcher grows by about what the registry holds."""
    web = backends("big", "later")
    url = registry_url(kind, etcd)
    router = frontend(url)
    register(url, "big", web["big"])
    router.wait_route(f"big-web.{DOMAIN}", "big")
    assert router.process is not None
    start = vm_rss_mb(router.process.pid)
    for index in range(20):
        etcd.put(kind, f"/deployment/big/stray{index}", "x" * 1_000_000)
    register(url, "later", web["later"])
    router.wait_route(f"later-web.{DOMAIN}", "later", timeout=60)
    wait_for(
        lambda: "/deployment/big/stray19: is 1000000 bytes" in router.log.read_text(),
        60,
        what=f"the stray keys' problems:\n{router.log_tail()}",
    )
    router.wait_route(f"big-web.{DOMAIN}", "big")
    no_internal_error(router)
    grown = vm_rss_mb(router.process.pid) - start
    bound = MEMORY_BASE_MB + MEMORY_PER_REGISTRY_BYTE * 20
    assert grown <= bound, f"the watcher grew by {grown:.0f} MB (bound {bound:.0f} MB)"
    assert "x" * 100 not in router.log.read_text()


# ------------------------------------------------------------------------------------------
# property: random nested and oversized trees through a running watcher


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# The watcher's resident memory may grow by at most this over its size once the first route is
# up (docs/operations.md, "Limits"): a fixed allowance (allocator arenas, nginx -t outputs,
# the kept pipeline state) plus a multiple of the bytes the registry holds (the kept keys, the
# etcd answer being parsed, the canonical JSON of a changed deployment, the previous snapshot).
MEMORY_BASE_MB = 60.0
MEMORY_PER_REGISTRY_BYTE = 4

TREES = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=1_100),  # levels below the deployment
        st.sampled_from([1, 100, 5_000, 100_000, 600_000]),  # bytes of the value
    ),
    min_size=1,
    max_size=6,
)


@KINDS
@settings(
    max_examples=examples(5),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(trees=TREES, seed=st.integers(0, 2**32 - 1))
def test_random_deep_and_oversized_trees_cost_only_their_deployment_and_bounded_memory(
    kind: str,
    trees: list[tuple[int, int]],
    seed: int,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
    tmp_path: Path,
) -> None:
    state = _property_state.setdefault((kind, id(etcd)), {})
    if not state:
        state["web"] = backends("ok")["ok"]
        state["url"] = registry_url(kind, etcd)
        state["router"] = router = frontend(state["url"])
        register(state["url"], "ok0", state["web"])
        router.wait_route(f"ok0-web.{DOMAIN}", "ok")
        assert router.process is not None
        state["base"] = vm_rss_mb(router.process.pid)
        state["bytes"] = 0
        state["n"] = 0
    router = state["router"]
    state["n"] += 1
    n = state["n"]
    rng = random.Random(seed)
    for index, (levels, size) in enumerate(trees):
        # (etcd v2 takes keys of up to about 4 KB in its URLs)
        segments = [rng.choice(["a", "b", "ip", "i1"]) for _ in range(levels)]
        key = f"/deployment/junk{n}/" + "/".join([*segments[:-1], f"k{index}"])
        # (etcd takes requests up to 1.5 MB; v2's form encoding makes an "é" 6 bytes)
        value = rng.choice(["x", "\u00e9", "1"] if size <= 100_000 else ["x", "1"]) * size
        etcd.put(kind, key, value)
        state["bytes"] += len(key) + len(value.encode())
    register(state["url"], f"ok{n}", state["web"])
    router.wait_route(f"ok{n}-web.{DOMAIN}", "ok", timeout=60)
    router.wait_route(f"ok0-web.{DOMAIN}", "ok", timeout=60)
    no_internal_error(router)
    assert router.process is not None
    rss = vm_rss_mb(router.process.pid)
    bound = state["base"] + MEMORY_BASE_MB + MEMORY_PER_REGISTRY_BYTE * state["bytes"] / 2**20
    assert rss <= bound, (
        f"watcher at {rss:.0f} MB, over {bound:.0f} MB "
        f"({state['base']:.0f} MB at start, {state['bytes'] / 2**20:.1f} MB in the registry)"
    )


_property_state: dict[tuple[str, int], dict[str, object]] = {}
