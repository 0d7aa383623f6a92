"""Routing: hostnames, default entry points, the upstream guard, the collision rule, and a
service's instances as the members of its route."""

from __future__ import annotations

from typing import Any

import pytest

from generator.core.config import Config, resolve
from generator.core.model import Route, RouteKind, RoutingTable
from generator.core.routing import build_table, guard, pool
from generator.core.validate import SnapshotValidator, validate
from generator.resources import schema


def config(**settings: Any) -> Config:
    return resolve(schema("config"), {"domain": "dev.test", **settings}, {})


def table(deployments: dict[str, Any], **settings: Any) -> RoutingTable:
    valid, problems = validate({"deployment": deployments}, SnapshotValidator(schema("snapshot")))
    return build_table(valid, config(**settings), problems)


def service(ip: str = "10.0.0.1", port: str = "8080") -> dict[str, str]:
    return {"ip": ip, "port": port}


def hosts(routes: RoutingTable) -> dict[str, str]:
    return {route.host: f"{route.deployment}/{route.service}" for route in routes.routes}


def codes(routes: RoutingTable) -> list[str]:
    return [problem.code for problem in routes.problems]


def test_a_route_per_service_and_the_default_entry_point_for_web() -> None:
    routes = table({"feat-x": {"service": {"web": service(), "api": service(port="81")}}})
    assert hosts(routes) == {
        "feat-x-api.dev.test": "feat-x/api",
        "feat-x-web.dev.test": "feat-x/web",
        "feat-x.dev.test": "feat-x/web",
    }
    assert [r.kind for r in routes.routes if r.host == "feat-x.dev.test"] == [RouteKind.DEFAULT]


def test_a_single_service_is_the_default_whatever_its_name() -> None:
    routes = table({"b": {"service": {"api": service()}}})
    assert hosts(routes)["b.dev.test"] == "b/api"


def test_several_services_without_the_default_one_get_no_alias_and_a_problem() -> None:
    routes = table({"b": {"service": {"api": service(), "db": service()}}})
    assert "b.dev.test" not in hosts(routes)
    assert codes(routes) == ["no-default-service"]


def test_default_service_is_configurable() -> None:
    routes = table({"b": {"service": {"api": service(), "db": service()}}}, default_service="api")
    assert hosts(routes)["b.dev.test"] == "b/api"


def test_a_refused_default_service_does_not_move_the_alias_to_another_service() -> None:
    routes = table({"b": {"service": {"web": service(ip="169.254.169.254"), "api": service()}}})
    assert "b.dev.test" not in hosts(routes)
    assert "refused-upstream" in codes(routes)


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("fd00::1", True),
        ("169.254.169.254", False),  # cloud metadata: never
        ("::ffff:169.254.169.254", False),  # the same host, IPv4-mapped
        ("::ffff:10.0.0.1", True),
        ("fe80::1", False),
        ("8.8.8.8", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("127.0.0.1", False),
        ("::1", False),
        ("not-an-ip", False),
    ],
)
def test_guard_allows_only_private_networks_by_default(ip: str, allowed: bool) -> None:
    assert isinstance(guard(ip, "8080", config()), str) is not allowed


def test_loopback_only_when_allowed_and_link_local_never() -> None:
    local = config(allow_loopback=True, allowed_networks=["0.0.0.0/0", "::/0"])
    assert not isinstance(guard("127.0.0.1", "80", local), str)
    assert isinstance(guard("169.254.169.254", "80", local), str)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1", "80a"])
def test_guard_refuses_ports_outside_1_to_65535(port: str) -> None:
    assert isinstance(guard("10.0.0.1", port, config()), str)


def test_ipv6_upstreams_are_bracketed() -> None:
    routes = table({"b": {"service": {"web": service(ip="fd00::5", port="9000")}}})
    assert {str(up) for route in routes.routes for up in route.upstreams} == {"[fd00::5]:9000"}


