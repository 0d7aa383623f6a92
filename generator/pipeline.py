"""The pure pipeline: snapshot to routing table to config text, and what applying it would do."""

from __future__ import annotations

import difflib
import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2

from .config import Config
from .model import Problem, RoutingTable
from .render import Fragment, Group, groups, render_group, render_skeleton, splice
from .routing import Candidate, assemble, candidates
from .snapshot import canonical, snapshot_id
from .validate import SnapshotValidator


@dataclass(frozen=True, slots=True)
class Rendered:
    snapshot_id: str
    table: RoutingTable
    text: str
    skeleton: str  # text with render.ROUTES_MARKER in place of the deployments' lines
    # each deployment's lines, and the (hostname, target) pairs they must hold
    fragments: tuple[tuple[Fragment, frozenset[tuple[str, str]]], ...]


class Pipeline:
    """Validate, route and render snapshots, again and again.

    The work for a deployment (validation, its routes, its rendered lines) is kept, keyed by
    the deployment's content, and redone only when the deployment changes; collisions, the
    routing table and the rest of the file are redone every time. A fresh Pipeline is the cold
    run, so the bytes are the same whether a deployment's work was kept or not.
    """

    def __init__(
        self, config: Config, snapshot_schema: Mapping[str, Any], templates: jinja2.Environment
    ) -> None:
        self.config = config
        self._validator = SnapshotValidator(snapshot_schema)
        self._templates = templates
        # name -> (canonical JSON of the deployment, its route candidates, its problems)
        self._deployments: dict[str, tuple[str, list[Candidate], list[Problem]]] = {}
        self._fragments: dict[Group, tuple[Fragment, frozenset[tuple[str, str]]]] = {}

    def __call__(self, snapshot: Mapping[str, Any]) -> Rendered:
        with no_gc():
            return self._build(snapshot)

    def _build(self, snapshot: Mapping[str, Any]) -> Rendered:
        kept: dict[str, tuple[str, list[Candidate], list[Problem]]] = {}
        found: list[Candidate] = []
        problems: list[Problem] = []
        for name, value in sorted(snapshot["deployment"].items()):
            text = canonical(value)
            work = self._deployments.get(name)
            if work is None or work[0] != text:
                work = (text, *self._deployment(name, value))
            kept[name] = work
            found.extend(work[1])
            problems.extend(work[2])
        self._deployments = kept

        table = assemble(found, problems, self.config)
        parts = groups(table)
        self._fragments = {
            group: self._fragments.get(group) or self._fragment(group) for group in parts
        }
        fragments = tuple(self._fragments[group] for group in parts)
        skeleton = render_skeleton(
            table, self.config, self._templates, [fragment for fragment, _ in fragments]
        )
        identity = snapshot_id(snapshot, {name: work[0] for name, work in kept.items()})
        text = splice(skeleton, [fragment for fragment, _ in fragments])
        return Rendered(identity, table, text, skeleton, fragments)

    def _fragment(self, group: Group) -> tuple[Fragment, frozenset[tuple[str, str]]]:
        lines = render_group(group, self._templates)
        return lines, frozenset((str(host), str(target)) for host, target, _ in group[2])

    def _deployment(self, name: str, value: Any) -> tuple[list[Candidate], list[Problem]]:
        deployment, problems = self._validator.deployment(name, value)
        if deployment is None:
            return [], problems
        asked, trouble = candidates(deployment, self.config)
        return asked, problems + trouble


@contextmanager
def no_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector off while building: the pipeline makes hundreds of
    thousands of small objects and no cycles, and collections triggered by the allocations
    alone cost as much as the work itself (measured: 100,000 routes in 3.0 s instead of 6.7)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build(
    snapshot: Mapping[str, Any],
    config: Config,
    snapshot_schema: Mapping[str, Any],
    templates: jinja2.Environment,
) -> Rendered:
    """Validate, route and render a loaded snapshot (see snapshot.loads), from scratch."""
    return Pipeline(config, snapshot_schema, templates)(snapshot)


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
            f"{len(self.added)} routes added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed"
        )


def make_plan(current: str | None, current_routes: Mapping[str, str], rendered: Rendered) -> Plan:
    """`current_routes` maps each hostname in the file in place to its target."""
    new_routes = {str(route.host): str(route.target) for route in rendered.table.routes}
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


def removal_refusal(plan: Plan, config: Config) -> str | None:
    """Why the safety threshold refuses this plan, or None."""
    if config.force or plan.current_routes <= config.removal_guard_min_routes:
        return None
    if len(plan.removed) <= config.max_removed_fraction * plan.current_routes:
        return None
    return (
        f"refusing to remove {len(plan.removed)} of {plan.current_routes} routes at once "
        f"(more than {config.max_removed_fraction:.0%}): an emptied or misread registry? "
        "Check it with `devtest-router check`; --force applies anyway"
    )
