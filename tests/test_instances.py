"""A service's instances through validation and routing, as properties (issue 9).

* The order of instances in the registry (etcd promises none) never changes anything: the
  validated deployments, the routing table, its problems, the rendered config's bytes.
* What a problem says it costs is what happened: "the instance is skipped" only while the
  service still has a complete instance, "the service is skipped" only when it has none; a
  registered service that does not route has a problem that says so.
* A service keeps every instance it registered, of the right shape and in instance order,
  unless a problem under its key path says why not.
"""

from __future__ import annotations

import random
from typing import Any

import strategies
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from generator import resources
from generator.core import pipeline, render
from generator.core.config import resolve
from generator.core.model import Deployment, Problem, instance_order
from generator.core.names import key_path
from generator.core.validate import INSTANCE_ID, SnapshotValidator, validate

VALIDATOR = SnapshotValidator(resources.schema("snapshot"))
TEMPLATES = render.environment(resources.template_loader())
CONFIG = resolve(resources.schema("config"), {"domain": "dev.test"}, {})

PURE = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=examples(200),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Deployments whose services are mostly registered as instances (strategies.services: the
# seed's keys, instances, or both; half-written, shared addresses, ids of the wrong shape).
replica_snapshots: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    strategies.branch_names,
    st.fixed_dictionaries(
        {"service": st.dictionaries(strategies.service_names, strategies.services, max_size=4)},
        optional={"created": strategies.created_strings},
    ),
    max_size=5,
).map(lambda found: {"deployment": found})

snapshots = st.one_of(
    replica_snapshots,
    replica_snapshots,
    strategies.realistic_snapshots,
    strategies.arbitrary_snapshots,
)

# Hand-made: every kind of instance the fixtures hold, in one service.
MIXED = {
    "deployment": {
        "feat-x": {
            "created": "2026-01-01T00:00:00Z",
            "service": {
                "web": {
                    "ip": "10.0.0.9",
                    "port": "8080",
                    "instance": {
                        "c": {"ip": "10.0.0.3", "port": "80"},
                        "a": {"ip": "10.0.0.1", "port": "80"},
                        "dup": {"ip": "10.0.0.1", "port": "80"},
                        "half": {"ip": "10.0.0.4"},
                        "-bad": {"ip": "10.0.0.5", "port": "80"},
                        "stray": {"ip": "10.0.0.6", "port": "80", "ttl": "30"},
                        "refused": {"ip": "169.254.169.254", "port": "80"},
                        "leaf": "10.0.0.7:80",
                    },
                },
                "api": {"instance": {"only": {"port": "81"}}},
            },
        }
    }
}


def shuffled_instances(node: Any, rnd: random.Random, parent: str | None = None) -> Any:
    """`node` with the entries of every `instance` directory in a random order."""
    if not isinstance(node, dict):
        return node
    items = [(key, shuffled_instances(value, rnd, key)) for key, value in node.items()]
    if parent == "instance":
        rnd.shuffle(items)
    return dict(items)


def shuffled(node: Any, rnd: random.Random) -> Any:
    """`node` with the entries of every directory in a random order."""
    if not isinstance(node, dict):
        return node
    items = [(key, shuffled(value, rnd)) for key, value in node.items()]
    rnd.shuffle(items)
    return dict(items)


def build(snapshot: dict[str, Any]) -> pipeline.Rendered:
    return pipeline.build(snapshot, CONFIG, resources.schema("snapshot"), TEMPLATES)


@PURE
@example(snapshot=MIXED, rnd=random.Random(1))
@given(snapshot=snapshots, rnd=st.randoms(use_true_random=False))
def test_instance_order_never_changes_the_output(
    snapshot: dict[str, Any], rnd: random.Random
) -> None:
    deployments, problems = validate(snapshot, VALIDATOR)
    first = build(snapshot)
    for variant in (shuffled_instances(snapshot, rnd), shuffled(snapshot, rnd)):
        again_deployments, again_problems = validate(variant, VALIDATOR)
        assert again_deployments == deployments
        assert sorted(set(again_problems)) == sorted(set(problems))
        again = build(variant)
        assert again.text.encode() == first.text.encode()
        assert again.table == first.table
        assert again.table.problems == first.table.problems


