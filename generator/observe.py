"""What the watcher tells the outside: health (/healthz) and Prometheus metrics (/metrics).

The watcher reports events (a registry read, a lost registry, an apply and its outcome) to an
Observer; it never looks at clocks of the wall or at HTTP. Status is the observer that keeps
the metrics and the health checks; Server serves them from a thread at the edge. Whether the
watcher is healthy is a pure function of the two checks (health_report).
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .errors import UsageError
from .model import Problem
from .pipeline import Rendered

PREFIX = "devtest_router_"
RESULTS = ("changed", "unchanged", "failed")
# Applies take milliseconds for a few routes and seconds for 100,000 (docs/performance.md).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one apply did."""

    rendered: Rendered
    message: str  # the log line
    changed: bool  # the config in place changed (under --dry-run: would change)
    reloaded: bool  # nginx was reloaded


class Observer(Protocol):
    def registry_read(self, index: int) -> None:
        """The registry answered a whole read at `index`."""

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


# --------------------------------------------------------------------------
# the edge: metrics kept in a CollectorRegistry of our own, served over HTTP


class Status:
    """The Observer behind /metrics and /healthz. Thread-safe: the watcher writes, the HTTP
    server's threads read."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._health = starting(clock())
        self._registry_lost = False
        # A counter's _created sample is a second series per counter that nobody here uses.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.metrics = CollectorRegistry()
        registry = self.metrics
        self.applies = Counter(
            PREFIX + "applies",
            "Applies by result: changed (a new config installed and nginx reloaded), "
            "unchanged (nothing to do), failed (the previous config stays)",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.applies.labels(result)
        self.reloads = Counter(PREFIX + "nginx_reloads", "nginx reloads", registry=registry)
        self.duration = Histogram(
            PREFIX + "apply_duration_seconds",
            "Time an apply took, from the snapshot to nginx reloaded (failed ones included)",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.routes = Gauge(
            PREFIX + "routes", "Routes in the config last applied", registry=registry
        )
        self.deployments = Gauge(
            PREFIX + "deployments",
            "Deployments with at least one route in the config last applied",
            registry=registry,
        )
        self.problems = Gauge(
            PREFIX + "problems",
            "Problems (skipped entries, collisions) found in the snapshot last applied",
            registry=registry,
        )
        self.last_success = Gauge(
            PREFIX + "last_successful_apply_timestamp_seconds",
            "Unix time of the last successful apply (0: none yet)",
            registry=registry,
        )
        self.reconnects = Counter(
            PREFIX + "registry_reconnects",
            "Times the registry answered again after it could not be reached or read",
            registry=registry,
        )
        self.reachable = Gauge(
            PREFIX + "registry_reachable",
            "1 when the registry answered the last read or watch, else 0",
            registry=registry,
        )

    def health(self) -> Health:
        with self._lock:
            return self._health

    def _set(self, registry: Check | None = None, apply: Check | None = None) -> None:
        with self._lock:
            self._health = Health(registry or self._health.registry, apply or self._health.apply)

    def registry_read(self, index: int) -> None:
        if self._registry_lost:
            self.reconnects.inc()
        self._registry_lost = False
        self.reachable.set(1)
        detail = f"read at registry index {index}"
        self._set(registry=update(self.health().registry, True, detail, self.clock()))

    def registry_failed(self, error: str) -> None:
        self._registry_lost = True
        self.reachable.set(0)
        self._set(registry=update(self.health().registry, False, error, self.clock()))

    def applied(self, outcome: Outcome, seconds: float) -> None:
        table = outcome.rendered.table
        self.applies.labels("changed" if outcome.changed else "unchanged").inc()
        if outcome.reloaded:
            self.reloads.inc()
        self.duration.observe(seconds)
        self.routes.set(len(table.routes))
        self.deployments.set(len({route.deployment for route in table.routes}))
        self.problems.set(len(table.problems))
        now = self.clock()
        self.last_success.set(now)
        detail = f"snapshot {outcome.rendered.snapshot_id}: {outcome.message}"
        self._set(apply=update(self.health().apply, True, detail, now))

    def apply_failed(self, error: str, seconds: float) -> None:
        self.applies.labels("failed").inc()
        self.duration.observe(seconds)
        self._set(apply=update(self.health().apply, False, error, self.clock()))


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "devtest-router"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = prometheus_client.generate_latest(self.server.status.metrics)
            self._answer(200, prometheus_client.CONTENT_TYPE_LATEST, body)
        elif path == "/healthz":
            code, report = health_report(self.server.status.health())
            self._answer(code, "application/json", json.dumps(report).encode() + b"\n")
        else:
            self._answer(404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n")

    def _answer(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not an event worth a log line


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], status: Status) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.status = status
        super().__init__(address, _Handler)


class Server:
    """/healthz and /metrics on `address`, served by a daemon thread until close()."""

    def __init__(self, address: tuple[str, int], status: Status) -> None:
        host, port = address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server = _HTTPServer(address, status)
        except OSError as error:
            raise UsageError(
                f"metrics_listen {shown}: cannot listen ({error.strerror or error}); pick a "
                "free port (is another watcher using this one?) or leave metrics_listen unset"
            ) from None
        self.shown = shown
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
