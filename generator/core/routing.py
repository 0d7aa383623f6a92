"""Validated deployments to the routing table: hostnames, guarded upstreams, collisions settled.

Collision rule (one rule, deterministic, the same on every frontend): when two routes land on one
hostname, the route of the deployment registered first (oldest `created`) keeps it. A deployment
without a readable `created` counts as newest. Ties go to a service route over a default entry
point, then to the smaller branch name, then to the smaller service name (as raw strings). The
losers are dropped and reported, so a later registration never silently takes over a live
hostname.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import datetime

from generator.core.config import Config, Network
from generator.core.model import (
    Address,
    Deployment,
    Instance,
    Member,
    Problem,
    Route,
    RouteKind,
    RoutingTable,
    Service,
    Token,
    Upstream,
)
from generator.core.names import hostname, key_path, label, short_hash, show

# A route some deployment asks for, before collisions with other deployments.
Candidate = Route


def where(route: Route) -> str:
    """The registry key a problem about this route points at."""
    if route.kind is RouteKind.DEFAULT:
        return key_path("deployment", route.deployment)
    return key_path("deployment", route.deployment, "service", route.service)


_LINK_LOCAL = "is link-local (where cloud metadata services answer)"
_NOT_A_HOST = "is not a host address"

# Never an upstream, whatever allowed_networks says: publishing these on a URL would hand out
# the frontend host's cloud credentials or reach no host at all.
ALWAYS_REFUSED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        ("169.254.0.0/16", _LINK_LOCAL),
        ("fe80::/10", _LINK_LOCAL),
        ("fd00:ec2::254/128", "is the EC2 instance metadata service's IPv6 address"),
        ("0.0.0.0/8", _NOT_A_HOST),
        ("::/128", _NOT_A_HOST),
        ("224.0.0.0/4", _NOT_A_HOST),  # multicast
        ("ff00::/8", _NOT_A_HOST),
        ("240.0.0.0/4", _NOT_A_HOST),  # reserved, and the broadcast address
        ("100.100.100.200/32", "is Alibaba Cloud's metadata service address"),
        ("192.0.0.192/32", "is Oracle Cloud's metadata service address"),
        (
            "64:ff9b:1::/48",
            "is a local-use NAT64 address (RFC 8215), whose IPv4 host depends on the "
            "translator's prefix length",
        ),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765, SIIT)

# A network as the integers `address in network` compares: (version, network, netmask).
Masked = tuple[int, int, int]


def masks(networks: Iterable[Network]) -> tuple[Masked, ...]:
    """Networks as the integers the guard compares (hashing networks is slow: make these once
    per config, see allowed_masks, and pass them in)."""
    return tuple(
        (network.version, int(network.network_address), int(network.netmask))
        for network in networks
    )


def allowed_masks(config: Config) -> tuple[Masked, ...]:
    """config.allowed_networks as `masks`: what guard, members and candidates take as `allowed`."""
    return masks(config.allowed_networks)


_REFUSED = masks(network for network, _ in ALWAYS_REFUSED)


def _hosts(address: Address) -> list[Address]:
    """The address and every IPv4 host it reaches through a 6to4, NAT64, IPv4-translated or
    IPv4-compatible form: each must pass the guard, or `64:ff9b::a9fe:a9fe` would reach the
    metadata service at 169.254.169.254. (An IPv4-mapped address is its IPv4 host already.)"""
    hosts: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        value = int(address)
        if address.sixtofour is not None:
            hosts.append(address.sixtofour)
        if address in _NAT64 or address in _TRANSLATED or 1 < value < 1 << 32:
            # the last 32 bits; ::a.b.c.d (IPv4-compatible, RFC 4291) but not :: and ::1
            hosts.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return hosts


def guard(
    ip: str, port: str, config: Config, allowed: tuple[Masked, ...] | None = None
) -> Upstream | str:
    """The upstream, or why it is refused (a phrase that follows the address). `allowed`:
    allowed_masks(config), made once by the caller (made here when it is None)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "is not an IPv4 or IPv6 address"
    # an integer without leading zeros (080 is not 80), ASCII digits only ("²".isdigit())
    if not (port.isascii() and port.isdigit()) or port[0] == "0" or int(port[:6]) > 65535:
        return f"has port {show(port)}, not a port number 1-65535"
    # An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is that IPv4 host: judge and route it as such.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if allowed is None:
        allowed = allowed_masks(config)
    for host in _hosts(address):
        version, value = host.version, int(host)
        for (network_version, network, mask), why in zip(_REFUSED, ALWAYS_REFUSED, strict=True):
            if version == network_version and value & mask == network:
                return f"{why[1]}: always refused"
        if value >> 24 == 127 if version == 4 else value == 1:  # loopback
            if config.allow_loopback:
                continue
            return "is loopback: refused unless allow_loopback is set (local use and tests only)"
        if not any(v == version and value & mask == network for v, network, mask in allowed):
            named = ", ".join(str(network) for network in config.allowed_networks) or "none"
            return f"is outside the allowed networks ({named}): refused; see allowed_networks"
    return Upstream(address, int(port))


