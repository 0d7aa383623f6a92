"""The routing table to nginx config text, through the Jinja2 templates in templates/."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import jinja2

from generator.core.config import Config
from generator.core.errors import TemplateProblem
from generator.core.model import RFC3339, DeploymentKey, Quoted, Route, RoutingTable, Token
from generator.core.site_layout import domain_pattern

TEMPLATE = "routes.conf.j2"
GROUP_TEMPLATE = "deployment.conf.j2"
POOLS_TEMPLATE = "upstreams.conf.j2"
_POINTER = 8  # sizeof(void *) on the 64-bit machines nginx runs on
_CACHE_LINE = 64


class UncheckedValueError(jinja2.TemplateError):
    """A template tried to print something that is neither an int nor a Token."""


def _only_checked(value: Any) -> Any:
    """Jinja's finalize hook, the Token gate: the one way from data into nginx syntax."""
    if isinstance(value, Token | Fragment | Quoted) or (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        return value
    if value is None:
        return ""
    raise UncheckedValueError(
        f"a template printed a {type(value).__name__} that was never checked: only Tokens and "
        "ints may reach the nginx config"
    )


def environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """The nginx templates' Jinja environment. The shell passes the loader in
    (resources.template_loader: the user's folder, then the bundled one): reading the
    templates is IO, and the core does none."""
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        finalize=_only_checked,
        autoescape=False,  # nginx syntax, not HTML: safety comes from Tokens, not escaping
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@dataclass(frozen=True, slots=True)
class HashSize:
    """map_hash_* values for nginx's static hash of hostnames.

    nginx stores a name in (pointer + name length + 2, pointer-aligned) bytes; a bucket must hold
    the names that hash to it plus a terminating pointer. With four slots per name and room for
    six of the longest names per bucket, a bucket overflows with odds far below one in a million,
    so nginx finds a layout on its first try (it starts its search 1,000 below max_size).
    """

    max_size: int
    bucket_size: int

    @classmethod
    def for_names(cls, count: int, longest: int) -> HashSize:
        element = _POINTER + _align(longest + 2, _POINTER)
        bucket = max(_CACHE_LINE, _align(6 * element + _POINTER, _CACHE_LINE))
        return cls(max_size=max(2048, 4 * count), bucket_size=bucket)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def rfc3339(moment: datetime | None) -> Token | None:
    return None if moment is None else Token(moment.strftime(RFC3339))


class Fragment(str):
    """Text a bundled or override template rendered from Tokens and ints alone.

    The Token gate lets it through, so a deployment's lines are rendered once and printed
    by the main template as they are.
    """

    __slots__ = ()


# Stands in for every deployment's lines while the rest of the file is rendered and checked: a
# map entry, so the check can see it is inside `map $host $devtest_route` and nowhere else.
ROUTES_MARKER = Fragment("    routes.devtest-router.invalid marker;\n")

# Stands in for every deployment's upstream blocks in the same way: an upstream block (empty)
# named as no pool can be (a pool is an address or a DNS label), so the check can see it stands
# at http level, once. A template without it still renders while no service has several
# addresses.
UPSTREAMS_MARKER_POOL = "upstreams.devtest-router.invalid"
UPSTREAMS_MARKER = Fragment(f"\nupstream {UPSTREAMS_MARKER_POOL} {{}}\n")
_MARKERS = re.compile("|".join(re.escape(marker) for marker in (ROUTES_MARKER, UPSTREAMS_MARKER)))

# An upstream group: its name (a route's pool) and its servers (the route's upstreams, sorted).
Pool = tuple[Token, tuple[Token, ...]]

# A deployment's part of the file: its label, creation time, (host, target, kind) per route
# and the upstream groups those routes name.
Group = tuple[Token, Token | None, tuple[tuple[Token, Token, str], ...], tuple[Pool, ...]]


class Part(NamedTuple):
    """One deployment's rendered text and what the check must find in it, exactly."""

    lines: Fragment  # its entries in the hostname map
    routes: frozenset[tuple[str, str]]  # (hostname, target) of those entries
    blocks: Fragment  # its upstream blocks at http level; "" when no service has several addresses
    pools: frozenset[Pool]  # (name, servers) of those blocks


def by_deployment(table: RoutingTable) -> dict[DeploymentKey, tuple[Route, ...]]:
    """The routes of the table by deployment, in file order (each deployment's sorted by host)."""
    found: dict[DeploymentKey, list[Route]] = {}
    for route in table.routes:  # sorted by host already
        found.setdefault((route.deployment_label, route.deployment), []).append(route)
    return {key: tuple(found[key]) for key in sorted(found)}


def render_group(group: Group, templates: jinja2.Environment) -> Part:
    """One deployment's lines in the hostname map (deployment.conf.j2) and its upstream blocks
    (upstreams.conf.j2, rendered only for a deployment that has some)."""
    label, created, routes, pools = group
    lines = _render(
        templates,
        GROUP_TEMPLATE,
        label=label,
        created=created,
        routes=[{"host": host, "target": target, "kind": kind} for host, target, kind in routes],
    )
    blocks = (
        _render(
            templates,
            POOLS_TEMPLATE,
            label=label,
            pools=[{"name": name, "servers": servers} for name, servers in pools],
        )
        if pools
        else ""
    )
    return Part(
        Fragment(lines),
        frozenset((host, target) for host, target, _ in routes),
        Fragment(blocks),
        frozenset(pools),
    )


def routes_id(parts: Sequence[Part]) -> Token:
    """A name for the routes as rendered, that depends on nothing else: problems and stray keys
    in the registry do not change it, so they never change the file or reload nginx."""
    return joined_routes_id(
        "".join(part.lines for part in parts), "".join(part.blocks for part in parts)
    )


def joined_routes_id(lines: str, blocks: str = "") -> Token:
    """routes_id of the parts' lines and blocks, each already joined into one string. (Without
    upstream blocks it is the digest of the lines alone, as before there were any.)"""
    digest = hashlib.sha256(lines.encode("ascii"))
    if blocks:
        digest.update(blocks.encode("ascii"))
    return Token("sha256:" + digest.hexdigest()[:16])


def group_of(routes: Sequence[Route]) -> Group:
    """The group of one deployment's routes (sorted by host)."""
    return (
        routes[0].deployment_label,
        rfc3339(routes[0].created),
        tuple((route.host, route.target, route.kind.value) for route in routes),
        pools_of(routes),
    )


def pools_of(routes: Sequence[Route]) -> tuple[Pool, ...]:
    """The upstream groups `routes` name, by name: one per service with several distinct
    addresses (its route and its default entry point name the same one). A route of one
    address names no group: its map line holds the address."""
    several = [route for route in routes if len(route.members) > 1]  # one member: one address
    if not several:
        return ()
    found: dict[Token, tuple[Token, ...]] = {}
    for route in several:
        if route.pool not in found:
            upstreams = route.upstreams
            if len(upstreams) > 1:
                found[route.pool] = tuple(Token(upstream.text) for upstream in upstreams)
    return tuple(sorted(found.items()))


def public_labels(routes: Mapping[DeploymentKey, Sequence[Route]]) -> tuple[Token, ...]:
    """The labels of the deployments served without access control, sorted: a label is public
    when every deployment that routes under it is (two branch names can share a label, and
    one behind access control keeps the label behind it)."""
    public: dict[Token, bool] = {}
    for (shared, _), found in routes.items():
        public[shared] = public.get(shared, True) and found[0].public
    return tuple(name for name, yes in sorted(public.items()) if yes)


def public_keys(labels: Sequence[Token]) -> tuple[Token, ...]:
    """The public map's keys: `<label>/` (a bare label could be `default` or `include`)."""
    return tuple(Token(f"{name}/") for name in labels)


def access(config: Config) -> dict[str, Any] | None:
    """What the template's access lines print (None: access control is off)."""
    if not config.access_control:
        return None
    return {
        "satisfy": config.access_satisfy,
        "realm": config.basic_auth_realm,
        "user_file": config.basic_auth_file,
        "networks": tuple(Token(str(network)) for network in config.client_networks),
    }


def render_skeleton(
    table: RoutingTable,
    config: Config,
    templates: jinja2.Environment,
    parts: Sequence[Part],
    public: Sequence[Token] = (),
) -> str:
    """The whole file with ROUTES_MARKER where the deployments' lines go, and UPSTREAMS_MARKER
    where their upstream blocks go."""
    longest = max((len(route.host) for route in table.routes), default=1)
    newest = max((route.created for route in table.routes if route.created), default=None)
    return skeleton_text(
        config,
        templates,
        table_id=routes_id(parts),
        newest=newest,
        routes_count=len(table.routes),
        deployments_count=len(parts),
        longest=longest,
        pools=any(part.blocks for part in parts),
        public=public,
    )


def skeleton_text(
    config: Config,
    templates: jinja2.Environment,
    *,
    table_id: Token,
    newest: datetime | None,
    routes_count: int,
    deployments_count: int,
    longest: int,
    pools: bool,
    public: Sequence[Token] = (),
) -> str:
    """render_skeleton from the figures it prints (a long-running caller keeps them); `pools`:
    some deployment has upstream blocks to place; `public`: the public labels (public_labels),
    printed only when access control is on."""
    skeleton = _render(
        templates,
        TEMPLATE,
        table_id=table_id,
        newest=rfc3339(newest),
        routes_count=routes_count,
        deployments_count=deployments_count,
        routes=ROUTES_MARKER,
        upstreams=UPSTREAMS_MARKER,
        hash=HashSize.for_names(routes_count, longest),
        domain=config.domain,
        domain_pattern=domain_pattern(config.domain),
        site_dir=config.site_dir,
        listen=config.listen,
        tls=config.tls,
        tls_listen=config.tls_listen,
        tls_certificate=config.tls_certificate,
        tls_certificate_key=config.tls_certificate_key,
        tls_port=config.tls_port,
        access_log=config.access_log,
        client_max_body_size=config.client_max_body_size,
        proxy_connect_timeout=config.proxy_connect_timeout,
        proxy_read_timeout=config.proxy_read_timeout,
        access=access(config),
        public=public_keys(public),
    )
    if skeleton.count(ROUTES_MARKER) != 1:
        raise TemplateProblem(f"template {TEMPLATE} must print {{{{ routes }}}} exactly once")
    upstreams = skeleton.count(UPSTREAMS_MARKER)
    if upstreams > 1 or (pools and not upstreams):
        raise TemplateProblem(
            f"template {TEMPLATE} must print {{{{ upstreams }}}} exactly once, at http level "
            "(outside every block): services with several instances need their upstream blocks"
        )
    return skeleton


def splice(skeleton: str, lines: str, blocks: str) -> str:
    """The file: `skeleton` with the deployments' joined lines and upstream blocks in place of
    the markers. Nothing spliced in is searched for a marker: the lines go in last, and blocks
    that make another routes marker are spliced in one pass instead."""
    with_blocks = skeleton.replace(UPSTREAMS_MARKER, blocks)
    if with_blocks.count(ROUTES_MARKER) != 1:
        spliced: dict[str, str] = {ROUTES_MARKER: lines, UPSTREAMS_MARKER: blocks}
        return _MARKERS.sub(lambda found: spliced[found[0]], skeleton)
    return with_blocks.replace(ROUTES_MARKER, lines)


class Rendering(NamedTuple):
    """The render stage's result: the file and the pieces it was made of."""

    text: str
    skeleton: str  # the file with the markers in place of the deployments' lines and blocks
    parts: tuple[Part, ...]  # each deployment's lines and upstream blocks, in file order
    routes: dict[DeploymentKey, tuple[Route, ...]]  # each deployment's routes (by_deployment)
    public: tuple[Token, ...]  # the public labels (public_labels)


def render(table: RoutingTable, config: Config, templates: jinja2.Environment) -> Rendering:
    """The render stage: the config text for `table`, the same bytes for the same table and
    config, always (each deployment's part, then the skeleton, spliced)."""
    routes = by_deployment(table)
    parts = tuple([render_group(group_of(found), templates) for found in routes.values()])
    public = public_labels(routes)
    skeleton = render_skeleton(table, config, templates, parts, public)
    text = splice(
        skeleton, "".join([part.lines for part in parts]), "".join([part.blocks for part in parts])
    )
    return Rendering(text, skeleton, parts, routes, public)


def _render(templates: jinja2.Environment, name: str, **values: Any) -> str:
    try:
        return templates.get_template(name).render(**values)
    except jinja2.TemplateNotFound as error:
        raise TemplateProblem(f"template {error.name} not found in the template folders") from None
    except jinja2.TemplateError as error:
        where = f" line {error.lineno}" if isinstance(error, jinja2.TemplateSyntaxError) else ""
        raise TemplateProblem(f"template {name}{where}: {error.message}") from None
