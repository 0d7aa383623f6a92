"""A branch's URL across its deployment's life (issue 9), end to end: a real etcd (v2 and v3), a
real nginx, `devtest-router watch`, and service containers run as `register -- CMD` with a real
HTTP server as CMD, while a client asks the branch's URL every 20 ms and counts every failure.

- a rolling redeploy (the new container registers, then the old one is stopped), five in a row;
- two replicas of one service, then one of them killed with SIGKILL, whole process tree;
- etcd stopped for longer than the registrations' TTL, then started again;
- the seed's plain curl PUTs, beside an instance that `register` wrote.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest
from harness import (
    Backend,
    Etcd,
    child_pids,
    find_binary,
    free_port,
    http_request,
    pid_alive,
    wait_for,
)
from watch_harness import BIN, DOMAIN, KINDS, Frontend, registry_url

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("instance_app.py")
ASK_EVERY = 0.02  # seconds between the client's requests


def _now() -> str:
    """Wall-clock time to the millisecond, to set a failure beside the nginx and watcher logs."""
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


class Client:
    """Asks `host` through nginx every 20 ms, each time on a new connection (as a browser's
    first request or an integration test does), and keeps every answer and every failure."""

    def __init__(self, port: int, host: str) -> None:
        self.port, self.host = port, host
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = http_request(self.port, self.host, timeout=10)
                if response.status == 200:
                    self.answers[str(response.json()["name"])] += 1
                else:
                    self.failures.append(f"{_now()}: HTTP {response.status}")
            except (OSError, http.client.HTTPException) as error:  # a cut-off body included
                self.failures.append(f"{_now()}: {error!r}")
            self._stop.wait(max(0.0, ASK_EVERY - (time.monotonic() - started)))

    @property
    def asked(self) -> int:
        return sum(self.answers.values()) + len(self.failures)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(15)


class Container:
    """One service container: `devtest-router register ... -- python instance_app.py NAME PORT`,
    in a session of its own, as a container runtime starts it."""

    def __init__(
        self, url: str, folder: Path, branch: str, service: str, instance: str, ttl: int
    ) -> None:
        self.name = instance
        self.port = free_port()
        self.log = folder / f"register-{instance}.log"
        self.events: list[str] = []  # signals the test sent, with their times
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
        for variable in ("REGISTRY_URL", "NAME", "SERVICE", "PORT", "IP", "INSTANCE"):
            env.pop(variable, None)
        argv = [
            str(BIN), "register", "--registry", url, "--name", branch, "--service", service,
            "--ip", "127.0.0.1", "--port", str(self.port), "--ttl", str(ttl),
            "--instance", instance,
            "--", sys.executable, str(APP), instance, str(self.port),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=log, env=env, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_registered(self, timeout: float = 60.0) -> None:
        wait_for(lambda: "registered" in self.text(), timeout, what=f"{self.name}:\n{self.text()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as ECS stops the old task once the new one is healthy; its exit status."""
        self.events.append(f"{_now()}: SIGTERM")
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL to the whole process tree, as a runtime kills a container: no deregistering."""
        tree = child_pids(self.process.pid) | {self.process.pid}
        self.events.append(f"{_now()}: SIGKILL")
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        wait_for(lambda: not any(pid_alive(pid) for pid in tree), 60, what="the tree to die")

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.kill()


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(url: str, branch: str, service: str, instance: str, ttl: int = 30) -> Container:
        container = Container(url, tmp_path, branch, service, instance, ttl)
        started.append(container)
        return container

    try:
        yield start
    finally:
        for container in started:
            container.cleanup()


def _report(client: Client, router: Frontend, *containers: Container) -> str:
    logs = "\n".join(f"--- {c.name} {c.events}:\n{c.text()[-1500:]}" for c in containers)
    try:
        nginx_lines = router.nginx.error_log.read_text(errors="replace").splitlines()
    except OSError:
        nginx_lines = []
    nginx_errors = "\n".join(line for line in nginx_lines if "[notice]" not in line)
    return (
        f"{len(client.failures)} of {client.asked} requests failed: {client.failures[:10]}\n"
        f"answers: {dict(client.answers)}\nwatcher log:\n{router.log_tail()}\n{logs}\n"
        f"--- nginx errors and warnings:\n{nginx_errors[-3000:]}"
    )


@KINDS
def test_five_rolling_redeploys_in_a_row_fail_no_request(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    containers: Callable[..., Container],
) -> None:
    url = registry_url(kind, etcd)
    router = frontend(url)
    host = f"roll.{DOMAIN}"  # the branch's URL: its default entry point, service web
    old = containers(url, "roll", "web", "task-0")
    router.wait_route(host, "task-0")
    seen = [old]
    with Client(router.nginx.port, host) as client:
        for number in range(1, 6):
            new = containers(url, "roll", "web", f"task-{number}")
            seen.append(new)
            new.wait_registered()  # the platform's health check passed: stop the old task
            assert old.stop() == 0, _report(client, router, old, new)
            old = new
        # The last one serves alone once the watcher has applied its removal of the others.
        wait_for(
            lambda: (
                router.answers(host) == "task-5"
                and all(router.answers(host) == "task-5" for _ in range(5))
            ),
            30,
            what=_report(client, router, *seen),
        )
    assert client.failures == [], _report(client, router, *seen)
    assert client.answers["task-5"] > 0, _report(client, router, *seen)


@KINDS
def test_two_replicas_both_serve_and_one_killed_fails_no_request(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    containers: Callable[..., Container],
) -> None:
    url = registry_url(kind, etcd)
    router = frontend(url)
    host = f"pair-web.{DOMAIN}"
    ttl = 8  # keepalives every 2.7 s: a loaded machine must not let the live replica expire
    first = containers(url, "pair", "web", "replica-a", ttl=ttl)
    second = containers(url, "pair", "web", "replica-b", ttl=ttl)
    wait_for(
        lambda: {router.answers(host) for _ in range(8)} == {"replica-a", "replica-b"},
        30,
        what=f"both replicas to answer; watcher log:\n{router.log_tail()}",
    )
    # Until the reload that added replica-b is over, the worker of the config before it (only
    # replica-a, one address: nothing to retry at) still takes a connection now and then: a
    # kill then would fail that request, as a crash 100 ms after a change would in production.
    router.wait_old_workers_gone()
    with Client(router.nginx.port, host) as client:
        wait_for(lambda: len(client.answers) == 2, 60, what="the client to reach both")
        first.kill()
        killed_at = client.asked
        # Past the TTL (the dead replica's keys expire and the watcher drops it), and at least
        # 50 requests after the kill, however slowly a loaded machine answers them.
        expired = time.monotonic() + ttl + 3
        wait_for(
            lambda: time.monotonic() >= expired and client.asked - killed_at >= 50,
            120,
            what=_report(client, router, first, second),
        )
        wait_for(
            lambda: all(router.answers(host) == "replica-b" for _ in range(5)),
            60,
            what=_report(client, router, first, second),
        )
    assert client.failures == [], _report(client, router, first, second)
    assert "replica-a" not in (router.nginx.conf_dir / "devtest-router.conf").read_text()


@KINDS
def test_etcd_stopped_longer_than_the_ttl_fails_no_request(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    containers: Callable[..., Container],
) -> None:
    url = registry_url(kind, etcd)
    ttl, grace = 3, 10
    router = frontend(url, "--removal-grace", str(grace))
    host = f"outage.{DOMAIN}"
    container = containers(url, "outage", "web", "task-1", ttl=ttl)
    router.wait_route(host, "task-1")
    with Client(router.nginx.port, host) as client:
        etcd.stop()
        time.sleep(2 * ttl)  # every registration's TTL has run out meanwhile
        etcd.restart()
        # The container writes its keys again within TTL/3 of the registry's return; the
        # watcher holds back the removal of its expired keys meanwhile, then for the rest of
        # the grace period, and after it the instance is there again.
        wait_for(
            lambda: (
                container.text().count("answers again") >= 1
                or container.text().count("registered") >= 2
            ),
            30,
            what=f"the registration to be renewed:\n{container.text()}",
        )
        time.sleep(grace + 2)
        wait_for(lambda: client.asked >= 100, 120, what=_report(client, router, container))
    assert client.failures == [], _report(client, router, container)
    assert router.answers(host) == "task-1"
    assert client.answers["task-1"] >= 100, _report(client, router, container)


def test_the_seeds_curl_puts_route_beside_a_registered_instance(
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
    containers: Callable[..., Container],
) -> None:
    plain = backends("plain")["plain"]
    url = registry_url("etcd2", etcd)
    router = frontend(url)
    curl = find_binary("curl")
    keys = f"{etcd.url}/v2/keys/deployment/seed"
    for key, value in (
        ("service/web/ip", "127.0.0.1"),
        ("service/web/port", str(plain.port)),
        ("created", "2026-12-06T10:00:00Z"),
    ):  # the seed's registration lines, as written
        subprocess.run(
            [curl, "-sf", "-XPUT", f"{keys}/{key}", "-d", f"value={value}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    router.wait_route(f"seed-web.{DOMAIN}", "plain")
    router.wait_route(f"seed.{DOMAIN}", "plain")
    # A container registered by `register` joins the same service as a second instance.
    container = containers(url, "seed", "web", "task-1")
    wait_for(
        lambda: {router.answers(f"seed-web.{DOMAIN}") for _ in range(8)} == {"plain", "task-1"},
        30,
        what=f"both instances to answer; watcher log:\n{router.log_tail()}",
    )
    assert container.stop() == 0
    router.wait_route(f"seed-web.{DOMAIN}", "plain")
