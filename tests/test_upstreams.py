"""Services with several instances: upstream groups in the rendered file, their check, the plan.

A service whose instances have several distinct addresses gets one `upstream` block at http
level, named by its pool, and its map lines name the pool; a service of one address stays one
map line. Snapshots hold instance keys (tests/instances.py makes them). Real nginx and real
backends: at the end, marked integration.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import tempfile
from pathlib import Path
from typing import Any

import instances
import pytest
from harness import Backend, Nginx, find_binary, http_request, wait_for
from instances import build

from generator.core import check, pipeline
from generator.core.config import Config, resolve
from generator.core.errors import InternalError, TemplateProblem
from generator.core.model import Deployment, Instance, Service
from generator.core.pipeline import Rendered, make_plan, plan_between, route_destination
from generator.core.render import UPSTREAMS_MARKER, Fragment, environment, render
from generator.core.routing import build_table
from generator.nginx import apply
from generator.nginx.apply import Checker, checked_text
from generator.nginx.wrapper import Wrapper
from generator.resources import data_dir, schema, template_loader
from generator.watch.engine import Engine

CONFIG = resolve(schema("config"), {"domain": "dev.test", "allow_loopback": True}, {})
TEMPLATES = environment(template_loader())
CREATED = "2026-01-01T00:00:00Z"
SERVER = "max_fails=1 fail_timeout=10s"


def snapshot(**services: dict[str, Any]) -> dict[str, Any]:
    """One deployment, main, with `services` (entries made by instances.instances)."""
    return {"deployment": {"main": {"created": CREATED, "service": services}}}


def lines_between(text: str, first: str, last: str) -> list[str]:
    start = text.index(first)
    return text[start : text.index(last, start) + len(last)].splitlines()


def group_of(rendered: Rendered, service: str = "web") -> str:
    """The pool of main's `service` route."""
    (route,) = (r for r in rendered.table.routes if r.host == f"main-{service}.dev.test")
    return str(route.pool)


# --------------------------------------------------------------------------
# render


def test_a_service_with_two_instances_gets_one_upstream_block_both_its_routes_name() -> None:
    rendered = build(
        snapshot(
            web=instances.instances("10.0.0.2:8080", "10.0.0.1:8080"),
            api=instances.instances(plain="10.0.0.5:80"),
        ),
        CONFIG,
    )
    text = checked_text(rendered, CONFIG)
    pool = group_of(rendered)
    assert pool.startswith("main-web--")
    assert f"    main-web.dev.test main/web/{pool};\n" in text
    assert f"    main.dev.test main/web/{pool};  # default entry point\n" in text
    assert "    main-api.dev.test main/api/10.0.0.5:80;\n" in text  # one address: a map line
    assert text.count("\nupstream ") == 1  # once, though two routes name it
    assert lines_between(text, f"upstream {pool} {{", "}") == [
        f"upstream {pool} {{",
        f"    server 10.0.0.1:8080 {SERVER};",  # sorted
        f"    server 10.0.0.2:8080 {SERVER};",
        "}",
    ]
    # at http level, after the hostname map and before the maps that read it
    assert text.index("map $host $devtest_route {") < text.index(f"upstream {pool}")
    assert text.index(f"upstream {pool}") < text.index("map $devtest_route $devtest_deployment")
    assert "        proxy_next_upstream error timeout;\n" in text


def test_instances_at_one_address_are_one_server_and_need_no_group() -> None:
    rendered = build(
        snapshot(web=instances.instances("10.0.0.1:8080", "10.0.0.1:8080", plain="10.0.0.1:8080")),
        CONFIG,
    )
    assert group_of(rendered) == "10.0.0.1:8080"
    assert "\nupstream " not in rendered.text
    assert [part.blocks for part in rendered.fragments] == [""]


def test_ipv4_and_ipv6_instances_share_a_group_ipv4_first() -> None:
    rendered = build(snapshot(web=instances.instances("[fc00::5]:80", "10.0.0.9:80")), CONFIG)
    text = checked_text(rendered, CONFIG)
    assert lines_between(text, f"upstream {group_of(rendered)} {{", "}")[1:3] == [
        f"    server 10.0.0.9:80 {SERVER};",
        f"    server [fc00::5]:80 {SERVER};",
    ]