def _address(ip: str, port: str) -> str:
    """ip:port as a person reads it: [fe80::1]:80, not fe80::1:80."""
    return f"[{show(ip)}]:{show(port)}" if ":" in ip else f"{show(ip)}:{show(port)}"


def _default_service(deployment: Deployment, config: Config) -> Service | None:
    for service in deployment.services:
        if service.name == config.default_service:
            return service
    # Decide by what is registered, not by what is complete: while web is half-written, or a
    # second service is, the default entry point must not point at the one complete service.
    if len(deployment.registered) == 1 and len(deployment.services) == 1:
        return deployment.services[0]
    return None


def instance_key(deployment: str, service: str, instance: str | None) -> str:
    """The registry key of one instance: its directory, or the service's for the plain keys."""
    if instance is None:
        return key_path("deployment", deployment, "service", service)
    return key_path("deployment", deployment, "service", service, "instance", instance)


def pool(deployment: str, service: str, members: tuple[Member, ...]) -> Token:
    """Where a service's requests go: its one address, or the name of the upstream group
    that balances over its several. The name is the service's hostname label and a hash of
    the raw names (two branches can share a label), the same while the service lives, so an
    instance that comes or goes changes the group's servers, not the hostname map."""
    upstreams = {member.upstream for member in members}
    if len(upstreams) == 1:
        return next(iter(upstreams)).text
    return Token(
        f"{label(deployment, service)}--{short_hash(f'{len(deployment)}:{deployment}{service}')}"
    )


def members(
    deployment: Deployment,
    service: Service,
    config: Config,
    allowed: tuple[Masked, ...] | None = None,
) -> tuple[tuple[Member, ...], list[Problem]]:
    """The instances of `service` whose addresses pass the guard, and a problem for each other."""
    passed: list[Member] = []
    refused: list[tuple[Instance, str]] = []
    for instance in service.instances:
        upstream = guard(instance.ip, instance.port, config, allowed)
        if isinstance(upstream, str):
            refused.append((instance, upstream))
        else:
            passed.append(Member(instance.id, upstream))
    # While some instance passes, the service routes: only the refused instances are skipped.
    cost = _INSTANCE_SKIPPED if passed else _SERVICE_SKIPPED
    problems = [
        Problem(
            instance_key(deployment.name, service.name, instance.id),
            "refused-upstream",
            f"upstream {_address(instance.ip, instance.port)} {why}; {cost}",
            deployment.name,
        )
        for instance, why in refused
    ]
    return tuple(passed), problems


_SERVICE_SKIPPED = "the service is skipped"
_INSTANCE_SKIPPED = "the instance is skipped; the service's other instances route"


def candidates(
    deployment: Deployment, config: Config, allowed: tuple[Masked, ...] | None = None
) -> tuple[list[Candidate], list[Problem]]:
    """The routes one deployment asks for, before collisions with other deployments (the route
    stage for one deployment; `allowed` as for guard)."""
    if allowed is None:
        allowed = allowed_masks(config)
    found: list[Candidate] = []
    problems: list[Problem] = []
    routed: dict[str, tuple[Member, ...]] = {}
    for service in deployment.services:
        passed, refused = members(deployment, service, config, allowed)
        problems.extend(refused)
        if not passed:
            continue
        routed[service.name] = passed
        host = hostname(deployment.name, service.name, config.domain)
        found.append(_route(host, deployment, service, passed, RouteKind.SERVICE))

    default = _default_service(deployment, config)
    waiting = config.default_service in deployment.registered  # its own problem says why
    if default is None and deployment.services and not waiting:
        names = ", ".join(show(name) for name in deployment.registered)
        problems.append(
            Problem(
                key_path("deployment", deployment.name),
                "no-default-service",
                f"has no default entry point {hostname(deployment.name, None, config.domain)}: no "
                f"service named {show(config.default_service)} among {names}; register one "
                "or set default_service",
                deployment.name,
            )
        )
    elif default is not None and default.name in routed:
        host = hostname(deployment.name, None, config.domain)
        found.append(_route(host, deployment, default, routed[default.name], RouteKind.DEFAULT))
    return found, problems


