"""The watcher's /healthz and /metrics, and JSON log lines, against the real etcd and nginx.

`devtest-router watch` runs as the process a user runs (test_watch.Frontend), with
--metrics-listen on a free loopback port; /metrics is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import etcd as python_etcd
import prometheus_client
import pytest
from harness import Backend, Etcd, Nginx, find_binary, free_port, free_ports, http_request, wait_for
from prometheus_client.parser import text_string_to_metric_families
from site_harness import deployment, table
from test_watch import entry
from watch_harness import BIN, DOMAIN, Frontend, registry_url

import generator
from generator.cli.main import main
from generator.core.config import listen_address, resolve
from generator.core.model import Deployment, Route, RoutingTable
from generator.core.pipeline import Rendered
from generator.core.render import by_deployment
from generator.registry.open import open_registry
from generator.resources import schema
from generator.streams import LEVELS, format_line
from generator.watch.metrics import Status, exposure
from generator.watch.observe import (
    Condition,
    Health,
    InstanceCount,
    Outcome,
    health_report,
    routed_instances,
    starting,
    update,
)

APPLIED = re.compile(r"\(registry index \d+\)$")  # the last words of a successful apply's line


# --------------------------------------------------------------------------
# helpers


def metrics(port: int) -> dict[str, float]:
    """Every sample of /metrics: {'name{label="value"}': value}, parsed by prometheus_client."""
    response = http_request(port, f"127.0.0.1:{port}", "/metrics")
    assert response.status == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def settle(port: int, expected: dict[str, float], log: Callable[[], str]) -> dict[str, float]:
    """Wait until the samples named in `expected` hold those values together (one apply sets
    them), and return all samples; on a timeout, say what they were instead."""
    last: dict[str, float] = {}

    def holds() -> bool:
        nonlocal last
        last = metrics(port)
        return all(last.get(name) == value for name, value in expected.items())

    try:
        wait_for(holds, 60, what="the metrics")
    except AssertionError:
        seen = {name: last.get(name) for name in expected}
        raise AssertionError(f"metrics {seen}, expected {expected}; log:\n{log()}") from None
    return last


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        response = http_request(port, f"127.0.0.1:{port}", "/healthz")
    except ConnectionRefusedError:
        return 0, {}
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return response.status, body


def applies(samples: dict[str, float], result: str) -> float:
    return samples[f'devtest_router_applies_total{{result="{result}"}}']


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.pop("REGISTRY_URL", None)
    return env


def write_v2(member: Etcd, key: str, value: str) -> None:
    """A raw etcd v2 write, as a half-finished registration leaves it."""
    client = python_etcd.Client(host="127.0.0.1", port=member.client_port)
    client.write(key, value)


def expected_table(url: str) -> dict[str, Any]:
    """What `check --json` says of the registry now: the routes and problems to expect."""
    env = clean_env()
    snapshot = subprocess.run(
        [str(BIN), "snapshot", "--registry", url], env=env, check=True, capture_output=True
    ).stdout
    checked = subprocess.run(
        [str(BIN), "check", "--json", "--domain", DOMAIN, "--allow-loopback"],
        input=snapshot,
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    table: dict[str, Any] = json.loads(checked)
    return table


# --------------------------------------------------------------------------
# /healthz and /metrics


@pytest.mark.integration
def test_metrics_count_applies_reloads_routes_deployments_instances_and_problems(
    etcd: Etcd, frontend: Callable[..., Frontend], backends: Callable[..., dict[str, Backend]]
) -> None:
    found = backends("web", "api")
    port = free_port()
    url = registry_url("etcd2", etcd)
    router = frontend(url, "--metrics-listen", str(port))  # a bare port: 127.0.0.1
    wait_for(lambda: health(port)[0] == 200, 60, what=f"/healthz 200; log:\n{router.log_tail()}")

    registry = open_registry(url)
    try:
        registry.register(entry("alpha", "web", found["web"]), ttl=120)
        registry.register(entry("alpha", "api", found["api"]), ttl=120)
        registry.register(entry("beta", "web", found["web"]), ttl=120)
    finally:
        registry.close()
    write_v2(etcd, "/deployment/broken/service/web/ip", "127.0.0.1")  # no port: problems
    expected = expected_table(url)
    assert len(expected["routes"]) == 5  # alpha, alpha-web, alpha-api, beta, beta-web
    assert expected["problems"]

    def settled() -> bool:
        samples = metrics(port)
        return (
            samples["devtest_router_routes"] == len(expected["routes"])
            and samples["devtest_router_problems"] == len(expected["problems"])
            and samples["devtest_router_nginx_reloads_total"] == router.reloads()
        )

    wait_for(settled, 60, what=f"metrics of the last apply; log:\n{router.log_tail()}")
    # alpha's web, alpha's api and beta's web: the default entry points alpha.<domain> and
    # beta.<domain> reach the web instances already counted
    settle(port, {"devtest_router_routes": 5, "devtest_router_instances": 3}, router.log_tail)
    router.wait_route(f"alpha-api.{DOMAIN}", "api")
    samples = metrics(port)

    def succeeded() -> int:  # the log line follows the metrics by a moment
        lines = router.log.read_text().splitlines()
        return sum(1 for line in lines if APPLIED.search(line))

    total = applies(samples, "changed") + applies(samples, "unchanged")
    wait_for(lambda: succeeded() == total, 60, what=f"{total} apply lines")
    assert applies(samples, "failed") == 0
    assert applies(samples, "changed") == samples["devtest_router_nginx_reloads_total"]
    assert samples["devtest_router_nginx_reloads_total"] == router.reloads() >= 2
    assert samples["devtest_router_apply_duration_seconds_count"] == total
    assert samples["devtest_router_deployments"] == 2
    assert samples["devtest_router_registry_reachable"] == 1
    assert samples["devtest_router_registry_reconnects_total"] == 0
    last = samples["devtest_router_last_successful_apply_timestamp_seconds"]
    assert abs(last - datetime.now().timestamp()) < 3600  # a unix time, not a duration

    code, body = health(port)
    assert code == 200 and body["status"] == "ok" and body["failing"] == [], body
    assert body["checks"]["registry"]["ok"] and body["checks"]["apply"]["ok"]
    assert http_request(port, f"127.0.0.1:{port}", "/other").status == 404

    # beta goes, gamma comes with two services: each apply's count is exact
    registry = open_registry(url)
    try:
        registry.deregister(entry("beta", "web", found["web"]))
        gone = {"routes": 3, "deployments": 1, "instances": 2}
        settle(port, {f"devtest_router_{k}": v for k, v in gone.items()}, router.log_tail)
        registry.register(entry("gamma", "web", found["web"]), ttl=120)
        registry.register(entry("gamma", "api", found["api"]), ttl=120)
        came = {"routes": 6, "deployments": 2, "instances": 4}
        settle(port, {f"devtest_router_{k}": v for k, v in came.items()}, router.log_tail)
        router.wait_route(f"gamma-api.{DOMAIN}", "api")
    finally:
        registry.close()

    assert router.process is not None
    router.process.send_signal(signal.SIGTERM)  # the server thread does not hold the exit
    assert router.process.wait(10) == 0
    with pytest.raises(ConnectionRefusedError):
        http_request(port, f"127.0.0.1:{port}", "/healthz")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["etcd2", "etcd3"])
def test_healthz_names_the_registry_while_etcd_is_down_and_reconnects_are_counted(
    kind: str,
    tmp_path: Path,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    web = backends("web")["web"]
    client, peer = free_ports(2)
    member = Etcd(tmp_path / "etcd", client_port=client, peer_port=peer)
    url = registry_url(kind, member)
    port = free_port()
    try:
        member.start()
        router = frontend(url, "--metrics-listen", f"127.0.0.1:{port}")
        wait_for(lambda: health(port)[0] == 200, 60, what=f"200; log:\n{router.log_tail()}")

        member.stop()
        wait_for(lambda: health(port)[0] == 503, 60, what=f"503; log:\n{router.log_tail()}")
        code, body = health(port)
        assert code == 503 and body["failing"] == ["registry"], body
        assert body["status"] == "failing"
        registry_condition = body["checks"]["registry"]
        assert not registry_condition["ok"]
        assert f"127.0.0.1:{client}" in registry_condition["detail"], body
        datetime.fromisoformat(registry_condition["since"])
        assert body["checks"]["apply"]["ok"], "the last apply still holds"
        down = metrics(port)
        assert down["devtest_router_registry_reachable"] == 0
        assert down["devtest_router_registry_reconnects_total"] == 0

        member.restart()
        registry = open_registry(url)
        registry.register(entry("after", "web", web), ttl=60)
        registry.close()
        router.wait_route(f"after-web.{DOMAIN}", "web")
        wait_for(lambda: health(port)[0] == 200, 60, what=f"200; log:\n{router.log_tail()}")
        up = metrics(port)
        assert up["devtest_router_registry_reachable"] == 1
        assert up["devtest_router_registry_reconnects_total"] >= 1
    finally:
        member.stop()


@pytest.mark.integration
def test_a_failing_reload_counts_as_a_failed_apply_and_fails_healthz_until_it_works(
    etcd: Etcd,
    nginx: Nginx,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
    tmp_path: Path,
) -> None:
    web = backends("web")["web"]
    port = free_port()
    url = registry_url("etcd2", etcd)
    broken = tmp_path / "reload-breaks"
    # Frontend's reload (counted in tmp_path/reloads), but it exits 1 while `broken` exists
    reload = f"test ! -e {broken} && {nginx.reload_command} && echo x >> {tmp_path / 'reloads'}"
    router = frontend(
        url, "--metrics-listen", f"127.0.0.1:{port}", "--reload-command", f"sh -c '{reload}'"
    )
    registry = open_registry(url)
    try:
        registry.register(entry("first", "web", web), ttl=120)
        router.wait_route(f"first-web.{DOMAIN}", "web")
        wait_for(lambda: health(port)[0] == 200, 60, what="200")
        before = metrics(port)
        before_reloads = router.reloads()
        assert applies(before, "failed") == 0
        assert before["devtest_router_nginx_reloads_total"] == before_reloads

        broken.touch()
        registry.register(entry("second", "web", web), ttl=120)
        wait_for(
            lambda: applies(metrics(port), "failed") >= 1,
            60,
            what=f"a failed apply; log:\n{router.log_tail()}",
        )
        code, body = health(port)
        assert code == 503 and body["failing"] == ["apply"], body
        assert "reload" in body["checks"]["apply"]["detail"], body
        failing = metrics(port)
        assert (
            failing["devtest_router_nginx_reloads_total"]
            == before["devtest_router_nginx_reloads_total"]
        )
        assert failing["devtest_router_routes"] == before["devtest_router_routes"]
        assert router.answers(f"second-web.{DOMAIN}") is None  # nothing was changed

        broken.unlink()  # the watcher retries after its backoff (at most 10 s)
        router.wait_route(f"second-web.{DOMAIN}", "web")
        wait_for(lambda: health(port)[0] == 200, what="200 again")
        after = metrics(port)
        assert after["devtest_router_nginx_reloads_total"] == router.reloads()
        assert applies(after, "changed") == router.reloads() == before_reloads + 1
        assert applies(after, "failed") == router.log.read_text().count(
            "apply failed at registry index"
        )
    finally:
        registry.close()


@pytest.mark.integration  # it listens on a port, and so does the watcher it starts, or tries to
def test_metrics_listen_refuses_host_names_and_a_port_in_use(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text('{"deployment": {}}')
    base = [
        *(str(BIN), "watch", "--domain", DOMAIN, "--registry", f"file:{registry}"),
        *("--output", str(tmp_path / "o")),
    ]
    named = subprocess.run(
        [*base, "--metrics-listen", "localhost:9180"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert named.returncode == 2, named.stderr
    [line] = named.stderr.strip().splitlines()
    assert "metrics_listen" in line and "--metrics-listen" in line, line

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [*base, "--metrics-listen", f"127.0.0.1:{port}"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert busy.returncode == 2, busy.stderr
    [line] = busy.stderr.strip().splitlines()
    assert f"metrics_listen 127.0.0.1:{port}: cannot listen" in line, line
    assert "Traceback" not in busy.stderr


# --------------------------------------------------------------------------
# JSON log lines


def parse_log(text: str) -> list[dict[str, Any]]:
    """Every line as JSON with the documented fields; fails on the first line that is not."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert record["level"] in LEVELS, line
        assert isinstance(record["message"], str) and record["message"], line
        assert record["time"].endswith("Z"), line
        datetime.fromisoformat(record["time"])
        records.append(record)
    return records


