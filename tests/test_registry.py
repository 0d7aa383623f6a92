"""The etcd registries (v2 through python-etcd, v3 through etcd3gw) against real etcd members.

Every behaviour the watcher and the registrants rely on is tested once for both backends; only
how history gets lost (v2's 1000-event window, v3's compaction) and the curl compatibility of
v2 are backend-specific.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, Etcd, wait_for

from generator.registry.base import Entry, HistoryLost, Registry, RegistryUnavailable, Tls
from generator.registry.etcd3 import EtcdV3Registry
from generator.registry.open import open_registry

pytestmark = pytest.mark.integration

SCHEMES = {"etcd2": "etcd", "etcd3": "etcd3"}
CREATED = "2026-11-28T02:00:00Z"


def entry(
    deployment: str = "feat-x",
    service: str = "web",
    ip: str = "10.0.3.7",
    port: int = 32768,
    created: str = CREATED,
) -> Entry:
    return Entry(deployment, service, ip, port, created)


def url(backend: str, *members: Etcd) -> str:
    return f"{SCHEMES[backend]}://" + ",".join(f"{LOOPBACK}:{m.client_port}" for m in members)


def pruned(value: Any) -> Any:
    """The snapshot without empty directories (etcd v2 keeps them after deletes and expiry)."""
    if not isinstance(value, dict):
        return value
    kept = {key: pruned(child) for key, child in value.items()}
    return {key: child for key, child in kept.items() if child != {}}


def deployments(registry: Registry) -> dict[str, Any]:
    return pruned(registry.read().snapshot["deployment"])  # type: ignore[no-any-return]


Opener = Callable[..., Registry]


@pytest.fixture(params=sorted(SCHEMES))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened() -> Iterator[Opener]:
    """opened(backend, *members, timeout=2.0): a registry, closed after the test."""
    registries: list[Registry] = []

    def open_(backend: str, *members: Etcd, timeout: float = 2.0) -> Registry:
        registry = open_registry(url(backend, *members), timeout=timeout)
        registries.append(registry)
        return registry

    try:
        yield open_
    finally:
        for registry in registries:
            registry.close()


def later(delay: float, action: Callable[[], object]) -> threading.Thread:
    """Run action in a thread after delay seconds (its errors are not raised: check effects)."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------------------------
# reading and registering


