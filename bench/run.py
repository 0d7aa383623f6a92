"""The benchmark suite (`make bench`): first what the user waits for (issue 14's figures, each
with its target and confd's figure from the issue), then where the time goes (the profile) and
the older figures with their ratio to a naive baseline measured in the same run. Writes
bench/results.json and bench/results.md.

    python bench/run.py                 # 1,000, 10,000 and 100,000 (about 10 minutes)
    python bench/run.py --quick         # 1,000 and 10,000, 20 events a size
    python bench/run.py --only oneshot  # the one-shot job alone (bench/oneshot.py)
    python bench/run.py --report        # the table again, from bench/results.json
    python bench/run.py --docs          # that table into docs/performance.md ("Round two")
    python bench/run.py --registry etcd2    # the live figures through etcd's v2 API

The stages are planned to fit --time-limit: the 100,000-service event series gets the time that
is left (at least one event is measured), and every series says how many events it measured.
See docs/performance.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import live
import oneshot
from common import Figure


@dataclass(frozen=True)
class Goal:
    """One row of issue 14's table: what the user waits for."""

    key: str  # the figure's key in results.json
    figure: str
    unit: str
    target: float  # the value must be at most this
    confd: str  # confd's figure as the issue measured it (not measured by this suite)
    before: str  # ours, as the issue measured it before round two


# Issue 14 ("Performance, round two"), its table. confd's figures are confd 0.17.0-dev (built
# from source) as the issue measured it, side by side with devtest-router on one 2-core machine:
# etcd 3.4 (v3 API), 10 services a branch, nginx 1.22.1. They are the issue's measurements,
# constants here, not ours; confd's watch figure is to its file. The event-to-file rows have the
# event-to-live target (the file is written before nginx answers), and confd's own figure.
K, M, H = "1,000", "10,000", "100,000"
ISSUE_14 = (
    Goal("oneshot_1000", f"one-shot etcd -> checked file (snapshot | apply), {K} services",
         "s", 0.15, "0.054 s", "0.445 s"),
    Goal("oneshot_10000", f"one-shot etcd -> checked file (snapshot | apply), {M} services",
         "s", 0.35, "0.250 s", "1.79 s"),
    Goal("oneshot_100000", f"one-shot etcd -> checked file (snapshot | apply), {H} services",
         "s", 2.7, "2.69 s", "14.2 s"),
    Goal("oneshot_peak_100000", f"one-shot peak memory (largest process), {H} services",
         "MiB", 200.0, "141 MiB", "294 MiB"),
    Goal("live_p95_1000", f"watch p95, event to live, {K} services", "s", 0.060,
         "49 ms (to file)", "118 ms"),
    Goal("live_p95_10000", f"watch p95, event to live, {M} services", "s", 0.150,
         "319 ms (to file)", "231 ms"),
    Goal("live_p95_100000", f"watch p95, event to live, {H} services", "s", 0.5,
         "2,835 ms (to file)", "723 ms"),
    Goal("file_p95_1000", f"watch p95, event to file, {K} services", "s", 0.060, "49 ms", ""),
    Goal("file_p95_10000", f"watch p95, event to file, {M} services", "s", 0.150, "319 ms", ""),
    Goal("file_p95_100000", f"watch p95, event to file, {H} services", "s", 0.5, "2,835 ms",
         ""),
    Goal("watcher_rss_100000", f"watcher VmRSS after 40 events, {H} services", "MiB", 150.0,
         "141 MiB", "388 MiB"),
    Goal("watcher_hwm_100000", f"watcher VmHWM (peak) after 40 events, {H} services", "MiB",
         250.0, "250 MiB", "505 MiB"),
    Goal("reload_failed", "requests failed during 50 reloads under wrk (no retry)", "count",
         0.0, "", "5 of 12,067"),
    Goal("reload_failed_retrying", "requests failed during 50 reloads, retrying client", "count",
         0.0, "", ""),
)  # fmt: skip
GOALS = {goal.key: goal for goal in ISSUE_14}

# Targets of the other figures (from earlier issues; docs/performance.md says why).
TARGETS = {
    "warm_100000": 0.15,
    "nginx_t_100000": 0.5,
    "nginx_t_peak_100000": 100.0,
    "burst_reloads": 10.0,
    "burst_all_live": 2.0,
    # the index at 10,000 deployments in Chromium (bench/index.py; docs/performance.md says why)
    "index_first_paint": 1.0,
    "index_first_contentful_paint": 1.0,
    "index_dom_content_loaded": 2.0,
    "index_bytes": 11.0,
    "index_key": 0.1,
    "index_escape": 0.5,
} | {goal.key: goal.target for goal in ISSUE_14}
CONFD = {goal.key: goal.confd for goal in ISSUE_14 if goal.confd}
INDEX_DEPLOYMENTS = 10_000


