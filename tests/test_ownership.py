"""Registrations are owned (issue 9): each container is one instance of its service, under a key
of its own, and removes or refreshes only what it wrote. On real etcd members, v2 and v3.

The watcher does not route instance keys yet on this branch: these tests look at etcd's keys
directly (v2 through its keys API, v3 through its JSON gateway), never at nginx.
"""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, Etcd, b64, unb64, wait_for

from generator.cli.main import main
from generator.registry.base import Entry, Registry, Removal
from generator.registry.open import open_registry

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("devtest-router")
NOWHERE = f"http://{LOOPBACK}:9"  # the discard port: no metadata lookup reaches anything
CREATED = "2026-11-28T02:00:00Z"
BASE = "/deployment/feat-x"
WEB = f"{BASE}/service/web"
SCHEMES = {"etcd2": "etcd", "etcd3": "etcd3"}


def entry(
    instance: str | None = "a",
    ip: str = "10.0.3.7",
    port: int = 8080,
    service: str = "web",
) -> Entry:
    return Entry("feat-x", service, ip, port, CREATED, instance)


@pytest.fixture(params=sorted(SCHEMES))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def url(backend: str, etcd: Etcd) -> str:
    return f"{SCHEMES[backend]}://{LOOPBACK}:{etcd.client_port}"


@pytest.fixture
def opened(backend: str, etcd: Etcd) -> Iterator[Any]:
    """opened(): a registry on the backend (one per container), closed after the test."""
    registries: list[Registry] = []

    def open_() -> Registry:
        registry = open_registry(url(backend, etcd), timeout=3.0)
        registries.append(registry)
        return registry

    try:
        yield open_
    finally:
        for registry in registries:
            registry.close()


# --------------------------------------------------------------------------------------------
# etcd's keys, read and written without devtest-router


def _v2(etcd: Etcd, method: str, key: str, **params: str) -> tuple[int, Any]:
    import json

    connection = http.client.HTTPConnection(LOOPBACK, etcd.client_port, timeout=5)
    try:
        query = urllib.parse.urlencode(params)
        body = query if method == "PUT" else None
        path = f"/v2/keys{key}" + ("" if method == "PUT" or not query else f"?{query}")
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def keys(backend: str, etcd: Etcd, prefix: str = "/deployment") -> dict[str, str]:
    """{key: value} of every key under prefix (v2: directories left out)."""
    if backend == "etcd3":
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        reply = etcd.v3("kv/range", {"key": b64(prefix), "range_end": b64(end)})
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in reply.get("kvs", [])}
    status, answer = _v2(etcd, "GET", prefix, recursive="true")
    if status == 404:
        return {}
    found: dict[str, str] = {}
    pending = [answer["node"]]
    while pending:
        node = pending.pop()
        if node.get("dir"):
            pending.extend(node.get("nodes", []))
        else:
            found[node["key"]] = node["value"]
    return found


def put(backend: str, etcd: Etcd, key: str, value: str) -> None:
    """A plain write with no TTL and no lease, as the seed's curl did."""
    if backend == "etcd3":
        etcd.v3("kv/put", {"key": b64(key), "value": b64(value)})
    else:
        status, answer = _v2(etcd, "PUT", key, value=value)
        assert status in (200, 201), answer


def instance(backend: str, etcd: Etcd, name: str, service: str = "web") -> dict[str, str]:
    prefix = f"{BASE}/service/{service}/instance/{name}/"
    return {key[len(prefix) :]: value for key, value in keys(backend, etcd, prefix).items()}


def dirs_v2(etcd: Etcd, key: str) -> Any:
    """The v2 node at key (directories included), or None."""
    status, answer = _v2(etcd, "GET", key, recursive="true")
    return None if status == 404 else answer["node"]


# --------------------------------------------------------------------------------------------
# replicas: one instance each