def test_a_refused_instance_is_left_out_of_the_group() -> None:
    rendered = build(
        snapshot(web=instances.instances("10.0.0.1:80", "169.254.169.254:80", "10.0.0.2:80")),
        CONFIG,
    )
    text = checked_text(rendered, CONFIG)
    assert "169.254" not in text
    assert lines_between(text, "\nupstream ", "}")[2:-1] == [
        f"    server 10.0.0.1:80 {SERVER};",
        f"    server 10.0.0.2:80 {SERVER};",
    ]
    assert [problem.code for problem in rendered.table.problems] == ["refused-upstream"]


def test_single_address_services_render_as_before_the_groups() -> None:
    """No upstream block, no byte of one: the file of single-address services is the file of
    routing.build_table and render.render, the same as the pipeline's."""
    single = snapshot(web=instances.instances(plain="10.0.0.1:80"))
    rendered = build(single, CONFIG)
    deployments = [instances.deployment_of("main", single["deployment"]["main"])]
    assert render(build_table(deployments, CONFIG), CONFIG, TEMPLATES).text == rendered.text
    assert "\n}\n\nmap $devtest_route $devtest_deployment" in rendered.text
    assert "\nupstream " not in rendered.text


def test_the_pipeline_and_render_give_the_same_bytes_with_groups() -> None:
    data = snapshot(
        web=instances.instances("10.0.0.2:80", "10.0.0.1:80"),
        api=instances.instances("10.0.0.3:80", "10.0.0.4:80", plain="10.0.0.5:80"),
    )
    data["deployment"]["feat-x"] = {"service": {"web": instances.instances("10.0.1.1:80")}}
    rendered = build(data, CONFIG)
    deployments = [
        instances.deployment_of(name, value) for name, value in data["deployment"].items()
    ]
    assert render(build_table(deployments, CONFIG), CONFIG, TEMPLATES).text == rendered.text
    assert rendered.text.count("\nupstream ") == 2


def test_instance_order_never_changes_the_file() -> None:
    addresses = ["10.0.0.3:80", "10.0.0.1:80", "[fc00::1]:80", "10.0.0.2:81"]
    texts = set()
    for order in itertools.permutations(range(4)):
        service = Service(
            "web",
            tuple(
                Instance(f"i{n}", *addresses[n].replace("[", "").replace("]", "").rsplit(":", 1))
                for n in order
            ),
        )
        table = build_table([Deployment("main", None, (service,), ("web",))], CONFIG)
        texts.add(render(table, CONFIG, TEMPLATES).text)
    assert len(texts) == 1


def test_a_group_s_name_stays_while_its_instances_change() -> None:
    two = build(snapshot(web=instances.instances("10.0.0.1:80", "10.0.0.2:80")), CONFIG)
    three = build(
        snapshot(web=instances.instances("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")), CONFIG
    )
    assert group_of(two) == group_of(three)
    assert two.fragments[0].lines == three.fragments[0].lines  # the map lines stay
    assert two.fragments[0].blocks != three.fragments[0].blocks
    assert two.text != three.text  # so an apply is never "nothing to do"
    # the routes id in the header names the groups' servers too
    assert two.text.splitlines()[1] != three.text.splitlines()[1]


def test_an_override_template_without_upstreams_renders_until_a_group_needs_it(
    tmp_path: Path,
) -> None:
    bundled = (data_dir("templates") / "routes.conf.j2").read_text(encoding="utf-8")
    assert bundled.count("{{ upstreams }}\n") == 1
    (tmp_path / "routes.conf.j2").write_text(bundled.replace("{{ upstreams }}\n", "\n"))
    config = dataclasses.replace(CONFIG, template_dir=str(tmp_path))
    templates = environment(template_loader([tmp_path]))
    single = snapshot(web=instances.instances(plain="10.0.0.1:80"))
    old = pipeline.build(single, config, instances.SCHEMA, templates)
    assert UPSTREAMS_MARKER not in old.skeleton
    assert checked_text(old, config) == old.text
    grouped = snapshot(web=instances.instances("10.0.0.1:80", "10.0.0.2:80"))
    with pytest.raises(TemplateProblem, match=r"must print \{\{ upstreams \}\} exactly once"):
        pipeline.build(grouped, config, instances.SCHEMA, templates)
    # the check refuses groups with no place in the file, whatever made them
    forged = dataclasses.replace(old, fragments=build(grouped, config).fragments)
    with pytest.raises(Exception, match="no place for the upstream blocks"):
        checked_text(forged, config)