def collide(first_created: str | None, second_created: str | None) -> RoutingTable:
    def deployment(created: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"service": {"web": service()}}
        if created is not None:
            entry["created"] = created
        return entry

    return table(
        {"Feature/Foo": deployment(first_created), "feature-foo": deployment(second_created)}
    )


def test_collision_the_oldest_created_keeps_the_hostname() -> None:
    routes = collide("2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z")
    assert hosts(routes)["feature-foo-web.dev.test"] == "feature-foo/web"
    assert codes(routes).count("host-collision") == 2  # the service route and the alias


def test_collision_a_missing_created_counts_as_newest() -> None:
    routes = collide(None, "2026-11-01T00:00:00Z")
    assert hosts(routes)["feature-foo.dev.test"] == "feature-foo/web"
    routes = collide("2026-11-01T00:00:00Z", None)
    assert hosts(routes)["feature-foo.dev.test"] == "Feature/Foo/web"


def test_collision_times_compare_as_times_not_strings() -> None:
    # 10:00+02:00 is 08:00Z, earlier than 09:00Z although it sorts later as text
    routes = collide("2026-11-01T10:00:00+02:00", "2026-11-01T09:00:00Z")
    assert hosts(routes)["feature-foo.dev.test"] == "Feature/Foo/web"


def test_collision_between_an_alias_and_a_service_route() -> None:
    routes = table(
        {
            "foo-api": {"created": "2026-11-01T00:00:00Z", "service": {"web": service()}},
            "foo": {
                "created": "2026-11-02T00:00:00Z",
                "service": {"web": service(), "api": service()},
            },
        }
    )
    assert hosts(routes)["foo-api.dev.test"] == "foo-api/web"
    [problem] = [p for p in routes.problems if p.code == "host-collision"]
    assert problem.key == "/deployment/foo/service/api"
    assert "foo-api" in problem.message


def test_collision_with_equal_times_is_settled_by_name_the_same_way_every_time() -> None:
    routes = table(
        {"foo-bar": {"service": {"baz": service()}}, "foo": {"service": {"bar-baz": service()}}}
    )
    assert hosts(routes)["foo-bar-baz.dev.test"] == "foo/bar-baz"


def test_reserved_names_and_the_bare_domain_cannot_be_claimed() -> None:
    routes = table({"www": {"service": {"web": service()}}}, reserved_names=["www"])
    assert "www.dev.test" not in hosts(routes)
    assert "www-web.dev.test" in hosts(routes)
    assert "reserved-host" in codes(routes)


def test_problems_are_sorted_and_unique() -> None:
    routes = table({"b": {"service": {"x": {}, "a": {"ip": "10.0.0.1"}}}, "a": None})
    assert list(routes.problems) == sorted(set(routes.problems))


@pytest.mark.parametrize(
    "ip",
    [
        "fd00:ec2::254",  # EC2 metadata over IPv6, inside fc00::/7
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "255.255.255.255",
        "0.1.2.3",
        "240.0.0.1",
    ],
)
def test_metadata_and_non_host_addresses_are_refused_even_when_every_network_is_allowed(
    ip: str,
) -> None:
    wide = config(allowed_networks=["0.0.0.0/0", "::/0"])
    assert isinstance(guard(ip, "80", wide), str)


def test_an_ipv4_mapped_upstream_is_routed_as_its_ipv4_host() -> None:
    upstream = guard("::ffff:10.0.0.1", "80", config())
    assert str(upstream) == "10.0.0.1:80"


# --------------------------------------------------------------------------
# instances: members, pools and the guard per instance


def instances(*addresses: tuple[str, str, str]) -> dict[str, Any]:
    """A service registered as instances: (id, ip, port) each."""
    return {"instance": {id: service(ip, port) for id, ip, port in addresses}}


def route_of(routes: RoutingTable, host: str) -> Route:
    return routes.by_host()[host]


