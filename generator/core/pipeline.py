"""The pure pipeline: snapshot to routing table to config text, and what applying it would do.

Each stage is a function of plain data (snapshot.deployment_texts, validate.validate,
routing.build_table, render.render, then check and plan); build composes them for a whole
snapshot. A long-running process keeps their results per deployment instead
(watch.engine.Build), calling the per-deployment functions these compose.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from generator.core.check import destination
from generator.core.config import Config
from generator.core.model import DeploymentKey, Route, RoutingTable, Token
from generator.core.render import Part, render
from generator.core.routing import build_table
from generator.core.snapshot import deployment_texts, snapshot_id
from generator.core.validate import SnapshotValidator, validate
from generator.core.words import counted


@dataclass(frozen=True, slots=True)
class Rendered:
    snapshot_id: str
    table: RoutingTable
    text: str
    # text with render.ROUTES_MARKER in place of the deployments' lines, and
    # render.UPSTREAMS_MARKER in place of their upstream blocks
    skeleton: str
    # each deployment's lines and upstream blocks, with what they must hold
    fragments: tuple[Part, ...]
    # (label, name) -> the deployment's routes by hostname, the same tuple while they stay the
    # same (site_apply.SiteWriter compares them by identity); None: not kept
    deployments: Mapping[DeploymentKey, tuple[Route, ...]] | None = None
    # the labels of the public deployments (render.public_labels), which the skeleton's public
    # map holds when access control is on
    public: tuple[Token, ...] = ()


def build(
    snapshot: Mapping[str, Any],
    config: Config,
    snapshot_schema: Mapping[str, Any],
    templates: jinja2.Environment,
) -> Rendered:
    """Validate, route and render a loaded snapshot (see snapshot.loads), from scratch."""
    texts = deployment_texts(snapshot)
    identity = snapshot_id(snapshot, texts)
    validator = SnapshotValidator(snapshot_schema)
    deployments, problems = validate(snapshot, validator, config.max_value_bytes, texts)
    del texts
    table = build_table(deployments, config, problems)
    del deployments, problems
    made = render(table, config, templates)
    return Rendered(identity, table, made.text, made.skeleton, made.parts, made.routes, made.public)


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying `new` over `current` would change."""

    current: str | None
    new: str
    current_routes: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def changes(self) -> bool:
        return self.current != self.new

    def diff(self, path: str) -> str:
        return "".join(
            difflib.unified_diff(
                (self.current or "").splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=f"{path} (in place)" if self.current is not None else "/dev/null",
                tofile=f"{path} (rendered)",
            )
        )

    def summary(self) -> str:
        return (
            f"{counted(len(self.added), 'route')} added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed"
        )


def route_destination(route: Route) -> str:
    """Where `route` sends requests, as plans compare routes (check.destination): its target,
    and the servers of its upstream group when it has one."""
    if len(route.members) > 1:
        upstreams = route.upstreams
        if len(upstreams) > 1:
            return destination(route.target, [upstream.text for upstream in upstreams])
    return route.target


def make_plan(current: str | None, current_routes: Mapping[str, str], rendered: Rendered) -> Plan:
    """`current_routes` maps each hostname in the file in place to its destination (see
    check.routes_in): a route whose upstream group's servers changed is a changed route."""
    new_routes = {str(route.host): route_destination(route) for route in rendered.table.routes}
    return Plan(
        current=current,
        new=rendered.text,
        current_routes=len(current_routes),
        added=tuple(sorted(new_routes.keys() - current_routes.keys())),
        removed=tuple(sorted(current_routes.keys() - new_routes.keys())),
        changed=tuple(
            sorted(
                host
                for host in new_routes.keys() & current_routes.keys()
                if new_routes[host] != current_routes[host]
            )
        ),
    )


def plan_between(installed: Rendered, rendered: Rendered) -> Plan:
    """make_plan for `rendered` over the file of `installed`, from the deployments whose routes
    changed (a deployment whose routes tuple is the same object has the same routes)."""
    before, after = installed.deployments, rendered.deployments
    if before is None or after is None:
        routes = {str(route.host): route_destination(route) for route in installed.table.routes}
        return make_plan(installed.text, routes, rendered)
    keys = [key for key, routes in after.items() if before.get(key) is not routes]
    if len(before) + sum(1 for key in keys if key not in before) > len(after):  # some went
        keys.extend(before.keys() - after.keys())
    old = {route.host: route_destination(route) for key in keys for route in before.get(key, ())}
    new = {route.host: route_destination(route) for key in keys for route in after.get(key, ())}
    return Plan(
        current=installed.text,
        new=rendered.text,
        current_routes=len(installed.table.routes),
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(host for host in new.keys() & old.keys() if new[host] != old[host])),
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """An apply the safety threshold's window remembers (see removal_refusal)."""

    at: float  # when it was applied, in the caller's clock's seconds
    routes: int  # the routes in place before it
    removed: frozenset[str]  # the hostnames it removed
    # the hostnames it added that an earlier apply of the window had removed (back again)
    returned: frozenset[str] = frozenset()


def in_window(history: Sequence[Applied], now: float, window: float) -> tuple[Applied, ...]:
    """The applies of `history` (oldest first) less than `window` seconds before `now`."""
    return tuple(applied for applied in history if now - applied.at < window)


def gone_in(recent: Sequence[Applied]) -> set[str]:
    """The hostnames the applies of `recent` (oldest first) removed and did not add back."""
    gone: set[str] = set()
    for applied in recent:
        gone -= applied.returned
        gone |= applied.removed
    return gone


def record(recent: Sequence[Applied], plan: Plan, at: float) -> tuple[Applied, ...]:
    """`recent` with the apply of `plan` at `at` added (a plan without changes adds nothing)."""
    if not plan.changes:
        return tuple(recent)
    returned = frozenset(plan.added) & gone_in(recent) if recent else frozenset()
    return (*recent, Applied(at, plan.current_routes, frozenset(plan.removed), returned))


def removal_refusal(plan: Plan, config: Config, recent: Sequence[Applied] = ()) -> str | None:
    """Why the safety threshold refuses this plan, or None.

    The routes this plan removes count together with those the applies of `recent` (the
    window: removal_window seconds back, oldest first) removed and did not add back, against
    the most routes in place in the window, so that removals in steps are judged as the whole
    they make. Without `recent` (a single `apply`) the plan is judged alone.
    """
    if config.force:
        return None
    most = max([plan.current_routes, *(applied.routes for applied in recent)])
    if most <= config.removal_guard_min_routes:
        return None
    gone = gone_in(recent) - set(plan.added)
    earlier = len(gone - set(plan.removed))
    gone |= set(plan.removed)
    if len(gone) <= config.max_removed_fraction * most:
        return None
    advice = "Check it with `devtest-router check`; --force applies anyway"
    if not earlier:
        return (
            f"refusing to remove {len(plan.removed)} of {counted(plan.current_routes, 'route')} "
            f"at once (more than {config.max_removed_fraction:.0%}): an emptied or misread "
            "registry? " + advice
        )
    return (
        f"refusing to remove {counted(len(plan.removed), 'more route')}: with the {earlier} "
        f"removed in the last {config.removal_window:g} s (removal_window), {len(gone)} of "
        f"the {counted(most, 'route')} in place then would be gone (more than "
        f"{config.max_removed_fraction:.0%}): a registry emptied step by step? " + advice
    )
