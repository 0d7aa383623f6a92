"""The watcher end to end: a real etcd (v2 and v3 APIs), a real nginx, real backends, and
`devtest-router watch` and `register` as the processes a user runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    Backend,
    Etcd,
    Nginx,
    free_ports,
    pause,
    pid_alive,
    start_cluster,
    wait_for,
)
from watch_harness import BIN, DOMAIN, KINDS, Frontend, registry_url

from generator.core.names import label
from generator.registry.base import Entry
from generator.registry.open import open_registry


def entry(deployment: str, service: str, backend: Backend) -> Entry:
    return Entry(deployment, service, "127.0.0.1", backend.port, "2026-11-28T10:00:00Z")


def register_process(
    url: str, name: str, service: str, backend: Backend, ttl: int
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.update(
        REGISTRY_URL=url,
        NAME=name,
        SERVICE=service,
        PORT=str(backend.port),
        IP="127.0.0.1",
        DEVTEST_ROUTER_TTL=str(ttl),
    )
    return subprocess.Popen(
        [str(BIN), "register"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.mark.integration
@KINDS
def test_registered_service_routes_and_leaves_on_sigterm_and_on_sigkill(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("feature-login-web")["feature-login-web"]
    url = registry_url(kind, etcd)
    router = frontend(url)
    registrant = register_process(url, "feature/Login", "web", web, ttl=2)
    router.wait_route(f"feature-login-web.{DOMAIN}", "feature-login-web")
    router.wait_route(f"feature-login.{DOMAIN}", "feature-login-web")  # the default entry point

    registrant.send_signal(signal.SIGTERM)
    assert registrant.wait(10) == 0
    router.wait_route(f"feature-login-web.{DOMAIN}", None, timeout=5)

    registrant = register_process(url, "feature/Login", "web", web, ttl=2)
    router.wait_route(f"feature-login-web.{DOMAIN}", "feature-login-web")
    registrant.kill()  # no chance to deregister: the TTL takes the route away
    registrant.wait()
    router.wait_route(f"feature-login-web.{DOMAIN}", None, timeout=2 + 1 + 3)


@pytest.mark.integration
@KINDS
def test_a_burst_of_200_registrations_causes_few_reloads_and_all_routes_answer(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    url = registry_url(kind, etcd)
    # A burst ends when the registry has been quiet for the quiet period, or at max-wait. The
    # defaults (0.05 s, 2 s) make the count depend on how fast this machine registers: under
    # load the 200 registrations took 12 s and made 6 applies. Debouncing is what is tested,
    # so the burst is given room: a stall of the registering client under 1 s ends nothing.
    router = frontend(url, "--quiet-period", "1", "--max-wait", "60")
    wait_for(lambda: "registry index" in router.log.read_text(), 60, what="first apply")
    before = router.reloads()
    registry = open_registry(url)
    try:
        for number in range(200):
            registry.register(entry(f"branch-{number}", "web", web), ttl=120)
    finally:
        registry.close()
    for number in (0, 99, 199):
        router.wait_route(f"branch-{number}-web.{DOMAIN}", "web")
    hosts = [f"branch-{n}{service}.{DOMAIN}" for n in range(200) for service in ("", "-web")]
    # Right after a reload, old workers may take a connection or two until they have quit.
    wait_for(
        lambda: all(router.answers(host) == "web" for host in hosts),
        60,
        what=f"all 400 hosts to answer; watcher log:\n{router.log_tail()}",
    )
    assert router.reloads() - before <= 5, router.log_tail()


@pytest.mark.integration
@KINDS
def test_ttl_refreshes_cause_no_reload(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    url = registry_url(kind, etcd)
    registry = open_registry(url)
    registered = entry("keep", "web", web)
    registry.register(registered, ttl=30)
    router = frontend(url)
    router.wait_route(f"keep-web.{DOMAIN}", "web")
    wait_for(lambda: router.reloads() >= 1, 60, what="the first reload")
    settled = router.reloads()
    try:
        for _ in range(360):  # an hour of refreshes every 10 s (TTL 30 s), run fast
            registry.keepalive(registered, ttl=30)
    finally:
        registry.close()
    assert router.reloads() == settled, router.log_tail()
    # A sidecar with a 1 s TTL: its first write wakes the watcher (which finds nothing to do),
    # then it refreshes every 0.33 s without waking anyone.
    quiet_applies = router.log.read_text().count("nothing to do")
    sidecar = register_process(url, "keep", "web", web, ttl=1)
    try:
        wait_for(
            lambda: router.log.read_text().count("nothing to do") > quiet_applies,
            60,
            what="the watcher to see the sidecar's first write",
        )
        time.sleep(3)  # about nine refreshes
        assert sidecar.poll() is None
        assert router.answers(f"keep-web.{DOMAIN}") == "web"
        assert router.reloads() == settled, router.log_tail()
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(10)


@pytest.mark.integration
@KINDS
def test_watcher_survives_etcd_down_at_start_and_a_restart(
    kind: str,
    tmp_path: Path,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    client, peer = free_ports(2)
    member = Etcd(tmp_path / "etcd", client_port=client, peer_port=peer)
    url = registry_url(kind, member)
    router = frontend(url)  # etcd is not there yet
    wait_for(lambda: "retrying" in router.log.read_text(), 60, what="one unreachable line")
    try:
        member.start()
        registry = open_registry(url)
        registry.register(entry("first", "web", web), ttl=60)
        router.wait_route(f"first-web.{DOMAIN}", "web")
        assert router.log.read_text().count("retrying") == 1, "one line per state change"

        member.stop()
        wait_for(
            lambda: router.log.read_text().count("retrying") == 2,
            60,
            what="the watcher to notice etcd went away",
        )
        assert router.answers(f"first-web.{DOMAIN}") == "web", router.log_tail()
        member.restart()
        registry.register(entry("second", "web", web), ttl=60)
        router.wait_route(f"second-web.{DOMAIN}", "web")
        assert router.answers(f"first-web.{DOMAIN}") == "web"
        assert "readable again" in router.log.read_text()
        registry.close()
    finally:
        member.stop()


@pytest.mark.integration
@KINDS
def test_more_than_1000_writes_while_the_watcher_is_paused(
    kind: str,
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    url = registry_url(kind, etcd)
    router = frontend(url)
    registry = open_registry(url)
    try:
        registry.register(entry("before", "web", web), ttl=120)
        router.wait_route(f"before-web.{DOMAIN}", "web")
        assert router.process is not None
        pause(router.process)  # stopped before the churn starts, every thread of it
        churn = entry("churn", "web", web)
        for _ in range(550):  # 1,100 events: v2 keeps only the last 1,000
            registry.register(churn, ttl=120)
            registry.deregister(churn)
        registry.register(entry("after", "web", web), ttl=120)
        router.process.send_signal(signal.SIGCONT)
        router.wait_route(f"after-web.{DOMAIN}", "web")
        assert router.answers(f"before-web.{DOMAIN}") == "web"
        assert router.answers(f"churn-web.{DOMAIN}") is None
    finally:
        registry.close()


@pytest.mark.integration
@KINDS
def test_watcher_fails_over_when_its_etcd_member_dies(
    kind: str,
    tmp_path: Path,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    members = start_cluster(tmp_path / "cluster", n=3)
    try:
        router = frontend(registry_url(kind, *members))
        first = open_registry(registry_url(kind, members[0]))
        first.register(entry("one", "web", web), ttl=120)
        first.close()
        router.wait_route(f"one-web.{DOMAIN}", "web")
        members[0].kill()  # the member listed first, which the watcher talks to
        others = open_registry(registry_url(kind, *members[1:]))
        others.register(entry("two", "web", web), ttl=120)
        others.close()
        router.wait_route(f"two-web.{DOMAIN}", "web")
    finally:
        for member in members:
            member.stop()


@pytest.mark.integration
def test_the_original_curl_registration_routes_like_register(
    etcd: Etcd,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    router = frontend(etcd.url)  # REGISTRY_URL as the original setup has it: http:// is v2
    base = f"{etcd.url}/v2/keys/deployment"
    for key, value in (
        ("curl/service/web/ip", "127.0.0.1"),
        ("curl/service/web/port", str(web.port)),
        ("curl/created", "2026-11-28T10:00:00Z"),
    ):
        subprocess.run(
            ["curl", "-sf", f"{base}/{key}", "-XPUT", "-d", f"value={value}"],
            check=True,
            capture_output=True,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.update(
        REGISTRY_URL=etcd.url, NAME="tool", SERVICE="web", PORT=str(web.port), IP="127.0.0.1"
    )
    subprocess.run([str(BIN), "register", "--once"], env=env, check=True, capture_output=True)
    router.wait_route(f"curl-web.{DOMAIN}", "web")
    router.wait_route(f"tool-web.{DOMAIN}", "web")
    snapshot = subprocess.run(
        [str(BIN), "snapshot", "--registry", etcd.url],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    deployments = json.loads(snapshot)["deployment"]
    address = {"ip": "127.0.0.1", "port": str(web.port)}
    assert deployments["curl"]["service"] == {"web": address}  # the service's own keys
    # register writes one instance of the service, under an id of its own
    assert list(deployments["tool"]["service"]["web"]["instance"].values()) == [address]


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["snapshot", "--registry", "etcd://127.0.0.1:{dead}"], 4, "127.0.0.1:{dead}"),
        (["snapshot", "--registry", "etcd3://127.0.0.1:{dead}"], 4, "127.0.0.1:{dead}"),
        (["snapshot", "--registry", "bogus://x"], 2, "unknown scheme"),
        # no default registry (a file that is not there, retried forever): refused at once
        (["snapshot"], 2, "no registry set: give --registry or REGISTRY_URL"),
        (["watch", "--domain", "dev.test"], 2, "no registry set: give --registry or REGISTRY_URL"),
        (["watch", "--dry-run"], 2, "no registry set: give --registry or REGISTRY_URL"),
        (["snapshot", "--registry", "file:{missing}"], 4, "no such file (check --registry"),
        (["watch", "--domain", "dev.test", "--registry", "etcd://nohostport"], 2, "HOST:PORT"),
    ],
)
def test_registry_misconfiguration_is_one_line(
    argv: list[str], code: int, says: str, tmp_path: Path
) -> None:
    [dead] = free_ports(1)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DEVTEST_ROUTER_") and k != "REGISTRY_URL"
    }
    missing = tmp_path / "missing.json"
    done = subprocess.run(
        [str(BIN), *(a.format(dead=dead, missing=missing) for a in argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("devtest-router:"), done.stderr
    assert says.format(dead=dead, missing=missing) in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_watch_stops_cleanly_on_sigterm_and_sigint(
    etcd: Etcd, frontend: Callable[..., Frontend]
) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        router = frontend(registry_url("etcd2", etcd))
        seen = router.log.read_text().count("registry index") if router.log.exists() else 0
        wait_for(
            lambda r=router, n=seen: r.log.read_text().count("registry index") > n,
            60,
            what="running",
        )
        assert router.process is not None
        router.process.send_signal(sig)
        assert router.process.wait(5) == 0
        assert not pid_alive(router.process.pid)
        assert "stopped" in router.log.read_text()


@pytest.mark.integration
def test_watch_a_registry_file(
    tmp_path: Path, frontend: Callable[..., Frontend], backends: Callable[..., dict[str, Backend]]
) -> None:
    found = backends("web", "api")
    registry = tmp_path / "registry.yaml"

    def write(services: dict[str, Backend]) -> None:
        lines = ["deployment:", "  local:", "    service:"]
        for name, backend in services.items():
            lines += [f"      {name}: {{ip: 127.0.0.1, port: '{backend.port}'}}"]
        registry.write_text("\n".join(lines) + "\n")

    write({"web": found["web"]})
    router = frontend(f"file:{registry}")
    router.wait_route(f"local-web.{DOMAIN}", "web")
    write(found)
    router.wait_route(f"local-api.{DOMAIN}", "api")
    write({"api": found["api"]})
    router.wait_route(f"local-web.{DOMAIN}", None)
    router.wait_route(f"local.{DOMAIN}", "api")  # the only service is the default


@pytest.mark.integration
def test_wait_returns_once_the_route_answers_and_gives_up_when_it_does_not(
    etcd: Etcd, frontend: Callable[..., Frontend], backends: Callable[..., dict[str, Backend]]
) -> None:
    web = backends("web")["web"]
    router = frontend(registry_url("etcd2", etcd))
    wait_for(lambda: "registry index" in router.log.read_text(), 60, what="the first apply")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    waiting = [
        str(BIN),
        "wait",
        "--name",
        "Feature/Wait",
        "--service",
        "web",
        "--domain",
        DOMAIN,
        "--frontend",
        f"http://127.0.0.1:{router.nginx.port}",
    ]

    gave_up = subprocess.run(
        [*waiting, "--timeout", "1"], env=env, capture_output=True, text=True, timeout=30
    )
    assert gave_up.returncode == 1, gave_up.stderr
    assert "does not route feature-wait-web.dev.test yet" in gave_up.stderr
    assert gave_up.stderr.strip().splitlines()[-1].startswith("devtest-router: gave up")

    waiter = subprocess.Popen(
        [*waiting, "--timeout", "30"], env=env, stderr=subprocess.PIPE, text=True
    )
    registry = open_registry(registry_url("etcd2", etcd))
    registry.register(entry(label("Feature/Wait"), "web", web), ttl=60)
    registry.close()
    _, said = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, said
    assert "feature-wait-web.dev.test answers (200)" in said


@pytest.mark.integration
def test_a_v3_watcher_over_v2_data_keeps_the_routes_and_says_the_prefix_is_absent(
    tmp_path: Path,
    nginx: Nginx,
    etcd: Etcd,
    backends: Callable[..., dict[str, Backend]],
) -> None:
    """An absent /deployment is a registry error, not "no services" (a wrong API version)."""
    web = backends("web")["web"]
    registry = open_registry(registry_url("etcd2", etcd))
    for number in range(3):
        registry.register(entry(f"v2-{number}", "web", web), ttl=120)
    registry.close()
    first = Frontend(nginx, registry_url("etcd2", etcd), tmp_path / "v2", allow_empty=False)
    (tmp_path / "v2").mkdir()
    first.start()
    try:
        first.wait_route(f"v2-0-web.{DOMAIN}", "web")
    finally:
        first.stop()
    wrong = Frontend(nginx, registry_url("etcd3", etcd), tmp_path / "v3", allow_empty=False)
    (tmp_path / "v3").mkdir()
    wrong.start()
    try:
        wait_for(
            lambda: "/deployment is absent" in wrong.log.read_text(),
            60,
            what="the absent prefix said",
        )
        time.sleep(1.5)  # a few retries: still one line, and nothing applied
        text = wrong.log.read_text()
        assert text.count("/deployment is absent") == 1, text
        assert "--allow-empty" in text
        assert "applied" not in text and "internal error" not in text, text
        for number in range(3):
            assert wrong.answers(f"v2-{number}-web.{DOMAIN}") == "web"
    finally:
        wrong.stop()


@pytest.mark.integration
def test_removals_in_steps_are_refused_once_they_pass_half_of_the_window(
    frontend: Callable[..., Frontend],
    etcd: Etcd,
    backends: Callable[..., dict[str, Backend]],
) -> None:
    """The finding: one deployment deleted every 0.3 s took all 90 routes in applies of a few
    routes each. With the window (60 s by default), at most half of them go."""
    web = backends("web")["web"]
    url = registry_url("etcd2", etcd)
    registry = open_registry(url)
    entries = [entry(f"step-{number}", "web", web) for number in range(45)]  # 2 routes each
    for each in entries:
        registry.register(each, ttl=300)
    router = frontend(url)
    router.wait_route(f"step-44-web.{DOMAIN}", "web", timeout=60)
    for each in entries:
        registry.deregister(each)
        time.sleep(0.3)  # a step at a time, each its own apply
    registry.close()
    wait_for(
        lambda: "refusing to remove" in router.log.read_text(),
        60,
        what=f"the window's refusal\n{router.log_tail()}",
    )
    wait_for(lambda: len(router.nginx.worker_pids()) == 1, 60, what="old workers to quit")
    routed = [n for n in range(45) if router.answers(f"step-{n}-web.{DOMAIN}") == "web"]
    assert len(routed) >= 23, (routed, router.log_tail())
    assert "removal_window" in router.log.read_text()


@pytest.mark.integration
def test_what_the_removal_grace_still_misses_at_its_end_meets_the_safety_threshold(
    tmp_path: Path,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    """After an outage, registrations that did not come back within the grace go in one apply
    at its end: more than half of the routes is refused like any mass removal (decided: their
    clients may only have lost the registry, and their containers still serve)."""
    web = backends("web")["web"]
    registry = tmp_path / "registry.json"

    def write(names: list[str]) -> None:
        service = {"web": {"ip": "127.0.0.1", "port": str(web.port)}}
        deployments = {
            name: {"created": "2026-11-28T10:00:00Z", "service": service} for name in names
        }
        staged = registry.with_suffix(".staged")
        staged.write_text(json.dumps({"deployment": deployments}))
        staged.replace(registry)

    names = [f"held-{number}" for number in range(12)]  # 24 routes
    write(names)
    router = frontend(f"file:{registry}", "--removal-grace", "2")
    router.wait_route(f"held-11-web.{DOMAIN}", "web")
    registry.unlink()  # the registry is away
    wait_for(lambda: "no such file" in router.log.read_text(), 60, what="the outage noticed")
    write(names[:2])  # back with 2 of the 12: 20 routes to remove
    wait_for(
        lambda: "refusing to remove 20 of 24 routes" in router.log.read_text(),
        30,
        what=f"the threshold at the grace's end\n{router.log_tail()}",
    )
    text = router.log.read_text()
    assert text.index("holding back removals for 2 s") < text.index("removal grace over")
    assert text.index("removal grace over") < text.index("refusing to remove")
    for name in names:
        assert router.answers(f"{name}-web.{DOMAIN}") == "web", router.log_tail()