EVENTS_CAP = 90.0  # seconds for the events of a size that is not the last
LAST_RESERVE = 90.0  # what the last size needs before its events (100,000: about 50 s here)


def figure(key: str, text: str, value: float | None, unit: str, **more: Any) -> Figure:
    goal = GOALS.get(key)
    if goal is not None:
        more.setdefault("before", goal.before)
    return Figure(key, text, value, unit, TARGETS.get(key), CONFD.get(key, ""), **more)


def routes_text(routes: int) -> str:
    return f"{routes:,}"


# ------------------------------------------------------------------------------------------------


def run_pipeline(routes: int, warm: bool, folder: Path, timeout: float) -> dict[str, Any]:
    """bench/pipeline.py for one size in a fresh process (its own peak memory)."""
    snapshot = folder / f"snapshot-{routes}.json"
    subprocess.run(
        [sys.executable, str(common.BENCH / "synthetic.py"), "--routes", str(routes),
         "--out", str(snapshot)],
        check=True,
    )  # fmt: skip
    argv = [sys.executable, str(common.BENCH / "pipeline.py"), "--routes", str(routes),
            "--snapshot", str(snapshot)]  # fmt: skip
    if warm:
        argv.append("--warm")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    finally:
        snapshot.unlink(missing_ok=True)
    if done.returncode != 0:
        return {
            "error": (done.stderr.strip().splitlines() or ["failed"])[-1],
            "stderr": done.stderr,
        }
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def pipeline_figures(routes: int, found: dict[str, Any]) -> list[Figure]:
    size = routes_text(routes)
    if "error" in found:
        return [
            figure(
                f"cold_{routes}",
                f"profile: cold pipeline in one process, {size} routes",
                None,
                "s",
                note=found["error"],
            )
        ]
    cold = found["cold"]
    parts = {**cold["build_parts"], **cold["check_parts"]}
    build_rest = cold["build_parts"]["rest"]
    check_rest = cold["check_parts"]["rest"]
    phases = {
        "load": cold["load"],
        "validate": parts["validate"],
        "route": parts["route"],
        "render": parts["render"],
        "id": parts["id"],
        "build (rest)": build_rest,
        "check: crossplane parse": parts["check: crossplane parse"],
        "check: our rules": parts["check: our rules"],
        "check (rest)": check_rest,
        "write": cold["write"],
    }
    memory = found["memory"]
    shown_phases = ", ".join(f"{name} {common.show(value, 's')}" for name, value in phases.items())
    shown_memory = ", ".join(
        f"{name} {memory[name]['peak_mb']:.0f} MB" for name in ("load", "build", "check", "write")
    )
    rss = cold.get("peak_rss_mb") or {}
    shown_rss = ", ".join(f"{name} {value:.0f} MB" for name, value in rss.items() if value)
    out = [
        figure(
            f"cold_{routes}",
            f"profile: cold pipeline in one process, {size} routes",
            cold["total"],
            "s",
            baseline="naive regenerate",
            baseline_value=found["floor_seconds"],
            note=f"phases: {shown_phases}",
            extra={"phases": phases, "bytes": cold["bytes"], "routes": cold["routes"]},
        ),
        figure(
            f"cold_peak_{routes}",
            f"profile: cold pipeline peak memory (max RSS), {size} routes",
            found["max_rss_mb"],
            "MB",
            note=(f"process peak RSS during each phase: {shown_rss}; " if shown_rss else "")
            + f"tracemalloc peak above the phase's start: {shown_memory}; interpreter and "
            f"snapshot text before: {found['rss_before_mb']:.0f} MB",
            extra={"memory": memory, "rss_before_mb": found["rss_before_mb"]},
        ),
    ]
    nginx = found["nginx_t"]
    if "error" in nginx:
        out.append(
            figure(f"nginx_t_{routes}", f"nginx -t, {size} routes", None, "s", note=nginx["error"])
        )
    else:
        out.append(
            figure(
                f"nginx_t_{routes}",
                f"nginx -t on our output, {size} routes",
                nginx["seconds"],
                "s",
                baseline="nginx -t, empty file",
                baseline_value=nginx["empty_seconds"],
            )
        )
        out.append(
            figure(
                f"nginx_t_peak_{routes}",
                f"nginx -t peak memory, {size} routes",
                nginx["max_rss_mb"],
                "MB",
                baseline="nginx -t, empty file",
                baseline_value=nginx["empty_max_rss_mb"],
            )
        )
    if "warm" in found:
        warm = found["warm"]
        engine = warm.get("engine")
        if engine is None:
            out.append(
                figure(
                    f"warm_{routes}",
                    f"warm re-apply after one change, {size} routes",
                    None,
                    "s",
                    baseline="naive rebuild",
                    baseline_value=warm["naive_seconds"],
                    note="warm: not implemented (no generator.watch.engine.Engine)",
                )
            )
        else:
            parts_text = ", ".join(
                f"{name} {common.show(value, 's')}"
                for name, value in engine["parts_of_median"].items()
            )
            first = common.show(warm["first_build_seconds"], "s")
            note = f"median of 5 changes: {parts_text}; first build {first}"
            if not engine["same_bytes"]:
                note += "; NOT the same bytes as the naive rebuild"
            out.append(
                figure(
                    f"warm_{routes}",
                    f"warm re-apply after one change, {size} routes",
                    engine["seconds"],
                    "s",
                    baseline="naive rebuild",
                    baseline_value=warm["naive_seconds"],
                    note=note,
                    extra={"warm": warm},
                )
            )
    return out


