"""What the watcher tells the outside: the events it reports and what health means.

The watcher reports events (a registry read, a lost registry, an apply and its outcome) to an
Observer; it never looks at the wall clock or at HTTP. metrics.Status is the observer that
keeps the Prometheus metrics and the health checks, and metrics.Server serves them at the edge.
Whether the watcher is healthy is a pure function of the two checks (health_report).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .model import Problem
from .pipeline import Rendered


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
    """The facts of a problem for a JSON log line: key, code and the deployment it is under."""
    parts = problem.key.split("/")
    deployment = parts[2] if len(parts) > 2 and parts[1] == "deployment" and parts[2] else None
    return {"key": problem.key, "code": problem.code, "deployment": deployment}


# --------------------------------------------------------------------------
# health: two checks, each ok or failing since some moment


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    since: float  # unix seconds when it last turned ok or failing
    detail: str  # what the last event said


@dataclass(frozen=True, slots=True)
class Health:
    registry: Check  # was the registry reachable on the last read (or watch)?
    apply: Check  # did the last apply succeed?


def starting(now: float) -> Health:
    return Health(
        Check(False, now, "not read yet"),
        Check(False, now, "not applied yet"),
    )


def update(check: Check, ok: bool, detail: str, now: float) -> Check:
    """The check after an event; `since` moves only when the state flips."""
    return Check(ok, check.since if check.ok == ok else now, detail)


def health_report(health: Health) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of /healthz: 200 when every check is ok, else 503 naming the
    failing checks and since when they fail."""
    checks = {"registry": health.registry, "apply": health.apply}
    failing = [name for name, check in checks.items() if not check.ok]
    body = {
        "status": "failing" if failing else "ok",
        "failing": failing,
        "checks": {
            name: {
                "ok": check.ok,
                "since": _iso(check.since),
                "detail": check.detail,
            }
            for name, check in checks.items()
        },
    }
    return (503 if failing else 200), body


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
