"""The safety threshold's window: removals in steps count together (pipeline.removal_refusal
over a list of Applied, a pure function: times are plain numbers), and the settings."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generator import resources
from generator.core.config import Config, resolve
from generator.core.errors import UsageError
from generator.core.pipeline import Applied, Plan, gone_in, in_window, record, removal_refusal

CONFIG = resolve(resources.schema("config"), {}, {})  # window 60 s, 50 %, more than 10 routes


def hosts(first: int, count: int) -> tuple[str, ...]:
    return tuple(f"b{number}.dev.test" for number in range(first, first + count))


def plan(routes: int, removed: tuple[str, ...] = (), added: tuple[str, ...] = ()) -> Plan:
    return Plan("old", "new", routes, added, removed, ())


def steps(config: Config, routes: int, step: int, every: float) -> tuple[int, str | None]:
    """Remove `step` routes every `every` seconds until refused or none left, as a watcher
    does: (routes left, the refusal)."""
    recent: tuple[Applied, ...] = ()
    now = 0.0
    left = routes
    while left:
        now += every
        removed = hosts(routes - left, min(step, left))
        recent = in_window(recent, now, config.removal_window)
        attempt = plan(left, removed)
        refusal = removal_refusal(attempt, config, recent)
        if refusal:
            return left, refusal
        recent = record(recent, attempt, now)
        left -= len(removed)
    return 0, None


def test_removals_in_steps_are_refused_once_they_pass_the_fraction_of_the_window() -> None:
    # the finding: 90 routes, 6 at a time every 0.3 s, all gone in 15 applies
    left, refusal = steps(CONFIG, 90, 6, 0.3)
    assert left >= 45, left
    assert refusal is not None
    assert "more routes: with the" in refusal and "of the 90 routes" in refusal, refusal
    assert "removal_window" in refusal and "--force" in refusal


def test_without_a_window_each_apply_is_judged_alone() -> None:
    alone = dataclasses.replace(CONFIG, removal_window=0.0)
    assert steps(alone, 90, 6, 0.3) == (0, None)


def test_removals_spread_wider_than_the_window_pass() -> None:
    # one deployment of 2 routes a minute: a team cleaning up, never more than 2 in a window
    left, refusal = steps(CONFIG, 40, 2, 61.0)
    assert (left, refusal) == (0, None)


def test_teams_deleting_three_branches_each_within_a_minute_pass() -> None:
    recent: tuple[Applied, ...] = ()
    for team in range(3):  # 3 teams, 3 branches of 2 routes each, 100 routes in place
        change = plan(100 - 6 * team, hosts(6 * team, 6))
        assert removal_refusal(change, CONFIG, recent) is None
        recent = record(recent, change, float(team))
    assert len(gone_in(recent)) == 18


def test_a_route_removed_and_back_within_the_window_does_not_count() -> None:
    recent: tuple[Applied, ...] = ()
    now = 0.0
    for _ in range(20):  # one deployment of 4 routes redeployed again and again
        for change in (plan(20, removed=hosts(0, 4)), plan(16, added=hosts(0, 4))):
            now += 1
            assert removal_refusal(change, CONFIG, recent) is None
            recent = record(in_window(recent, now, CONFIG.removal_window), change, now)
    assert gone_in(recent) == set()


def test_force_and_few_routes_are_never_refused() -> None:
    forced = dataclasses.replace(CONFIG, force=True)
    assert steps(forced, 90, 6, 0.3) == (0, None)
    assert steps(CONFIG, 10, 1, 0.3) == (0, None)  # the most routes in place: 10, not more


def test_the_most_routes_in_the_window_is_the_measure() -> None:
    earlier = (Applied(0.0, 90, frozenset(hosts(0, 40))),)
    # 50 routes in place now, 6 more to go: 46 of the 90 seen in the window
    refusal = removal_refusal(plan(50, hosts(40, 6)), CONFIG, earlier)
    assert refusal is not None and "46 of the 90 routes" in refusal, refusal
    assert removal_refusal(plan(50, hosts(40, 5)), CONFIG, earlier) is None  # 45: half


def test_in_window_keeps_the_applies_younger_than_the_window() -> None:
    history = tuple(Applied(float(at), 10, frozenset()) for at in range(10))
    assert [a.at for a in in_window(history, 10.0, 3.0)] == [8.0, 9.0]
    assert in_window(history, 10.0, 0.0) == ()


def test_a_plan_without_changes_is_not_recorded() -> None:
    unchanged = Plan("same", "same", 10, (), (), ())
    assert record((), unchanged, 1.0) == ()


@given(
    st.integers(11, 40),
    st.lists(st.tuples(st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60))), max_size=20),
)
def test_the_window_never_refuses_less_than_one_apply_alone(
    start: int, applies: list[tuple[set[int], set[int]]]
) -> None:
    """Whatever was applied before, a plan refused on its own is refused with a window too."""
    in_place = {f"h{number}" for number in range(start)}
    recent: tuple[Applied, ...] = ()
    for number, (removing, adding) in enumerate(applies):
        removed = tuple(sorted(in_place & {f"h{r}" for r in removing}))
        added = tuple(sorted({f"h{a}" for a in adding} - in_place))
        change = plan(len(in_place), removed, added)
        alone = removal_refusal(change, CONFIG, ())
        windowed = removal_refusal(change, CONFIG, recent)
        assert alone is None or windowed is not None
        if windowed is None:
            recent = record(recent, change, float(number))
            in_place = (in_place - set(removed)) | set(added)


def test_removal_window_and_allow_empty_are_validated_settings() -> None:
    schema = resources.schema("config")
    assert CONFIG.removal_window == 60.0 and CONFIG.allow_empty is False
    assert resolve(schema, {"removal_window": 0}, {}).removal_window == 0.0
    assert resolve(schema, {}, {"DEVTEST_ROUTER_REMOVAL_WINDOW": "5"}).removal_window == 5.0
    assert resolve(schema, {}, {"DEVTEST_ROUTER_ALLOW_EMPTY": "1"}).allow_empty is True
    for bad in (-1, 86401, "soon"):
        with pytest.raises(UsageError, match="setting removal_window"):
            resolve(schema, {"removal_window": bad}, {})
    with pytest.raises(UsageError, match=r"removal_window = nan .* finite"):
        resolve(schema, {}, {"DEVTEST_ROUTER_REMOVAL_WINDOW": "nan"})
    with pytest.raises(UsageError, match="setting allow_empty"):
        resolve(schema, {}, {"DEVTEST_ROUTER_ALLOW_EMPTY": "maybe"})
