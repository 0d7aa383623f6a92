"""An etcd outage longer than the registrations' TTL costs no request: a real etcd (v2 and v3
APIs) stopped and started again on its data dir, a real nginx, real backends, and
`devtest-router watch` as the process a user runs, with a client asking every 20 ms.

What etcd 3.4 does across the restart (seen here, and what the tests rely on):
- v2: a key's TTL is an absolute expiry time; keys whose time passed while etcd was down are
  gone at the first read after the restart. The watcher reconnects to a registry without them.
- v3: every lease is renewed at the restart (its full TTL again), so the keys stay for one more
  TTL; a client that comes back keeps its lease alive and nothing is ever missing. The keys of
  a client that does not come back go one TTL after the restart: a removal during the grace.
  The test also deletes a registration during the grace and writes it again (a client that
  registers anew), which v3 otherwise never shows.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest
from harness import (
    LOOPBACK,
    Backend,
    Etcd,
    Nginx,
    b64,
    free_ports,
    http_request,
    wait_for,
)
from watch_harness import DOMAIN, Frontend, registry_url

pytestmark = pytest.mark.integration

TTL = 3  # seconds, the registrations' TTL here
GRACE = 15  # seconds, the watcher's --removal-grace here
OUTAGE = 2 * TTL  # seconds etcd is down: longer than the TTL


class Keys:
    """A service container's registration written straight into etcd, as a client would: ip,
    port and created with a TTL (v2) or a lease (v3)."""

    def __init__(self, kind: str, member: Etcd) -> None:
        self.kind = kind
        self.member = member
        self.leases: dict[str, str] = {}

    def _v2(self, key: str, method: str, **params: object) -> int:
        response = http_request(
            self.member.client_port,
            f"{LOOPBACK}:{self.member.client_port}",
            f"/v2/keys/deployment/{key}",
            method=method,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urlencode(params).encode(),
        )
        return response.status

    def _pairs(self, name: str, port: int) -> dict[str, str]:
        return {
            f"{name}/created": "2026-11-28T10:00:00Z",
            f"{name}/service/web/ip": LOOPBACK,
            f"{name}/service/web/port": str(port),
        }

    def register(self, name: str, port: int, ttl: int) -> None:
        if self.kind == "etcd2":
            for key, value in self._pairs(name, port).items():
                assert self._v2(key, "PUT", value=value, ttl=ttl) in (200, 201)
            return
        lease = str(self.member.v3("lease/grant", {"TTL": ttl})["ID"])
        self.leases[name] = lease
        for key, value in self._pairs(name, port).items():
            self.member.v3(
                "kv/put", {"key": b64(f"/deployment/{key}"), "value": b64(value), "lease": lease}
            )

    def keepalive(self, name: str, port: int, ttl: int) -> None:
        """Extend the registration's TTL without an event (v2 refresh, v3 lease keepalive)."""
        if self.kind == "etcd2":
            for key in self._pairs(name, port):
                self._v2(key, "PUT", ttl=ttl, refresh="true", prevExist="true")
        else:
            self.member.v3("lease/keepalive", {"ID": self.leases[name]})

    def delete(self, name: str) -> None:
        prefix = f"/deployment/{name}/"
        end = prefix[:-1] + chr(ord("/") + 1)
        self.member.v3("kv/deleterange", {"key": b64(prefix), "range_end": b64(end)})

    def present(self, name: str) -> bool:
        if self.kind == "etcd2":
            return self._v2(f"{name}/service/web/ip", "GET") == 200
        found = self.member.v3("kv/range", {"key": b64(f"/deployment/{name}/service/web/ip")})
        return int(found.get("count", 0)) > 0


@dataclass
class Client:
    """Asks `host` through nginx every 20 ms in a thread: what each request got."""

    port: int
    host: str
    log: Path
    seen: list[str] = field(default_factory=list)
    first_other_after_grace: bool | None = None  # at its first answer not from its backend
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                response = http_request(self.port, self.host, timeout=5)
                got = (
                    json.loads(response.body)["name"]
                    if response.status == 200
                    else f"HTTP {response.status}"
                )
            except (OSError, ValueError) as error:
                got = type(error).__name__
            if self.seen and got != self.seen[0] and self.first_other_after_grace is None:
                self.first_other_after_grace = "removal grace over" in self.log.read_text()
            self.seen.append(got)
            time.sleep(0.02)

    def stop(self) -> list[str]:
        self.stopping.set()
        self.thread.join(10)
        return self.seen