def test_two_instances_of_one_service_are_both_registered(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    first, second = opened(), opened()
    first.register(entry("a", "10.0.3.7"), ttl=30)
    second.register(entry("b", "10.0.3.8"), ttl=30)
    assert keys(backend, etcd) == {
        f"{BASE}/created": CREATED,
        f"{WEB}/instance/a/ip": "10.0.3.7",
        f"{WEB}/instance/a/port": "8080",
        f"{WEB}/instance/b/ip": "10.0.3.8",
        f"{WEB}/instance/b/port": "8080",
    }
    assert first.keepalive(entry("a", "10.0.3.7"), ttl=30) is None
    assert second.keepalive(entry("b", "10.0.3.8"), ttl=30) is None

    # a rolling deploy: the old container goes; the new one's keys stay, and `created`
    assert first.deregister(entry("a", "10.0.3.7")) == Removal(True)
    assert keys(backend, etcd) == {
        f"{BASE}/created": CREATED,
        f"{WEB}/instance/b/ip": "10.0.3.8",
        f"{WEB}/instance/b/port": "8080",
    }
    if backend == "etcd2":  # and no empty directory of the old instance is left behind
        assert [node["key"] for node in dirs_v2(etcd, f"{WEB}/instance")["nodes"]] == [
            f"{WEB}/instance/b"
        ]
    assert second.keepalive(entry("b", "10.0.3.8"), ttl=30) is None
    assert second.deregister(entry("b", "10.0.3.8")) == Removal(True)
    assert keys(backend, etcd) == {}
    if backend == "etcd2":
        assert dirs_v2(etcd, BASE) is None


def test_the_old_registration_of_an_instance_leaves_the_newer_ones_keys(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    old, new = opened(), opened()
    old.register(entry("a", "10.0.3.7"), ttl=30)
    new.register(entry("a", "10.0.3.8"), ttl=30)  # the same instance id: the newest wins
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.8", "port": "8080"}

    # the old one's keepalive does not write itself back, and says whose keys are there
    assert old.keepalive(entry("a", "10.0.3.7"), ttl=30) == "10.0.3.8:8080"
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.8", "port": "8080"}

    # nor does its deregistration delete them
    assert old.deregister(entry("a", "10.0.3.7")) == Removal(False, "10.0.3.8:8080")
    assert keys(backend, etcd) == {
        f"{BASE}/created": CREATED,
        f"{WEB}/instance/a/ip": "10.0.3.8",
        f"{WEB}/instance/a/port": "8080",
    }
    assert new.keepalive(entry("a", "10.0.3.8"), ttl=30) is None
    assert new.deregister(entry("a", "10.0.3.8")) == Removal(True)
    assert keys(backend, etcd) == {}


def test_an_old_registration_does_not_take_back_a_port_of_the_same_address(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    old, new = opened(), opened()
    old.register(entry("a", "10.0.3.7", 8080), ttl=30)
    new.register(entry("a", "10.0.3.7", 9090), ttl=30)  # same ip, another port
    assert old.keepalive(entry("a", "10.0.3.7", 8080), ttl=30) == "10.0.3.7:9090"
    assert old.deregister(entry("a", "10.0.3.7", 8080)).other == "10.0.3.7:9090"
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.7", "port": "9090"}


def test_the_newer_registration_outlives_the_old_ones_ttl(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    # v2: the old one never refreshes the newer one's keys either; v3: its lease holds none
    old, new = opened(), opened()
    old.register(entry("a", "10.0.3.7"), ttl=1)
    new.register(entry("a", "10.0.3.8"), ttl=30)
    time.sleep(2.5)  # past the old registration's TTL: nothing of the newer one may go with it
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.8", "port": "8080"}
    # v3: `created` was on the old registration's lease and went with it; the newer one's
    # next keepalive writes it again (as when the service that wrote it crashed)
    assert new.keepalive(entry("a", "10.0.3.8"), ttl=30) is None
    assert keys(backend, etcd)[f"{BASE}/created"] == CREATED


def test_keepalive_of_an_instance_wakes_no_watcher(backend: str, etcd: Etcd, opened: Any) -> None:
    watcher, registrant = opened(), opened()
    registrant.register(entry("a"), ttl=2)
    index = watcher.read().index
    for _ in range(4):  # past the TTL: kept alive by refreshes that no watcher sees
        time.sleep(0.6)
        assert registrant.keepalive(entry("a"), ttl=2) is None
    assert watcher.wait(index, 0.3) is None
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.7", "port": "8080"}


# --------------------------------------------------------------------------------------------
# keepalive after expiry


def test_keepalive_after_expiry_writes_the_keys_again(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    registry = opened()
    registry.register(entry("a"), ttl=1)
    wait_for(lambda: keys(backend, etcd) == {}, timeout=60, interval=0.1, what="expiry")
    assert registry.keepalive(entry("a"), ttl=30) is None
    assert keys(backend, etcd) == {
        f"{BASE}/created": CREATED,
        f"{WEB}/instance/a/ip": "10.0.3.7",
        f"{WEB}/instance/a/port": "8080",
    }
    assert registry.keepalive(entry("a"), ttl=30) is None  # and keeps them from then on
    assert registry.deregister(entry("a")) == Removal(True)
    assert keys(backend, etcd) == {}


def test_keepalive_after_expiry_writes_nothing_over_a_newer_registration(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    old, new = opened(), opened()
    old.register(entry("a", "10.0.3.7"), ttl=1)
    wait_for(lambda: keys(backend, etcd) == {}, timeout=60, interval=0.1, what="expiry")
    new.register(entry("a", "10.0.3.8"), ttl=30)
    assert old.keepalive(entry("a", "10.0.3.7"), ttl=30) == "10.0.3.8:8080"
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.8", "port": "8080"}


def test_keepalive_puts_back_the_half_that_was_deleted(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    registry = opened()
    registry.register(entry("a"), ttl=30)
    if backend == "etcd3":
        etcd.v3("kv/deleterange", {"key": b64(f"{WEB}/instance/a/port")})
    else:
        _v2(etcd, "DELETE", f"{WEB}/instance/a/port")
    assert registry.keepalive(entry("a"), ttl=30) is None
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.7", "port": "8080"}


# --------------------------------------------------------------------------------------------
# the seed's plain keys are an instance too (id None) and keep their owner's rules


def test_plain_keys_are_deregistered_only_with_their_address(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    put(backend, etcd, f"{WEB}/ip", "10.0.3.9")
    put(backend, etcd, f"{WEB}/port", "80")
    put(backend, etcd, f"{BASE}/created", CREATED)
    registry = opened()
    registry.register(entry("a"), ttl=30)
    assert registry.deregister(entry(None, "10.0.3.1", 80)) == Removal(False, "10.0.3.9:80")
    assert registry.deregister(entry(None, "10.0.3.9", 80)) == Removal(True)
    assert keys(backend, etcd) == {
        f"{BASE}/created": CREATED,
        f"{WEB}/instance/a/ip": "10.0.3.7",
        f"{WEB}/instance/a/port": "8080",
    }


# --------------------------------------------------------------------------------------------
# the deregister command


@dataclass
class Result:
    code: int
    err: str

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()


def deregister(backend: str, etcd: Etcd, *argv: str, **environ: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    env = {
        "REGISTRY_URL": url(backend, etcd),
        "NAME": "feat-x",
        "SERVICE": "web",
        "DEVTEST_ROUTER_IMDS_URL": NOWHERE,
        **environ,
    }
    code = main(["deregister", *argv], io.StringIO(), out, err, env)
    return Result(code, err.getvalue())


def test_deregister_without_an_address_or_force_refuses_in_one_line(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    opened().register(entry("a"), ttl=30)
    before = keys(backend, etcd)
    for argv, environ in (([], {}), (["--instance", "a"], {"IP": "10.0.3.7"}), ([], {"PORT": "1"})):
        result = deregister(backend, etcd, *argv, **environ)
        assert result.code == 2, result.err
        assert result.lines == [
            "devtest-router: deregister removes an instance of /deployment/feat-x/service/web "
            "only while it holds the address it registered: pass --ip and --port (or set IP and "
            "PORT) as registered, or --force to remove whatever is there"
        ]
    assert keys(backend, etcd) == before


def test_deregister_removes_an_instance_that_holds_the_address_given(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    registry = opened()
    registry.register(entry("a", "10.0.3.7"), ttl=30)
    registry.register(entry("b", "10.0.3.8"), ttl=30)

    other = deregister(backend, etcd, "--instance", "a", "--ip", "10.0.3.1", "--port", "8080")
    assert other.code == 1, other.err
    assert other.lines == [
        "devtest-router: left /deployment/feat-x/service/web/instance/a (instance id from "
        "--instance) as it is: it holds 10.0.3.7:8080, not 10.0.3.1:8080 (a newer "
        "registration's); --force removes it anyway"
    ]
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.7", "port": "8080"}

    mine = deregister(backend, etcd, IP="10.0.3.7", PORT="8080", INSTANCE="a")
    assert mine.code == 0, mine.err
    assert mine.lines[-1].startswith(
        "devtest-router: deregistered /deployment/feat-x/service/web/instance/a (instance id "
        "from INSTANCE) from etcd v"
    )
    assert instance(backend, etcd, "a") == {}
    assert instance(backend, etcd, "b") == {"ip": "10.0.3.8", "port": "8080"}
    assert f"{BASE}/created" in keys(backend, etcd)  # b is still there

    again = deregister(backend, etcd, IP="10.0.3.7", PORT="8080", INSTANCE="a")
    assert again.code == 0, again.err
    assert again.lines[-1].startswith(
        "devtest-router: nothing to deregister: /deployment/feat-x/service/web/instance/a "
    )
    # b's registration goes on as before: its keys are still its own
    assert registry.keepalive(entry("b", "10.0.3.8"), ttl=30) is None
    last = deregister(backend, etcd, "--instance", "b", "--ip", "10.0.3.8", "--port", "8080")
    assert last.code == 0, last.err
    assert keys(backend, etcd) == {}  # the last instance of the last service: created too


def test_deregister_finds_the_instance_id_as_register_does(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    import socket

    hostname = socket.gethostname()
    opened().register(entry(hostname), ttl=30)
    result = deregister(backend, etcd, "--ip", "10.0.3.7", "--port", "8080")
    assert result.code == 0, result.err
    assert f"/instance/{hostname} (instance id from the hostname)" in result.err
    assert keys(backend, etcd) == {}


def test_deregister_force_removes_the_whole_service_with_its_plain_keys(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    registry = opened()
    put(backend, etcd, f"{WEB}/ip", "10.0.3.9")  # the seed's curl layout
    put(backend, etcd, f"{WEB}/port", "80")
    registry.register(entry("a", "10.0.3.7"), ttl=30)
    registry.register(entry("b", "10.0.3.8"), ttl=0)  # no TTL, no lease
    registry.register(entry("a", service="api"), ttl=30)

    result = deregister(backend, etcd, "--force")
    assert result.code == 0, result.err
    assert result.lines[-1].startswith(
        "devtest-router: deregistered /deployment/feat-x/service/web (the service: its own "
        "ip/port keys and every instance) from etcd v"
    )
    assert keys(backend, etcd) == {
        f"{BASE}/created": CREATED,
        f"{BASE}/service/api/instance/a/ip": "10.0.3.7",
        f"{BASE}/service/api/instance/a/port": "8080",
    }
    if backend == "etcd2":
        assert dirs_v2(etcd, WEB) is None

    api = deregister(backend, etcd, "--force", SERVICE="api")
    assert api.code == 0, api.err
    assert keys(backend, etcd) == {}  # nothing left of the branch: created goes too
    if backend == "etcd2":
        assert dirs_v2(etcd, BASE) is None


def test_deregister_force_with_an_instance_removes_that_instance_only(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    registry = opened()
    registry.register(entry("a", "10.0.3.7"), ttl=30)
    registry.register(entry("b", "10.0.3.8"), ttl=30)
    result = deregister(backend, etcd, "--force", "--instance", "a")
    assert result.code == 0, result.err
    assert instance(backend, etcd, "a") == {}
    assert instance(backend, etcd, "b") == {"ip": "10.0.3.8", "port": "8080"}
    assert f"{BASE}/created" in keys(backend, etcd)


def test_deregister_force_keeps_created_alive_for_the_others(
    backend: str, etcd: Etcd, opened: Any
) -> None:
    # `created` was written with the first registration's TTL (v3: on its lease); removing that
    # instance by force must not take `created` with it while another instance stays
    first, second = opened(), opened()
    first.register(entry("a", "10.0.3.7"), ttl=2)
    second.register(entry("b", "10.0.3.8"), ttl=30)
    assert deregister(backend, etcd, "--force", "--instance", "a").code == 0
    first.close()  # the first container is gone: nothing keeps its TTL or lease alive
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # past the first registration's TTL
        assert second.keepalive(entry("b", "10.0.3.8"), ttl=30) is None
        time.sleep(0.5)
    assert f"{BASE}/created" in keys(backend, etcd)
    assert instance(backend, etcd, "b") == {"ip": "10.0.3.8", "port": "8080"}


# --------------------------------------------------------------------------------------------
# real processes: two containers that claim one instance id


def _env(**extra: str) -> dict[str, str]:
    drop = {"NAME", "SERVICE", "PORT", "IP", "INSTANCE", "REGISTRY_URL"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in drop
        and not key.startswith("DEVTEST_ROUTER_")
        and key != "ECS_CONTAINER_METADATA_URI_V4"
    }
    return {**env, "DEVTEST_ROUTER_IMDS_URL": NOWHERE, **extra}


class Sidecar:
    """`devtest-router register` without CMD, its log lines in a file."""

    def __init__(self, folder: Path, name: str, env: Mapping[str, str], *argv: str) -> None:
        self.log = folder / f"{name}.err"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(CLI), "register", *argv],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=dict(env),
            )

    @property
    def err(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Any]:
    started: list[Sidecar] = []

    def start(name: str, env: Mapping[str, str], *argv: str) -> Sidecar:
        sidecar = Sidecar(tmp_path, name, env, *argv)
        started.append(sidecar)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in started:
            sidecar.stop()


def test_an_older_container_with_the_same_instance_id_stops_refreshing_and_says_so_once(
    backend: str, etcd: Etcd, sidecars: Any
) -> None:
    env = _env(
        REGISTRY_URL=url(backend, etcd), NAME="feat-x", SERVICE="web", INSTANCE="a", PORT="8080"
    )
    old = sidecars("old", env, "--ip", "10.0.3.7", "--ttl", "1")  # a keepalive every 0.33 s
    wait_for(lambda: instance(backend, etcd, "a").get("ip") == "10.0.3.7", what="the old keys")
    new = sidecars("new", env, "--ip", "10.0.3.8", "--ttl", "30")
    wait_for(lambda: instance(backend, etcd, "a").get("ip") == "10.0.3.8", what="the new keys")

    said = (
        "devtest-router: /deployment/feat-x/service/web/instance/a holds 10.0.3.8:8080 now, "
        "not 10.0.3.7:8080: a newer registration with the same instance id a replaced this "
        "one, which stops refreshing it; give each container its own INSTANCE (or leave it "
        "unset)"
    )
    wait_for(lambda: said in old.err, timeout=60, what=f"the old one to say so:\n{old.err}")
    time.sleep(2)  # six keepalive periods of the old one: it never writes itself back
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.8", "port": "8080"}
    assert old.err.count(said) == 1, old.err

    old.proc.send_signal(signal.SIGTERM)  # the rolling deploy stops the old container
    assert old.proc.wait(10) == 0, old.err
    assert instance(backend, etcd, "a") == {"ip": "10.0.3.8", "port": "8080"}
    assert (
        "devtest-router: left /deployment/feat-x/service/web/instance/a as it is: it holds "
        "10.0.3.8:8080, a newer registration's, not 10.0.3.7:8080"
    ) in old.err.splitlines()
    assert "Traceback" not in old.err

    new.proc.send_signal(signal.SIGTERM)
    assert new.proc.wait(10) == 0, new.err
    assert keys(backend, etcd) == {}