# --------------------------------------------------------------------------
# the check refuses whatever a template (or a bug) puts in or around an upstream group


def grouped() -> Rendered:
    """main: web in a group of two, api in a group of three, worker at one address."""
    return build(
        snapshot(
            web=instances.instances("10.0.0.1:80", "10.0.0.2:80"),
            api=instances.instances("10.0.0.3:80", "10.0.0.4:80", "[fc00::4]:80"),
            worker=instances.instances(plain="10.0.0.6:80"),
        ),
        CONFIG,
    )


def with_blocks(rendered: Rendered, blocks: str, pools: Any = None) -> Rendered:
    """`rendered` with main's upstream blocks (and, given, what they must hold) replaced."""
    part, *rest = rendered.fragments
    changed = part._replace(blocks=Fragment(blocks))
    if pools is not None:
        changed = changed._replace(pools=frozenset(pools))
    return dataclasses.replace(rendered, fragments=(changed, *rest))


def refused(rendered: Rendered, said: str) -> None:
    with pytest.raises(InternalError, match=said):
        checked_text(rendered, CONFIG)


def test_the_groups_as_rendered_pass() -> None:
    rendered = grouped()
    assert checked_text(rendered, CONFIG) == rendered.text
    assert rendered.text.count("\nupstream ") == 2


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        # a server with other parameters, or none
        (f"10.0.0.2:80 {SERVER}", "10.0.0.2:80 max_fails=3 fail_timeout=10s", "may hold only"),
        (f"10.0.0.2:80 {SERVER}", "10.0.0.2:80", "may hold only"),
        (f"10.0.0.2:80 {SERVER}", f"10.0.0.2:80 {SERVER} backup", "may hold only"),
        # another directive inside the group
        (f"server 10.0.0.2:80 {SERVER};\n", f"server 10.0.0.2:80 {SERVER};\n    keepalive 8;\n",
         "may hold only"),
        (f"server 10.0.0.2:80 {SERVER};\n", f"server 10.0.0.2:80 {SERVER};\n    ip_hash;\n",
         "may hold only"),
        # other servers than the pool's: one missing, one added, another address, another order
        (f"    server 10.0.0.2:80 {SERVER};\n", "", "has servers"),
        (f"    server 10.0.0.2:80 {SERVER};\n",
         f"    server 10.0.0.2:80 {SERVER};\n    server 10.0.0.7:80 {SERVER};\n", "has servers"),
        ("server 10.0.0.2:80", "server 10.9.9.9:80", "has servers"),
        (f"    server 10.0.0.1:80 {SERVER};\n    server 10.0.0.2:80 {SERVER};\n",
         f"    server 10.0.0.2:80 {SERVER};\n    server 10.0.0.1:80 {SERVER};\n", "has servers"),
        (f"    server 10.0.0.2:80 {SERVER};\n", f"    server unix:/tmp/x.sock {SERVER};\n",
         "has servers"),
    ],
)  # fmt: skip
def test_the_check_refuses_a_group_that_is_not_exactly_the_pool(
    old: str, new: str, said: str
) -> None:
    rendered = grouped()
    blocks = rendered.fragments[0].blocks
    assert blocks.count(old) == 1, old
    refused(with_blocks(rendered, blocks.replace(old, new)), said)


