"""The routing table to nginx config text, through the Jinja2 templates in templates/."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from .config import Config
from .errors import UsageError
from .model import Route, RoutingTable, Token

TEMPLATE = "routes.conf.j2"
_POINTER = 8  # sizeof(void *) on the 64-bit machines nginx runs on
_CACHE_LINE = 64


class UncheckedValueError(jinja2.TemplateError):
    """A template tried to print something that is neither an int nor a Token."""


def _only_checked(value: Any) -> Any:
    """Jinja's finalize hook: the single gate between data and nginx syntax."""
    if isinstance(value, Token) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if value is None:
        return ""
    raise UncheckedValueError(
        f"a template printed a {type(value).__name__} that was never checked: only Tokens and "
        "ints may reach the nginx config"
    )


def environment(template_dirs: Sequence[Path]) -> jinja2.Environment:
    """A Jinja environment whose earlier folders override later ones (user's, then bundled)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(folder) for folder in template_dirs]),
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
    return None if moment is None else Token(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def render(table: RoutingTable, config: Config, templates: jinja2.Environment) -> str:
    """The config text for `table`: the same bytes for the same table and config, always."""
    # One group per deployment: two branches can share a label (Feature/Foo, feature-foo)
    # and both keep some routes, each deployment with its own created.
    groups: dict[tuple[str, str], list[Route]] = {}
    for route in sorted(table.routes, key=lambda r: (r.deployment_label, r.deployment, r.host)):
        groups.setdefault((route.deployment_label, route.deployment), []).append(route)
    deployments = [
        {
            "label": label,
            "created": rfc3339(routes[0].created),
            "routes": [
                {"host": route.host, "target": route.target, "kind": route.kind.value}
                for route in routes
            ],
        }
        for (label, _), routes in groups.items()
    ]
    longest = max((len(route.host) for route in table.routes), default=1)
    newest = max((stamp for d in deployments if (stamp := d["created"])), default=None)
    try:
        template = templates.get_template(TEMPLATE)
        return template.render(
            table_id=Token(table.content_id()),
            newest=newest,
            routes_count=len(table.routes),
            deployments=deployments,
            hash=HashSize.for_names(len(table.routes), longest),
            domain=config.domain,
            listen=config.listen,
            access_log=config.access_log,
            client_max_body_size=config.client_max_body_size,
            proxy_connect_timeout=config.proxy_connect_timeout,
            proxy_read_timeout=config.proxy_read_timeout,
        )
    except jinja2.TemplateNotFound as error:
        raise UsageError(f"template {error.name} not found in the template folders") from None
    except jinja2.TemplateError as error:
        where = f" line {error.lineno}" if isinstance(error, jinja2.TemplateSyntaxError) else ""
        raise UsageError(f"template {TEMPLATE}{where}: {error.message}") from None
