"""deploy/observability/: the alert rules pass promtool's check and their unit tests, every rule
is tested firing and not firing, and every query of the rules and of the Grafana dashboard
names only metrics the watcher exports and parses as PromQL.

The exported names come from the code: a Status's registry rendered in process, as /metrics
serves it. promtool is a tool run on files, like `nginx -t`: these tests start no server, so
they are not `integration`. A missing promtool fails them (`make deps` unpacks one).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from harness import find_promtool
from prometheus_client.parser import text_string_to_metric_families
from test_docs import headings

from generator.watch.metrics import Status

REPO = Path(__file__).resolve().parent.parent
OBSERVABILITY = REPO / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yml"
DASHBOARD = OBSERVABILITY / "dashboard.json"
# Prometheus's own series of every target: the one name a query may use that we do not export.
PROMETHEUS_SERIES = {"up"}
# What Grafana puts into a query before Prometheus sees it, for the parse check.
GRAFANA_VARIABLES = {
    "$__rate_interval": "4m",
    "$__interval": "1m",
    "$__range": "6h",
    "$instance": ".*",
}


def exposition() -> str:
    """/metrics of a watcher, rendered in process from the code's registry."""
    return prometheus_client.generate_latest(Status().metrics).decode()


def exported_names() -> set[str]:
    """Every series name /metrics serves: with _total, _bucket, _sum and _count, as stored."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition())
        for sample in family.samples
    }


KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label
    matchers, ranges, `by (...)`-style label lists and offsets are taken out, that are neither
    a function or aggregation (followed by `(`) nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    groupings = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*(?:\([^)]*\))?"
    text = re.sub(groupings, " ", text)
    text = re.sub(r"\boffset\s+-?[\w$]+", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[found.end() :].lstrip().startswith("(") or found.group().lower() in KEYWORDS:
            continue
        names.add(found.group())
    return names


def unknown_names(exprs: list[str], known: set[str]) -> dict[str, list[str]]:
    """{expr: the names it selects that are not exported}, for the exprs that have any."""
    unknown = {expr: sorted(metric_names(expr) - known) for expr in exprs}
    return {expr: names for expr, names in unknown.items() if names}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """The expr of every target of every panel (rows' panels too) and every query variable."""
    exprs = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    return exprs


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def check_parses(exprs: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on the exprs as recording rules, Grafana's variables filled in."""
    recorded = []
    for number, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        recorded.append({"record": f"dashboard:expr_{number}", "expr": expr})
    path = folder / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    return promtool("check", "rules", str(path), cwd=folder)


# --------------------------------------------------------------------------
# the exported names and the name finder


def test_the_exported_names_are_the_registrys_series() -> None:
    names = exported_names()
    assert {
        "devtest_router_applies_total",
        "devtest_router_apply_duration_seconds_bucket",
        "devtest_router_apply_duration_seconds_count",
        "devtest_router_start_time_seconds",
        "devtest_router_build_info",
    } <= names
    assert "devtest_router_applies" not in names  # a counter is stored with _total


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="devtest-router"} == 0', {"up"}),
        ("absent(up{job=\"a b\", x=~'or'})", {"up"}),
        (
            'sum by (instance, le) (rate(x_bucket{instance=~"$instance"}[$__rate_interval]))',
            {"x_bucket"},
        ),
        ("time() - (a > 0 or b) > 15 * 60 unless on (job) sum by (job) (c) > 0", {"a", "b", "c"}),
        ("a > a offset 1h and bool 1e3 < b", {"a", "b"}),
        ("max(a) without (result) / ignoring (x) group_left (version) b", {"a", "b"}),
        ("histogram_quantile(0.9, sum(rate(h_bucket[5m:1m])) by (le))", {"h_bucket"}),
    ],
)
def test_metric_names_finds_the_selected_names_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_unknown_names_catches_a_misspelt_metric() -> None:
    known = exported_names()
    good = "rate(devtest_router_applies_total[5m])"
    bad = "rate(devtest_router_apply_total[5m]) + devtest_router_routes"
    assert unknown_names([good, bad], known) == {bad: ["devtest_router_apply_total"]}


# --------------------------------------------------------------------------
# the alert rules


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_fail_when_an_alert_fires_a_minute_early(tmp_path: Path) -> None:
    # each rule's `for` is pinned by an evaluation just before it: one minute less fails them
    for rule in rules():
        shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
        text = RULES.read_text(encoding="utf-8")
        alert = f"alert: {rule['alert']}\n"
        head, tail = text.split(alert)
        minutes = int(rule["for"].removesuffix("m"))
        tail = tail.replace(f"for: {rule['for']}", f"for: {minutes - 1}m", 1)
        (tmp_path / RULES.name).write_text(head + alert + tail, encoding="utf-8")
        done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
        assert done.returncode == 1, rule["alert"]
        assert f"alertname: {rule['alert']}" in done.stdout + done.stderr, rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    evaluations = [case for test in tests for case in test["alert_rule_test"]]
    for rule in rules():
        name = rule["alert"]
        expected = [case["exp_alerts"] for case in evaluations if case["alertname"] == name]
        assert [] in expected, f"{name}: no evaluation where it does not fire"
        assert any(expected), f"{name}: no evaluation where it fires"


def test_every_rule_has_for_a_severity_and_says_what_to_do() -> None:
    operations = headings((REPO / "docs" / "operations.md").read_text(encoding="utf-8"))
    documented = (REPO / "docs" / "observability.md").read_text(encoding="utf-8")
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in operations, name
        assert f"`{name}`" in documented, f"{name} is not in docs/observability.md"


def test_the_rules_query_only_exported_metrics() -> None:
    exprs = [rule["expr"] for rule in rules()]
    assert unknown_names(exprs, exported_names() | PROMETHEUS_SERIES) == {}


# --------------------------------------------------------------------------
# the dashboard


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "devtest-router" and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36  # Grafana 9 and later
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"] and panel["title"] and panel["description"], panel
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert '{instance=~"$instance"}' in target["expr"], target["expr"]
    assert len(ids) == len(set(ids))


def test_the_dashboard_queries_only_exported_metrics_and_uses_each() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    exported = exported_names()
    assert unknown_names(exprs, exported) == {}
    used = set().union(*(metric_names(expr) for expr in exprs))
    # every family is on it: a counter or a histogram by one of its series
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert sorted(families - shown) == []


def test_a_misspelt_metric_in_the_dashboard_is_caught(tmp_path: Path) -> None:
    text = DASHBOARD.read_text(encoding="utf-8")
    assert "devtest_router_problems{" in text
    misspelt = json.loads(text.replace("devtest_router_problems{", "devtest_router_problem{", 1))
    assert list(unknown_names(dashboard_exprs(misspelt), exported_names()).values()) == [
        ["devtest_router_problem"]
    ]


def test_the_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    done = check_parses(exprs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout
    broken = check_parses([*exprs, "sum by (instance (devtest_router_routes)"], tmp_path)
    assert broken.returncode != 0 and "parse error" in broken.stdout + broken.stderr


# --------------------------------------------------------------------------
# /metrics itself


def test_promtool_finds_nothing_to_say_about_our_metrics() -> None:
    done = subprocess.run(
        [find_promtool(), "check", "metrics"],
        input=exposition(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    bad = "# HELP x_count n\n# TYPE x_count counter\nx_count 1\n"
    done = subprocess.run(
        [find_promtool(), "check", "metrics"], input=bad, capture_output=True, text=True
    )
    assert done.returncode != 0 and "_total" in done.stdout + done.stderr