def test_the_check_refuses_a_missing_a_second_or_an_unused_group() -> None:
    rendered = grouped()
    part = rendered.fragments[0]
    web, api = group_of(rendered, "web"), group_of(rendered, "api")
    first = part.blocks[: part.blocks.index("\nupstream ", 1)]
    refused(with_blocks(rendered, part.blocks.replace(first, "")), "missing from the rendered")
    refused(with_blocks(rendered, part.blocks + first), f"upstream {api} is defined 2 times")
    unused = f"\nupstream main-x--abcdef {{\n    server 10.0.0.1:80 {SERVER};\n}}\n"
    refused(with_blocks(rendered, part.blocks + unused), "main-x--abcdef .* is the pool of no")
    # the blocks and what they must hold agree, but a route names a group with no block
    kept = {pool for pool in part.pools if pool[0] != web}
    blocks = "".join(b for b in part.blocks.split("\n\n") if web not in b)
    assert web not in blocks and api in blocks
    refused(with_blocks(rendered, blocks, kept), f"upstream {web}, the pool of a route, has no")
    # a group no route names, though the part says it must hold it
    extra = {*part.pools, ("main-x--abcdef", ("10.0.0.1:80",))}
    refused(with_blocks(rendered, part.blocks + unused, extra), "main-x--abcdef is the pool of no")


def test_the_check_refuses_a_group_outside_http_level_or_in_the_map() -> None:
    rendered = grouped()
    part = rendered.fragments[0]
    first = part.blocks[1 : part.blocks.index("\nupstream ", 1) + 1]
    # in the hostname map, among the deployment's lines
    inside = part._replace(lines=Fragment(part.lines + first))
    refused(
        dataclasses.replace(rendered, fragments=(inside,)),
        "'upstream' inside the hostname map is not a hostname entry",
    )
    # the skeleton's marker inside a server block: the groups would land there
    skeleton = rendered.skeleton.replace(UPSTREAMS_MARKER, "\n").replace(
        "    server_name _;\n", "    server_name _;\n" + UPSTREAMS_MARKER, 1
    )
    refused(dataclasses.replace(rendered, skeleton=skeleton), '"upstream" directive is not allowed')
    # a group spread over two deployments' blocks
    other = two_deployments()
    a, b = other.fragments
    split = a.blocks.index("    server 10.0.0.2:80")
    spread = (
        a._replace(blocks=Fragment(a.blocks[:split])),
        b._replace(blocks=Fragment(a.blocks[split:] + b.blocks)),
    )
    refused(dataclasses.replace(other, fragments=spread), "not within one deployment")


def two_deployments() -> Rendered:
    """a and b, each with web in a group of two."""
    return build(
        {
            "deployment": {
                "a": {"service": {"web": instances.instances("10.0.0.1:80", "10.0.0.2:80")}},
                "b": {"service": {"web": instances.instances("10.0.0.3:80", "10.0.0.4:80")}},
            }
        },
        CONFIG,
    )


def test_two_deployments_may_not_share_a_group() -> None:
    other = two_deployments()
    a, b = other.fragments
    ((name, _),) = a.pools
    (other_name, _), = b.pools  # fmt: skip
    b = b._replace(
        lines=Fragment(b.lines.replace(other_name, name)),
        routes=frozenset((h, t.replace(other_name, name)) for h, t in b.routes),
        blocks=Fragment(b.blocks.replace(other_name, name)),
        pools=frozenset((name, servers) for _, servers in b.pools),
    )
    refused(dataclasses.replace(other, fragments=(a, b)), f"upstream {name} is the pool of two")


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("proxy_next_upstream error timeout;", "proxy_next_upstream error timeout http_502;",
         "proxy_next_upstream must be error timeout"),
        ("proxy_next_upstream error timeout;", "proxy_next_upstream error timeout non_idempotent;",
         "proxy_next_upstream must be error timeout"),
        ("proxy_next_upstream error timeout;", "proxy_next_upstream off;",
         "proxy_next_upstream must be error timeout"),
        ("    server_name _;\n", "    server_name _;\n    proxy_next_upstream error timeout;\n",
         "'proxy_next_upstream' is not allowed inside 'server'"),
        ("\nmap $devtest_route $devtest_deployment",
         "\nupstream main-x--abcdef {\n    server 10.0.0.1:80 max_fails=1 fail_timeout=10s;\n}\n"
         "\nmap $devtest_route $devtest_deployment", "main-x--abcdef .* is the pool of no route"),
        ("\nmap $devtest_route $devtest_deployment",
         "\nupstream main-x--abcdef {\n    server 10.0.0.1:80 max_fails=1 fail_timeout=10s;\n"
         "    keepalive 4;\n}\n\nmap $devtest_route $devtest_deployment",
         "'keepalive' is not allowed"),
    ],
)  # fmt: skip
def test_the_check_refuses_other_retries_and_groups_in_the_skeleton(
    old: str, new: str, said: str
) -> None:
    rendered = grouped()
    assert rendered.skeleton.count(old) == 1, old
    forged = dataclasses.replace(rendered, skeleton=rendered.skeleton.replace(old, new))
    refused(forged, said)