def under(problem: Problem, prefix: str) -> bool:
    return problem.key == prefix or problem.key.startswith(prefix + "/")


def assert_costs_true(name: str, value: Any) -> None:
    deployment, problems = VALIDATOR.deployment(name, value)
    if deployment is None:
        return
    routed = {service.name for service in deployment.services}
    for service in deployment.registered:
        prefix = key_path("deployment", name, "service", service)
        about = [problem for problem in problems if under(problem, prefix)]
        for problem in about:
            if ": the instance is skipped;" in problem.message:
                assert service in routed, f"{problem} but the service has no instance left"
            if ": the service is skipped;" in problem.message:
                assert service not in routed, f"{problem} but the service routes"
        if service not in routed:
            assert any(": the service is skipped;" in p.message for p in about), (
                f"{prefix} is registered, does not route, and no problem says so: {about}"
            )


def assert_instances_kept(name: str, value: Any, deployment: Deployment) -> None:
    """Every service routes with exactly the instances it registered, in instance order,
    except those a problem under the service's key path accounts for."""
    _, problems = VALIDATOR.deployment(name, value)
    for service in deployment.services:
        assert service.instances, f"{service.name}: a service with no instance"
        assert list(service.instances) == sorted(service.instances, key=instance_order)
        entry = value["service"][service.name]
        for instance in service.instances:
            if instance.id is None:
                keys = entry
            else:
                assert INSTANCE_ID.fullmatch(instance.id), instance.id
                keys = entry["instance"][instance.id]
            assert (instance.ip, instance.port) == (str(keys["ip"]), str(keys["port"]))
        prefix = key_path("deployment", name, "service", service.name)
        if not any(under(problem, prefix) for problem in problems):
            registered = [None] if "ip" in entry or "port" in entry else []
            registered += sorted(entry.get("instance") or {})
            assert [instance.id for instance in service.instances] == registered


@PURE
@example(snapshot=MIXED)
@given(snapshot=snapshots)
def test_what_a_problem_says_it_costs_is_what_happened(snapshot: dict[str, Any]) -> None:
    for name, value in snapshot["deployment"].items():
        assert_costs_true(name, value)
        deployment, _ = VALIDATOR.deployment(name, value)
        if deployment is not None:
            assert_instances_kept(name, value, deployment)


COSTS = {"the key is ignored": "key", "the instance is skipped": "instance"}
COSTS["the service is skipped"] = "service"


def cost(problem: Problem) -> str:
    """What the problem's message says it costs: key, instance or service."""
    [said] = [
        what
        for phrase, what in COSTS.items()
        if f"; {phrase}" in problem.message or f": {phrase}" in problem.message
    ]
    return said


def test_the_mixed_service_keeps_its_good_instances_and_says_why_it_lost_the_others() -> None:
    table = build(MIXED).table
    web = table.by_host()["feat-x-web.dev.test"]
    assert [(m.instance, str(m.upstream)) for m in web.members] == [
        (None, "10.0.0.9:8080"),
        ("a", "10.0.0.1:80"),
        ("c", "10.0.0.3:80"),
        ("dup", "10.0.0.1:80"),
        ("stray", "10.0.0.6:80"),
    ]
    assert [str(u) for u in web.upstreams] == [
        "10.0.0.1:80",
        "10.0.0.3:80",
        "10.0.0.6:80",
        "10.0.0.9:8080",
    ]
    assert "feat-x-api.dev.test" not in table.by_host()
    prefix = "/deployment/feat-x/service/"
    assert [(p.key.removeprefix(prefix), p.code, cost(p)) for p in table.problems] == [
        ("api/instance/only", "incomplete-instance", "service"),
        ("web/instance/-bad", "bad-instance-id", "instance"),
        ("web/instance/half", "incomplete-instance", "instance"),
        ("web/instance/leaf", "not-an-instance", "instance"),
        ("web/instance/refused", "refused-upstream", "instance"),
        ("web/instance/stray/ttl", "stray-key", "key"),
    ]
