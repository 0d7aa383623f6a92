"""The benchmark's table keeps every figure issue 14 asks for, each with its target and confd's
figure, whether it was measured or not: a figure cannot silently disappear from `make bench`.
No server is started: the table is built from raw results written here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (bench/run.py)

# Issue 14's table: (key, target in the figure's unit, confd's figure as the issue gives it).
ISSUE = [
    ("oneshot_1000", 0.15, "0.054 s"),
    ("oneshot_10000", 0.35, "0.250 s"),
    ("oneshot_100000", 2.7, "2.69 s"),
    ("oneshot_peak_100000", 200.0, "141 MiB"),
    ("live_p95_1000", 0.060, "49 ms (to file)"),
    ("live_p95_10000", 0.150, "319 ms (to file)"),
    ("live_p95_100000", 0.5, "2,835 ms (to file)"),
    ("file_p95_1000", 0.060, "49 ms"),
    ("file_p95_10000", 0.150, "319 ms"),
    ("file_p95_100000", 0.5, "2,835 ms"),
    ("watcher_rss_100000", 150.0, "141 MiB"),
    ("watcher_hwm_100000", 250.0, "250 MiB"),
    ("reload_failed", 0.0, ""),
    ("reload_failed_retrying", 0.0, ""),
]


def _oneshot(seconds: float, peak: float) -> dict[str, Any]:
    one = {"seconds": seconds, "peak_mib": peak, "process_peaks_mib": [peak, peak / 2],
           "bytes": 1000, "site_files": 3}  # fmt: skip
    return {"runs": 1, "variants": {"pipe": [one]}, "stage": {"routes": 11},
            "pipe": run.oneshot.summary([one])}  # fmt: skip


def _live(p95: float, rss: float) -> dict[str, Any]:
    memory = {"VmRSS": rss, "VmHWM": rss * 2, "events": 40}
    events = {"count": 40, "asked": 40, "p50": p95 / 2, "p95": p95, "file_p50": p95 / 4,
              "file_p95": p95 / 3, "file_count": 40, "watcher_after_n_events": memory,
              "watcher_after_events": memory}  # fmt: skip
    return {"events": events, "stage": {"shape": "wide"}}


def test_every_issue_figure_has_its_target_and_confd_figure() -> None:
    assert [(goal.key, goal.target, goal.confd) for goal in run.ISSUE_14] == ISSUE


def test_figures_not_measured_are_still_in_the_table() -> None:
    figures = run.figures_of({"quick": True})
    shown = {item.key: item for item in figures if item.headline}
    assert [item.key for item in figures[: len(ISSUE)]] == [key for key, _, _ in ISSUE]
    for key, target, confd in ISSUE:
        assert shown[key].value is None
        assert shown[key].note == "not measured (--quick)"
        assert (shown[key].target, shown[key].confd) == (target, confd)
    text = run.tables(figures)
    for goal in run.ISSUE_14:
        assert goal.figure in text


def test_measured_figures_land_in_their_rows() -> None:
    raw = {
        "oneshot": {"variants": ["pipe"], "memory_tool": "GNU time -f %M",
                    "sizes": {str(size): _oneshot(size / 1e5, size / 500)
                              for size in (1000, 10000, 100000)}},
        "live": {str(size): _live(size / 1e6, size / 1000) for size in (1000, 10000, 100000)},
    }  # fmt: skip
    raw["live"]["1000"]["under_load"] = {
        "reloads": 50,
        "under_reloads": {"keepalive": {"failed": 3, "requests": 100}},
        "control": {"keepalive": {"failed": 0, "requests": 100}},
        "retrying": {"failed": 0, "requests": 90, "failed_without_retry": 4, "retried": 4,
                     "retried_errors": {"RemoteDisconnected": 4}, "errors": {}, "threads": 4,
                     "reloads": 50},
    }  # fmt: skip
    shown = {item.key: item for item in run.figures_of(raw)}
    expected = {
        "oneshot_1000": 0.01,
        "oneshot_100000": 1.0,
        "oneshot_peak_100000": 200.0,
        "live_p95_100000": 0.1,
        "file_p95_100000": pytest.approx(0.1 / 3),
        "watcher_rss_100000": 100.0,
        "watcher_hwm_100000": 200.0,
        "reload_failed": 3,
        "reload_failed_retrying": 0,
    }
    assert {key: shown[key].value for key in expected} == expected
    assert all(shown[key].headline for key in expected)
    assert shown["oneshot_100000"].met is True
    assert shown["live_p95_1000"].met is True and shown["live_p95_100000"].met is True
    assert shown["reload_failed"].met is False
    text = run.tables(list(shown.values()))
    assert "<= 2.70 s" in text and "2.69 s" in text and "14.2 s" in text
