"""Validate a snapshot against schema/snapshot.schema.json, one deployment at a time.

etcd is not transactional and etcdwatch passes on whatever is there, so a half-written entry is
normal, not an error: it is skipped with a problem that names its key, and every other deployment
still routes. The schema decides what is valid; the table below decides what a failure costs
(the key is ignored, the instance, the service or the deployment is skipped) and how to say so.

A service's instances are its own ip and port keys (the seed's layout: the instance with no
id) and each directory under its `instance` key. A broken instance costs only itself while
another instance of the service is complete; a service with no complete instance is skipped
(and its problems say so). The common case, a valid deployment, costs one fastjsonschema call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import fastjsonschema
import jsonschema
import referencing

from generator.core.model import (
    RFC3339,
    Deployment,
    Instance,
    Problem,
    Service,
    instance_order,
)
from generator.core.names import key_path, show
from generator.core.snapshot import DuplicateKeys, Refused


class Cost(Enum):
    """What a problem costs, in the words its message uses.

    A cost that takes instances (`instances`) is said as SKIP_SERVICE's when the service is
    left with no complete instance: the message then says what happened to the service.
    """

    IGNORE_KEY = ("the key is ignored", False)
    IGNORE_INSTANCES = ("the key is ignored", True)  # a service's instance directory
    SKIP_INSTANCE = ("the instance is skipped", True)
    SKIP_SERVICE = ("the service is skipped", False)
    SKIP_DEPLOYMENT = ("the deployment is skipped", False)

    text: str
    instances: bool

    def __init__(self, text: str, instances: bool) -> None:
        self.text = text
        self.instances = instances


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    cost: Cost
    says: str  # what is wrong, after the key; {value} is the offending value, shown safely
    fix: str  # what to do


# An instance's address, in the service's own keys or under instance/<id>: one rule each.
_BAD_IP = Rule(
    "bad-ip",
    Cost.SKIP_INSTANCE,
    "is {value}, not an IPv4 or IPv6 address",
    "register the container's address (names are never resolved)",
)
_BAD_PORT = Rule(
    "bad-port",
    Cost.SKIP_INSTANCE,
    "is {value}, not a port number 1-65535",
    "register the container's host port",
)
_CREATED_FIX = f"the deployment routes but loses any hostname collision; write date -u +{RFC3339}"
_INSTANCE_FIX = "it routes once its ip and port keys are both written"

# An instance id: the schema's propertyNames pattern, matched whole (a JSON Schema pattern's $
# also matches before a final newline in Python's re, so jsonschema would pass "a1\n").
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Where a schema error sits (relative to the deployment; "*" is any service name or instance
# id) and which keyword failed -> what it costs and what to tell the user. Checked in order;
# first match wins. A service's own ip and port keys are its instance with no id: their
# errors cost that instance (SKIP_INSTANCE), which is the service when it has no other.
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
            "is not a deployment key (only 'created', 'service' and 'public' are)",
            "remove it; if it is the rest of a branch name with '/' (feature/foo), register "
            "that branch under its slug (/deployment/feature-foo)",
        ),
    ),
    (
        ("created",),
        "pattern",
        Rule("bad-created", Cost.IGNORE_KEY, "is {value}, not an RFC 3339 time", _CREATED_FIX),
    ),
    (
        ("created",),
        "*",
        Rule("bad-created", Cost.IGNORE_KEY, "is {value}, not a time string", _CREATED_FIX),
    ),
    (
        ("public",),
        "*",
        Rule(
            "bad-public",
            Cost.IGNORE_KEY,
            "is {value}, not true or false",
            "use true or false (the deployment stays behind the access control until then)",
        ),
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
        # ip or port missing, and no instance directory: the plain keys are all there is
        # (a service with an instance directory says incomplete-instance: see _PLAIN_INCOMPLETE)
        ("service", "*"),
        "required",
        Rule("incomplete-service", Cost.SKIP_SERVICE, "has no {missing} yet", _INSTANCE_FIX),
    ),
    (
        ("service", "*"),
        "additionalProperties",
        Rule(
            "stray-key",
            Cost.IGNORE_KEY,
            "is not a service key (only 'ip', 'port' and 'instance' are)",
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
        _BAD_IP,
    ),
    (
        ("service", "*", "port"),
        "*",
        _BAD_PORT,
    ),
    (
        ("service", "*", "instance"),
        "type",
        Rule(
            "bad-instances",
            Cost.IGNORE_INSTANCES,
            "is {value}, not a directory of instances",
            "register each instance under "
            "/deployment/<branch>/service/<service>/instance/<id>/ip and .../port",
        ),
    ),
    (
        # only when the service has neither an ip nor a port key (the schema's else/if/then)
        ("service", "*", "instance"),
        "minProperties",
        Rule(
            "incomplete-service",
            Cost.SKIP_SERVICE,
            "holds no instance yet",
            "it routes once an instance's ip and port keys are both written",
        ),
    ),
    (
        # not from the schema's propertyNames error (see SnapshotValidator._bad_ids)
        ("service", "*", "instance", "*"),
        "propertyNames",
        Rule(
            "bad-instance-id",
            Cost.SKIP_INSTANCE,
            "is not an instance id (a letter or digit, then up to 127 letters, digits, '.', "
            "'_' or '-')",
            "register the instance under such an id (register --instance or INSTANCE)",
        ),
    ),
    (
        ("service", "*", "instance", "*"),
        "required",
        Rule("incomplete-instance", Cost.SKIP_INSTANCE, "has no {missing} yet", _INSTANCE_FIX),
    ),
    (
        ("service", "*", "instance", "*"),
        "additionalProperties",
        Rule(
            "stray-key",
            Cost.IGNORE_KEY,
            "is not an instance key (only 'ip' and 'port' are)",
            "remove it",
        ),
    ),
    (
        ("service", "*", "instance", "*"),
        "type",
        Rule(
            "not-an-instance",
            Cost.SKIP_INSTANCE,
            "is {value}, not an instance directory with ip and port",
            "register .../instance/<id>/ip and .../port",
        ),
    ),
    (
        ("service", "*", "instance", "*", "ip"),
        "*",
        _BAD_IP,
    ),
    (
        ("service", "*", "instance", "*", "port"),
        "*",
        _BAD_PORT,
    ),
)

# The service's own ip and port keys half-written beside an instance directory: they are one
# instance of several, so only it is skipped (the service, if it has no complete other).
_PLAIN_INCOMPLETE = Rule(
    "incomplete-instance",
    Cost.SKIP_INSTANCE,
    "has no {missing} yet",
    "its own ip and port keys route once both are written",
)
_INCOMPLETE_SERVICE = next(rule for _, _, rule in RULES if rule.code == "incomplete-service")
_BAD_CREATED = next(rule for _, _, rule in RULES if rule.code == "bad-created")
_BAD_INSTANCE_ID = next(rule for _, _, rule in RULES if rule.code == "bad-instance-id")


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

    def deployment(
        self, name: str, value: Any, oversized: Oversized | None = None
    ) -> tuple[Deployment | None, list[Problem]]:
        """The deployment with its broken parts dropped (None if nothing of it is usable).

        `oversized` (see find_oversized): its values are validated as a stand-in that no rule
        passes, each costs what the rules say a bad value there costs, and its problem says
        how big it was. The value itself is never copied, printed or used.
        """
        if isinstance(value, DuplicateKeys):
            return None, [_duplicate(name, entry) for entry in value]
        if oversized is not None and oversized.sizes:
            value = _stand_ins(value, oversized.sizes)
        findings: list[Finding] = []
        skipped_services: AbstractSet[str] = _NONE
        skipped_instances: AbstractSet[tuple[str, str | None]] = _NONE  # (service, id)
        ignored: AbstractSet[tuple[str, ...]] = _NONE
        if not self._passes(value):
            findings = list(self._findings(value))
            if oversized is not None and oversized.sizes:
                findings = [_too_large(finding, oversized) for finding in findings]
            skipped_services, skipped_instances, ignored = set(), set(), set()
            for where, rule, _ in findings:
                cost = rule.cost
                if cost is Cost.SKIP_DEPLOYMENT:
                    return None, _problems(name, findings, set())
                if cost is Cost.SKIP_SERVICE:
                    skipped_services.add(where[1])
                elif cost is Cost.SKIP_INSTANCE:
                    skipped_instances.add((where[1], where[3] if len(where) > 3 else None))
                else:
                    ignored.add(where)
        entries = sorted((value.get("service") or {}).items())
        services = _services(entries, skipped_services, skipped_instances, ignored)
        problems = (
            _problems(name, findings, {service.name for service in services}) if findings else []
        )
        created = None
        if "created" in value and ("created",) not in ignored:
            created = parse_time(value["created"])
            if created is None and oversized is not None and ("created",) in oversized.sizes:
                finding = _too_large((("created",), _BAD_CREATED, {}), oversized)
                problems.extend(_problems(name, [finding], set()))
            elif created is None:
                problems.append(
                    Problem(
                        key_path("deployment", name, "created"),
                        "bad-created",
                        f"is {show(value['created'])}, not an RFC 3339 time: the key is "
                        f"ignored; {_CREATED_FIX}",
                        name,
                    )
                )
        if not services:
            problems.append(
                Problem(
                    key_path("deployment", name),
                    "no-services",
                    "has no complete service yet: nothing routes to it; it routes once a "
                    "service registers its ip and port",
                    name,
                )
            )
        registered = tuple(sorted(value.get("service") or {}))
        public = value.get("public") == "true" and ("public",) not in ignored
        return Deployment(name, created, services, registered, public), problems

    def _passes(self, value: Any) -> bool:
        """Whether fastjsonschema passes the deployment: then it has no problem to report."""
        if self._fast is None:
            return False
        try:
            self._fast(value)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def _findings(self, value: Any) -> Iterator[Finding]:
        """What jsonschema finds wrong, each with its rule (a deployment that fails
        fastjsonschema, or every deployment without the fast path)."""
        bad_ids = _bad_ids(value)
        for service, id in bad_ids:
            yield ("service", service, "instance", id), _BAD_INSTANCE_ID, {}
        for error in self._deployment.iter_errors(value):
            if "propertyNames" in error.relative_schema_path:
                continue  # _bad_ids found it (jsonschema names the directory, not the id)
            where = tuple(str(part) for part in error.absolute_path)
            if len(where) > 3 and where[2] == "instance" and (where[1], where[3]) in bad_ids:
                continue  # the instance is skipped for its id: one problem is enough
            instance: Any = error.instance
            rule = _rule_for(where, str(error.validator))
            if rule is None:  # a schema keyword the table does not know: skip the deployment
                says = error.message.replace("{", "{{").replace("}", "}}")
                rule = Rule("invalid", Cost.SKIP_DEPLOYMENT, says, "fix the entry")
            if error.validator == "additionalProperties":
                known: Any = error.schema
                for extra in sorted(set(instance) - set(known.get("properties", {}))):
                    yield (*where, extra), rule, {"value": show(instance[extra])}
            elif error.validator == "required":
                if rule is _INCOMPLETE_SERVICE and "instance" in instance:
                    rule = _PLAIN_INCOMPLETE
                required: Any = error.validator_value
                missing = " and ".join(key for key in required if key not in instance)
                yield where, rule, {"missing": missing}
            else:
                yield where, rule, {"value": show(instance)}


# Where (relative to the deployment), the rule, and the values its `says` names.
Finding = tuple[tuple[str, ...], Rule, dict[str, str]]
_NONE: frozenset[Any] = frozenset()


@dataclass(frozen=True, slots=True)
class Oversized:
    """The values of a deployment longer than the limit (max_value_bytes): where (relative to
    the deployment) -> their size in bytes (UTF-8)."""

    limit: int
    sizes: dict[tuple[str, ...], int]


# What an oversized value is validated as: no rule passes it (not an address, a port or a time).
_STAND_IN = "\x00"


def find_oversized(value: Any, limit: int) -> Oversized:
    """The values in a deployment longer than `limit` bytes. Iterative: no recursion on registry
    data (snapshot.loads and keytree bound its depth)."""
    sizes: dict[tuple[str, ...], int] = {}
    stack: list[tuple[tuple[str, ...], Any]] = [((), value)]
    shortest = limit // 4  # a character is at most 4 bytes in UTF-8
    while stack:
        at, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(((*at, key), child) for key, child in node.items())
        elif isinstance(node, list):
            stack.extend(((*at, str(index)), child) for index, child in enumerate(node))
        elif isinstance(node, str) and len(node) > shortest:
            size = len(node) if node.isascii() else len(node.encode("utf-8", "surrogatepass"))
            if size > limit:
                sizes[at] = size
    return Oversized(limit, sizes)


def _stand_ins(value: Any, sizes: Mapping[tuple[str, ...], int]) -> Any:
    """`value` with _STAND_IN at each path of `sizes`: the objects and lists on the way are
    copied (shallow), everything else is shared."""
    if () in sizes:
        return _STAND_IN
    root: Any = _copy(value)
    copied: set[tuple[str, ...]] = {()}
    for path in sizes:
        node = root
        for depth, part in enumerate(path[:-1]):
            step: Any = int(part) if isinstance(node, list) else part
            if path[: depth + 1] not in copied:
                node[step] = _copy(node[step])
                copied.add(path[: depth + 1])
            node = node[step]
        last = path[-1]
        node[int(last) if isinstance(node, list) else last] = _STAND_IN
    return root


def _copy(node: Any) -> Any:
    return dict(node) if isinstance(node, dict) else list(node)


def _too_large(finding: Finding, oversized: Oversized) -> Finding:
    """A finding on an oversized value, said as its size (its cost is the rule's)."""
    where, rule, _ = finding
    size = oversized.sizes.get(where)
    if size is None:
        return finding
    says = f"is {size} bytes, more than max_value_bytes ({oversized.limit})"
    fix = (
        "registry values are short (addresses, ports, times): write the right value, or "
        "raise max_value_bytes"
    )
    return where, Rule("value-too-large", rule.cost, says, fix), {}


def _bad_ids(value: Any) -> list[tuple[str, str]]:
    """(service, instance id) of every instance whose id is not of INSTANCE_ID's shape."""
    services = value.get("service") if isinstance(value, dict) else None
    if not isinstance(services, dict):
        return []
    found: list[tuple[str, str]] = []
    for service, entry in sorted(services.items()):
        instances = entry.get("instance") if isinstance(entry, dict) else None
        if isinstance(instances, dict):
            found.extend((service, id) for id in sorted(instances) if not INSTANCE_ID.fullmatch(id))
    return found


def _services(
    entries: list[tuple[str, Any]],
    skipped_services: AbstractSet[str],
    skipped_instances: AbstractSet[tuple[str, str | None]],
    ignored: AbstractSet[tuple[str, ...]],
) -> tuple[Service, ...]:
    """The services (name, value; sorted) that keep a complete instance, each with its
    complete instances in instance order.

    What is here passed the schema or was skipped by a finding; the shape tests beside each
    lookup only keep a finding missed by mistake from becoming a traceback."""
    services: list[Service] = []
    for service, entry in entries:
        if not isinstance(entry, dict) or service in skipped_services:
            continue
        instances: list[Instance] = []
        if "ip" in entry and "port" in entry and (service, None) not in skipped_instances:
            instances.append(Instance(None, str(entry["ip"]), str(entry["port"])))
        directory = entry.get("instance")
        if isinstance(directory, dict) and ("service", service, "instance") not in ignored:
            for id, keys in directory.items():
                if (
                    isinstance(keys, dict)
                    and "ip" in keys
                    and "port" in keys
                    and (service, id) not in skipped_instances
                ):
                    instances.append(Instance(id, str(keys["ip"]), str(keys["port"])))
            if len(instances) > 1:
                instances.sort(key=instance_order)
        if instances:
            services.append(Service(service, tuple(instances)))
    return tuple(services)


def _problems(name: str, findings: list[Finding], routed: set[str]) -> list[Problem]:
    """One problem per finding (the same one once), in the order found. A cost that takes
    instances is said as the service's when the service has no complete instance left."""
    problems: dict[Problem, None] = {}
    for where, rule, detail in findings:
        cost = rule.cost
        if cost.instances and where[1] not in routed:
            cost = Cost.SKIP_SERVICE
        text = f"{rule.says.format(**detail)}: {cost.text}; {rule.fix}"
        problems[Problem(key_path("deployment", name, *where), rule.code, text, name)] = None
    return list(problems)


# RFC 3339 section 5.6's date-time exactly: full-date "T" full-time, the time with its
# seconds and a Z or a +hh:mm/-hh:mm offset (the ABNF's letters are case-insensitive, so t
# and z too). Not the space the RFC's note allows "for readability", no time without an
# offset (it would be read in some zone), none of ISO 8601's other forms (2026-01-01,
# 20260101T000000, 2026-W01-1), and no leap second (datetime has none).
RFC_3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _duplicate(name: str, entry: list[str]) -> Problem:
    key, first, second = entry
    return Problem(
        key,
        "duplicate-key",
        f"is given twice, {first} then {second}: the deployment is skipped; a registry key "
        "holds one value (etcd never writes one twice): remove one of them from the snapshot",
        name,
    )


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time (as `date -u +%Y-%m-%dT%H:%M:%SZ` writes it) in UTC, or None."""
    if not RFC_3339.fullmatch(text):
        return None
    if text[19] == ".":  # datetime reads at most 6 digits of a second
        offset = text[19:].lstrip(".0123456789")
        text = text[:19] + text[19 : len(text) - len(offset)][:7] + offset
    try:
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:  # month 13, hour 24, February 30 ...
        return None
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


def validate_deployment(
    name: str,
    value: Any,
    validator: SnapshotValidator,
    max_value_bytes: int | None = None,
    text: str | None = None,
) -> tuple[Deployment | None, list[Problem]]:
    """The validate stage for one deployment: what of it is usable (None: nothing) and its
    problems. A deployment refused while reading is skipped with its refusal; values longer
    than `max_value_bytes` (None: no limit) are judged by their size (see find_oversized).
    `text`, its snapshot.deployment_text when the caller has it, spares that search when it is
    short enough to hold no such value."""
    if isinstance(value, Refused):
        return None, [Problem(key_path("deployment", name), value.code, str(value), name)]
    if max_value_bytes is None or (text is not None and len(text) <= max_value_bytes):
        return validator.deployment(name, value)
    return validator.deployment(name, value, find_oversized(value, max_value_bytes))


def validate(
    snapshot: Mapping[str, Any],
    validator: SnapshotValidator,
    max_value_bytes: int | None = None,
    texts: Mapping[str, str] | None = None,
) -> tuple[list[Deployment], list[Problem]]:
    """The validate stage: every usable deployment (sorted by name) and every problem found on
    the way (validate_deployment of each; `texts` by name, as snapshot.deployment_texts)."""
    deployments: list[Deployment] = []
    problems: list[Problem] = []
    for name, value in sorted(snapshot["deployment"].items()):
        text = None if texts is None else texts[name]
        deployment, found = validate_deployment(name, value, validator, max_value_bytes, text)
        problems.extend(found)
        if deployment is not None:
            deployments.append(deployment)
    return deployments, problems
