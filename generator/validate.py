"""Validate a snapshot against schema/snapshot.schema.json, one deployment at a time.

etcd is not transactional and etcdwatch passes on whatever is there, so a half-written entry is
normal, not an error: it is skipped with a problem that names its key, and every other deployment
still routes. The schema decides what is valid; the table below decides what a failure costs
(the key is ignored, the service is skipped, or the deployment is skipped) and how to say so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import fastjsonschema
import jsonschema
import referencing

from .model import Deployment, Instance, Problem, Service
from .names import short_hash


class Cost(Enum):
    IGNORE_KEY = "the key is ignored"
    SKIP_SERVICE = "the service is skipped"
    SKIP_DEPLOYMENT = "the deployment is skipped"


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    cost: Cost
    says: str  # what is wrong, after the key; {value} is the offending value, shown safely
    fix: str  # what to do


_CREATED_FIX = (
    "the deployment routes but loses any hostname collision; write date -u +%Y-%m-%dT%H:%M:%SZ"
)

# Where a schema error sits (relative to the deployment; "*" is any service name) and which
# keyword failed -> what it costs and what to tell the user. Checked in order; first match wins.
RULES: tuple[tuple[tuple[str, ...], str, Rule], ...] = (
    (
        (),
        "type",
        Rule(
            "not-a-deployment",
            Cost.SKIP_DEPLOYMENT,
            "is {value}, not a deployment directory",
            "remove the key if it is not a branch",
        ),
    ),
    (
        (),
        "additionalProperties",
        Rule(
            "stray-key",
            Cost.IGNORE_KEY,
            "is not a deployment key (only 'created' and 'service' are)",
            "remove it; if it is the rest of a branch name with '/' (feature/foo), register "
            "that branch under its slug (/deployment/feature-foo)",
        ),
    ),
    (
        ("created",),
        "*",
        Rule("bad-created", Cost.IGNORE_KEY, "is {value}, not a time string", _CREATED_FIX),
    ),
    (
        ("service",),
        "*",
        Rule(
            "bad-services",
            Cost.SKIP_DEPLOYMENT,
            "is {value}, not a directory of services",
            "register services under /deployment/<branch>/service/<service>/",
        ),
    ),
    (
        ("service", "*"),
        "required",
        Rule(
            "incomplete-service",
            Cost.SKIP_SERVICE,
            "has no {missing} yet",
            "it routes once its ip and port keys are both written",
        ),
    ),
    (
        ("service", "*"),
        "additionalProperties",
        Rule(
            "stray-key",
            Cost.IGNORE_KEY,
            "is not a service key (only 'ip' and 'port' are)",
            "remove it",
        ),
    ),
    (
        ("service", "*"),
        "type",
        Rule(
            "not-a-service",
            Cost.SKIP_SERVICE,
            "is {value}, not a service directory with ip and port",
            "register /deployment/<branch>/service/<service>/ip and .../port",
        ),
    ),
    (
        ("service", "*", "ip"),
        "*",
        Rule(
            "bad-ip",
            Cost.SKIP_SERVICE,
            "is {value}, not an IPv4 or IPv6 address",
            "register the container's address (names are never resolved)",
        ),
    ),
    (
        ("service", "*", "port"),
        "*",
        Rule(
            "bad-port",
            Cost.SKIP_SERVICE,
            "is {value}, not a port number 1-65535",
            "register the container's host port",
        ),
    ),
)

_PLAIN = re.compile(r"[A-Za-z0-9._~:@+=,-]{1,64}")


def show(value: Any, limit: int = 48) -> str:
    """A registry value or key, safe to print on one line whatever it holds."""
    if isinstance(value, str):
        if _PLAIN.fullmatch(value):
            return value
        cut = value if len(value) <= limit else value[:limit] + "..."
        return json.dumps(cut, ensure_ascii=True)
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a directory" if value else "an empty directory"
    if isinstance(value, list):
        return "a list"
    return show(json.dumps(value), limit)


def key_path(*parts: str) -> str:
    return "/" + "/".join(_key_part(part) for part in parts)


def _key_part(part: str) -> str:
    """A key as show() prints it; a shortened one ends in a hash of the whole, so that two long
    names sharing a prefix stay two keys (and two problems)."""
    shown = show(part)
    if shown.endswith('..."'):
        shown += "~" + short_hash(part)
    return shown


class SnapshotValidator:
    """Compiled validators for one deployment and the snapshot's outer shape (pure; reusable)."""

    def __init__(self, schema: Mapping[str, Any], fast: bool = True) -> None:
        schema = dict(schema)
        resource = referencing.Resource.from_contents(schema)
        registry: referencing.Registry[Any] = resource @ referencing.Registry()
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        self._deployment = cls({"$ref": f"{schema['$id']}#/$defs/deployment"}, registry=registry)
        # The same schema compiled to Python by fastjsonschema (about 18 times faster): a
        # deployment it passes has no problems to report; one it fails goes to jsonschema,
        # the reference, for every error with its path. (fastjsonschema knows drafts up to 7;
        # the keywords this schema uses mean the same there.)
        self._fast = (
            fastjsonschema.compile({"$ref": "#/$defs/deployment", "$defs": schema["$defs"]})
            if fast
            else None
        )

    def deployment(self, name: str, value: Any) -> tuple[Deployment | None, list[Problem]]:
        """The deployment with its broken parts dropped (None if nothing of it is usable)."""
        problems: list[Problem] = []
        skip_deployment = False
        skipped_services: set[str] = set()
        ignored: set[tuple[str, ...]] = set()
        for where, rule, detail in self._findings(value):
            path = ("deployment", name, *where)
            problems.append(
                Problem(
                    key_path(*path),
                    rule.code,
                    f"{rule.says.format(**detail)}: {rule.cost.value}; {rule.fix}",
                )
            )
            if rule.cost is Cost.SKIP_DEPLOYMENT:
                skip_deployment = True
            elif rule.cost is Cost.SKIP_SERVICE:
                skipped_services.add(where[1])
            else:
                ignored.add(where)
        if skip_deployment:
            return None, problems
        created = None
        if "created" in value and ("created",) not in ignored:
            created = parse_time(value["created"])
            if created is None:
                problems.append(
                    Problem(
                        key_path("deployment", name, "created"),
                        "bad-created",
                        f"is {show(value['created'])}, not an RFC 3339 time: the key is "
                        f"ignored; {_CREATED_FIX}",
                    )
                )
        services = tuple(
            Service(service, (Instance(None, str(entry["ip"]), str(entry["port"])),))
            for service, entry in sorted((value.get("service") or {}).items())
            if service not in skipped_services
        )
        if not services:
            problems.append(
                Problem(
                    key_path("deployment", name),
                    "no-services",
                    "has no complete service yet: nothing routes to it; it routes once a "
                    "service registers its ip and port",
                )
            )
        registered = tuple(sorted(value.get("service") or {}))
        return Deployment(name, created, services, registered), problems

    def _findings(self, value: Any) -> Iterator[tuple[tuple[str, ...], Rule, dict[str, str]]]:
        if self._fast is not None:
            try:
                self._fast(value)
                return
            except fastjsonschema.JsonSchemaException:
                pass
        for error in self._deployment.iter_errors(value):
            where = tuple(str(part) for part in error.absolute_path)
            instance: Any = error.instance
            rule = _rule_for(where, str(error.validator))
            if rule is None:  # a schema keyword the table does not know: skip the deployment
                rule = Rule("invalid", Cost.SKIP_DEPLOYMENT, error.message, "fix the entry")
            if error.validator == "additionalProperties":
                known: Any = error.schema
                for extra in sorted(set(instance) - set(known.get("properties", {}))):
                    yield (*where, extra), rule, {"value": show(instance[extra])}
            elif error.validator == "required":
                required: Any = error.validator_value
                missing = " and ".join(key for key in required if key not in instance)
                yield where, rule, {"missing": missing}
            else:
                yield where, rule, {"value": show(instance)}


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time (as `date -u +%Y-%m-%dT%H:%M:%SZ` writes it) in UTC, or None."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # etcd holds what the registrant wrote: read a bare time as UTC
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable UTC time
        return None


def _rule_for(where: tuple[str, ...], keyword: str) -> Rule | None:
    for pattern, rule_keyword, rule in RULES:
        if (
            len(pattern) == len(where)
            and rule_keyword in ("*", keyword)
            and all(want in ("*", got) for want, got in zip(pattern, where, strict=True))
        ):
            return rule
    return None


def validate(
    snapshot: Mapping[str, Any], validator: SnapshotValidator
) -> tuple[list[Deployment], list[Problem]]:
    """Every usable deployment (sorted by name) and every problem found on the way."""
    deployments: list[Deployment] = []
    problems: list[Problem] = []
    for name, value in sorted(snapshot["deployment"].items()):
        deployment, found = validator.deployment(name, value)
        problems.extend(found)
        if deployment is not None:
            deployments.append(deployment)
    return deployments, problems