@pytest.mark.integration
def test_watch_log_lines_are_json_with_their_fields(
    tmp_path: Path, frontend: Callable[..., Frontend], backends: Callable[..., dict[str, Backend]]
) -> None:
    web = backends("web")["web"]
    client, peer = free_ports(2)
    member = Etcd(tmp_path / "etcd", client_port=client, peer_port=peer)
    url = registry_url("etcd2", member)
    router = frontend(url, "--log-format", "json")  # etcd is not there yet: an error line
    wait_for(lambda: "retrying" in router.log.read_text(), 60, what="the unreachable line")
    try:
        member.start()
        registry = open_registry(url)
        registry.register(entry("good", "web", web), ttl=60)
        registry.close()
        write_v2(member, "/deployment/broken/service/web/ip", "127.0.0.1")
        router.wait_route(f"good-web.{DOMAIN}", "web")
        wait_for(lambda: "broken" in router.log.read_text(), 60, what="the problem lines")
        assert router.process is not None
        router.process.send_signal(signal.SIGTERM)
        assert router.process.wait(10) == 0
    finally:
        member.stop()

    records = parse_log(router.log.read_text())
    unreachable = [r for r in records if "retrying" in r["message"]]
    assert unreachable and unreachable[0]["level"] == "error", unreachable
    assert any("readable again" in r["message"] for r in records)
    problems = [r for r in records if r["message"].startswith("problem: ")]
    assert problems and all(r["level"] == "warning" for r in problems)
    deployments = {r["deployment"] for r in problems}
    # `good` may be there too: v2 has no transactions, and a snapshot read between register's
    # writes of ip and port holds it half-written, a problem until the next read (seen under
    # load). `broken` stays broken.
    assert "broken" in deployments and deployments <= {"broken", "good"}, problems
    for record in problems:
        key = record["key"]
        deployment = f"/deployment/{record['deployment']}"
        assert key == deployment or key.startswith(deployment + "/"), record
        assert record["code"], record
        assert isinstance(record["registry_index"], int), record
        assert record["snapshot"].startswith("sha256:"), record
    outcomes = [r for r in records if "result" in r]
    assert outcomes, records
    for record in outcomes:
        assert record["result"] in ("changed", "unchanged"), record
        assert isinstance(record["registry_index"], int) and isinstance(record["routes"], int)
        assert record["snapshot"].startswith("sha256:"), record
    assert outcomes[-1]["routes"] == 2
    assert records[-1]["message"] == "stopped"


