"""What the watcher tells the outside: the events it reports, what health means, and what it
counts of a routing table.

The watcher reports events (a registry read, a lost registry, an apply and its outcome) to an
Observer; it never looks at the wall clock or at HTTP. metrics.Status is the observer that
keeps the Prometheus metrics and the health conditions, and metrics.Server serves them at the
edge. Whether the watcher is healthy is a pure function of the two conditions (health_report).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from generator.core.model import Problem, Route, RoutingTable
from generator.core.pipeline import Rendered


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one apply did."""

    rendered: Rendered
    message: str  # the log line
    changed: bool  # the config in place changed (under --dry-run: would change)
    reloaded: bool  # nginx was reloaded


class Observer(Protocol):
    def registry_read(self, index: int) -> None:
        """The registry answered at `index`: a whole read, or the events up to it."""

    def registry_failed(self, error: str) -> None:
        """The registry could not be reached or read (a read or a watch)."""

    def applied(self, outcome: Outcome, seconds: float) -> None:
        """An apply succeeded (changed or not)."""

    def apply_failed(self, error: str, seconds: float) -> None:
        """An apply failed: nothing was changed, the previous config serves."""


class Unobserved:
    """The observer when no one watches (metrics_listen unset)."""

    def registry_read(self, index: int) -> None:
        pass

    def registry_failed(self, error: str) -> None:
        pass

    def applied(self, outcome: Outcome, seconds: float) -> None:
        pass

    def apply_failed(self, error: str, seconds: float) -> None:
        pass


def problem_fields(problem: Problem) -> dict[str, object]:
    """The facts of a problem for a JSON log line: key, code and the deployment it is under
    (as registered: the name, which the key may show quoted or cut short)."""
    return {"key": problem.key, "code": problem.code, "deployment": problem.deployment}


# --------------------------------------------------------------------------
# what the routing table routes to


def routed_instances(routes: Iterable[Route]) -> int:
    """The instances `routes` reach, each (deployment, service, instance) once: a default
    entry point reaches its service's instances, which the service's own hostname reaches too."""
    return len(
        {
            (route.deployment, route.service, member.instance)
            for route in routes
            for member in route.members
        }
    )


class InstanceCount:
    """routed_instances of each routing table applied, counted again only for the deployments
    whose routes changed: the pipeline keeps a deployment's routes as the same tuple while they
    stay the same (pipeline.Rendered.deployments), so an apply costs in proportion to the change
    (at 100,000 routes a count of every route takes tens of milliseconds, more when the
    garbage collector runs in it)."""

    def __init__(self) -> None:
        # deployment -> (its routes as last counted, their count)
        self._kept: dict[Hashable, tuple[tuple[Route, ...], int]] = {}
        self._total = 0

    def __call__(
        self, table: RoutingTable, deployments: Mapping[Any, tuple[Route, ...]] | None
    ) -> int:
        """The count for `table`; `deployments` is its routes by deployment (None: not kept)."""
        if deployments is None:
            self._kept, self._total = {}, 0
            return routed_instances(table.routes)
        kept = self._kept
        for key, routes in deployments.items():
            old = kept.get(key)
            if old is None or old[0] is not routes:
                count = routed_instances(routes)
                self._total += count - (0 if old is None else old[1])
                kept[key] = (routes, count)
        if len(kept) > len(deployments):
            for key in kept.keys() - deployments.keys():
                self._total -= kept.pop(key)[1]
        return self._total


# --------------------------------------------------------------------------
# health: two conditions, each ok or failing since some moment


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of health, as /healthz reports it (its JSON calls them "checks")."""

    ok: bool
    since: float  # unix seconds when it last turned ok or failing
    detail: str  # what the last event said


@dataclass(frozen=True, slots=True)
class Health:
    registry: Condition  # was the registry reachable on the last read (or watch)?
    apply: Condition  # did the last apply succeed?


def starting(now: float) -> Health:
    return Health(
        Condition(False, now, "not read yet"),
        Condition(False, now, "not applied yet"),
    )


def update(condition: Condition, ok: bool, detail: str, now: float) -> Condition:
    """The condition after an event; `since` moves only when the state flips."""
    return Condition(ok, condition.since if condition.ok == ok else now, detail)


def health_report(health: Health) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of /healthz: 200 when every condition is ok, else 503 naming the
    failing conditions and since when they fail (under the body's key "checks")."""
    conditions = {"registry": health.registry, "apply": health.apply}
    failing = [name for name, condition in conditions.items() if not condition.ok]
    body = {
        "status": "failing" if failing else "ok",
        "failing": failing,
        "checks": {
            name: {
                "ok": condition.ok,
                "since": _iso(condition.since),
                "detail": condition.detail,
            }
            for name, condition in conditions.items()
        },
    }
    return (503 if failing else 200), body


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