def test_empty_etcd_reads_empty_then_register_shows_the_entry(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    registry = opened(backend, etcd)
    first = registry.read()
    assert first.snapshot == {"deployment": {}}

    registry.register(entry(), ttl=30)
    second = registry.read()
    assert second.snapshot == {
        "deployment": {
            "feat-x": {
                "created": CREATED,
                "service": {"web": {"ip": "10.0.3.7", "port": "32768"}},
            }
        }
    }
    assert second.index > first.index

    other = opened("etcd3" if backend == "etcd2" else "etcd2", etcd)
    assert other.read().snapshot == {"deployment": {}}, "v2 and v3 keyspaces are separate"


def test_register_keeps_the_first_created(backend: str, etcd: Etcd, opened: Opener) -> None:
    registry = opened(backend, etcd)
    registry.register(entry(service="web", created="2026-01-01T00:00:00Z"), ttl=30)
    registry.register(entry(service="api", port=8080, created="2026-02-02T00:00:00Z"), ttl=30)
    assert deployments(registry)["feat-x"]["created"] == "2026-01-01T00:00:00Z"


def _curl(*args: str) -> None:
    subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", *args], check=True, timeout=10)


def test_v2_reads_the_original_curl_registration_like_its_own(etcd: Etcd, opened: Opener) -> None:
    registry = opened("etcd2", etcd)
    name, service, ip, port = "feat-x", "web", "10.0.3.7", "32768"
    base = f"{etcd.url}/v2/keys/deployment/{name}"
    _curl(f"{base}/service/{service}/ip", "-XPUT", "-d", f"value={ip}")
    _curl(f"{base}/service/{service}/port", "-XPUT", "-d", f"value={port}")
    _curl(f"{base}/created", "-XPUT", "-d", f"value={CREATED}")
    by_curl = registry.read().snapshot

    registry.deregister(entry())  # also removes what curl wrote
    assert registry.read().snapshot == {"deployment": {}}
    registry.register(entry(name, service, ip, int(port)), ttl=30)
    assert registry.read().snapshot == by_curl


# --------------------------------------------------------------------------------------------
# watching


def test_wait_returns_after_a_change_and_none_when_quiet(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    watcher, registrant = opened(backend, etcd), opened(backend, etcd)
    index = watcher.read().index

    started = time.monotonic()
    assert watcher.wait(index, 0.3) is None
    assert 0.25 <= time.monotonic() - started < 1.5

    writer = later(0.3, lambda: registrant.register(entry(), ttl=30))
    started = time.monotonic()
    changed = watcher.wait(index, 5)
    took = time.monotonic() - started
    writer.join(5)
    assert changed is not None and changed > index
    assert 0.2 <= took < 3, f"woke after {took:.2f}s"
    current = watcher.read()
    assert current.index >= changed
    assert "feat-x" in current.snapshot["deployment"]
    assert watcher.wait(current.index, 0.3) is None


# --------------------------------------------------------------------------------------------
# TTLs


def test_entry_expires_without_keepalive(backend: str, etcd: Etcd, opened: Opener) -> None:
    registry = opened(backend, etcd)
    registry.register(entry(), ttl=2)
    registered = time.monotonic()
    assert "feat-x" in deployments(registry)

    wait_for(lambda: deployments(registry) == {}, timeout=60, interval=0.1, what="expiry")
    # within the TTL asked for, not the 30 s of a TTL left at the default (etcd expires keys
    # in passes, and a loaded machine is late: a wide margin)
    assert time.monotonic() - registered < 20


def test_keepalive_keeps_the_entry_and_wakes_no_watcher(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    watcher, registrant = opened(backend, etcd), opened(backend, etcd)
    registrant.register(entry(), ttl=2)
    after_register = watcher.read()
    errors: list[BaseException] = []

    def keep_alive() -> None:
        try:
            for _ in range(8):  # every 0.5 s for 4 s
                time.sleep(0.5)
                registrant.keepalive(entry(), ttl=2)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=keep_alive, daemon=True)
    thread.start()
    # The "TTL refresh causes no reload" guarantee: only keepalives happen, nothing wakes.
    assert watcher.wait(after_register.index, 4.2) is None
    thread.join(5)
    assert not errors, errors
    assert deployments(watcher) == pruned(after_register.snapshot["deployment"])


def test_keepalive_writes_back_what_expired(backend: str, etcd: Etcd, opened: Opener) -> None:
    registry = opened(backend, etcd)
    registry.register(entry(), ttl=1)
    wait_for(lambda: deployments(registry) == {}, timeout=60, interval=0.1, what="expiry")
    registry.keepalive(entry(), ttl=30)
    assert deployments(registry) == {
        "feat-x": {"created": CREATED, "service": {"web": {"ip": "10.0.3.7", "port": "32768"}}}
    }


# --------------------------------------------------------------------------------------------
# deregistering


def test_deregister_removes_the_service_then_the_deployment(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    registry = opened(backend, etcd)
    web, api = entry(service="web"), entry(service="api", port=8080, created="2026-12-01T00:00:00Z")
    other = entry(deployment="feat-y")
    for each in (web, api, other):
        registry.register(each, ttl=30)

    registry.deregister(web)  # the service whose registration wrote `created`
    assert deployments(registry) == {
        "feat-x": {"created": CREATED, "service": {"api": {"ip": "10.0.3.7", "port": "8080"}}},
        "feat-y": {"created": CREATED, "service": {"web": {"ip": "10.0.3.7", "port": "32768"}}},
    }
    registry.deregister(api)
    snapshot = registry.read().snapshot
    assert "feat-x" not in snapshot["deployment"], snapshot
    assert "feat-y" in snapshot["deployment"]
    registry.deregister(api)  # again: nothing left to delete, no error


def test_created_outlives_its_writer_while_a_sibling_keeps_alive(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    first, second = opened(backend, etcd), opened(backend, etcd)
    first.register(entry(service="web"), ttl=1)  # writes `created`, then is never kept alive
    second.register(entry(service="api", created="2026-12-01T00:00:00Z"), ttl=30)
    wait_for(
        lambda: "web" not in deployments(second)["feat-x"].get("service", {}),
        timeout=60,
        interval=0.1,
        what="web to expire",
    )
    second.keepalive(entry(service="api", created="2026-12-01T00:00:00Z"), ttl=30)
    assert "created" in deployments(second)["feat-x"]
    second.deregister(entry(service="api"))
    # not pruned: v2 must not leave the directory of the expired service behind either
    assert second.read().snapshot == {"deployment": {}}


# --------------------------------------------------------------------------------------------
# history lost


def _write_v2_noise(etcd: Etcd, count: int) -> None:
    connection = http.client.HTTPConnection(LOOPBACK, etcd.client_port, timeout=5)
    try:
        for value in range(count):
            connection.request(
                "PUT",
                "/v2/keys/noise",
                body=f"value={value}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = connection.getresponse()
            response.read()
            assert response.status in (200, 201), response.status
    finally:
        connection.close()


def test_wait_raises_history_lost_then_recovers(backend: str, etcd: Etcd, opened: Opener) -> None:
    registry = opened(backend, etcd)
    registry.register(entry(), ttl=30)
    old = registry.read().index  # the reader pauses here: it does not wait for a while

    if backend == "etcd2":
        _write_v2_noise(etcd, 1010)  # v2 keeps the last 1000 events, of the whole keyspace
    else:
        registry.register(entry(service="api"), ttl=30)
        registry.register(entry(service="db"), ttl=30)
        etcd.v3("kv/compaction", {"revision": registry.read().index})

    with pytest.raises(HistoryLost):
        registry.wait(old, 2)
    current = registry.read()  # what the watcher does next: read in full, wait after that
    assert set(deployments(registry)["feat-x"]["service"]) >= {"web"}
    assert registry.wait(current.index, 0.3) is None


# --------------------------------------------------------------------------------------------
# etcd down, hung, several members, restarted


def _unavailable(action: Callable[[], object], within: float) -> RegistryUnavailable:
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as caught:
        action()
    took = time.monotonic() - started
    assert took < within, f"took {took:.2f}s"
    return caught.value


def test_stopped_etcd_is_unavailable_in_one_line(backend: str, etcd: Etcd, opened: Opener) -> None:
    registry = opened(backend, etcd)
    index = registry.read().index
    etcd.stop()
    endpoint = f"{LOOPBACK}:{etcd.client_port}"
    for action in (
        registry.read,
        lambda: registry.wait(index, 5),
        lambda: registry.register(entry(), ttl=30),
    ):
        message = str(_unavailable(action, within=3))
        assert "\n" not in message and endpoint in message, message
        assert "connection refused" in message, message


def test_hung_etcd_is_unavailable_after_the_timeout(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    registry = opened(backend, etcd, timeout=2.0)
    index = registry.read().index
    etcd.pause()
    try:
        # One timeout, not urllib3's four tries of it (8 s): a wide margin, for a busy machine.
        message = str(_unavailable(registry.read, within=6.0))
        assert "no answer within 2s" in message, message
        _unavailable(lambda: registry.wait(index, 5), within=6.0)
    finally:
        etcd.resume()
    assert registry.read().snapshot == {"deployment": {}}


def _leader_first(members: list[Etcd]) -> list[Etcd]:
    leader = members[0].v3("maintenance/status", {})["leader"]
    return sorted(
        members, key=lambda m: m.v3("maintenance/status", {})["header"]["member_id"] != leader
    )


def test_failover_to_the_other_members(
    backend: str, etcd_cluster: list[Etcd], opened: Opener
) -> None:
    # The leader listed first: killing the member in use also costs an election.
    etcd_cluster = _leader_first(etcd_cluster)
    registry = opened(backend, *etcd_cluster, timeout=3)  # an election may take a second
    registry.register(entry(service="web"), ttl=30)
    etcd_cluster[0].kill()

    assert "web" in deployments(registry)["feat-x"]["service"]
    registry.register(entry(service="api"), ttl=30)
    registry.keepalive(entry(service="web"), ttl=30)
    index = registry.read().index
    assert set(deployments(registry)["feat-x"]["service"]) == {"web", "api"}

    survivor = opened(backend, etcd_cluster[2])
    writer = later(0.3, lambda: survivor.register(entry(deployment="feat-y"), ttl=30))
    changed = registry.wait(index, 5)
    writer.join(5)
    assert changed is not None and changed > index
    registry.deregister(entry(service="api"))
    assert set(deployments(registry)["feat-x"]["service"]) == {"web"}


def test_reads_again_after_etcd_restarts(backend: str, etcd: Etcd, opened: Opener) -> None:
    registry = opened(backend, etcd)
    registry.register(entry(), ttl=60)
    before = registry.read()
    etcd.restart()
    after = registry.read()
    assert after.snapshot == before.snapshot
    assert registry.wait(after.index, 0.3) is None
    registry.keepalive(entry(), ttl=60)
    assert registry.read().snapshot == before.snapshot


def test_siblings_registering_and_leaving_concurrently_keep_created(
    backend: str, etcd: Etcd, opened: Opener
) -> None:
    problems: list[object] = []

    def churn(service: str) -> None:
        registry = opened(backend, etcd)
        mine = entry(service=service)
        try:
            for _ in range(40):
                registry.register(mine, ttl=30)
                seen = registry.read().snapshot["deployment"].get("feat-x", {})
                if "created" not in seen or service not in seen.get("service", {}):
                    problems.append(seen)
                registry.deregister(mine)
        except Exception as error:
            problems.append(error)

    threads = [threading.Thread(target=churn, args=(name,)) for name in ("web", "api", "db")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert problems == []
    assert opened(backend, etcd).read().snapshot == {"deployment": {}}


# --------------------------------------------------------------------------------------------
# authentication


def _enable_auth(backend: str, etcd: Etcd) -> None:
    if backend == "etcd2":
        _curl(f"{etcd.url}/v2/auth/users/root", "-XPUT", "-d", '{"user":"root","password":"pw"}')
        _curl(f"{etcd.url}/v2/auth/enable", "-XPUT")
    else:
        etcd.v3("auth/user/add", {"name": "root", "password": "pw"})
        etcd.v3("auth/user/grant", {"user": "root", "role": "root"})
        etcd.v3("auth/enable", {})


def test_user_and_password(backend: str, etcd: Etcd) -> None:
    _enable_auth(backend, etcd)
    registry = open_registry(url(backend, etcd), Tls(user="root", password="pw"), timeout=2)
    wrong = open_registry(url(backend, etcd), Tls(user="root", password="nope"), timeout=2)
    try:
        registry.register(entry(), ttl=30)
        index = registry.read().index
        assert "feat-x" in deployments(registry)
        assert registry.wait(index, 0.3) is None
        if isinstance(registry, EtcdV3Registry):  # a token the member no longer knows
            registry._clients[0].session.headers["Authorization"] = "expired"
            assert registry.wait(index, 0.3) is None
            registry._clients[0].session.headers["Authorization"] = "expired"
            assert "feat-x" in deployments(registry)
        message = str(_unavailable(wrong.read, within=3))
        assert "\n" not in message and "--etcd-user" in message, message
    finally:
        registry.close()
        wrong.close()


# --------------------------------------------------------------------------------------------
# TLS with client certificates


class TlsEtcd(Etcd):
    """The harness's etcd, serving clients over TLS and requiring a client certificate."""

    def __init__(self, base_dir: Path, pki: Path) -> None:
        super().__init__(base_dir)
        self.pki = pki

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.client_port}"

    def argv(self) -> list[str]:
        pki = self.pki
        tls = ["--cert-file", f"{pki}/server.pem", "--key-file", f"{pki}/server.key",
               "--client-cert-auth", "--trusted-ca-file", f"{pki}/ca.pem"]  # fmt: skip
        return [*super().argv(), *tls]

    def healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        context.load_cert_chain(str(self.pki / "client.pem"), str(self.pki / "client.key"))
        connection = http.client.HTTPSConnection(
            LOOPBACK, self.client_port, context=context, timeout=1
        )
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    pki = tmp_path_factory.mktemp("pki")
    (pki / "ext.cnf").write_text(
        "[ext]\nsubjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )

    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail(
            "openssl not found: install it (Debian: openssl); it makes the test's certificates"
        )

    def openssl(*args: str) -> None:
        subprocess.run([binary, *args], cwd=pki, check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-extensions", "ext",
                "-out", f"{name}.pem")  # fmt: skip
    (pki / "combined.pem").write_text(
        (pki / "client.pem").read_text() + (pki / "client.key").read_text()
    )
    return pki


def test_tls_with_client_certificate(
    backend: str, pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set in many environments; must not override --etcd-ca (requests lets it, by default).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki / "server.pem"))
    member = TlsEtcd(tmp_path / "etcd", pki)
    member.start()
    secure = f"{SCHEMES[backend]}s://{LOOPBACK}:{member.client_port}"
    ca = str(pki / "ca.pem")
    try:
        for tls in (
            Tls(ca=ca, cert=str(pki / "client.pem"), key=str(pki / "client.key")),
            Tls(ca=ca, cert=str(pki / "combined.pem")),  # certificate and key in one file
        ):
            registry = open_registry(secure, tls, timeout=2)
            try:
                registry.register(entry(), ttl=30)
                assert "feat-x" in deployments(registry)
                assert registry.wait(registry.read().index, 0.3) is None
            finally:
                registry.close()
        for tls in (Tls(ca=ca), Tls(cert=str(pki / "combined.pem"))):  # no client cert; no CA
            registry = open_registry(secure, tls, timeout=2)
            try:
                message = str(_unavailable(registry.read, within=3))
                assert "TLS: " in message and "\n" not in message, message
            finally:
                registry.close()
    finally:
        member.stop()


@pytest.mark.integration
def test_v3_reads_a_large_registry_in_pages_at_one_revision(etcd: Etcd, opened: Opener) -> None:
    """A full v3 read asks for the keys in ranges of page_size, each at the first range's
    revision: the same snapshot and revision as one range, whatever the page size."""
    registry = opened("etcd3", etcd)
    for number in range(12):
        registry.register(entry(deployment=f"feat-{number:02}", port=30000 + number), ttl=60)
    whole = registry.read()
    assert isinstance(registry, EtcdV3Registry)
    for size in (1, 2, 5, 7, 36, 37):  # 36 keys: 12 x (created, ip, port)
        registry.page_size = size
        paged = registry.read()
        assert (paged.snapshot, paged.index) == (whole.snapshot, whole.index), size
    assert len(whole.snapshot["deployment"]) == 12
