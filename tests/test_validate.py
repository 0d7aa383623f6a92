"""Validation: the fastjsonschema fast path never changes what jsonschema decides, and each
rule of validate.RULES says what it costs, where, truly."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import jsonschema
import pytest
import referencing
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from generator import resources
from generator.core.model import Instance, Problem, Service
from generator.core.routing import instance_key
from generator.core.validate import INSTANCE_ID, SnapshotValidator

FAST = SnapshotValidator(resources.schema("snapshot"))
REFERENCE = SnapshotValidator(resources.schema("snapshot"), fast=False)
SCHEMA = resources.schema("snapshot")

EXAMPLES = settings(
    max_examples=examples(400),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@EXAMPLES
@given(
    st.one_of(
        st.deferred(lambda: _layouts), strategies.deployments, strategies.trees, strategies.leaves
    )
)
def test_the_fast_path_decides_as_jsonschema_does(value: Any) -> None:
    assert FAST.deployment("b", value) == REFERENCE.deployment("b", value)


@EXAMPLES
@given(strategies.arbitrary_snapshots)
def test_the_fast_path_decides_as_jsonschema_does_on_hostile_deployments(
    snapshot: dict[str, Any],
) -> None:
    for name, value in snapshot["deployment"].items():
        assert FAST.deployment(name, value) == REFERENCE.deployment(name, value)


def test_a_port_with_a_trailing_newline_is_decided_as_jsonschema_decides() -> None:
    # fastjsonschema's $ does not match before a final newline, Python's re (jsonschema) does:
    # such a value goes to jsonschema, and the guard refuses the port later.
    value = {"service": {"web": {"ip": "10.0.0.1", "port": "80\n"}}}
    assert FAST.deployment("b", value) == REFERENCE.deployment("b", value)


# --------------------------------------------------------------------------
# the schema itself: fastjsonschema (drafts up to 7) and jsonschema (2020-12) agree on it


def _compiled() -> tuple[Any, jsonschema.protocols.Validator]:
    fast = fastjsonschema.compile({"$ref": "#/$defs/deployment", "$defs": SCHEMA["$defs"]})
    registry: referencing.Registry[Any] = (
        referencing.Resource.from_contents(SCHEMA) @ referencing.Registry()
    )
    cls = jsonschema.validators.validator_for(SCHEMA)
    return fast, cls({"$ref": f"{SCHEMA['$id']}#/$defs/deployment"}, registry=registry)


FAST_SCHEMA, REFERENCE_SCHEMA = _compiled()


def _fast_valid(value: Any) -> bool:
    try:
        FAST_SCHEMA(value)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def _final_newlines(value: Any) -> bool:
    """Whether a key or string in `value` ends in a newline (where the two `$` differ)."""
    if isinstance(value, dict):
        return any(_final_newlines(key) or _final_newlines(item) for key, item in value.items())
    return isinstance(value, str) and value.endswith("\n")


# Every layout of a service's keys, with values the schema accepts: where the two validators
# could read the structural keywords (if/then/else, propertyNames, minProperties) apart.
_good_keys = st.fixed_dictionaries(
    {}, optional={"ip": st.sampled_from(["10.0.0.1", "fd00::1"]), "port": st.just("80")}
)
_layouts = st.fixed_dictionaries(
    {
        "service": st.dictionaries(
            st.sampled_from(["web", "api"]),
            st.one_of(
                _good_keys,
                st.builds(
                    lambda own, instances: {**own, "instance": instances},
                    _good_keys,
                    st.dictionaries(
                        st.sampled_from(["a", "b", "-c", "", "d.e_f-1"]), _good_keys, max_size=3
                    ),
                ),
            ),
            max_size=2,
        )
    }
)


@EXAMPLES
@given(
    st.one_of(
        _layouts,
        strategies.deployments,
        strategies.trees,
        strategies.arbitrary_snapshots.map(lambda s: s["deployment"]).flatmap(
            lambda found: st.sampled_from(list(found.values())) if found else st.just({})
        ),
    )
)
def test_fastjsonschema_and_jsonschema_agree_on_the_schema(value: Any) -> None:
    fast, reference = _fast_valid(value), REFERENCE_SCHEMA.is_valid(value)
    if fast:
        assert reference  # what the fast path passes has no problem to report
    if not _final_newlines(value):
        assert fast == reference


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ({"service": {"w": {"ip": "10.0.0.1", "port": "80"}}}, True),
        ({"service": {"w": {"instance": {"a": {"ip": "10.0.0.1", "port": "80"}}}}}, True),
        (
            {
                "service": {
                    "w": {
                        "ip": "10.0.0.1",
                        "port": "80",
                        "instance": {"a": {"ip": "10.0.0.2", "port": "80"}},
                    }
                }
            },
            True,
        ),
        ({"service": {"w": {"ip": "10.0.0.1", "port": "80", "instance": {}}}}, True),
        ({"service": {"w": {"instance": {}}}}, False),  # no instance at all
        (
            {
                "service": {
                    "w": {"ip": "10.0.0.1", "instance": {"a": {"ip": "10.0.0.2", "port": "80"}}}
                }
            },
            False,
        ),
        (
            {"service": {"w": {"port": "80", "instance": {"a": {"ip": "10.0.0.2", "port": "80"}}}}},
            False,
        ),
        ({"service": {"w": {"ip": "10.0.0.1", "instance": {"a": {"ip": "10.0.0.2"}}}}}, False),
        ({"service": {"w": {"port": "80", "instance": {"a": {"ip": "10.0.0.2"}}}}}, False),
        ({"service": {"w": {"instance": {"-a": {"ip": "10.0.0.1", "port": "80"}}}}}, False),
        ({"service": {"w": {"instance": {"a" * 128: {"ip": "10.0.0.1", "port": "80"}}}}}, True),
        ({"service": {"w": {"instance": {"a" * 129: {"ip": "10.0.0.1", "port": "80"}}}}}, False),
        ({"service": {"w": {"instance": {"a": {"ip": "10.0.0.1", "port": "8", "x": ""}}}}}, False),
        ({"service": {"w": {"instance": {"a": "10.0.0.1:80"}}}}, False),
        ({"service": {"w": {"instance": None, "ip": "10.0.0.1", "port": "80"}}}, False),
        ({"service": {"w": {"ip": "10.0.0.1", "port": "80", "ttl": "30"}}}, False),
    ],
)
def test_both_schema_validators_decide_each_layout_alike(value: Any, valid: bool) -> None:
    assert _fast_valid(value) is valid
    assert REFERENCE_SCHEMA.is_valid(value) is valid


def test_instance_id_is_the_schemas_pattern_matched_whole() -> None:
    service = SCHEMA["$defs"]["service"]
    pattern = service["properties"]["instance"]["propertyNames"]["pattern"]
    assert pattern == f"^{INSTANCE_ID.pattern}$"


def test_an_id_with_a_final_newline_is_not_an_id_though_jsonschema_passes_it() -> None:
    value = {"service": {"w": {"instance": {"a\n": {"ip": "10.0.0.1", "port": "80"}}}}}
    assert REFERENCE_SCHEMA.is_valid(value)  # Python's $ matches before the final newline
    assert not _fast_valid(value)
    for validator in (FAST, REFERENCE):
        deployment, problems = validator.deployment("b", value)
        assert deployment is not None and deployment.services == ()
        assert ('/deployment/b/service/w/instance/"a\\n"', "bad-instance-id") in {
            (problem.key, problem.code) for problem in problems
        }


# --------------------------------------------------------------------------
# what each rule says


def check(value: Any) -> tuple[tuple[Service, ...], list[Problem]]:
    deployment, problems = FAST.deployment("b", value)
    assert (deployment, problems) == REFERENCE.deployment("b", value)
    assert deployment is not None
    return deployment.services, problems


def said(problems: list[Problem]) -> list[str]:
    return [str(problem) for problem in problems if problem.code != "no-services"]


GOOD = {"ip": "10.0.0.1", "port": "8080"}


def test_instances_are_sorted_plain_keys_first_then_by_id_whatever_the_registry_order() -> None:
    services, problems = check(
        {
            "service": {
                "web": {
                    "instance": {
                        "c": {"ip": "10.0.0.3", "port": "80"},
                        "a": {"ip": "10.0.0.1", "port": "80"},
                        "B": {"ip": "10.0.0.2", "port": "80"},
                    },
                    "ip": "10.0.0.9",
                    "port": "81",
                }
            }
        }
    )
    assert problems == []
    assert services == (
        Service(
            "web",
            (
                Instance(None, "10.0.0.9", "81"),
                Instance("B", "10.0.0.2", "80"),
                Instance("a", "10.0.0.1", "80"),
                Instance("c", "10.0.0.3", "80"),
            ),
        ),
    )


def test_a_half_written_instance_is_skipped_and_the_others_route() -> None:
    services, problems = check(
        {"service": {"web": {"instance": {"good": GOOD, "new": {"ip": "10.0.0.2"}}}}}
    )
    assert services == (Service("web", (Instance("good", "10.0.0.1", "8080"),)),)
    assert said(problems) == [
        "/deployment/b/service/web/instance/new: has no port yet: the instance is skipped; "
        "it routes once its ip and port keys are both written [incomplete-instance]"
    ]


def test_a_service_whose_only_instance_is_half_written_is_skipped_and_still_registered() -> None:
    deployment, problems = FAST.deployment(
        "b", {"service": {"web": {"instance": {"new": {"port": "80"}}}, "api": GOOD}}
    )
    assert deployment is not None
    assert [service.name for service in deployment.services] == ["api"]
    assert deployment.registered == ("api", "web")
    assert said(problems) == [
        "/deployment/b/service/web/instance/new: has no ip yet: the service is skipped; "
        "it routes once its ip and port keys are both written [incomplete-instance]"
    ]


def test_the_seeds_half_written_service_keeps_its_message() -> None:
    _, problems = check({"service": {"web": {"ip": "10.0.0.1"}}})
    assert said(problems) == [
        "/deployment/b/service/web: has no port yet: the service is skipped; it routes once "
        "its ip and port keys are both written [incomplete-service]"
    ]


def test_half_written_own_keys_beside_an_instance_cost_that_instance() -> None:
    services, problems = check({"service": {"web": {"port": "80", "instance": {"a": GOOD}}}})
    assert services == (Service("web", (Instance("a", "10.0.0.1", "8080"),)),)
    assert said(problems) == [
        "/deployment/b/service/web: has no ip yet: the instance is skipped; its own ip and "
        "port keys route once both are written [incomplete-instance]"
    ]


def test_half_written_own_keys_beside_no_complete_instance_cost_the_service() -> None:
    services, problems = check(
        {"service": {"web": {"ip": "10.0.0.1", "instance": {"a": {"ip": "10.0.0.2"}}}}}
    )
    assert services == ()
    assert sorted(said(problems)) == [
        "/deployment/b/service/web/instance/a: has no port yet: the service is skipped; it "
        "routes once its ip and port keys are both written [incomplete-instance]",
        "/deployment/b/service/web: has no port yet: the service is skipped; its own ip and "
        "port keys route once both are written [incomplete-instance]",
    ]


@pytest.mark.parametrize(
    ("id", "shown"),
    [
        ("-a", "-a"),
        ("", '""'),
        ("a/b", '"a/b"'),
        ("x; include /etc/passwd;", '"x; include /etc/passwd;"'),
        ("a" * 129, '"' + "a" * 48 + '..."~'),
        ("é", '"\\u00e9"'),
    ],
)
def test_an_instance_id_of_the_wrong_shape_skips_that_instance_and_is_shown_safely(
    id: str, shown: str
) -> None:
    services, problems = check({"service": {"web": {"instance": {id: GOOD, "ok": GOOD}}}})
    assert services == (Service("web", (Instance("ok", "10.0.0.1", "8080"),)),)
    [problem] = problems
    assert problem.code == "bad-instance-id"
    assert problem.key.startswith(f"/deployment/b/service/web/instance/{shown}")
    assert "\n" not in str(problem)
    assert problem.message == (
        "is not an instance id (a letter or digit, then up to 127 letters, digits, '.', '_' "
        "or '-'): the instance is skipped; register the instance under such an id "
        "(register --instance or INSTANCE)"
    )


def test_a_bad_id_is_one_problem_whatever_is_under_it() -> None:
    _, problems = check({"service": {"web": {"instance": {"-a": {"ip": "x", "ttl": "1"}}}}})
    assert [(p.key, p.code) for p in problems] == [
        ("/deployment/b/service/web/instance/-a", "bad-instance-id"),
        ("/deployment/b", "no-services"),
    ]
    assert "the service is skipped" in problems[0].message


def test_a_stray_key_in_an_instance_is_ignored() -> None:
    services, problems = check({"service": {"web": {"instance": {"a": {**GOOD, "ttl": "30"}}}}})
    assert services == (Service("web", (Instance("a", "10.0.0.1", "8080"),)),)
    assert said(problems) == [
        "/deployment/b/service/web/instance/a/ttl: is not an instance key (only 'ip' and "
        "'port' are): the key is ignored; remove it [stray-key]"
    ]


def test_a_stray_key_in_a_service_names_instance_among_the_service_keys() -> None:
    _, problems = check({"service": {"web": {**GOOD, "ttl": "30"}}})
    assert said(problems) == [
        "/deployment/b/service/web/ttl: is not a service key (only 'ip', 'port' and "
        "'instance' are): the key is ignored; remove it [stray-key]"
    ]


def test_an_instance_that_is_not_a_directory_is_skipped() -> None:
    services, problems = check({"service": {"web": {"instance": {"a": "10.0.0.1:80", "b": GOOD}}}})
    assert services == (Service("web", (Instance("b", "10.0.0.1", "8080"),)),)
    assert said(problems) == [
        "/deployment/b/service/web/instance/a: is 10.0.0.1:80, not an instance directory "
        "with ip and port: the instance is skipped; register .../instance/<id>/ip and "
        ".../port [not-an-instance]"
    ]


def test_an_instance_key_that_is_not_a_directory_is_ignored_or_costs_the_service() -> None:
    services, problems = check({"service": {"web": {**GOOD, "instance": "x"}}})
    assert services == (Service("web", (Instance(None, "10.0.0.1", "8080"),)),)
    assert said(problems) == [
        "/deployment/b/service/web/instance: is x, not a directory of instances: the key is "
        "ignored; register each instance under "
        "/deployment/<branch>/service/<service>/instance/<id>/ip and .../port [bad-instances]"
    ]
    services, problems = check({"service": {"web": {"instance": "x"}}})
    assert services == ()
    assert ": the service is skipped; " in said(problems)[0]


def test_an_empty_instance_directory_without_own_keys_is_an_incomplete_service() -> None:
    services, problems = check({"service": {"web": {"instance": {}}}})
    assert services == ()
    assert said(problems) == [
        "/deployment/b/service/web/instance: holds no instance yet: the service is skipped; it "
        "routes once an instance's ip and port keys are both written [incomplete-service]"
    ]
    services, problems = check({"service": {"web": {**GOOD, "instance": {}}}})
    assert services == (Service("web", (Instance(None, "10.0.0.1", "8080"),)),)
    assert problems == []


@pytest.mark.parametrize(
    ("keys", "code", "says"),
    [
        ({"ip": "web.internal", "port": "80"}, "bad-ip", "is web.internal, not an IPv4"),
        ({"ip": "10.0.0.2", "port": "http"}, "bad-port", "is http, not a port number"),
        ({"ip": "10.0.0.2", "port": None}, "bad-port", "is null, not a port number"),
    ],
)
def test_a_bad_address_in_an_instance_costs_only_that_instance(
    keys: dict[str, Any], code: str, says: str
) -> None:
    services, problems = check({"service": {"web": {"instance": {"a": keys, "b": GOOD}}}})
    assert services == (Service("web", (Instance("b", "10.0.0.1", "8080"),)),)
    [problem] = problems
    assert (problem.key.rsplit("/", 1)[0], problem.code) == (
        "/deployment/b/service/web/instance/a",
        code,
    )
    assert problem.message.startswith(says)
    assert ": the instance is skipped; " in problem.message


def test_a_bad_own_ip_beside_instances_costs_only_the_own_keys() -> None:
    services, problems = check(
        {"service": {"web": {"ip": "web", "port": "80", "instance": {"a": GOOD}}}}
    )
    assert services == (Service("web", (Instance("a", "10.0.0.1", "8080"),)),)
    assert said(problems) == [
        "/deployment/b/service/web/ip: is web, not an IPv4 or IPv6 address: the instance is "
        "skipped; register the container's address (names are never resolved) [bad-ip]"
    ]


def test_two_instances_with_one_address_are_both_kept() -> None:
    # routing makes them one server of the pool; validation keeps what was registered
    services, problems = check({"service": {"web": {"instance": {"a": GOOD, "b": GOOD}}}})
    assert problems == []
    assert [instance.id for instance in services[0].instances] == ["a", "b"]


def test_the_problem_key_paths_are_routings_instance_keys() -> None:
    for id in ("ok", "-bad", "a b"):
        _, problems = check({"service": {"web": {"instance": {id: {"ip": "10.0.0.1"}}}}})
        assert problems[0].key == instance_key("b", "web", id)
    _, problems = check({"service": {"web": {"ip": "10.0.0.1", "instance": {"a": GOOD}}}})
    assert problems[0].key == instance_key("b", "web", None) == "/deployment/b/service/web"