def _route(
    host: Token,
    deployment: Deployment,
    service: Service,
    passed: tuple[Member, ...],
    kind: RouteKind,
) -> Route:
    return Route(
        host,
        deployment.name,
        service.name,
        label(deployment.name),
        label(service.name),
        passed,
        kind,
        deployment.created,
        pool(deployment.name, service.name, passed),
        deployment.public,
    )


def _precedence(route: Candidate) -> tuple[bool, datetime | None, int, str, str]:
    created = route.created
    return (
        created is None,
        created,
        route.kind is not RouteKind.SERVICE,
        route.deployment,
        route.service,
    )


def reserved_hosts(config: Config) -> frozenset[str]:
    """The hostnames the frontend keeps for itself: the bare domain and reserved_names."""
    return frozenset(
        {str(config.domain)} | {f"{name}.{config.domain}" for name in config.reserved_names}
    )


def settle(candidates: Iterable[Candidate], config: Config) -> tuple[list[Route], list[Problem]]:
    """One route per hostname by the collision rule; reserved hostnames refused."""
    reserved = reserved_hosts(config)
    by_host: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_host.setdefault(candidate.host, []).append(candidate)
    routes: list[Route] = []
    problems: list[Problem] = []
    for host in sorted(by_host):
        winner, lost = settle_host(host, by_host[host], reserved)
        if winner is not None:
            routes.append(winner)
        problems.extend(lost)
    return routes, problems


def settle_host(
    host: str, contenders: list[Candidate], reserved: frozenset[str]
) -> tuple[Route | None, list[Problem]]:
    """The route that keeps `host` (None if it is reserved) and the problems of the others.

    The order of `contenders` does not matter: the collision rule orders them completely."""
    if len(contenders) > 1:
        contenders = sorted(contenders, key=_precedence)
    if host in reserved:
        return None, [
            Problem(
                where(loser),
                "reserved-host",
                f"asks for {host}, which the frontend keeps for itself (the bare "
                "domain and reserved_names); rename the branch or service",
                loser.deployment,
            )
            for loser in contenders
        ]
    winner, *losers = contenders
    return winner, [
        Problem(
            where(loser),
            "host-collision",
            f"{_describe(loser)} lands on {host}, which belongs to "
            f"{_describe(winner)} ({_why(winner, loser)}); this route "
            "is dropped: rename the branch or service",
            loser.deployment,
        )
        for loser in losers
    ]


def _why(winner: Route, loser: Route) -> str:
    """The step of the collision rule that decided, in words."""
    if winner.created is not None and loser.created is None:
        return "registered first: a deployment without a readable created counts as newest"
    if winner.created != loser.created:
        return "registered first"
    if winner.kind is not loser.kind:
        return "registered at the same time: a service route beats a default entry point"
    return "registered at the same time: the smaller branch, then service, name wins"


def _describe(route: Route) -> str:
    if route.kind is RouteKind.DEFAULT:
        return f"the default entry point of {show(route.deployment)}"
    return f"service {show(route.service)} of {show(route.deployment)}"


def build_table(
    deployments: Iterable[Deployment], config: Config, problems: Iterable[Problem] = ()
) -> RoutingTable:
    """The route stage: the routing table for validated deployments (candidates of each, then
    settle); `problems` found earlier are carried along."""
    allowed = allowed_masks(config)
    found: list[Candidate] = []
    all_problems = list(problems)
    for deployment in deployments:
        asked, trouble = candidates(deployment, config, allowed)
        found.extend(asked)
        all_problems.extend(trouble)
    routes, lost = settle(found, config)
    return RoutingTable(config.domain, tuple(routes), tuple(sorted({*all_problems, *lost})))
