"""Snapshots whose services have several instances, for tests of render, check and the pipeline.

The registry layout (issue 9): an instance of a service is
`/deployment/<branch>/service/<service>/instance/<id>/ip` and `.../port`, beside the seed's
`/deployment/<branch>/service/<service>/ip` and `/port` (the instance whose id is None). In a
snapshot, as etcdwatch hands it over:

    {"deployment": {"main": {"service": {"web": {
        "ip": "10.0.0.1", "port": "8080",
        "instance": {"a1": {"ip": "10.0.0.2", "port": "8080"}}}}}}}

Until validation reads instance keys (branch `validate`), `InstancesPipeline` reads them here:
a deployment that holds some is made into a `Deployment` by `deployment_of` (complete
instances only; no problems), every other one goes through the real validation. Once the
schema knows instance keys (`SCHEMA_KNOWS_INSTANCES`), `InstancesPipeline` is the real
`Pipeline` unchanged, and the tests that use it test the real thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from generator import pipeline
from generator.config import Config
from generator.model import Deployment, Instance, Problem, Service, instance_order
from generator.render import environment
from generator.resources import data_dir, schema
from generator.routing import Candidate, candidates
from generator.validate import SnapshotValidator, parse_time

TEMPLATES = environment([data_dir("templates")])
SCHEMA = schema("snapshot")


def _knows_instances() -> bool:
    """Whether the real validation reads instance keys yet."""
    probe = {
        "service": {
            "web": {
                "instance": {
                    "a": {"ip": "10.0.0.1", "port": "80"},
                    "b": {"ip": "10.0.0.2", "port": "80"},
                }
            }
        }
    }
    found, _ = SnapshotValidator(SCHEMA).deployment("probe", probe)
    return found is not None and [len(s.instances) for s in found.services] == [2]


SCHEMA_KNOWS_INSTANCES = _knows_instances()


def has_instances(value: Any) -> bool:
    services = value.get("service") if isinstance(value, dict) else None
    return isinstance(services, dict) and any(
        isinstance(entry, dict) and "instance" in entry for entry in services.values()
    )


def _complete(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("ip"), str)
        and isinstance(entry.get("port"), str)
    )


def deployment_of(name: str, value: Mapping[str, Any]) -> Deployment:
    """The deployment a snapshot's value registers, instances included (test input only: an
    incomplete instance is dropped without a problem, a service with no complete one too)."""
    services = []
    for service, entry in sorted((value.get("service") or {}).items()):
        if not isinstance(entry, dict):
            continue
        found = [Instance(None, entry["ip"], entry["port"])] if _complete(entry) else []
        held = entry.get("instance")
        found += [
            Instance(id, instance["ip"], instance["port"])
            for id, instance in (held.items() if isinstance(held, dict) else ())
            if _complete(instance)
        ]
        if found:
            services.append(Service(service, tuple(sorted(found, key=instance_order))))
    created = value.get("created")
    return Deployment(
        name,
        parse_time(created) if isinstance(created, str) else None,
        tuple(services),
        tuple(sorted(value.get("service") or {})),
    )


class InstancesPipeline(pipeline.Pipeline):
    """pipeline.Pipeline, reading instance keys itself until validation does (see above)."""

    def _deployment(
        self, name: str, value: Any
    ) -> tuple[tuple[Candidate, ...], tuple[Problem, ...]]:
        if SCHEMA_KNOWS_INSTANCES or not has_instances(value):
            return super()._deployment(name, value)
        asked, problems = candidates(deployment_of(name, value), self.config)
        return tuple(asked), tuple(problems)


def build(snapshot: Mapping[str, Any], config: Config) -> pipeline.Rendered:
    """pipeline.build, instance keys read: the cold run."""
    return InstancesPipeline(config, SCHEMA, TEMPLATES)(snapshot)


def instances(*addresses: str, plain: str | None = None) -> dict[str, Any]:
    """A service entry: instance i<n> at each `ip:port` of `addresses`, and the seed's plain
    ip/port keys at `plain`."""
    entry: dict[str, Any] = {}
    if plain is not None:
        entry.update(_registered(plain))
    if addresses:
        entry["instance"] = {
            f"i{number}": _registered(address) for number, address in enumerate(addresses)
        }
    return entry


def _registered(address: str) -> dict[str, str]:
    """ip and port as registered: `[fc00::1]:80` is ip fc00::1, port 80."""
    ip, _, port = address.rpartition(":")
    return {"ip": ip.removeprefix("[").removesuffix("]"), "port": port}


# --------------------------------------------------------------------------
# strategies: few names, so that edits land on what is there

instance_ids = st.sampled_from(["a", "b", "c", "task-7f3a", "Host.1"])
# few addresses: two instances at one address happen (one server, no group)
_good_instances = st.fixed_dictionaries(
    {
        "ip": st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fc00::5", "127.0.0.1"]),
        "port": st.sampled_from(["8080", "9000"]),
    }
)
instance_values = st.one_of(
    _good_instances,
    _good_instances,
    _good_instances,
    st.sampled_from(
        [
            {"ip": "169.254.169.254", "port": "80"},  # refused: the others still route
            {"ip": "10.0.0.9"},  # half-written
        ]
    ),
)
instance_branches = st.sampled_from(["main", "feat-x", "Feat/X", "feature/login"])
instance_services = st.sampled_from(["web", "api", "WEB"])

instance_services_entries = st.builds(
    lambda plain, found: {**plain, **({"instance": found} if found else {})},
    st.one_of(st.just({}), instance_values),
    st.dictionaries(instance_ids, instance_values, min_size=1, max_size=3),
)

instance_snapshots = st.dictionaries(
    instance_branches,
    st.fixed_dictionaries(
        {
            "service": st.dictionaries(
                instance_services, instance_services_entries, min_size=1, max_size=3
            )
        },
        optional={"created": st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"])},
    ),
    min_size=1,
    max_size=3,
).map(lambda found: {"deployment": found})

# One edit of an instance: (what, branch, service, (instance id, value)).
instance_edits = st.tuples(
    st.sampled_from(["set-instance", "set-instance", "remove-instance"]),
    instance_branches,
    instance_services,
    st.tuples(instance_ids, instance_values),
)


def edited_instance(snapshot: dict[str, Any], edit: tuple[str, str, str, Any]) -> None:
    """Apply one instance edit to `snapshot` in place (a fresh copy the caller made)."""
    what, branch, service, (id, value) = edit
    deployment = snapshot["deployment"].setdefault(branch, {})
    if not isinstance(deployment, dict):
        return
    services = deployment.setdefault("service", {})
    if not isinstance(services, dict):
        return
    entry = services.setdefault(service, {})
    if not isinstance(entry, dict):
        return
    found = entry.setdefault("instance", {})
    if what == "set-instance":
        found[id] = value
        return
    found.pop(id, None)
    if not found:
        del entry["instance"]
    if not entry:
        del services[service]
