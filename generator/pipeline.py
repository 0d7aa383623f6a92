"""The pure pipeline: snapshot to routing table to config text, and what applying it would do."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from .config import Config
from .model import RoutingTable
from .render import render
from .routing import build_table
from .snapshot import snapshot_id
from .validate import SnapshotValidator, validate


@dataclass(frozen=True, slots=True)
class Rendered:
    snapshot_id: str
    table: RoutingTable
    text: str


def build(
    snapshot: Mapping[str, Any],
    config: Config,
    validator: SnapshotValidator,
    templates: jinja2.Environment,
) -> Rendered:
    """Validate, route and render a loaded snapshot (see snapshot.loads)."""
    deployments, problems = validate(snapshot, validator)
    table = build_table(deployments, config, problems)
    return Rendered(snapshot_id(snapshot), table, render(table, config, templates))


class Builder:
    """build() with its validator and templates prepared once, for a process that builds often."""

    def __init__(
        self, config: Config, snapshot_schema: Mapping[str, Any], templates: jinja2.Environment
    ) -> None:
        self.config = config
        self._validator = SnapshotValidator(snapshot_schema)
        self._templates = templates

    def __call__(self, snapshot: Mapping[str, Any]) -> Rendered:
        return build(snapshot, self.config, self._validator, self._templates)


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
