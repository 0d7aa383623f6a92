"""The frontend's own pages: the routing table and its problems as the files of the site folder.

Pure: (routing table, config, templates) -> {relative path: bytes}, the same bytes for the same
table and config (no clock: pages print absolute times, and a small script in the browser says
how long ago). nginx serves the folder (site_dir) at the bare domain, and its 404 page to
hostnames it does not route (templates/routes.conf.j2):

    index.html              every deployment with its links, each service's instances (address
                            and instance id), and every problem in the registry
    deployments.json        the same for scripts (shape: see document())
    not-found.html          the 404 page for every hostname no route answers: nginx prints the
                            hostname asked (SSI), and its script lists the deployment whose
                            label begins it, from that label's shard
    not-found/<shard>.json  what the 404 page shows of each deployment whose label is in that
                            shard (site_layout.shard; shape: shard_entry): at most 256 files,
                            and a change to what a 404 page shows rewrites one

The pages go through their own Jinja environment, which escapes every value for HTML; the
nginx environment (render.py) prints only Tokens and ints, and the two never mix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import jinja2
from markupsafe import Markup

from generator.core.config import Config
from generator.core.errors import TemplateProblem
from generator.core.model import (
    RFC3339,
    DeploymentKey,
    Member,
    Problem,
    Route,
    RouteKind,
    RoutingTable,
    Token,
    Upstream,
    instance_order,
)
from generator.core.names import key_path
from generator.core.render import by_deployment
from generator.core.site_layout import (
    ASKED_LEVELS,
    DATA_PATH,
    DOCUMENT,
    INDEX,
    NOT_FOUND,
    SHARDS,
    shard,
    shard_path,
)

DOCUMENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Link:
    """A hostname that routes, the service it reaches and that service's routed instances."""

    service: str  # raw, as registered
    host: Token
    members: tuple[Member, ...]  # by instance_order (the plain ip/port keys first, then by id)


@dataclass(frozen=True, slots=True)
class Listing:
    """A deployment as the site lists it: what of it routes, and the problems under its key."""

    name: str  # raw branch name, as registered
    label: Token
    created: str | None  # RFC 3339, UTC
    default: Link | None  # the default entry point <label>.<domain>
    services: tuple[Link, ...]  # by hostname
    problems: tuple[Problem, ...]
    # served without access control (/deployment/<branch>/public = true); None: access
    # control is off, and the site says nothing about it
    public: bool | None = None

    @property
    def default_alone(self) -> bool:
        """The default entry point's service has no hostname of its own here (it lost that to
        another route): the index lists the instances under the entry point instead."""
        if self.default is None:
            return False
        return all(link.service != self.default.service for link in self.services)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": str(self.label),
            "created": self.created,
            "default": None if self.default is None else _link_json(self.default),
            "services": [_link_json(link) for link in self.services],
            "problems": [problem.as_json() for problem in self.problems],
            **({} if self.public is None else {"public": self.public}),
        }


def _link_json(link: Link) -> dict[str, Any]:
    return {
        "service": link.service,
        "host": str(link.host),
        "instances": [
            {"instance": member.instance, "address": member.upstream.text}
            for member in link.members
        ],
    }


def _member_order(member: Member) -> tuple[tuple[bool, str], Upstream]:
    return instance_order(member), member.upstream


def _link(route: Route) -> Link:
    members = route.members
    if len(members) > 1:  # the order the registry gave never shows
        members = tuple(sorted(members, key=_member_order))
    return Link(route.service, route.host, members)


class PageKind(Enum):
    INDEX = "site/index.html.j2"
    DOCUMENT = "deployments.json"  # json.dumps, no template
    NOT_FOUND = "site/not-found.html.j2"
    SHARD = "not-found/<shard>.json"  # shard_text, no template


INDEX_ROW = "site/index-row.html.j2"  # one deployment's row of the index, kept by Renderer
# The index's rows go in tables of this many, each skipped by the browser's layout while it is
# off screen (content-visibility): 10,000 rows in one table take seconds to lay out again
# whenever the search box shows them all (docs/performance.md, "The index at 10,000").
ROWS_PER_TABLE = 250


@dataclass(frozen=True, slots=True)
class Page:
    """What one file of the site is made of: equal pages give equal bytes (for one config)."""

    kind: PageKind
    listings: tuple[Listing, ...]
    problems: tuple[Problem, ...] = ()
    routes: int = 0


def listings(table: RoutingTable, access: bool = False) -> tuple[Listing, ...]:
    """Every deployment with a route, by label then name (the config file's order).

    Two branches can share a label (Feature/Foo and feature-foo) and both keep some routes: each
    is listed on its own. A problem belongs to the deployment whose key starts its key; those of
    deployments that route nothing are in the table's problems only. `access`: access control
    is on, and each listing says whether its deployment is public.
    """
    grouped = by_deployment(table)  # sorted by key
    owned = owners(table.problems, key_paths(grouped))
    return tuple(
        listing(key, routes, owned.get(key, ()), access) for key, routes in grouped.items()
    )


