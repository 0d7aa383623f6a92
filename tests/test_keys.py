"""The registry's key layout (generator/core/keys.py): each key built from its parts, and parsed
back to them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generator.core import keys
from generator.core.keys import Key

# A segment: anything but '/' (a name with '/' nests, and is no longer one segment).
NAMES = st.text(st.characters(exclude_characters="/"), min_size=1, max_size=12)


def test_the_keys_are_spelled_as_registrations_write_them() -> None:
    assert keys.PREFIX == "/deployment"
    assert keys.deployment_key("feat-x") == "/deployment/feat-x"
    assert keys.created_key("feat-x") == "/deployment/feat-x/created"
    assert keys.services_key("feat-x") == "/deployment/feat-x/service"
    assert keys.service_key("feat-x", "web") == "/deployment/feat-x/service/web"
    assert keys.instances_key("feat-x", "web") == "/deployment/feat-x/service/web/instance"
    seed = keys.instance_key("feat-x", "web", None)
    assert seed == "/deployment/feat-x/service/web"
    assert keys.ip_key(seed) == "/deployment/feat-x/service/web/ip"
    assert keys.port_key(seed) == "/deployment/feat-x/service/web/port"
    one = keys.instance_key("feat-x", "web", "a1")
    assert one == "/deployment/feat-x/service/web/instance/a1"
    assert keys.ip_key(one) == "/deployment/feat-x/service/web/instance/a1/ip"
    assert keys.port_key(one) == "/deployment/feat-x/service/web/instance/a1/port"


def test_a_snapshot_holds_an_instance_at_the_keys_path() -> None:
    assert keys.instance_path("web", None) == ("service", "web")
    assert keys.instance_path("web", "a1") == ("service", "web", "instance", "a1")
    for instance in (None, "a1"):
        joined = "/".join((keys.PREFIX, "feat-x", *keys.instance_path("web", instance)))
        assert joined == keys.instance_key("feat-x", "web", instance)


@given(NAMES, NAMES, st.none() | NAMES)
def test_every_key_parses_back_to_its_parts(
    deployment: str, service: str, instance: str | None
) -> None:
    directory = keys.instance_key(deployment, service, instance)
    assert keys.parse(directory) == Key(deployment, service, instance)
    assert keys.parse(keys.ip_key(directory)) == Key(deployment, service, instance, "ip")
    assert keys.parse(keys.port_key(directory)) == Key(deployment, service, instance, "port")
    assert keys.parse(keys.created_key(deployment)) == Key(deployment, name="created")
    assert keys.parse(keys.deployment_key(deployment)) == Key(deployment)
    assert keys.deployment_of(keys.ip_key(directory)) == deployment
    assert keys.segments(keys.port_key(directory))[0] == deployment


@pytest.mark.parametrize(
    "key",
    [
        "/other/feat-x/created",
        "/deploymentx/feat-x/created",
        "/deployment",
        "/deployment/",
        "/deployment/feat-x//created",
        "/deployment/feat-x/service",  # the directories that hold only names
        "/deployment/feat-x/service/web/instance",
        "/deployment/feat-x/name",
        "/deployment/feat-x/created/more",
        "/deployment/feat-x/service/web/host",
        "/deployment/feat-x/services/web/ip",
        "/deployment/feat-x/service/web/instances/a1/ip",
        "/deployment/feat-x/service/web/instance/a1/ip/more",
    ],
)
def test_other_keys_parse_to_none(key: str) -> None:
    assert keys.parse(key) is None


def test_segments_and_deployment_of_ignore_keys_outside_the_prefix() -> None:
    assert keys.segments("/deploymentx/a") == []
    assert keys.deployment_of("/deploymentx/a") is None
    assert keys.deployment_of("/deployment/") is None
    assert keys.segments("/deployment/a/b/") == ["a", "b"]
    assert keys.deployment_of("/deployment/a/b") == "a"
