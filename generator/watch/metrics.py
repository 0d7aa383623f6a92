"""The edge of observability: Prometheus metrics in a CollectorRegistry of our own and the
small HTTP server that serves them (/metrics) and the health conditions (/healthz).

Imported only by a watcher with metrics_listen set: other commands never pay for
prometheus_client and http.server.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import generator
from generator.core.errors import UsageError
from generator.watch.observe import (
    Condition,
    Health,
    InstanceCount,
    Outcome,
    health_report,
    starting,
    update,
)

PREFIX = "devtest_router_"
RESULTS = ("changed", "unchanged", "failed")
# Applies take milliseconds for a few routes and seconds for 100,000 (docs/performance.md).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Status:
    """The Observer behind /metrics and /healthz. Thread-safe: the watcher writes, the HTTP
    server's threads read.

    Under --dry-run (`dry_run`) every apply is a dry run: it counts in dry_runs_total, never in
    applies_total, apply_duration_seconds or the last successful apply's time, which stay
    about the config in place. The gauges (routes, problems, ...) and the apply condition of
    /healthz follow the dry runs: what the last one found.
    """

    def __init__(self, clock: Callable[[], float] = time.time, dry_run: bool = False) -> None:
        self.clock = clock
        self.dry_run = dry_run
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
        # A counter of its own, not a label of applies_total: a sum over applies_total's
        # labels stays the applies made, and no alert on failed applies counts dry runs.
        self.dry_runs = Counter(
            PREFIX + "dry_runs",
            "Dry runs (watch --dry-run) by result: changed (the config in place would change), "
            "unchanged, failed (the gate or the safety threshold would refuse)",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.applies.labels(result)
            self.dry_runs.labels(result)
        self.build_info = Gauge(
            PREFIX + "build_info",
            "Always 1; its label is the version of devtest-router that serves it",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(generator.__version__).set(1)
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
        self.instances = Gauge(
            PREFIX + "instances",
            "Instances (containers) the config last applied routes to, each once: a default "
            "entry point reaches its service's instances, which are not counted again",
            registry=registry,
        )
        self._count_instances = InstanceCount()
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
        # With the last success, the alert "no successful apply for 15 minutes" counts from
        # the start when there was none yet (deploy/observability/alerts.yml).
        self.start_time = Gauge(
            PREFIX + "start_time_seconds",
            "Unix time the watcher started",
            registry=registry,
        )
        self.start_time.set(clock())
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

    def _set(self, registry: Condition | None = None, apply: Condition | None = None) -> None:
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
        now = self.clock()
        result = "changed" if outcome.changed else "unchanged"
        if self.dry_run:
            self.dry_runs.labels(result).inc()
        else:
            self.applies.labels(result).inc()
            self.duration.observe(seconds)
            self.last_success.set(now)
        if outcome.reloaded:
            self.reloads.inc()
        self.routes.set(len(table.routes))
        self.deployments.set(len({route.deployment for route in table.routes}))
        self.instances.set(self._count_instances(table, outcome.rendered.deployments))
        self.problems.set(len(table.problems))
        detail = f"snapshot {outcome.rendered.snapshot_id}: {outcome.message}"
        self._set(apply=update(self.health().apply, True, detail, now))

    def apply_failed(self, error: str, seconds: float) -> None:
        if self.dry_run:
            self.dry_runs.labels("failed").inc()
        else:
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

    def server_bind(self) -> None:
        # HTTPServer's own asks getfqdn() for a name (a DNS query) that nothing here uses
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def exposure(host: str) -> str | None:
    """A warning when /metrics and /healthz would be served beyond this machine."""
    if ipaddress.ip_address(host).is_loopback:
        return None
    return f"{host} is not a loopback address: whoever reaches it can read /metrics and /healthz"


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