@pytest.mark.integration
def test_apply_register_and_errors_log_json_and_stdout_stays_as_it_is(
    etcd: Etcd, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(
        json.dumps(
            {
                "deployment": {
                    "one": {"service": {"web": {"ip": "127.0.0.1", "port": "8080"}}},
                    "half": {"service": {"web": {"ip": "127.0.0.1"}}},
                }
            }
        )
    )
    env = clean_env()
    common = ["--domain", DOMAIN, "--allow-loopback", str(snapshot)]

    dry = subprocess.run(
        [str(BIN), "apply", "--dry-run", "--log-format", "json", "--nginx", find_binary("nginx"),
         "--output", str(tmp_path / "out.conf"), *common],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert dry.returncode == 1, dry.stderr
    assert dry.stdout.startswith("--- /dev/null"), "the diff on stdout is not JSON"
    records = parse_log(dry.stderr)
    assert [r["level"] for r in records] == ["warning", "warning", "info"], records
    assert records[-1]["result"] == "changed" and records[-1]["routes"] == 2
    assert records[0]["deployment"] == "half"

    # the environment and the config file set it too; render's config on stdout stays text
    config = tmp_path / "config.yaml"
    config.write_text("log_format: json\n")
    for extra, environ in (
        ([], {**env, "DEVTEST_ROUTER_LOG_FORMAT": "json"}),
        (["--config", str(config)], env),
    ):
        rendered = subprocess.run(
            [str(BIN), "render", *extra, *common],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rendered.returncode == 0, rendered.stderr
        assert "server {" in rendered.stdout, rendered.stdout
        assert len(parse_log(rendered.stderr)) == 2

    bad = subprocess.run(
        [str(BIN), "check", "--log-format", "json", "--domain", "Not A Domain", str(snapshot)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    [error] = parse_log(bad.stderr)
    assert error["level"] == "error" and error["exit_code"] == 2
    assert "domain" in error["message"]

    registered = subprocess.run(
        [str(BIN), "register", "--once", "--log-format", "json", "--ttl", "0"],
        env={**env, "REGISTRY_URL": etcd.url, "NAME": "Feature/Json", "SERVICE": "web",
             "PORT": "8080", "IP": "127.0.0.1", "INSTANCE": "json-1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    records = parse_log(registered.stderr)
    [line] = [r for r in records if r["message"].startswith("registered ")]
    assert line["key"] == "/deployment/feature-json/service/web/instance/json-1", line
    assert (line["deployment"], line["service"]) == ("feature-json", "web")
    assert line["instance"] == "json-1", line


@pytest.mark.integration  # the dry run's gate runs nginx's test; /metrics is served on a port
def test_a_dry_run_watch_counts_dry_runs_apart_and_logs_names_with_a_slash(
    tmp_path: Path,
) -> None:
    # issue 12: a dry run counted as a successful apply (applies_total and the last success's
    # time), there was no build_info, the JSON `deployment` of /deployment/"feature/login"/...
    # was "\"feature", and one route was "1 routes added"
    registry = tmp_path / "registry.json"
    half = {"api": {"ip": "127.0.0.1", "port": "9001"}, "web": {"ip": "127.0.0.1"}}  # no port
    registry.write_text(json.dumps({"deployment": {"feature/login": {"service": half}}}))
    port = free_port()
    log = tmp_path / "watch.log"
    argv = [
        str(BIN), "watch", "--dry-run", "--registry", f"file:{registry}", "--domain", DOMAIN,
        "--allow-loopback", "--output", str(tmp_path / "out.conf"),
        "--site-dir", str(tmp_path / "site"), "--nginx", find_binary("nginx"),
        "--metrics-listen", f"127.0.0.1:{port}", "--log-format", "json",
    ]  # fmt: skip
    with log.open("wb") as out:
        watcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out, env=clean_env())
    try:

        def log_tail() -> str:
            return log.read_text(errors="replace")

        def dry_runs(count: int) -> list[dict[str, Any]]:
            records = parse_log(log_tail())
            return [r for r in records if r["message"].startswith("dry run: ")][count - 1 :]

        wait_for(lambda: dry_runs(1), 60, what=f"a dry run; log:\n{log_tail()}")
        samples = settle(port, {'devtest_router_dry_runs_total{result="changed"}': 1}, log_tail)
        # two deployments, each named with a slash, one with quotes too: one more dry run
        both = {"feature/login": {"service": half}, 'say "hi"/there': {"service": half}}
        registry.write_text(json.dumps({"deployment": both}))
        wait_for(lambda: dry_runs(2), 60, what=f"a second dry run; log:\n{log_tail()}")
        after = settle(port, {'devtest_router_dry_runs_total{result="changed"}': 2}, log_tail)
        assert watcher.poll() is None, log_tail()
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(30) == 0, log_tail()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    # dry runs are not applies: no apply counted, no success time, no reload, no duration
    for seen in (samples, after):
        for result in ("changed", "unchanged", "failed"):
            assert applies(seen, result) == 0, seen
        assert seen["devtest_router_last_successful_apply_timestamp_seconds"] == 0
        assert seen["devtest_router_nginx_reloads_total"] == 0
        assert seen["devtest_router_apply_duration_seconds_count"] == 0
        assert seen['devtest_router_dry_runs_total{result="failed"}'] == 0
        assert seen[f'devtest_router_build_info{{version="{generator.__version__}"}}'] == 1
    assert (samples["devtest_router_routes"], after["devtest_router_routes"]) == (1, 2)

    records = parse_log(log.read_text())
    first, second = [r for r in records if r["message"].startswith("dry run: ")]
    assert first["message"].startswith("dry run: 1 route added, 0 removed, 0 changed; "), first
    assert second["message"].startswith("dry run: 2 routes added, 0 removed, 0 changed; ")
    problems = [r for r in records if r["message"].startswith("problem: ")]
    assert {(r["deployment"], r["key"]) for r in problems} == {
        ("feature/login", '/deployment/"feature/login"/service/web'),
        ('say "hi"/there', '/deployment/"say \\"hi\\"/there"/service/web'),
    }, problems


# --------------------------------------------------------------------------
# the pure parts


def test_health_report_names_failing_conditions_and_since_when() -> None:
    fresh = starting(100.0)
    code, body = health_report(fresh)
    assert code == 503 and body["failing"] == ["registry", "apply"]

    ok = Health(update(fresh.registry, True, "read", 110.0), update(fresh.apply, True, "ok", 111.0))
    code, body = health_report(ok)
    assert code == 200 and body["status"] == "ok" and body["failing"] == []
    assert body["checks"]["apply"]["since"] == "1970-01-01T00:01:51Z"

    down = update(ok.registry, False, "etcd v2 at 127.0.0.1:1: refused", 120.0)
    still_down = update(down, False, "etcd v2 at 127.0.0.1:1: timed out", 130.0)
    assert still_down == Condition(False, 120.0, "etcd v2 at 127.0.0.1:1: timed out")
    code, body = health_report(Health(still_down, ok.apply))
    assert code == 503 and body["failing"] == ["registry"]
    assert body["checks"]["registry"]["since"] == "1970-01-01T00:02:00Z"
    assert body["checks"]["registry"]["detail"].endswith("timed out")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (None, None),
        ("9180", ("127.0.0.1", 9180)),
        ("127.0.0.2:80", ("127.0.0.2", 80)),
        ("[::1]:9180", ("::1", 9180)),
        ("0.0.0.0:9180", ("0.0.0.0", 9180)),  # written out: served (and warned about)
    ],
)
def test_listen_address(text: str | None, address: tuple[str, int] | None) -> None:
    assert listen_address(text) == address


@pytest.mark.parametrize("text", ["999.1.1.1:80", "127.0.0.1:0", "127.0.0.1:70000", "[x]:80"])
def test_listen_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="metrics_listen"):
        listen_address(text)


@pytest.mark.parametrize(
    ("host", "warned"),
    [("127.0.0.1", False), ("::1", False), ("0.0.0.0", True), ("10.1.2.3", True)],
)
def test_a_non_loopback_metrics_address_is_warned_about(host: str, warned: bool) -> None:
    warning = exposure(host)
    assert (warning is not None) == warned
    assert warning is None or "not a loopback address" in warning


def test_format_line_plain_keeps_the_message_and_json_adds_the_fields() -> None:
    now = datetime.fromisoformat("2026-11-28T05:00:00.5+00:00")
    fields: dict[str, object] = {"registry_index": 7, "deployment": None}
    assert format_line("applied", "info", fields, "plain", now) == "devtest-router: applied"
    record = json.loads(format_line("line\nbreak \ud800", "error", fields, "json", now))
    assert record == {
        "time": "2026-11-28T05:00:00.500Z",
        "level": "error",
        "message": "line\nbreak \ud800",
        "registry_index": 7,
    }


# --------------------------------------------------------------------------
# devtest_router_instances (pure): routing tables with several instances a service


def instances_table(*deployments: Deployment) -> RoutingTable:
    return table(resolve(schema("config"), {"allow_loopback": True}, {}), *deployments)


def test_routed_instances_counts_each_instance_once_and_the_default_entry_point_not_again() -> None:
    web = [(None, "127.0.0.1", 9100), ("a1", "127.0.0.1", 9101), ("b2", "127.0.0.1", 9102)]
    one = deployment("one", {"web": web, "api": [("a1", "127.0.0.1", 9200)]})
    # the same id in two services, or in two deployments, is two instances
    two = deployment("two", {"web": [("a1", "127.0.0.1", 9101)]})
    data = instances_table(one, two)
    assert len(data.routes) == 5  # one, one-web, one-api, two, two-web
    assert routed_instances(data.routes) == 5  # 3 web + 1 api + 1
    assert routed_instances(()) == 0
    # one address for two ids (a container registered twice) is still two instances
    twice = deployment("twice", {"web": [("x", "127.0.0.1", 9300), ("y", "127.0.0.1", 9300)]})
    assert routed_instances(instances_table(twice).routes) == 2


def test_the_kept_count_is_the_count_of_the_table_after_every_change() -> None:
    web = [(None, "127.0.0.1", 9100), ("a1", "127.0.0.1", 9101)]
    steps = [
        {"one": {"web": web[:1]}},
        {"one": {"web": web}, "two": {"web": web, "api": web[1:]}},
        {"one": {"web": web}, "two": {"web": web[1:]}},  # two's routes change
        {"two": {"web": web[1:]}},  # one goes
        {},
        {"one": {"web": web}},
    ]
    count = InstanceCount()
    kept: dict[Any, tuple[Route, ...]] = {}
    for step in steps:
        data = instances_table(*(deployment(name, services) for name, services in step.items()))
        fresh = by_deployment(data)
        # as the pipeline does: an unchanged deployment's routes stay the same tuple
        kept = {key: kept[key] if kept.get(key) == value else value for key, value in fresh.items()}
        assert count(data, kept) == routed_instances(data.routes), step
        assert InstanceCount()(data, None) == routed_instances(data.routes)
    assert count(data, kept) == 2


def test_the_gauge_of_an_apply_counts_the_instances_routed() -> None:
    web = [(None, "127.0.0.1", 9100), ("a1", "127.0.0.1", 9101), ("b2", "127.0.0.1", 9102)]
    data = instances_table(deployment("one", {"web": web}))  # one.<domain> and one-web
    status = Status(clock=lambda: 1000.0)
    rendered = Rendered("sha256:0", data, "", "", (), by_deployment(data))
    status.applied(Outcome(rendered, "applied", changed=True, reloaded=True), 0.1)
    text = prometheus_client.generate_latest(status.metrics).decode()
    assert "devtest_router_instances 3.0" in text.splitlines()
    assert "# HELP devtest_router_instances Instances (containers)" in text
    assert "# TYPE devtest_router_instances gauge" in text


def test_the_start_time_is_the_clock_at_start_and_stays() -> None:
    # the alert "no successful apply for 15 minutes" counts from it before the first success
    now = [1000.0]
    status = Status(clock=lambda: now[0])
    now[0] = 2000.0
    data = instances_table(deployment("one", {"web": [(None, "127.0.0.1", 9100)]}))
    rendered = Rendered("sha256:0", data, "", "", (), by_deployment(data))
    status.applied(Outcome(rendered, "applied", changed=True, reloaded=True), 0.1)
    lines = prometheus_client.generate_latest(status.metrics).decode().splitlines()
    assert "devtest_router_start_time_seconds 1000.0" in lines
    assert "devtest_router_last_successful_apply_timestamp_seconds 2000.0" in lines
    assert "# TYPE devtest_router_start_time_seconds gauge" in lines


def test_a_dry_run_counts_as_a_dry_run_never_as_an_apply() -> None:
    data = instances_table(deployment("one", {"web": [(None, "127.0.0.1", 9100)]}))
    rendered = Rendered("sha256:0", data, "", "", (), by_deployment(data))
    for dry_run in (True, False):
        status = Status(clock=lambda: 1000.0, dry_run=dry_run)
        status.applied(Outcome(rendered, "dry run: ...", changed=True, reloaded=False), 0.1)
        status.applied(Outcome(rendered, "dry run: ...", changed=False, reloaded=False), 0.1)
        status.apply_failed("the check refuses", 0.1)
        samples = {
            sample.name + str(sorted(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(
                prometheus_client.generate_latest(status.metrics).decode()
            )
            for sample in family.samples
        }
        counted = "devtest_router_dry_runs_total" if dry_run else "devtest_router_applies_total"
        other = "devtest_router_applies_total" if dry_run else "devtest_router_dry_runs_total"
        for result in ("changed", "unchanged", "failed"):
            assert samples[f"{counted}{[result]}"] == 1, samples
            assert samples[f"{other}{[result]}"] == 0, samples
        last = samples["devtest_router_last_successful_apply_timestamp_seconds[]"]
        assert last == (0 if dry_run else 1000.0)
        assert samples["devtest_router_apply_duration_seconds_count[]"] == (0 if dry_run else 3)
        assert samples[f"devtest_router_build_info{[generator.__version__]}"] == 1
        assert samples["devtest_router_routes[]"] == 2  # what the last one found: one, one-web
        assert not status.health().apply.ok  # the last one failed, dry or not


def test_a_problems_deployment_field_is_the_name_as_registered_whatever_its_key_shows() -> None:
    # issue 12: the field was read back out of the key, which quotes a name with a slash
    # (/deployment/"feature/login"/...) and cuts a long one short
    web = {"ip": "10.0.0.5", "port": "8080"}
    deployments = {
        "feature/login": {"service": {"web": {"ip": "10.0.0.5"}}},  # no port: validation's
        'say "hi"/there': {"service": {"web": {"ip": "169.254.169.254", "port": "80"}}},
        "feature/" + "x" * 80: {"service": {"web": {"ip": "10.0.0.5"}}},
        "a/b": {"created": "2026-01-01T00:00:00Z", "service": {"web": web}},
        "a-b": {"created": "2026-02-01T00:00:00Z", "service": {"web": web}},  # a collision
    }
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["render", "--log-format", "json", "--domain", DOMAIN],
        stdin=io.StringIO(json.dumps({"deployment": deployments})),
        stdout=out,
        stderr=err,
        environ={},
    )
    assert code == 0, err.getvalue()
    problems = [r for r in parse_log(err.getvalue()) if r["message"].startswith("problem: ")]
    codes = {r["code"]: r["deployment"] for r in problems}
    assert codes["incomplete-service"] in ("feature/login", "feature/" + "x" * 80)
    assert codes["refused-upstream"] == 'say "hi"/there'
    assert codes["host-collision"] == "a-b"  # the newer one loses a-b.<domain>
    assert {r["deployment"] for r in problems} == set(deployments) - {"a/b"}
    for record in problems:
        assert record["key"].startswith("/deployment/"), record