def key_paths(keys: Iterable[DeploymentKey]) -> dict[str, DeploymentKey]:
    """Each deployment's registry key -> the deployment."""
    return {key_path("deployment", name): (label, name) for label, name in keys}


def owners(
    problems: Iterable[Problem], paths: Mapping[str, DeploymentKey]
) -> dict[DeploymentKey, tuple[Problem, ...]]:
    """The problems of each listed deployment (see listings)."""
    found: dict[DeploymentKey, list[Problem]] = {}
    for problem in problems:
        owner = _owner(problem.key, paths)
        if owner is not None:
            found.setdefault(owner, []).append(problem)
    return {key: tuple(owned) for key, owned in found.items()}


def listing(
    key: DeploymentKey, routes: Sequence[Route], problems: tuple[Problem, ...], access: bool = False
) -> Listing:
    """One deployment as listed, from its routes (by hostname) and its problems (`access`:
    access control is on, and the listing says whether the deployment is public)."""
    label, name = key
    created = routes[0].created
    default = None
    services = []
    for route in routes:
        if route.kind is RouteKind.DEFAULT:
            default = _link(route)
        else:
            services.append(_link(route))
    return Listing(
        name=name,
        label=label,
        created=None if created is None else f"{created:{RFC3339}}",
        default=default,
        services=tuple(services),
        problems=problems,
        public=routes[0].public if access else None,
    )


def _owner(key: str, keys: Mapping[str, DeploymentKey]) -> DeploymentKey | None:
    """The deployment whose key is `key` or a folder above it (a quoted name may hold a /)."""
    cut = len(key)
    while cut > 0:
        owner = keys.get(key[:cut])
        if owner is not None:
            return owner
        cut = key.rfind("/", 0, cut)
    return None


def pages(table: RoutingTable, access: bool = False) -> dict[str, Page]:
    """Relative path -> what the file is made of, for every file of the site, sorted by path
    (`access`: access control is on; see listings)."""
    listed = listings(table, access)
    site = {
        INDEX: Page(PageKind.INDEX, listed, table.problems, len(table.routes)),
        DOCUMENT: Page(PageKind.DOCUMENT, listed, table.problems, len(table.routes)),
        NOT_FOUND: Page(PageKind.NOT_FOUND, ()),
    }
    sharded: dict[str, list[Listing]] = {}
    for listing in listed:  # by label then name: so is each shard
        sharded.setdefault(shard(listing.label), []).append(listing)
    for name, group in sharded.items():
        site[shard_path(name)] = Page(PageKind.SHARD, tuple(group))
    return dict(sorted(site.items()))


def document(page: Page, config: Config) -> dict[str, Any]:
    """deployments.json, keys in this order (document_text writes each deployment and each
    problem on a line of its own):

    {"version": 1, "domain": "dev.example.com", "default_service": "web",
     "deployments": [{"name": "feature/login", "label": "feature-login",
                      "created": "2026-11-27T14:30:00Z" or null,
                      "default": {"service": "web", "host": "feature-login.dev.example.com",
                                  "instances": [...]} or null,
                      "services": [{"service": "api", "host": "feature-login-api.dev...",
                                    "instances": [{"instance": "a1b2c3" or null,
                                                   "address": "10.0.3.7:8080"}, ...]}, ...],
                      "problems": [{"key": ..., "code": ..., "message": ...}, ...],
                      "public": true or false, only when access control is on}, ...],
     "problems": [every problem in the registry, as above]}
    """
    return {
        "version": DOCUMENT_VERSION,
        "domain": str(config.domain),
        "default_service": config.default_service,
        "deployments": [listing.as_json() for listing in page.listings],
        "problems": [problem.as_json() for problem in page.problems],
    }


def environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """The pages' Jinja environment: every printed value escaped for HTML (and so no value can
    open an nginx SSI comment, `<!--#`, in a page nginx runs SSI on)."""
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