REPLICAS = (10_000, 3)  # services, instances of each
NEW_TARGET = "new (issue 9)"


def run_replicas(timeout: float) -> dict[str, Any]:
    """bench/replicas.py in a fresh process (its own peak memory)."""
    services, count = REPLICAS
    argv = [sys.executable, str(common.BENCH / "replicas.py"), "--services", str(services),
            "--instances", str(count)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {
            "error": (done.stderr.strip().splitlines() or ["failed"])[-1],
            "stderr": done.stderr,
        }
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def replicas_figures(found: dict[str, Any]) -> list[Figure]:
    """nginx -t and the warm re-apply for services of several instances (upstream groups)."""
    services, count = REPLICAS
    size = f"{services:,} services of {count} instances"
    key = f"replicas_{services}"
    if "error" in found:
        return [
            figure(f"nginx_t_{key}", f"nginx -t, {size}", None, "s", note=found["error"],
                   target_text=NEW_TARGET)
        ]  # fmt: skip
    shape = (
        f"{found['deployments']:,} deployments, {found['routes']:,} routes, "
        f"{found['upstream_blocks']:,} upstream blocks of {found['servers']:,} servers, "
        f"{found['bytes'] / common.MB:.1f} MB"
    )
    nginx = found["nginx_t"]
    warm = found["warm"]
    note = (
        f"median of 5 changes (one instance of one service replaced: its group's servers "
        f"change, no map line); first build {common.show(warm['first_build_seconds'], 's')}"
    )
    if not warm["same_bytes"]:
        note += "; NOT the same bytes as the naive rebuild"
    out: list[Figure] = []
    if "error" in nginx:
        out.append(
            figure(f"nginx_t_{key}", f"nginx -t, {size}", None, "s", note=nginx["error"],
                   target_text=NEW_TARGET)
        )  # fmt: skip
    else:
        out += [
            figure(
                f"nginx_t_{key}",
                f"nginx -t on our output, {size}",
                nginx["seconds"],
                "s",
                baseline="nginx -t, empty file",
                baseline_value=nginx["empty_seconds"],
                note=shape,
                target_text=NEW_TARGET,
                extra={"replicas": found},
            ),
            figure(
                f"nginx_t_peak_{key}",
                f"nginx -t peak memory, {size}",
                nginx["max_rss_mb"],
                "MB",
                baseline="nginx -t, empty file",
                baseline_value=nginx["empty_max_rss_mb"],
                target_text=NEW_TARGET,
            ),
        ]
    out.append(
        figure(
            f"warm_{key}",
            f"warm re-apply after one instance change, {size}",
            warm["seconds"],
            "s",
            baseline="naive rebuild",
            baseline_value=warm["naive_seconds"],
            note=note,
            target_text=NEW_TARGET,
        )
    )
    return out


def run_index(timeout: float) -> dict[str, Any]:
    """bench/index.py in a fresh process."""
    argv = [sys.executable, str(common.BENCH / "index.py"), "--deployments",
            str(INDEX_DEPLOYMENTS)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def index_figures(found: dict[str, Any]) -> list[Figure]:
    """The index page of 10,000 deployments in headless Chromium, served by nginx."""
    size = f"{INDEX_DEPLOYMENTS:,} deployments"
    if "error" in found:
        return [figure("index_first_paint", f"index first paint, {size}", None, "s",
                       note=found["error"])]  # fmt: skip
    median = found["median"]
    runs = len(found["loads"])
    note = f"median of {runs} loads in headless Chromium, served by nginx on 127.0.0.1"
    keys = [round(key * 1000) for key in found["loads"][0].get("keys", [])]
    return [
        figure("index_first_paint", f"index first paint, {size}", median["first_paint"], "s",
               note=note),
        figure("index_first_contentful_paint", f"index first contentful paint, {size}",
               median["first_contentful_paint"], "s"),
        figure("index_dom_content_loaded", f"index DOMContentLoaded (all rows, script run), "
               f"{size}", median["dom_content_loaded"], "s"),
        figure("index_bytes", f"index.html, {size}", round(found["index_bytes"] / 1e6, 2),
               "MB (10^6 bytes)",
               note=f"{found['index_bytes']:,} bytes; {median['rows']:,} rows in the page"),
        figure("index_key", f"index search: slowest key of '{found['query']}', {size}",
               median.get("slowest_key"), "s",
               note=f"keydown to the next frame drawn; median key "
               f"{common.show(median.get('median_key'), 's')}; first load's keys (ms): {keys}"),
        figure("index_escape", f"index search: Escape (every row back), {size}",
               median.get("escape"), "s"),
    ]  # fmt: skip


def oneshot_figures(found: dict[str, Any]) -> list[Figure]:
    """The one-shot job end to end (bench/oneshot.py): median time and peak memory per size,
    for `snapshot | apply` and, where it exists, the single command `apply --registry`."""
    out: list[Figure] = []
    tool = found.get("memory_tool", "")
    names = {"pipe": "snapshot | apply", "single": "apply --registry"}
    for services, size in sorted(found.get("sizes", {}).items(), key=lambda kv: int(kv[0])):
        text = f"{int(services):,} services"
        for variant in found.get("variants", ["pipe"]):
            prefix = "oneshot" if variant == "pipe" else "oneshot_single"
            what = f"one-shot etcd -> checked file ({names[variant]}), {text}"
            summary = size.get(variant)
            failed = (summary or {}).get("failed", [])
            if not summary or not summary.get("count"):
                why = size.get("error") or (
                    f"every run failed ({len(failed)}): {failed[0]}" if failed else "not measured"
                )
                out.append(figure(f"{prefix}_{services}", what, None, "s", note=why))
                continue
            runs = size["variants"][variant]
            stage = size.get("stage", {})
            note = (
                f"median of {summary['count']} runs (min {common.show(summary['min_seconds'], 's')}"
                f", max {common.show(summary['max_seconds'], 's')}); output file and site folder "
                f"emptied before each; {stage.get('routes', 0):,} routes, "
                f"{runs[0]['bytes'] / common.MB:.1f} MiB, {runs[0]['site_files']:,} site files"
            )
            if failed:
                note += f"; {len(failed)} more runs FAILED, the first: {failed[0]}"
            out.append(figure(f"{prefix}_{services}", what, summary["median_seconds"], "s",
                              note=note, extra={"oneshot": size}))  # fmt: skip
            peaks = ", ".join(
                "/".join(common.show(m, "MiB") for m in run["process_peaks_mib"]) for run in runs
            )
            out.append(
                figure(f"{prefix}_peak_{services}",
                       f"one-shot peak memory (largest process, {names[variant]}), {text}",
                       summary["max_peak_mib"], "MiB",
                       note=f"{tool}; the processes' peaks in each run: {peaks}")
            )  # fmt: skip
    return out


def live_figures(routes: int, found: dict[str, Any]) -> list[Figure]:
    shape = found.get("stage", {}).get("shape", "routes")
    size = routes_text(routes) + (" services" if shape == "wide" else " routes")
    out = []
    naive = found.get("naive_event", {})
    naive_seconds = naive.get("seconds")
    events = found.get("events", {})
    if events.get("count"):
        note = f"n = {events['count']} events"
        if events["count"] < events["asked"]:
            note += f" of {events['asked']} asked (time limit)"
        if naive.get("steps"):
            note += "; naive event: " + ", ".join(
                f"{name} {common.show(value, 's')}" for name, value in naive["steps"].items()
            )
        out.append(
            figure(
                f"live_p50_{routes}",
                f"watch p50, event to live, {size}",
                events["p50"],
                "s",
                baseline="naive event" if naive_seconds else "",
                baseline_value=naive_seconds,
            )
        )
        out.append(
            figure(
                f"live_p95_{routes}",
                f"watch p95, event to live, {size}",
                events["p95"],
                "s",
                baseline="naive event" if naive_seconds else "",
                baseline_value=naive_seconds,
                note=note,
                extra={"events": events, "naive_event": naive},
            )
        )
    else:
        error = found.get("error") or events.get("error") or "no event measured"
        out.append(
            figure(f"live_p95_{routes}", f"watch p95, event to live, {size}", None, "s", note=error)
        )
    if events.get("file_count"):
        out.append(figure(f"file_p50_{routes}", f"watch p50, event to file, {size}",
                          events["file_p50"], "s"))  # fmt: skip
        out.append(
            figure(f"file_p95_{routes}", f"watch p95, event to file, {size}", events["file_p95"],
                   "s", note=f"n = {events['file_count']} events; the output file polled "
                   f"(a stat every {live.FILE_POLL * 1000:g} ms, read when it changed) for the "
                   "new hostname, from the same start as event to live")
        )  # fmt: skip
    watcher = (
        events.get("watcher_after_n_events")
        or events.get("watcher_after_events")
        or found.get("stage", {}).get("watcher_after_first_apply")
    )
    if watcher:
        count = watcher.get("events")
        after = f"after {count} events" if count is not None else "after its first apply"
        first = found.get("stage", {}).get("watcher_after_first_apply") or {}
        grew = (
            f"; after its first apply {first['VmRSS']:.0f} / {first['VmHWM']:.0f} MiB"
            if first
            else ""
        )
        last = events.get("watcher_after_events")
        if last and last is not watcher:
            grew += f"; after all {last['events']} events {last['VmRSS']:.0f} / "
            grew += f"{last['VmHWM']:.0f} MiB"
        out.append(
            figure(f"watcher_rss_{routes}", f"watcher VmRSS {after}, {size}", watcher["VmRSS"],
                   "MiB", note=f"VmRSS / VmHWM{grew}", extra={"stage": found.get("stage", {})})
        )  # fmt: skip
        out.append(
            figure(f"watcher_hwm_{routes}", f"watcher VmHWM (peak) {after}, {size}",
                   watcher["VmHWM"], "MiB")
        )  # fmt: skip
    burst = found.get("burst")
    if burst is not None:
        if "error" in burst:
            out.append(
                figure(
                    "burst_reloads",
                    "burst of 1,000 registrations in 10 s: reloads",
                    None,
                    "count",
                    note=burst["error"],
                )
            )
        else:
            out.append(
                figure(
                    "burst_reloads",
                    f"burst of 1,000 registrations in 10 s: reloads ({size} before)",
                    burst["reloads"],
                    "count",
                )
            )
            confirmed = burst["all_confirmed_after_last_write"]
            out.append(
                figure(
                    "burst_all_live",
                    "burst: last write to all 1,000 live",
                    burst["last_live_after_last_write"] if burst["not_live"] == 0 else None,
                    "s",
                    note=(
                        f"the last one live at that time; all 1,000 confirmed by one sweep "
                        f"{common.show(confirmed, 's')} after the last write"
                        if confirmed is not None
                        else f"{burst['not_live']} hostnames not live"
                    ),
                    extra={"burst": burst},
                )
            )
    load = found.get("under_load")
    if load is not None:
        if "error" in load:
            out.append(
                figure(
                    "reload_failed",
                    "requests failed during 50 reloads under load",
                    None,
                    "count",
                    note=load["error"],
                )
            )
        else:
            under = load["under_reloads"]
            control = load["control"]
            total = sum(run.get("failed", 0) for run in under.values())
            requests = sum(run.get("requests", 0) for run in under.values())
            detail = "; ".join(
                f"{name}: {run.get('requests', 0)} requests, "
                f"{run.get('non_2xx', 0)} non-2xx, socket errors {run.get('socket_errors', {})}"
                for name, run in under.items()
            )
            control_failed = sum(run.get("failed", 0) for run in control.values())
            control_requests = sum(run.get("requests", 0) for run in control.values())
            out.append(
                figure(
                    "reload_failed",
                    f"requests failed during {load['reloads']} reloads under load ({size})",
                    total,
                    "count",
                    note=f"of {requests} requests ({detail}); control without reloads: "
                    f"{control_failed} failed of {control_requests}",
                    extra={"under_load": load},
                )
            )
            retrying = load.get("retrying")
            if retrying is not None:
                out.append(
                    figure(
                        "reload_failed_retrying",
                        f"requests failed during {retrying.get('reloads', 0)} reloads, "
                        f"retrying client ({size})",
                        retrying["failed"],
                        "count",
                        note=f"of {retrying['requests']} keep-alive requests from "
                        f"{retrying['threads']} threads (http.client); "
                        f"{retrying['failed_without_retry']} would have failed without the retry "
                        f"of a GET on a kept-alive connection closed before any answer byte, "
                        f"{retrying['retried']} retried (first attempts: "
                        f"{retrying.get('retried_errors', {})}); errors after the retry "
                        f"{retrying['errors'] or 'none'}",
                    )
                )
    return out


# ------------------------------------------------------------------------------------------------


def figures_of(raw: dict[str, Any]) -> list[Figure]:
    """Every figure, in table order, from the raw measurements (keys are route counts): first
    issue 14's (each of ISSUE_14, measured or not), then the rest of the headline figures,
    then the profile and the older figures."""
    figures: list[Figure] = []
    if "oneshot" in raw:
        figures += oneshot_figures(raw["oneshot"])
    for routes, found in sorted(raw.get("pipeline", {}).items(), key=lambda kv: int(kv[0])):
        figures += pipeline_figures(int(routes), found)
    if "replicas" in raw:
        figures += replicas_figures(raw["replicas"])
    if "index" in raw:
        figures += index_figures(raw["index"])
    for routes, found in sorted(raw.get("live", {}).items(), key=lambda kv: int(kv[0])):
        figures += live_figures(int(routes), found)
    # The watcher's memory against what one cold run of the same registry needs at its peak.
    by_key = {item.key: item for item in figures}
    for item in figures:
        if item.key.startswith("watcher_rss_"):
            cold = by_key.get("cold_peak_" + item.key.rsplit("_", 1)[1])
            if cold is not None and cold.value:
                item.baseline = "cold run peak RSS"
                item.baseline_value = cold.value
    order = [
        "cold_1000", "cold_10000", "cold_100000", "cold_peak_1000", "cold_peak_10000",
        "cold_peak_100000", "nginx_t_1000", "nginx_t_10000", "nginx_t_100000",
        "nginx_t_peak_1000", "nginx_t_peak_10000", "nginx_t_peak_100000", "warm_10000",
        "warm_100000", "nginx_t_replicas_10000", "nginx_t_peak_replicas_10000",
        "warm_replicas_10000", "index_first_paint", "index_first_contentful_paint",
        "index_dom_content_loaded", "index_bytes", "index_key", "index_escape", "live_p50_1000",
        "live_p95_1000", "live_p50_10000", "live_p95_10000",
        "live_p50_100000", "live_p95_100000", "burst_reloads", "burst_all_live", "reload_failed",
        "watcher_rss_1000", "watcher_rss_10000", "watcher_rss_100000",
    ]  # fmt: skip
    figures.sort(key=lambda item: order.index(item.key) if item.key in order else len(order))
    return headline(figures, raw)


HEADLINE = re.compile(r"(oneshot|live_p50|file_p50|watcher_rss|watcher_hwm)_")


def headline(figures: list[Figure], raw: dict[str, Any]) -> list[Figure]:
    """Issue 14's figures first, in its table's order, each with its target, confd's figure and
    ours before; a figure not measured is still there, saying so. Then the other figures of
    what the user waits for (p50s, other sizes, the single command), then the rest."""
    found = {item.key: item for item in figures}
    first: list[Figure] = []
    for goal in ISSUE_14:
        item = found.pop(goal.key, None)
        if item is None:
            why = "not measured" + (" (--quick)" if raw.get("quick") else "")
            item = figure(goal.key, goal.figure, None, goal.unit, note=why)
        item.figure = goal.figure
        item.headline = True
        first.append(item)
    more = [item for item in figures if item.key in found and HEADLINE.match(item.key)]
    for item in more:
        item.headline = True
    kinds = ["oneshot_", "oneshot_peak_", "oneshot_single_", "oneshot_single_peak_", "live_p50_",
             "file_p50_", "watcher_rss_", "watcher_hwm_"]  # fmt: skip
    more.sort(
        key=lambda item: (
            kinds.index(item.key.rsplit("_", 1)[0] + "_"),
            int(item.key.rsplit("_", 1)[1]),
        )
    )
    rest = [item for item in figures if item.key in found and not item.headline]
    return first + more + rest


def tables(figures: list[Figure], markdown: bool = False) -> str:
    """Issue 14's table (what the user waits for), then the profile and the other figures."""
    first = [item for item in figures if item.headline]
    rest = [item for item in figures if not item.headline]
    parts = []
    if first:
        title = "What the user waits for (issue 14; confd's figures are the issue's)"
        parts += [("### " if markdown else "") + title, "",
                  common.table(first, markdown, headline=True)]  # fmt: skip
    if rest:
        title = "Where the time goes (profile) and the other figures"
        parts += ["", ("### " if markdown else "") + title, "", common.table(rest, markdown)]
    return "\n".join(parts).strip("\n")


DOCS = common.ROOT / "docs" / "performance.md"
DOCS_BEGIN = "<!-- round two: written by `bench/run.py --docs` from bench/results.json -->"
DOCS_END = "<!-- round two: end -->"


def docs_table(results: dict[str, Any], figures: list[Figure]) -> str:
    """Issue 14's table for docs/performance.md, with the run it comes from."""
    machine = results["machine"]
    source = results["source"]
    dirty = (
        f" with {len(source['uncommitted'])} uncommitted changes" if source["uncommitted"] else ""
    )
    load = machine.get("load_average_at_start")
    busy = f", load average {load[0]:.1f} at its start" if load else ""
    first = [item for item in figures if item.headline]
    notes = [f"- {item.figure}: {' '.join(item.note.split())}" for item in first if item.note]
    return "\n".join(
        [
            f"Measured by `make bench` ({'--quick, ' if results['raw'].get('quick') else ''}"
            f"{results['started']}, {results['seconds']:.0f} s) at commit "
            f"`{source['commit']}`{dirty}, on {machine['cores']} cores ({machine['cpu']}"
            f"{busy}); Python {machine['python']}, {machine['nginx']}, {machine['etcd']}.",
            "",
            common.table(first, markdown=True, headline=True),
            "",
            *notes,
        ]
    )


def write_docs(results: dict[str, Any], figures: list[Figure], docs: Path = DOCS) -> None:
    """Replace the table between DOCS_BEGIN and DOCS_END in docs/performance.md."""
    text = docs.read_text(encoding="utf-8")
    head, found, rest = text.partition(DOCS_BEGIN)
    _, ended, tail = rest.partition(DOCS_END)
    if not (found and ended):
        raise SystemExit(f"{docs}: no {DOCS_BEGIN} ... {DOCS_END} to replace")
    table = docs_table(results, figures)
    docs.write_text(f"{head}{DOCS_BEGIN}\n{table}\n{DOCS_END}{tail}", encoding="utf-8")
    print(f"wrote issue 14's table into {docs}")


def report(results: dict[str, Any], figures: list[Figure], out: Path) -> None:
    """Print the table and notes; write results.json (given) and results.md beside it."""
    results["figures"] = [item.as_json() for item in figures]
    common.dump(out, results)
    markdown = out.with_suffix(".md")
    markdown.write_text(tables(figures, markdown=True) + "\n\nNotes:\n\n"
        + "\n".join(f"- {item.figure}: {item.note}" for item in figures if item.note)
        + "\n",
        encoding="utf-8",
    )  # fmt: skip
    print(tables(figures))
    print()
    for item in figures:
        if item.note:
            print(f"- {item.figure}: {item.note}")
    machine = results["machine"]
    print(
        f"\n{machine['cores']} cores, {machine['memory_gib']} GiB, {machine['cpu']}; "
        f"Python {machine['python']}; {machine['nginx']}; {machine['etcd']}"
    )
    source = results["source"]
    dirty = source["uncommitted"]
    print(
        f"generator at {source['commit']}"
        + (f" with {len(dirty)} uncommitted changes" if dirty else "")
    )
    if source.get("changed_during_run"):
        print("WARNING: the generator's files changed during the run: the figures mix versions")
    print(f"run took {results['seconds']:.0f} s; results in {out} and {markdown}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 only")
    parser.add_argument("--registry", choices=("etcd3", "etcd2"), default="etcd3")
    parser.add_argument("--events", type=int, default=50, help="events per size (default 50)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=600.0,
        help="seconds for the whole run (default 600); the last size's events get what is left",
    )
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument(
        "--only",
        choices=("oneshot", "replicas", "index"),
        help="run this one entry and print its figures (results.json is left as it is "
        "unless --out is given)",
    )
    parser.add_argument(
        "--out", type=Path, help="where the results go (default: bench/results.json)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="measure nothing: print the table again from the raw results in --out",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="measure nothing: write issue 14's table from --out into docs/performance.md",
    )
    args = parser.parse_args()
    only_out = args.out  # --only writes results only where it is told to
    args.out = args.out or common.BENCH / "results.json"
    if args.report or args.docs:
        results = json.loads(args.out.read_text(encoding="utf-8"))
        figures = figures_of(results["raw"])
        if args.docs:
            write_docs(results, figures)
        else:
            report(results, figures, args.out)
        return 0

    started = time.time()
    deadline = time.monotonic() + args.time_limit
    if args.only == "oneshot":
        sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
        api = "v3" if args.registry == "etcd3" else "v2"
        runs = {size: oneshot.default_runs(size) for size in sizes}
        figures = headline(oneshot_figures(oneshot.run(sizes, runs, api)), {"quick": args.quick})
        print(tables([item for item in figures if item.key.startswith("oneshot")]) + "\n")
        print("\n".join(f"- {item.figure}: {item.note}" for item in figures
                        if item.note and item.value is not None))  # fmt: skip
        return 0
    if args.only == "index":
        common.say(f"bench: the index, {INDEX_DEPLOYMENTS:,} deployments, in Chromium")
        figures = index_figures(run_index(args.time_limit))
        print(common.table(figures) + "\n")
        print("\n".join(f"- {item.figure}: {item.note}" for item in figures if item.note))
        return 0
    if args.only == "replicas":
        common.say(f"bench: {REPLICAS[0]:,} services of {REPLICAS[1]} instances")
        found = run_replicas(args.time_limit)
        figures = replicas_figures(found)
        if only_out is None:
            print(common.table(figures) + "\n")
            print("\n".join(f"- {item.figure}: {item.note}" for item in figures if item.note))
            return 0
        results = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": time.time() - started,
            "arguments": vars(args) | {"out": str(only_out)},
            "machine": common.machine(),
            "source": common.source_state(),
            "raw": {"replicas": found},
        }
        report(results, figures, only_out)
        return 0
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    warm_sizes = {10_000, 100_000}
    api = "v3" if args.registry == "etcd3" else "v2"
    events = min(args.events, 20) if args.quick else args.events
    raw: dict[str, Any] = {"pipeline": {}, "live": {}, "quick": args.quick}
    common.say(f"bench: sizes {sizes}, registry {args.registry}, time limit {args.time_limit:g} s")
    source_at_start = common.source_state()
    load_at_start = os.getloadavg()

    # What the user waits for first: the one-shot job from a real etcd, in real processes.
    raw["oneshot"] = oneshot.run(sizes, {size: oneshot.default_runs(size) for size in sizes}, api)

    with tempfile.TemporaryDirectory(prefix="devtest-bench-") as name:
        for routes in sizes:
            common.say(f"bench: pipeline, {routes:,} routes")
            left = deadline - time.monotonic()
            raw["pipeline"][routes] = run_pipeline(
                routes, routes in warm_sizes, Path(name), max(60.0, left * 0.6)
            )
    common.say(f"bench: {REPLICAS[0]:,} services of {REPLICAS[1]} instances")
    raw["replicas"] = run_replicas(max(60.0, (deadline - time.monotonic()) * 0.3))
    common.say(f"bench: the index, {INDEX_DEPLOYMENTS:,} deployments, in Chromium")
    raw["index"] = run_index(max(90.0, (deadline - time.monotonic()) * 0.3))

    if not args.skip_live:
        for number, routes in enumerate(sizes):
            now = time.monotonic()
            last = number == len(sizes) - 1
            # Each size but the last gets its 50 events (bounded by EVENTS_CAP), as long as
            # the last keeps LAST_RESERVE seconds for its setup, first apply and naive event;
            # the last size's events get whatever is left of the time limit.
            if last:
                events_deadline = deadline - 10.0
            else:
                events_deadline = min(now + EVENTS_CAP, deadline - LAST_RESERVE)
            first = number == 0
            common.say(
                f"bench: live, {routes:,} services (events for up to "
                f"{max(0.0, events_deadline - now):.0f} s)"
            )
            raw["live"][routes] = live.run(
                routes,
                api,
                events,
                events_deadline,
                burst=first,
                under_load=first,
                start_deadline=max(now + 60.0, deadline),
            )

    source = common.source_state()
    if source["fingerprint"] != source_at_start["fingerprint"]:
        source["changed_during_run"] = True
    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "arguments": vars(args) | {"out": str(args.out)},
        "machine": common.machine()
        | {"load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "source": source,
        "raw": raw,
    }
    report(results, figures_of(raw), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
