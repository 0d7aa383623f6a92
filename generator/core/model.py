"""The records that flow through the pipeline: plain, frozen, typed data."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

# RFC 3339 in UTC to the second, as `date -u +%Y-%m-%dT%H:%M:%SZ` writes it: the one way every
# time is written (registry `created` values, the routing table, the site, the rendered config).
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_INERT = re.compile(r"[A-Za-z0-9._:/\[\]-]+", re.ASCII)


class Token(str):
    """A string of characters that are inert in nginx syntax: letters, digits and . _ : / [ ] -.

    Only ints and Tokens may be printed by a template (see render.py), and a Token cannot be
    made of anything else: no space, quote, brace, semicolon, $, # or newline reaches the config.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> Token:
        if not _INERT.fullmatch(text):
            raise ValueError(f"{text!r} holds characters that are not inert in nginx syntax")
        return super().__new__(cls, text)


_PHRASE = re.compile(r"[A-Za-z0-9 ._-]+", re.ASCII)


class Quoted(str):
    """A phrase of letters, digits, spaces and . _ - in double quotes (basic_auth_realm): the
    Token gate lets it through like a Token, since nothing inside the quotes is special to
    nginx (no quote, backslash, $, ; or newline)."""

    __slots__ = ()

    def __new__(cls, text: str) -> Quoted:
        if not _PHRASE.fullmatch(text):
            raise ValueError(f"{text!r} holds characters other than letters, digits, ' ._-'")
        return super().__new__(cls, f'"{text}"')


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """Something in the snapshot that was skipped or settled, with where it is and what to do."""

    key: str  # registry key path, e.g. /deployment/feat-x/service/web/port
    code: str  # stable kebab-case name of the kind of problem, e.g. missing-port
    message: str  # one line: what is wrong and what to do about it
    # The deployment it is under, as registered: the key above shows the name quoted or cut
    # short when it must (feature/login is /deployment/"feature/login"), so it cannot be read
    # back from the key. Said by the key already, so not compared.
    deployment: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.key}: {self.message} [{self.code}]"

    def as_json(self) -> dict[str, str]:
        return {"key": self.key, "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True, order=True)
class Upstream:
    """A validated container address."""

    address: Address
    port: int
    # ipaddress's str() is slow; a Token, so that a single-address route's pool is this very
    # string (100,000 routes would otherwise hold 8 MB of copies)
    text: Token = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        object.__setattr__(self, "text", Token(f"{host}:{self.port}"))

    def __str__(self) -> str:
        return self.text


class RouteKind(StrEnum):
    SERVICE = "service"  # <branch>-<service>.<domain>
    DEFAULT = "default"  # <branch>.<domain>: the deployment's default entry point


@dataclass(frozen=True, slots=True)
class Instance:
    """One container of a service, of the right shape; routing still guards its address.

    A service's instances are registered under .../service/<service>/instance/<id>/{ip,port};
    the seed's layout (.../service/<service>/{ip,port}, written by curl) is the instance
    whose id is None.
    """

    id: str | None  # raw, as registered; None: the service's own ip and port keys
    ip: str
    port: str


def instance_order(instance: Instance | Member) -> tuple[bool, str]:
    """Instances in a stable order whatever the registry's: the plain keys first, then by id."""
    id = instance.id if isinstance(instance, Instance) else instance.instance
    return (id is not None, id or "")


@dataclass(frozen=True, slots=True)
class Service:
    """A service with its complete instances (sorted by instance_order; at least one)."""

    name: str  # raw, as registered
    instances: tuple[Instance, ...]


@dataclass(frozen=True, slots=True)
class Member:
    """One routed instance of a service: its id and its guarded address."""

    instance: str | None  # None: the service's own ip and port keys
    upstream: Upstream


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment that passed validation (its broken services already dropped)."""

    name: str
    created: datetime | None  # aware, UTC; None when missing or unreadable
    services: tuple[Service, ...]  # the complete ones
    registered: tuple[str, ...]  # every service name under /service, complete or not
    # /deployment/<branch>/public = true: served without the access control (basic auth,
    # client_networks) every other deployment is behind, when that is configured
    public: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One hostname and where it goes."""

    host: Token
    deployment: str  # raw branch name as registered
    service: str  # raw service name as registered
    deployment_label: Token  # DNS label of the branch, as it appears in hostnames and logs
    service_label: Token
    members: tuple[Member, ...]  # the service's routed instances, by instance_order
    kind: RouteKind
    created: datetime | None  # of the deployment; decides collisions
    # Where nginx sends the requests: the address of the one upstream, or the name of the
    # upstream group that balances over several (render.py prints the group's block).
    pool: Token
    public: bool = False  # of the deployment (Deployment.public)
    # The map value nginx sees: deployment label, service label and pool, '/'-separated.
    target: Token = field(init=False, compare=False)

    def __post_init__(self) -> None:
        target = Token(f"{self.deployment_label}/{self.service_label}/{self.pool}")
        object.__setattr__(self, "target", target)  # made once: the hot path reads it often

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """The distinct addresses of the members, sorted (IPv4 before IPv6: ipaddress cannot
        compare the two): the servers of the pool."""
        return tuple(sorted({member.upstream for member in self.members}, key=_upstream_order))

    def as_json(self) -> dict[str, Any]:
        return {
            "host": str(self.host),
            "kind": self.kind.value,
            "deployment": self.deployment,
            "service": self.service,
            "upstream": str(self.pool),
            "instances": [
                {"instance": member.instance, "upstream": str(member.upstream)}
                for member in self.members
            ],
            "created": None if self.created is None else f"{self.created:{RFC3339}}",
            # only when true: a table without public deployments reads as it always did
            **({"public": True} if self.public else {}),
        }


def _upstream_order(upstream: Upstream) -> tuple[int, Address, int]:
    return (upstream.address.version, upstream.address, upstream.port)


# A deployment as the config file, the index and the caches order and key it:
# (its label, its raw branch name). Two branches can share a label.
DeploymentKey = tuple[Token, str]


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every route, sorted by host; at most one route per host."""

    domain: Token
    routes: tuple[Route, ...]
    problems: tuple[Problem, ...] = field(default=())

    def by_host(self) -> dict[str, Route]:
        return {route.host: route for route in self.routes}

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": str(self.domain),
            "routes": [route.as_json() for route in self.routes],
        }