def test_the_warm_check_parses_changed_groups_again() -> None:
    engine = Engine(CONFIG, instances.SCHEMA, TEMPLATES)
    good = engine.build(snapshot(web=instances.instances("10.0.0.1:80", "10.0.0.2:80")))
    engine.check(good)
    # the same lines and routes, one server forged: the part is new to the checker
    forged = with_blocks(good, good.fragments[0].blocks.replace("10.0.0.2:80", "10.0.0.9:80"))
    assert forged.fragments[0].lines == good.fragments[0].lines
    with pytest.raises(InternalError, match="has servers"):
        engine.check(forged)
    engine.check(good)


@pytest.mark.parametrize("forged_at", [None, 0, -1])
def test_groups_are_checked_in_either_half_of_a_parallel_check(
    forged_at: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {
        "deployment": {
            f"b{n:02d}": {
                "service": {"web": instances.instances(f"10.0.{n}.1:80", f"10.0.{n}.2:80")}
            }
            for n in range(40)
        }
    }
    rendered = build(data, CONFIG)
    parts = list(rendered.fragments)
    if forged_at is not None:
        part = parts[forged_at]
        parts[forged_at] = part._replace(blocks=Fragment(part.blocks.replace(".2:80", ".3:80")))
    monkeypatch.setattr(apply, "PARALLEL_FROM", 0)
    forged = dataclasses.replace(rendered, fragments=tuple(parts))
    if forged_at is None:
        Checker()(forged, CONFIG, tmp_path)
    else:
        with pytest.raises(InternalError, match="has servers"):
            Checker()(forged, CONFIG, tmp_path)
    assert (tmp_path / "routes-1" / "included.conf").is_file()
    assert "upstream " in (tmp_path / "routes-2" / "included.conf").read_text()


# --------------------------------------------------------------------------
# the plan: a group's servers are part of where its routes go


def test_instances_coming_and_going_are_changed_routes() -> None:
    """1 -> 2 -> 3 -> 2 -> 1 instances: each step changes main-web and main (the map line only
    at 1 <-> 2), in the plan from what changed and in the plan from the file read back."""
    engine = Engine(CONFIG, instances.SCHEMA, TEMPLATES)
    steps = [
        instances.instances(plain="10.0.0.1:80"),
        instances.instances("10.0.0.2:80", plain="10.0.0.1:80"),
        instances.instances("10.0.0.2:80", "10.0.0.3:80", plain="10.0.0.1:80"),
        instances.instances("10.0.0.3:80", plain="10.0.0.1:80"),
        instances.instances(plain="10.0.0.1:80"),
    ]
    previous = engine.build(snapshot(web=steps[0], api=instances.instances(plain="10.0.0.9:80")))
    for step in steps[1:]:
        rendered = engine.build(snapshot(web=step, api=instances.instances(plain="10.0.0.9:80")))
        assert rendered.text != previous.text
        plan = plan_between(previous, rendered)
        assert (plan.added, plan.removed, plan.changed) == (
            (),
            (),
            ("main-web.dev.test", "main.dev.test"),
        )
        assert make_plan(previous.text, read_back(previous.text), rendered) == plan
        previous = rendered


def read_back(text: str) -> dict[str, str]:
    """check.routes_in of `text` as the file in place."""
    with tempfile.TemporaryDirectory(prefix="devtest-upstreams-") as name:
        path = Path(name) / "in-place.conf"
        path.write_text(text, encoding="utf-8")
        wrapper = Wrapper(Path(name), path)
        wrapper.write()
        found = check.routes_in(wrapper.parse(), str(path))
    assert found is not None
    return found


def test_the_file_read_back_names_each_route_s_servers() -> None:
    rendered = grouped()
    found = read_back(rendered.text)
    assert found == {str(route.host): route_destination(route) for route in rendered.table.routes}
    pool = group_of(rendered)
    assert found["main-web.dev.test"] == f"main/web/{pool} 10.0.0.1:80 10.0.0.2:80"
    assert found["main-worker.dev.test"] == "main/worker/10.0.0.6:80"


# --------------------------------------------------------------------------
# real nginx, real backends: round robin, and a dead instance costs no request


def router_config(nginx: Nginx, tmp: Path) -> Config:
    flags = {
        "domain": "dev.test",
        "allow_loopback": True,
        "listen": [f"127.0.0.1:{nginx.port}"],
        "output": str(nginx.conf_dir / "devtest-router.conf"),
        "nginx": find_binary("nginx"),
        "test_command": nginx.test_command,
        "reload_command": nginx.reload_command,
        "site_dir": str(tmp / "site"),
        "access_log": str(tmp / "access.log"),
    }
    return resolve(schema("config"), flags, {})


def answered_by(port: int, host: str, method: str = "GET") -> str:
    response = http_request(port, host, method=method, body=b"x" if method == "POST" else None)
    assert response.status == 200, (response.status, response.text[:200])
    name: str = response.json()["name"]
    return name


@pytest.mark.integration
def test_two_instances_share_the_requests_and_a_dead_one_costs_none(
    nginx: Nginx, backends: Any, tmp_path: Path
) -> None:
    found: dict[str, Backend] = backends("one", "two", "api")
    config = router_config(nginx, tmp_path)
    data = snapshot(
        web=instances.instances(found["one"].address, found["two"].address),
        api=instances.instances(plain=found["api"].address),
    )
    rendered = build(data, config)
    assert rendered.text.count("\nupstream ") == 1
    workers = nginx.worker_pids()
    result = apply.apply(rendered, config)  # check, nginx's test (staged, installed), reload
    assert result.changes and "main-web.dev.test" in result.added
    wait_for(lambda: nginx.worker_pids() and not nginx.worker_pids() & workers, what="reload")
    wait_for(lambda: _answers(nginx.port, "main-web.dev.test"), what="main-web to answer")

    # round robin: both instances answer, on the service's hostname and the default one
    seen = [answered_by(nginx.port, host) for host in ["main-web.dev.test", "main.dev.test"] * 10]
    assert set(seen) == {"one", "two"}, seen
    assert abs(seen.count("one") - seen.count("two")) <= 2, seen
    assert answered_by(nginx.port, "main-api.dev.test") == "api"

    # one instance dies (its port refuses connections): every request still answers, by the other
    found["one"].stop()
    before = len(found["two"].requests)
    methods = ["GET"] * 90 + ["POST"] * 10  # refused before it was sent: a POST is retried too
    answers = [answered_by(nginx.port, "main-web.dev.test", method) for method in methods]
    assert answers == ["two"] * 100
    assert len(found["two"].requests) - before == 100
    # the first of them was refused by the dead one and retried at the other, in one request
    retried = f"upstream={found['one'].address}, {found['two'].address} "
    wait_for(lambda: retried in (tmp_path / "access.log").read_text(), what="the retry logged")


def _answers(port: int, host: str) -> bool:
    try:
        return http_request(port, host).status == 200
    except (OSError, http.client.HTTPException):
        return False


def test_nginx_accepts_groups_of_ipv4_and_ipv6_servers(tmp_path: Path) -> None:
    """nginx -t on a file of many groups, IPv6 servers among them (no backend is contacted)."""
    data = {
        "deployment": {
            f"b{n:03d}": {
                "service": {
                    "web": instances.instances(f"10.1.{n}.1:80", f"[fc00::{n:x}]:8080"),
                    "api": instances.instances(plain=f"10.2.{n}.1:80"),
                }
            }
            for n in range(200)
        }
    }
    config = dataclasses.replace(CONFIG, nginx=find_binary("nginx"))
    rendered = build(data, config)
    assert rendered.text.count("\nupstream ") == 200
    staged = tmp_path / "rendered.conf"
    staged.write_text(rendered.text, encoding="utf-8")
    apply.gate(rendered, config, staged, tmp_path, Checker())  # crossplane, then nginx -t
