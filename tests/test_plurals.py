"""Counts in what a user reads agree with their noun: "1 route", "2 routes" (issue 12: log
lines said "1 routes added"). The lines are made by the real code paths: the plan's and the
site's summaries, the watcher's removal-grace wording, `check`'s table and `render`'s config.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from generator.cli.main import main
from generator.core.pipeline import Plan
from generator.core.words import counted
from generator.site.writer import SitePlan
from generator.watch.watcher import _keys_of

WEB = {"ip": "10.0.0.5", "port": "8080"}


def test_counted_says_the_singular_for_one_only() -> None:
    assert [counted(n, "route") for n in (0, 1, 2)] == ["0 routes", "1 route", "2 routes"]
    assert counted(1, "site file") == "1 site file"
    assert counted(3, "child", "children") == "3 children"


@pytest.mark.parametrize(("count", "said"), [(1, "1 route added"), (2, "2 routes added")])
def test_a_plans_summary(count: int, said: str) -> None:
    added = tuple(f"h{i}.dev.test" for i in range(count))
    plan = Plan(None, "", 0, added, (), ())
    assert plan.summary() == f"{said}, 0 removed, 0 changed"


@pytest.mark.parametrize(("count", "said"), [(1, "1 site file"), (2, "2 site files")])
def test_the_sites_summary(count: int, said: str) -> None:
    pages = SitePlan(tuple(f"page{i}.html" for i in range(count)), ())
    assert pages.summary() == f"{said} written, 0 removed"


def test_the_removal_graces_keys() -> None:
    one = [("deployment", "a", "service", "web", "ip")]
    assert _keys_of(one) == "1 key of 1 deployment"
    two = [*one, ("deployment", "b", "service", "web", "ip")]
    assert _keys_of(two) == "2 keys of 2 deployments"


def run(*argv: str, snapshot: dict[str, Any]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO(json.dumps({"deployment": snapshot}))
    code = main([*argv, "--domain", "dev.test"], stdin=stdin, stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


# `solo` routes its api (solo-api), and its web has no port yet: one route, one problem
ONE = {"solo": {"service": {"api": WEB, "web": {"ip": "10.0.0.5"}}}}
TWO = {**ONE, "duo": ONE["solo"]}


@pytest.mark.parametrize(("snapshot", "n"), [(ONE, 1), (TWO, 2)])
def test_checks_table(snapshot: dict[str, Any], n: int) -> None:
    code, out, _ = run("check", snapshot=snapshot)
    assert code == 0
    lines = out.splitlines()
    noun = "route" if n == 1 else "routes"
    assert lines[0] == f"{n} {noun} under dev.test"
    assert f"{n} {'problem' if n == 1 else 'problems'}" in lines


@pytest.mark.parametrize(
    ("snapshot", "said"), [(ONE, "1 route for 1 deployment,"), (TWO, "2 routes for 2 deployments,")]
)
def test_the_rendered_configs_header(snapshot: dict[str, Any], said: str) -> None:
    code, out, _ = run("render", snapshot=snapshot)
    assert code == 0
    header = out.splitlines()[1]
    assert header.startswith("# Routing table sha256:") and header.endswith(f": {said}"), header
