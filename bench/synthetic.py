"""Deterministic synthetic registries, and a fast writer that loads one into a real etcd.

A registry of N routes is N/4 deployments, each with three services (`web` and two others) and
so four routes: one per service plus the default entry point `<branch>.<domain>` (the `web`
service). Branch names look like real ones (`feature/team-12-ticket-3456-some-words`) and are
registered under their slug, as `devtest-router register` writes them. Upstreams are private
IPv4 addresses (never contacted: only the text is benchmarked), or one loopback address for the
live benchmarks, where a request might reach them.

Everything depends only on the seed and the index, so two runs (and two machines) benchmark
the same bytes.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ROUTES_PER_DEPLOYMENT = 4  # three services plus the default entry point
DEFAULT_SERVICE = "web"
OTHER_SERVICES = ("api", "worker", "admin", "docs", "auth", "search", "media", "graphql")
KINDS = ("feature", "feature", "feature", "bugfix", "hotfix", "chore", "renovate")
# No word equals a service name, so `<branch>-<service>` never collides with another branch.
WORDS = (
    "login", "signup", "checkout", "cart", "invoice", "billing", "profile", "avatar", "search",
    "filter", "export", "import", "csv", "pdf", "report", "dashboard", "chart", "graph", "map",
    "upload", "download", "cache", "retry", "timeout", "refactor", "cleanup", "bump", "deps",
    "typo", "copy", "i18n", "german", "french", "dark", "mode", "theme", "button", "modal",
    "form", "validation", "email", "sms", "push", "notify", "queue", "cron", "job", "batch",
    "perf", "memory", "leak", "fix", "crash", "ios", "android", "safari", "firefox", "oauth",
    "sso", "saml", "token", "session", "cookie", "consent", "gdpr", "audit", "log", "metrics",
)  # fmt: skip
WORDS = tuple(word for word in WORDS if word not in (DEFAULT_SERVICE, *OTHER_SERVICES))
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
PREFIX = "/deployment"


def slug(name: str) -> str:
    """As generator.core.names.slug (GitLab's CI_COMMIT_REF_SLUG), kept here so that this module
    needs nothing from the package under test."""
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower()).strip("-")


def branch_name(index: int, seed: int = 0) -> str:
    """A realistic, unique branch name: the ticket number is the index."""
    rng = random.Random(f"{seed}/branch/{index}")
    words = "-".join(rng.sample(WORDS, rng.randint(1, 4)))
    return f"{rng.choice(KINDS)}/team-{rng.randint(1, 40)}-ticket-{1000 + index}-{words}"


def private_ipv4(rng: random.Random) -> str:
    network = rng.random()
    if network < 0.7:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    if network < 0.9:
        return f"172.{rng.randrange(16, 32)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where every service points; None: a private IPv4 address and port per service."""

    ip: str | None = None
    port: int | None = None


PRIVATE = Upstream()


def deployment(
    index: int, seed: int = 0, upstream: Upstream = PRIVATE
) -> tuple[str, dict[str, Any]]:
    """(key under /deployment, its value in the snapshot) for deployment number `index`."""
    rng = random.Random(f"{seed}/deployment/{index}")
    services = (DEFAULT_SERVICE, *rng.sample(OTHER_SERVICES, 2))
    return slug(branch_name(index, seed)), _deployment_value(rng, index, services, upstream)


def _deployment_value(
    rng: random.Random, index: int, services: Iterable[str], upstream: Upstream
) -> dict[str, Any]:
    """A deployment's created time and its services' addresses, drawn from `rng`."""
    created = EPOCH + timedelta(seconds=37 * index + rng.randrange(30))
    return {
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "service": {
            name: {
                "ip": upstream.ip or private_ipv4(rng),
                "port": str(upstream.port or rng.randrange(32768, 61000)),
            }
            for name in services
        },
    }


def registry(
    routes: int, seed: int = 0, upstream: Upstream = PRIVATE, start: int = 0
) -> dict[str, Any]:
    """An etcdwatch-shaped snapshot with `routes` routes (rounded up to a multiple of 4)."""
    count = -(-routes // ROUTES_PER_DEPLOYMENT)
    return {"deployment": dict(deployment(i, seed, upstream) for i in range(start, start + count))}


# Issue 14's comparison with confd: 10 services a branch (1,000 services = 100 branches).
# "grpc" is no word of WORDS, so `<branch>-grpc` never collides with another branch either.
WIDE_SERVICES = (DEFAULT_SERVICE, *OTHER_SERVICES, "grpc")
SERVICES_PER_BRANCH = len(WIDE_SERVICES)


def wide_deployment(
    index: int, seed: int = 0, upstream: Upstream = PRIVATE
) -> tuple[str, dict[str, Any]]:
    """(key, value) of deployment number `index` with all 10 services of WIDE_SERVICES."""
    rng = random.Random(f"{seed}/wide/{index}")
    return slug(branch_name(index, seed)), _deployment_value(rng, index, WIDE_SERVICES, upstream)


def wide_registry(services: int, seed: int = 0, upstream: Upstream = PRIVATE) -> dict[str, Any]:
    """A snapshot of `services` services, 10 a branch (rounded up to whole branches): the
    shape of issue 14's comparison with confd. Each branch also has its default entry point,
    so the routes are services + branches (1,000 services: 1,100 routes)."""
    count = -(-services // SERVICES_PER_BRANCH)
    return {"deployment": dict(wide_deployment(i, seed, upstream) for i in range(count))}


def instance_id(rng: random.Random) -> str:
    """An ECS task id, as `register` takes it from the task metadata: 32 hex digits."""
    return f"{rng.getrandbits(128):032x}"


def replicated(services: int, instances: int, seed: int = 0) -> dict[str, Any]:
    """An etcdwatch-shaped snapshot of `services` services (three a deployment, as registry()
    makes them, the last deployment fewer), each with `instances` instances registered under
    .../service/<service>/instance/<id>/{ip,port}: one upstream group per service."""
    found: dict[str, Any] = {}
    for index in range(-(-services // 3)):
        name, value = deployment(index, seed)
        rng = random.Random(f"{seed}/instances/{index}")
        kept = list(value["service"])[: services - 3 * index]
        value["service"] = {
            service: {
                "instance": {
                    instance_id(rng): {
                        "ip": private_ipv4(rng),
                        "port": str(rng.randrange(32768, 61000)),
                    }
                    for _ in range(instances)
                }
            }
            for service in kept
        }
        found[name] = value
    return {"deployment": found}


def replaced_instance(snapshot: dict[str, Any], which: int = 0) -> dict[str, Any]:
    """A copy of `snapshot` in which one deployment's web service replaced one instance by a
    new one (one step of a rolling redeploy): its group's servers change, its map lines stay."""
    deployments = dict(snapshot["deployment"])
    name = sorted(deployments)[which % len(deployments)]
    value = json.loads(json.dumps(deployments[name]))
    held = value["service"][DEFAULT_SERVICE]["instance"]
    rng = random.Random(f"replaced/{name}/{which}/{sorted(held)}")
    del held[sorted(held)[which % len(held)]]
    held[instance_id(rng)] = {"ip": private_ipv4(rng), "port": str(rng.randrange(32768, 61000))}
    deployments[name] = value
    return {**snapshot, "deployment": deployments}


def changed_one(snapshot: dict[str, Any], which: int = 0) -> dict[str, Any]:
    """A copy of `snapshot` in which one deployment changed: its web service moved (a redeploy)."""
    deployments = dict(snapshot["deployment"])
    name = sorted(deployments)[which % len(deployments)]
    value = json.loads(json.dumps(deployments[name]))
    web = value["service"][DEFAULT_SERVICE]
    web["port"] = str(int(web["port"]) % 60000 + 1)
    deployments[name] = value
    return {**snapshot, "deployment": deployments}


def pairs(snapshot: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The etcd keys and values of a snapshot, as `register` writes them."""
    for name, value in snapshot["deployment"].items():
        yield f"{PREFIX}/{name}/created", value["created"]
        for service, entry in value["service"].items():
            if "ip" in entry:
                yield f"{PREFIX}/{name}/service/{service}/ip", entry["ip"]
                yield f"{PREFIX}/{name}/service/{service}/port", entry["port"]
            for id, instance in entry.get("instance", {}).items():
                yield f"{PREFIX}/{name}/service/{service}/instance/{id}/ip", instance["ip"]
                yield f"{PREFIX}/{name}/service/{service}/instance/{id}/port", instance["port"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdWriter:
    """Writes keys into a real etcd on 127.0.0.1 through the v3 JSON gateway (or v2 API).

    v3: one `POST /v3/kv/txn` per batch of up to 128 puts (etcd's default --max-txn-ops), on one
    kept-alive connection; 175,000 keys (100,000 routes) take a few seconds. v2 has no
    transactions: one PUT per key on the same connection.
    """

    BATCH = 128

    def __init__(self, port: int, api: str = "v3", timeout: float = 30.0) -> None:
        if api not in ("v2", "v3"):
            raise ValueError(api)
        self.api = api
        self.port = port
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def _post(self, path: str, body: bytes, content_type: str, method: str = "POST") -> Any:
        self._connection.request(method, path, body=body, headers={"Content-Type": content_type})
        response = self._connection.getresponse()
        data = response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"etcd {method} {path}: HTTP {response.status}: {data[:200]!r}")
        return json.loads(data) if data else None

    def put_many(self, items: Iterable[tuple[str, str]]) -> int:
        """Write every (key, value); returns the number of keys written."""
        batch: list[tuple[str, str]] = []
        written = 0
        for item in items:
            batch.append(item)
            if len(batch) == self.BATCH:
                written += self._write(batch)
                batch = []
        if batch:
            written += self._write(batch)
        return written

    def _write(self, batch: list[tuple[str, str]]) -> int:
        if self.api == "v3":
            ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in batch]
            self._post("/v3/kv/txn", json.dumps({"success": ops}).encode(), "application/json")
        else:
            from urllib.parse import quote, urlencode

            for key, value in batch:
                self._post(
                    "/v2/keys" + quote(key),
                    urlencode({"value": value}).encode(),
                    "application/x-www-form-urlencoded",
                    method="PUT",
                )
        return len(batch)

    def load(self, snapshot: dict[str, Any]) -> int:
        return self.put_many(pairs(snapshot))

    def close(self) -> None:
        self._connection.close()


def main() -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Write a synthetic registry snapshot (JSON).")
    parser.add_argument("--routes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="file to write (default: standard output)")
    args = parser.parse_args()
    text = json.dumps(registry(args.routes, args.seed))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
