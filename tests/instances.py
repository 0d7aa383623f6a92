"""Snapshots whose services have several instances, for tests of render, check and the pipeline.

The registry layout (issue 9): an instance of a service is
`/deployment/<branch>/service/<service>/instance/<id>/ip` and `.../port`, beside the seed's
`/deployment/<branch>/service/<service>/ip` and `/port` (the instance whose id is None). In a
snapshot, as etcdwatch hands it over:

    {"deployment": {"main": {"service": {"web": {
        "ip": "10.0.0.1", "port": "8080",
        "instance": {"a1": {"ip": "10.0.0.2", "port": "8080"}}}}}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from generator.core import pipeline
from generator.core.config import Config
from generator.core.model import Deployment
from generator.core.render import environment
from generator.core.validate import SnapshotValidator
from generator.resources import schema, template_loader

TEMPLATES = environment(template_loader())
SCHEMA = schema("snapshot")
_VALIDATOR = SnapshotValidator(SCHEMA)


def deployment_of(name: str, value: Mapping[str, Any]) -> Deployment:
    """The deployment validation makes of a snapshot's value (which must be usable)."""
    found, _ = _VALIDATOR.deployment(name, value)
    assert found is not None, f"{name}: {value!r} is not a usable deployment"
    return found


def build(snapshot: Mapping[str, Any], config: Config) -> pipeline.Rendered:
    """pipeline.build with the bundled templates: the cold run."""
    return pipeline.build(snapshot, config, SCHEMA, TEMPLATES)


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