def runs(seen: list[str]) -> list[tuple[str, int]]:
    """What a client got, as (answer, how many times in a row)."""
    found: list[tuple[str, int]] = []
    for got in seen:
        if found and found[-1][0] == got:
            found[-1] = (got, found[-1][1] + 1)
        else:
            found.append((got, 1))
    return found


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Etcd]:
    client, peer = free_ports(2)
    started = Etcd(tmp_path / "etcd", client_port=client, peer_port=peer)
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("kind", ["etcd2", "etcd3"])
def test_an_etcd_outage_longer_than_the_ttl_costs_no_request(
    kind: str,
    member: Etcd,
    nginx: Nginx,
    tmp_path: Path,
    backends: Callable[..., dict[str, Backend]],
) -> None:
    found = backends("kept", "gone", "new")
    router = Frontend(nginx, registry_url(kind, member), tmp_path, ["--removal-grace", str(GRACE)])
    keys = Keys(kind, member)
    clients: list[Client] = []
    try:
        keys.register("kept", found["kept"].port, TTL)
        keys.register("gone", found["gone"].port, TTL)
        refreshing = threading.Event()
        refreshing.set()

        def refresh() -> None:  # the clients' keepalives, every TTL/3
            while refreshing.is_set():
                for name in ("kept", "gone"):
                    keys.keepalive(name, found[name].port, TTL)
                time.sleep(TTL / 3)

        refresher = threading.Thread(target=refresh, daemon=True)
        refresher.start()
        router.start()
        router.wait_route(f"kept-web.{DOMAIN}", "kept")
        router.wait_route(f"gone-web.{DOMAIN}", "gone")
        clients = [
            Client(nginx.port, f"{name}-web.{DOMAIN}", router.log) for name in ("kept", "gone")
        ]
        kept, gone = clients
        wait_for(lambda: len(kept.seen) >= 10, 60, what="the clients asking")

        refreshing.clear()  # the clients' keepalives stop with etcd (they cannot reach it)
        refresher.join(10)
        keys.keepalive("kept", found["kept"].port, TTL)  # the last refresh: TTL s left from here
        keys.keepalive("gone", found["gone"].port, TTL)
        member.kill()
        wait_for(lambda: "retrying" in router.log.read_text(), 60, what="the outage noticed")
        time.sleep(OUTAGE)  # etcd stays down longer than the TTL
        member.start()
        if kind == "etcd2":  # the keys expired while etcd was down
            wait_for(lambda: not keys.present("kept"), 60, what="v2 keys expired")
        wait_for(
            lambda: "holding back removals" in router.log.read_text(),
            30,
            what=f"the watcher to reconnect; its log:\n{router.log_tail()}",
        )
        # The kept service's client registers again within the grace (v3: its registration
        # is deleted first, as a lost one would be); gone's never comes back.
        if kind == "etcd3":
            keys.delete("kept")
        keys.register("kept", found["kept"].port, 60)
        keys.register("new", found["new"].port, 60)  # an addition during the grace: at once
        router.wait_route(f"new-web.{DOMAIN}", "new")
        assert "removal grace over" not in router.log.read_text(), router.log_tail()

        wait_for(
            lambda: gone.seen[-1:] == ["HTTP 404"],
            GRACE + 30,
            what=f"gone's route removed after the grace; watcher log:\n{router.log_tail()}",
        )
        wait_for(lambda: len(nginx.worker_pids()) == 1, 60, what="old workers to quit")
        settled = len(kept.seen)
        wait_for(lambda: len(kept.seen) >= settled + 10, 60, what="requests after the removal")
        asked = kept.stop()
        answers = gone.stop()
    finally:
        for client in clients:
            client.stop()
        router.stop()

    failed = [got for got in asked if got != "kept"]
    assert not failed, f"{len(failed)} of {len(asked)} requests to kept failed: {runs(asked)}"
    # gone answered until the grace was over, then (after its reload) 404, never a failure;
    # during the reload an old worker may still answer one request with the old config.
    first = answers.index("HTTP 404")
    assert set(answers) == {"gone", "HTTP 404"}, runs(answers)
    assert set(answers[:first]) == {"gone"} and answers[-5:] == ["HTTP 404"] * 5, runs(answers)
    assert gone.first_other_after_grace is True
    log = router.log.read_text()
    assert f"holding back removals for {GRACE} s" in log
    assert (
        "removal grace over: 3 keys of 1 deployment held back are still missing; removing them"
    ) in log, router.log_tail()
    print(
        f"{kind}: kept asked {len(asked)} times, 0 failed; gone answered {first} times, then 404"
        f" {len(answers) - first} times;\n"
        + "\n".join(line for line in log.splitlines() if "grace" in line or "again" in line)
    )