def test_every_complete_instance_is_a_member_in_instance_order() -> None:
    routes = table(
        {
            "b": {
                "service": {
                    "web": {
                        **service("10.0.0.9", "81"),
                        **instances(("c", "10.0.0.3", "80"), ("a", "10.0.0.1", "80")),
                    }
                }
            }
        }
    )
    web = route_of(routes, "b-web.dev.test")
    assert [(m.instance, str(m.upstream)) for m in web.members] == [
        (None, "10.0.0.9:81"),
        ("a", "10.0.0.1:80"),
        ("c", "10.0.0.3:80"),
    ]
    assert [str(u) for u in web.upstreams] == ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.9:81"]
    assert web.pool == pool("b", "web", web.members) != "10.0.0.1:80"
    assert route_of(routes, "b.dev.test").members == web.members  # the default entry point too
    assert routes.problems == ()


def test_two_instances_with_one_address_are_one_upstream_and_a_map_line() -> None:
    routes = table(
        {"b": {"service": {"web": instances(("a", "10.0.0.1", "80"), ("b", "10.0.0.1", "80"))}}}
    )
    web = route_of(routes, "b-web.dev.test")
    assert [m.instance for m in web.members] == ["a", "b"]
    assert [str(u) for u in web.upstreams] == ["10.0.0.1:80"]
    assert web.pool == "10.0.0.1:80"


def test_a_refused_instance_is_skipped_and_the_others_route() -> None:
    routes = table(
        {
            "b": {
                "service": {
                    "web": instances(("a", "169.254.169.254", "80"), ("b", "10.0.0.2", "80"))
                }
            }
        }
    )
    web = route_of(routes, "b-web.dev.test")
    assert [m.instance for m in web.members] == ["b"]
    assert web.pool == "10.0.0.2:80"
    assert [str(p) for p in routes.problems] == [
        "/deployment/b/service/web/instance/a: upstream 169.254.169.254:80 is link-local "
        "(where cloud metadata services answer): always refused; the instance is skipped; "
        "the service's other instances route [refused-upstream]"
    ]


def test_a_service_whose_every_instance_is_refused_is_skipped() -> None:
    routes = table(
        {"b": {"service": {"web": instances(("a", "8.8.8.8", "80"), ("b", "127.0.0.1", "80"))}}}
    )
    assert hosts(routes) == {}
    assert [(p.key, p.code) for p in routes.problems] == [
        ("/deployment/b/service/web/instance/a", "refused-upstream"),
        ("/deployment/b/service/web/instance/b", "refused-upstream"),
    ]
    assert all(p.message.endswith("; the service is skipped") for p in routes.problems)


def test_a_half_written_instance_and_a_refused_one_leave_the_good_one_routing() -> None:
    routes = table(
        {
            "b": {
                "service": {
                    "web": {
                        "ip": "0.0.0.0",
                        "port": "80",
                        "instance": {"new": {"ip": "10.0.0.3"}, "ok": service("10.0.0.2")},
                    }
                }
            }
        }
    )
    assert [m.instance for m in route_of(routes, "b-web.dev.test").members] == ["ok"]
    assert {(p.key, p.code) for p in routes.problems} == {
        ("/deployment/b/service/web", "refused-upstream"),
        ("/deployment/b/service/web/instance/new", "incomplete-instance"),
    }


def test_a_default_service_waiting_for_its_only_instance_gets_no_alias() -> None:
    routes = table({"b": {"service": {"web": instances(("a", "10.0.0.1", "")), "api": service()}}})
    assert "b.dev.test" not in hosts(routes)
    assert "b-api.dev.test" in hosts(routes)
    assert "no-default-service" not in codes(routes)  # web's own problem says why


def test_the_pool_of_a_service_is_the_same_whatever_instances_come_and_go() -> None:
    def web_pool(*addresses: tuple[str, str, str]) -> str:
        return route_of(
            table({"b": {"service": {"web": instances(*addresses)}}}), "b-web.dev.test"
        ).pool

    two = web_pool(("a", "10.0.0.1", "80"), ("b", "10.0.0.2", "80"))
    three = web_pool(("a", "10.0.0.1", "80"), ("c", "10.0.0.3", "80"), ("d", "10.0.0.4", "80"))
    assert two == three
    assert two.startswith("b-web--")