class Renderer:
    """Renders pages, keeping each deployment's row of the index while the deployment stays the
    same: a long-running process (the watcher) renders only what changed, and the bytes are
    those of a fresh Renderer."""

    def __init__(self, config: Config, templates: jinja2.Environment) -> None:
        self.config = config
        self._templates = templates
        self._rows: dict[Listing, Markup] = {}

    def __call__(self, page: Page) -> bytes:
        if page.kind is PageKind.DOCUMENT:
            return document_text(document(page, self.config)).encode("ascii")
        if page.kind is PageKind.SHARD:
            return shard_text([shard_line(listing) for listing in page.listings])
        if page.kind is PageKind.NOT_FOUND:
            return self.not_found()
        if page.kind is PageKind.INDEX:
            kept, self._rows = self._rows, {}
            for listing in page.listings:
                self._rows[listing] = kept.get(listing) or self.row(listing)
            rows = [self._rows[listing] for listing in page.listings]
            return self.index(page.listings, rows, page.problems, page.routes)
        return self.page(page)

    def row(self, listing: Listing) -> Markup:
        """One deployment's row of the index."""
        return Markup(self._render(INDEX_ROW, listing=listing))

    def index(
        self,
        listings: Sequence[Listing],
        rows: Iterable[Markup],
        problems: Sequence[Problem],
        routes: int,
    ) -> bytes:
        """index.html from each listing's row (see row), ROWS_PER_TABLE rows a table."""
        rows = list(rows)
        return self.page(
            Page(PageKind.INDEX, (), tuple(problems), routes),
            listings=listings,
            # each row is Markup: no escaping (nor copy) again
            tables=[
                Markup("".join(rows[start : start + ROWS_PER_TABLE]))
                for start in range(0, len(rows), ROWS_PER_TABLE)
            ],
        )

    def not_found(self) -> bytes:
        """not-found.html: the same page for every hostname (the site layout tells its script
        where the shards are and how to find a hostname's label)."""
        return self.page(
            Page(PageKind.NOT_FOUND, ()),
            data_path=DATA_PATH,
            shards=SHARDS,
            asked_levels=ASKED_LEVELS,
        )

    def page(self, page: Page, **values: Any) -> bytes:
        values.setdefault("listings", page.listings)
        text = self._render(page.kind.value, problems=page.problems, routes=page.routes, **values)
        # a lone surrogate becomes a character reference the browser shows as a replacement sign
        return text.encode("utf-8", "xmlcharrefreplace")

    def document(self, lines: Sequence[str], problems: Sequence[Problem]) -> bytes:
        """deployments.json from each listing's document_line."""
        value = document(Page(PageKind.DOCUMENT, (), tuple(problems)), self.config)
        return document_text(value, {"deployments": lines}).encode("ascii")

    def _render(self, name: str, **values: Any) -> str:
        try:
            return self._templates.get_template(name).render(
                domain=self.config.domain, default_service=self.config.default_service, **values
            )
        except jinja2.TemplateNotFound as error:
            raise TemplateProblem(
                f"template {error.name} not found in the template folders"
            ) from None
        except jinja2.TemplateError as error:
            where = f" line {error.lineno}" if isinstance(error, jinja2.TemplateSyntaxError) else ""
            raise TemplateProblem(f"template {name}{where}: {error.message}") from None


def document_line(listing: Listing) -> str:
    """One deployment's line in deployments.json."""
    return json.dumps(listing.as_json())


def document_text(value: dict[str, Any], dumped: Mapping[str, Sequence[str]] | None = None) -> str:
    """deployments.json as text: one deployment, and one problem, per line (greppable, and
    json's C encoder writes each line: fast at any size). ASCII escapes: a name with a lone
    surrogate (JSON "\\ud800") still makes valid JSON. `dumped` holds lists whose entries are
    dumped already (the deployments, by a writer that keeps them)."""
    lines = []
    for key, item in value.items():
        entries = None if dumped is None else dumped.get(key)
        if entries is None and isinstance(item, list):
            entries = [json.dumps(entry) for entry in item]
        if entries:
            joined = ",\n".join(f"    {entry}" for entry in entries)
            lines.append(f"  {json.dumps(key)}: [\n{joined}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps([] if entries is not None else item)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# In a shard, < > & are JSON escapes: the file holds no markup, nor an SSI comment (`<!--#`),
# whatever type it is served as.
_INERT_IN_HTML = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def shard_entry(listing: Listing) -> dict[str, Any]:
    """What the 404 page shows of a deployment: its deployments.json entry with each link's
    instances as a count (the page says how many, not where: an instance that moves changes
    no shard), and without "public"."""
    return {
        "name": listing.name,
        "label": str(listing.label),
        "created": listing.created,
        "default": None if listing.default is None else _shard_link(listing.default),
        "services": [_shard_link(link) for link in listing.services],
        "problems": [problem.as_json() for problem in listing.problems],
    }


def _shard_link(link: Link) -> dict[str, Any]:
    return {"service": link.service, "host": str(link.host), "instance_count": len(link.members)}


def shard_line(listing: Listing) -> str:
    """One deployment's line in its shard (shard_entry; < > & as JSON escapes)."""
    return json.dumps(shard_entry(listing)).translate(_INERT_IN_HTML)


def shard_text(lines: Sequence[str]) -> bytes:
    """A shard, not-found/<shard>.json, from its deployments' shard_line (by label, then name):
    {"version": 1, "deployments": [...]}, one deployment a line, as deployments.json."""
    value = {"version": DOCUMENT_VERSION, "deployments": []}
    return document_text(value, {"deployments": lines}).encode("ascii")


def render_site(
    table: RoutingTable, config: Config, templates: jinja2.Environment
) -> dict[str, bytes]:
    """Every file of the site: relative path -> bytes."""
    render = Renderer(config, templates)
    return {path: render(page) for path, page in pages(table, config.access_control).items()}
