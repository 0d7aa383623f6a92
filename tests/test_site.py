"""The frontend's own pages: the index of deployments, /deployments.json and the 404 pages.

Pure parts (generator/site/pages.py, the check of the nginx side) are tested on data; the rest
through `devtest-router apply` and `watch` against a real nginx and real backends on loopback,
and the index once more in headless Chromium (its links followed through nginx, a screenshot
kept under build/test-artifacts/).
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import strategies
import yaml
from harness import Backend, Nginx, Response, find_binary, http_request, wait_for
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from hypothesis_profiles import examples
from site_harness import ARTIFACTS, Browser, Tab, chromium, deployment, read_page, with_members
from site_harness import table as routed_table

from generator.cli.main import main
from generator.core import site_layout
from generator.core.config import Config, resolve
from generator.core.errors import InternalError
from generator.core.model import (
    Member,
    Problem,
    Route,
    RoutingTable,
    Token,
    Upstream,
    instance_order,
)
from generator.core.names import hostname
from generator.core.pipeline import Rendered, build
from generator.core.render import by_deployment, environment
from generator.core.snapshot import loads
from generator.nginx.apply import checked_text
from generator.resources import schema, template_loader
from generator.site import pages as site
from generator.site.writer import SiteWriter
from generator.watch.engine import Build

DOMAIN = "localhost"  # Chromium resolves *.localhost to loopback by itself
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BIN = Path(sys.executable).parent / "devtest-router"
UNKNOWN = "x-devtest-router"

BackendFactory = Callable[..., dict[str, Backend]]
Snapshot = dict[str, Any]


def shard_of(label: str) -> str:
    """The file of the 404 page's data that holds `label`'s deployments."""
    return site_layout.shard_path(site_layout.shard(label))


# --------------------------------------------------------------------------
# data


def settings(**values: Any) -> Config:
    return resolve(schema("config"), {"allow_loopback": True, **values}, {})


def table_of(snapshot: Snapshot, config: Config) -> Rendered:
    return build(snapshot, config, schema("snapshot"), environment(template_loader()))


def site_templates() -> Any:
    return site.environment(template_loader())


def registry(found: Mapping[str, Any]) -> Snapshot:
    """Three deployments that route and two that do not, with a problem of each kind:
    feature/login's worker is half-written, multi has no web service (no default entry
    point), demo's only upstream is refused and ttl is a stray key."""

    def at(name: str) -> dict[str, str]:
        return {"ip": "127.0.0.1", "port": str(found[name].port)}

    return {
        "deployment": {
            "master": {
                "created": "2026-11-20T09:00:00Z",
                "service": {"web": at("master-web"), "api": at("master-api")},
            },
            "feature/login": {
                "created": "2026-11-27T14:30:00Z",
                "service": {
                    "web": at("feature-login-web"),
                    "api": at("feature-login-api"),
                    "worker": {"ip": "127.0.0.1"},
                },
            },
            "multi": {
                "service": {"my-api": at("multi-my-api"), "docs": at("multi-docs")},
            },
            "demo": {
                "created": "2026-11-28T08:00:00Z",
                "service": {"api": {"ip": "169.254.169.254", "port": "80"}},
            },
            "ttl": None,
        }
    }


BACKENDS = (
    "master-web",
    "master-api",
    "feature-login-web",
    "feature-login-api",
    "multi-my-api",
    "multi-docs",
)
ROUTED = {  # hostname -> the backend it reaches
    "master.localhost": "master-web",
    "master-web.localhost": "master-web",
    "master-api.localhost": "master-api",
    "feature-login.localhost": "feature-login-web",
    "feature-login-web.localhost": "feature-login-web",
    "feature-login-api.localhost": "feature-login-api",
    "multi-my-api.localhost": "multi-my-api",
    "multi-docs.localhost": "multi-docs",
}


# --------------------------------------------------------------------------
# a router: nginx plus devtest-router apply into a site folder


@dataclass
class Router:
    nginx: Nginx
    tmp: Path

    @property
    def site_dir(self) -> Path:
        return self.tmp / "site"

    @property
    def counter(self) -> Path:
        return self.tmp / "reloads"

    def argv(self, *extra: str) -> list[str]:
        reload = f"{self.nginx.reload_command} && echo x >> {shlex.quote(str(self.counter))}"
        return [
            "apply",
            "--domain", DOMAIN,
            "--listen", f"127.0.0.1:{self.nginx.port}",
            "--allow-loopback",
            "--output", str(self.nginx.conf_dir / "devtest-router.conf"),
            "--site-dir", str(self.site_dir),
            "--nginx", find_binary("nginx"),
            "--test-command", self.nginx.test_command,
            "--reload-command", shlex.join(["sh", "-c", reload]),
            *extra,
        ]  # fmt: skip

    def apply(self, data: Snapshot, *extra: str) -> tuple[int, str]:
        err = io.StringIO()
        code = main(
            self.argv(*extra),
            stdin=io.StringIO(json.dumps(data)),
            stdout=io.StringIO(),
            stderr=err,
            environ={},
        )
        return code, err.getvalue()

    def applied(self, data: Snapshot) -> str:
        code, err = self.apply(data)
        assert code == 0, err
        wait_for(lambda: len(self.nginx.worker_pids()) == 1, what="old nginx workers to quit")
        return err

    def reloads(self) -> int:
        return len(self.counter.read_text().split()) if self.counter.exists() else 0

    def get(self, host: str, path: str = "/") -> Response:
        return http_request(self.nginx.port, host, path)

    def routes_to(self, host: str, backend: str) -> None:
        def answered() -> bool:
            try:
                response = self.get(host)
            except OSError:
                return False
            return response.status == 200 and response.json()["name"] == backend

        wait_for(answered, what=f"{host} to reach {backend}")


@pytest.fixture
def router(nginx: Nginx, tmp_path: Path) -> Router:
    return Router(nginx, tmp_path)


@pytest.fixture
def routed(router: Router, backends: BackendFactory) -> Iterator[tuple[Router, Snapshot]]:
    data = registry(backends(*BACKENDS))
    router.applied(data)
    for host, backend in ROUTED.items():
        router.routes_to(host, backend)
    yield router, data


def check_json(data: Snapshot) -> dict[str, Any]:
    """`devtest-router check --json` for the same snapshot and settings."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["check", "--json", "--domain", DOMAIN, "--allow-loopback"]
    code = main(argv, stdin=io.StringIO(json.dumps(data)), stdout=out, stderr=err, environ={})
    assert code == 0, err.getvalue()
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def host_of(href: str) -> str:
    """The hostname a page's link goes to (links are //host/, or http://host:port/ once the
    page's script gave them its port)."""
    parts = urlsplit(href)
    assert parts.hostname, href
    assert parts.path == "/", href
    return parts.hostname


def not_found(response: Response, host: str) -> None:
    """The unknown-host 404 page, naming the host asked for."""
    assert response.status == 404, (host, response.status)
    assert response.headers.get(UNKNOWN) == "unknown-host"  # devtest-router wait relies on it
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert read_page(response.text).text_by_id["asked"] == host


# --------------------------------------------------------------------------
# through nginx


@pytest.mark.integration
def test_index_and_json_list_exactly_the_registered_deployments_and_problems(
    routed: tuple[Router, Snapshot],
) -> None:
    router, data = routed
    expected = check_json(data)

    index = router.get(DOMAIN)
    assert index.status == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    page = read_page(index.text)
    rows = [attrs["data-deployment"] for attrs in page.attributes if "data-deployment" in attrs]
    assert rows == ["feature-login", "master", "multi"]
    links = {host_of(href) for href, _ in page.links if href.startswith("//")}
    assert links == set(ROUTED)
    for problem in expected["problems"]:
        assert f"{problem['key']}: {problem['message']} [{problem['code']}]" in page.text
    assert "3 deployments, 8 routes, 4 problems in the registry" in page.text

    document = router.get(DOMAIN, "/deployments.json")
    assert document.status == 200
    assert document.headers["content-type"] == "application/json"
    listed = document.json()
    assert list(listed) == ["version", "domain", "default_service", "deployments", "problems"]
    assert listed["problems"] == expected["problems"]
    assert [entry["name"] for entry in listed["deployments"]] == [
        "feature/login",
        "master",
        "multi",
    ]
    by_name = {entry["name"]: entry for entry in listed["deployments"]}
    services = data["deployment"]["feature/login"]["service"]
    web, api = (
        [{"instance": None, "address": f"127.0.0.1:{services[name]['port']}"}]
        for name in ("web", "api")
    )
    assert by_name["feature/login"] == {
        "name": "feature/login",
        "label": "feature-login",
        "created": "2026-11-27T14:30:00Z",
        "default": {"service": "web", "host": "feature-login.localhost", "instances": web},
        "services": [
            {"service": "api", "host": "feature-login-api.localhost", "instances": api},
            {"service": "web", "host": "feature-login-web.localhost", "instances": web},
        ],
        "problems": [
            p for p in expected["problems"] if p["key"].startswith('/deployment/"feature/login"/')
        ],
    }
    assert by_name["multi"]["default"] is None and by_name["multi"]["created"] is None
    assert [p["code"] for p in by_name["multi"]["problems"]] == ["no-default-service"]
    # every host the JSON lists is a route, and every route is listed
    hosts = {
        link["host"]
        for entry in listed["deployments"]
        for link in [*entry["services"], *([entry["default"]] if entry["default"] else [])]
    }
    assert hosts == {route["host"] for route in expected["routes"]} == set(ROUTED)
    # each link's instances are its route's, as `check --json` has them
    instances = {
        link["host"]: [(item["instance"], item["address"]) for item in link["instances"]]
        for entry in listed["deployments"]
        for link in [*entry["services"], *([entry["default"]] if entry["default"] else [])]
    }
    assert instances == {
        route["host"]: [(item["instance"], item["upstream"]) for item in route["instances"]]
        for route in expected["routes"]
    }
    # and the index lists them under each service
    for entry in listed["deployments"]:
        for link in entry["services"]:
            [item] = link["instances"]
            assert f"({link['service']}, 1 instance)" in page.text
            assert f"{item['address']} ip/port keys" in page.text


SHOWN_404 = """new Promise(function (done) {
  var deadline = Date.now() + 60000;  // then what is shown, for the assertions to say
  (function settled() {  // the script has listed a deployment, or said there is none
    var none = document.getElementById("hostnames");
    if (!none || none.textContent.indexOf("No deployment answers") === 0 || Date.now() > deadline) {
      done({
        links: Array.from(document.querySelectorAll("a")).map(function (a) { return a.href; }),
        text: document.body.innerText.split(/\\s+/).join(" "),
        asked: document.getElementById("asked").textContent,
      });
    } else {
      setTimeout(settled, 50);
    }
  })();
})"""


def shown_404(tab: Tab, port: int, host: str) -> dict[str, Any]:
    """The 404 page of `host` as Chromium shows it once its script has run."""
    tab.navigate(f"http://{host}:{port}/")
    shown: dict[str, Any] = tab.evaluate(SHOWN_404, wait=True)
    assert shown["asked"] == host
    return shown


@pytest.mark.integration
def test_404_for_an_unknown_service_names_the_branchs_services(
    routed: tuple[Router, Snapshot], tmp_path: Path
) -> None:
    router, _ = routed
    port = router.nginx.port
    asked_for = (
        "feature-login-nope.localhost",
        "feature-login-my-new-api.localhost",  # a service part with hyphens: cut until found
        "feature-login-worker.localhost",  # registered, but half-written
    )
    for asked in asked_for:
        not_found(router.get(asked), asked)  # one page for every unknown hostname
    with Browser(tmp_path / "chromium") as browser:
        tab = browser.tab()
        for asked in asked_for:
            shown = shown_404(tab, port, asked)
            hosts = [host_of(href) for href in shown["links"]]
            assert hosts == [
                "feature-login.localhost",
                "feature-login-api.localhost",
                "feature-login-web.localhost",
                DOMAIN,
            ], asked
            assert all(urlsplit(href).port == port for href in shown["links"])  # the page's port
            text = shown["text"]
            assert "Deployment feature/login (created 2026-11-27 14:30 UTC (" in text, text
            assert "Its default entry point is feature-login.localhost (web)." in text, text
            assert "feature-login-api.localhost (api, 1 instance)" in text, text
            assert "has no port yet" in text  # the worker's problem says why it has no URL
            assert "Hostnames are" not in text
            for host in hosts[:-1]:
                router.routes_to(host, ROUTED[host])  # each link reaches its backend

        # a branch without a default entry point: its own hostname lists its services
        shown = shown_404(tab, port, "multi.localhost")
        assert [host_of(href) for href in shown["links"]] == [
            "multi-docs.localhost",
            "multi-my-api.localhost",
            DOMAIN,
        ]
        assert "no default entry point multi.localhost: no service named web." in shown["text"]
        assert "no-default-service" in shown["text"]
        assert tab.exceptions() == []


@pytest.mark.integration
def test_404_for_an_unknown_branch_links_to_the_index(
    routed: tuple[Router, Snapshot], tmp_path: Path
) -> None:
    router, _ = routed
    asked_for = ("nobody-web.localhost", "nobody.localhost", "demo-api.localhost")
    for asked in (*asked_for, "other.test"):
        response = router.get(asked)
        not_found(response, asked)
        page = read_page(response.text)
        assert [href for href, _ in page.links] == ["//localhost/"], asked
        assert "Hostnames are <branch>-<service>.localhost" in page.text  # without JavaScript
    with Browser(tmp_path / "chromium") as browser:
        tab = browser.tab()
        for asked in asked_for:
            shown = shown_404(tab, router.nginx.port, asked)
            assert [host_of(href) for href in shown["links"]] == [DOMAIN], asked
            assert "No deployment answers to this hostname. Hostnames are" in shown["text"]
        assert tab.exceptions() == []
    # the host asked for is printed escaped: nginx's SSI echo escapes it
    hostile = router.get('a<b>"c.localhost')
    assert hostile.status == 404
    assert "a&lt;b&gt;&quot;c.localhost" in hostile.text and "a<b>" not in hostile.text


@pytest.mark.integration
def test_the_404_pages_data_is_served_on_unknown_hostnames_only(
    routed: tuple[Router, Snapshot],
) -> None:
    router, _ = routed
    path = f"{site_layout.DATA_PATH}/{site_layout.shard('feature-login')}.json"
    response = router.get("feature-login-nope.localhost", path)
    assert response.status == 404  # the 404 page's own data, under its status
    assert response.headers.get(UNKNOWN) == "unknown-host"
    assert response.headers["content-type"] == "application/json"
    [entry] = response.json()["deployments"]
    assert entry["name"] == "feature/login"
    assert "<!--#" not in response.text  # served as it is: no SSI on JSON
    # a shard no deployment is in: the page, which the script reads as "none"
    empty = next(
        f"{n:02x}" for n in range(256) if not (router.site_dir / f"not-found/{n:02x}.json").exists()
    )
    not_found(
        router.get("nobody.localhost", f"{site_layout.DATA_PATH}/{empty}.json"), "nobody.localhost"
    )
    # a routed hostname: every path reaches its service, this one too
    reached = router.get("master-web.localhost", path)
    assert reached.status == 200 and reached.json()["name"] == "master-web"
    assert reached.headers.get(UNKNOWN) is None


@pytest.mark.integration
def test_a_change_only_to_the_problems_writes_the_site_and_reloads_nothing(
    routed: tuple[Router, Snapshot],
) -> None:
    router, data = routed
    reloads = router.reloads()
    config = router.nginx.conf_dir / "devtest-router.conf"
    before = config.stat()
    pages = {path: (router.site_dir / path).stat() for path in (shard_of("master"),)}

    data["deployment"]["stray"] = "not a deployment"
    code, said = router.apply(data)
    assert code == 0, said
    assert said.splitlines()[-1].endswith("; 2 site files written, 0 removed"), said
    assert "nothing to do" in said
    assert router.reloads() == reloads
    assert config.stat().st_mtime_ns == before.st_mtime_ns
    for path, stat in pages.items():  # an unchanged page is not written again
        assert (router.site_dir / path).stat().st_mtime_ns == stat.st_mtime_ns
    index = read_page(router.get(DOMAIN).text)
    assert '/deployment/stray: is "not a deployment", not a deployment directory' in index.text
    assert [p["key"] for p in router.get(DOMAIN, "/deployments.json").json()["problems"]][-2:] == [
        "/deployment/stray",
        "/deployment/ttl",
    ]


@pytest.mark.integration
def test_a_removed_deployment_loses_its_404_page_and_its_row(
    routed: tuple[Router, Snapshot],
) -> None:
    router, data = routed
    del data["deployment"]["multi"]
    said = router.applied(data)
    assert said.splitlines()[-1].endswith("nginx reloaded; 2 site files written, 1 removed"), said
    assert not (router.site_dir / shard_of("multi")).exists()
    response = router.get("multi-docs.localhost")
    not_found(response, "multi-docs.localhost")
    assert [href for href, _ in read_page(response.text).links] == ["//localhost/"]
    assert 'data-deployment="multi"' not in router.get(DOMAIN).text


@pytest.mark.integration
def test_dry_run_writes_no_site_files(router: Router, backends: BackendFactory) -> None:
    data = registry(backends(*BACKENDS))
    code, said = router.apply(data, "--dry-run")
    assert code == 1, said
    assert said.splitlines()[-1].endswith(
        "would write 6 site files and remove 0 (nothing written: dry run)"
    ), said
    assert not router.site_dir.exists()
    router.applied(data)
    written = sorted(path.name for path in router.site_dir.rglob("*"))
    assert written == sorted(
        [
            *("index.html", "deployments.json", "not-found.html", "not-found"),
            *(Path(shard_of(label)).name for label in ("feature-login", "master", "multi")),
        ]
    )
    del data["deployment"]["multi"]
    code, said = router.apply(data, "--dry-run")
    assert code == 1 and said.splitlines()[-1].endswith(
        "would write 2 site files and remove 1 (nothing written: dry run)"
    ), said
    assert (router.site_dir / shard_of("multi")).exists()


@pytest.mark.integration
def test_a_site_folder_that_cannot_be_written_is_one_line_and_the_next_apply_writes_it(
    router: Router, backends: BackendFactory, tmp_path: Path
) -> None:
    data = registry(backends(*BACKENDS))
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "not-found").write_text("a file where the 404 pages' folder should be\n")
    code, said = router.apply(data, "--site-dir", str(blocked))
    assert code == 5  # not 123: the config went in, only the pages did not
    assert said.splitlines()[-1] == (
        f"devtest-router: cannot write the site in {blocked}: Not a directory; the nginx config is "
        "applied and nginx serves its routes, but the index and 404 pages are not written: "
        "make site_dir writable (or free space); the next apply writes them"
    ), said
    assert "Traceback" not in said
    assert router.reloads() == 1  # the routes went live; only the pages are missing
    router.routes_to("master-web.localhost", "master-web")

    (blocked / "not-found").unlink()
    code, said = router.apply(data, "--site-dir", str(blocked))
    assert code == 0, said
    assert said.splitlines()[-1].startswith("devtest-router: nothing to do: "), said
    assert said.splitlines()[-1].endswith("; 6 site files written, 0 removed"), said
    assert router.reloads() == 1
    assert (blocked / "index.html").is_file()


@pytest.mark.integration
def test_the_watcher_writes_a_site_only_change_without_a_reload(
    nginx: Nginx, tmp_path: Path, backends: BackendFactory
) -> None:
    found = backends("web")
    registry_file = tmp_path / "registry.yaml"
    web = {"ip": "127.0.0.1", "port": str(found["web"].port)}
    registry_file.write_text(yaml.safe_dump({"deployment": {"local": {"service": {"web": web}}}}))
    counter, log, site_dir = tmp_path / "reloads", tmp_path / "watch.log", tmp_path / "site"
    reload = f"{nginx.reload_command} && echo x >> {shlex.quote(str(counter))}"
    argv = [
        str(BIN), "watch", "--registry", f"file:{registry_file}", "--domain", DOMAIN,
        "--allow-loopback", "--listen", f"127.0.0.1:{nginx.port}",
        "--output", str(nginx.conf_dir / "devtest-router.conf"), "--site-dir", str(site_dir),
        "--nginx", find_binary("nginx"), "--test-command", nginx.test_command,
        "--reload-command", shlex.join(["sh", "-c", reload]), "--quiet-period", "0.05",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.pop("REGISTRY_URL", None)
    with log.open("ab") as out:
        watcher = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
    try:

        def index_has(text: str) -> bool:
            try:
                response = http_request(nginx.port, DOMAIN)
            except OSError:
                return False
            return response.status == 200 and text in read_page(response.text).text

        wait_for(lambda: index_has("local-web.localhost"), 60, what="the first apply")
        reloads = len(counter.read_text().split())
        registry_file.write_text(
            yaml.safe_dump({"deployment": {"local": {"service": {"web": web}}, "ttl": None}})
        )
        wait_for(lambda: index_has("/deployment/ttl: is null"), 60, what="the problem listed")
        assert len(counter.read_text().split()) == reloads
        assert "nothing to do" in log.read_text() and "2 site files written" in log.read_text()
    finally:
        watcher.terminate()
        watcher.wait(10)


# --------------------------------------------------------------------------
# headless Chromium: the index as people see it


@pytest.mark.integration
def test_the_index_in_chromium_links_every_route_shows_how_long_ago_and_the_instances(
    routed: tuple[Router, Snapshot], backends: BackendFactory, tmp_path: Path
) -> None:
    router, data = routed
    # feature/login's web gets a second instance, a real backend of its own. Validation does
    # not read instance keys yet, so the site is written again from the routing table of the
    # apply with that service's routes given both instances (the nginx config still sends
    # feature-login-web to the first).
    first = int(data["deployment"]["feature/login"]["service"]["web"]["port"])
    second = backends("feature-login-web-2")["feature-login-web-2"].port
    config = settings(domain=DOMAIN, site_dir=str(router.site_dir))
    loopback = ipaddress.ip_address("127.0.0.1")
    members = [
        Member(None, Upstream(loopback, first)),
        Member("replica-2", Upstream(loopback, second)),
    ]
    two = with_members(table_of(data, config).table, "feature/login", "web", members)
    assert SiteWriter(config, site_templates()).apply(two).written == (
        "deployments.json",
        "index.html",
        shard_of("feature-login"),
    )
    assert router.get(DOMAIN, "/deployments.json").json()["deployments"][0]["services"][1] == {
        "service": "web",
        "host": "feature-login-web.localhost",
        "instances": [
            {"instance": None, "address": f"127.0.0.1:{first}"},
            {"instance": "replica-2", "address": f"127.0.0.1:{second}"},
        ],
    }

    port = router.nginx.port
    url = f"http://{DOMAIN}:{port}/"
    dom = chromium(url, tmp_path / "chromium", "--dump-dom")
    page = read_page(dom)
    shown = " ".join(page.text.split())
    assert (
        f"feature-login-web.localhost (web, 2 instances) 127.0.0.1:{first} ip/port keys "
        f"127.0.0.1:{second} instance replica-2 "
    ) in shown, shown
    for name, value in data["deployment"].items():  # every other service: one, its ip/port keys
        for service, keys in (value or {}).get("service", {}).items():
            if keys.get("ip") == "127.0.0.1" and "port" in keys:
                host = hostname(name, service, DOMAIN)
                if host != "feature-login-web.localhost":
                    said = f"{host} ({service}, 1 instance) 127.0.0.1:{keys['port']} ip/port keys "
                    assert said in shown, said
    # The script gave every link the page's own port and filled in how long ago.
    hrefs = [href for href, _ in page.links if href != "/deployments.json"]
    assert all(href.startswith("http://") and f":{port}/" in href for href in hrefs), hrefs
    assert {host_of(href) for href in hrefs} == set(ROUTED)
    for href in hrefs:  # follow each link through nginx
        host = host_of(href)
        assert urlsplit(href).port == port
        router.routes_to(host, ROUTED[host])
    # master and feature/login have a created time (multi has none): how long ago, filled in
    agos = re.findall(r'</time><span class="ago"> \(([^)]+)\)</span>', dom)
    assert len(agos) == 2 and all(agos), agos  # e.g. "14 hours ago", "last week"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, at in (
        ("site-index.png", url),
        ("site-404.png", f"http://feature-login-nope.{DOMAIN}:{port}/"),
    ):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        chromium(at, tmp_path / "chromium", f"--screenshot={shot}", "--window-size=1280,900")
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name


# --------------------------------------------------------------------------
# the site folder (no nginx)


def test_only_files_whose_bytes_changed_are_written_and_stale_pages_removed(
    tmp_path: Path,
) -> None:
    config = settings(site_dir=str(tmp_path / "site"))
    data = registry(_ports())
    first = table_of(data, config).table
    cold = SiteWriter(config, site_templates())
    assert cold.apply(first).written == tuple(
        sorted(
            [
                *("deployments.json", "index.html", "not-found.html"),
                *map(shard_of, ("feature-login", "master", "multi")),
            ]
        )
    )
    (tmp_path / "site" / "robots.txt").write_text("not ours\n")
    (tmp_path / "site" / "not-found" / "notes.txt").write_text("not ours either\n")
    # a 404 page of a version before the shards: ours, and stale
    (tmp_path / "site" / "not-found" / "multi.html").write_text("<p>multi</p>\n")
    before = {path: path.stat() for path in (tmp_path / "site").rglob("*") if path.is_file()}

    again = SiteWriter(config, site_templates())  # a new process: compares with the folder
    upgrade = again.apply(first)
    assert upgrade.written == () and upgrade.removed == ("not-found/multi.html",)
    assert again.apply(first).changes is False
    data["deployment"].pop("multi")
    plan = again.apply(table_of(data, config).table)
    assert plan.written == ("deployments.json", "index.html")
    assert plan.removed == (shard_of("multi"),)
    for path, stat in before.items():
        if path.name in ("index.html", "deployments.json", "multi.html", "b2.json"):
            continue
        assert path.stat().st_ino == stat.st_ino and path.stat().st_mtime_ns == stat.st_mtime_ns
    leftovers = [p.name for p in (tmp_path / "site").rglob(".*")]
    assert leftovers == []  # every write went through a temporary file and a rename
    assert oct((tmp_path / "site" / "index.html").stat().st_mode & 0o777) == "0o644"


def _ports() -> dict[str, Any]:
    """Stand-ins for backends where no request is made: only their port is read."""

    @dataclass
    class Port:
        port: int

    return {name: Port(9100 + number) for number, name in enumerate(BACKENDS)}


def test_a_kept_writer_renders_only_what_changed(tmp_path: Path) -> None:
    config = settings(site_dir=str(tmp_path / "site"))
    data = registry(_ports())
    writer = SiteWriter(config, site_templates())
    writer.apply(table_of(data, config).table)
    rendered: list[site.PageKind] = []
    renderer = writer._render
    page, document = renderer.page, renderer.document

    def counting(made: site.Page, **values: Any) -> bytes:
        rendered.append(made.kind)
        return page(made, **values)

    def counting_document(lines: Sequence[str], problems: Sequence[Problem]) -> bytes:
        rendered.append(site.PageKind.DOCUMENT)
        return document(lines, problems)

    renderer.page = counting  # type: ignore[method-assign]
    renderer.document = counting_document  # type: ignore[method-assign]
    assert writer.apply(table_of(data, config).table).changes is False
    assert rendered == []
    data["deployment"]["master"]["created"] = "2026-11-21T09:00:00Z"
    plan = writer.apply(table_of(data, config).table)
    assert plan.written == ("deployments.json", "index.html", shard_of("master"))
    assert sorted(kind.name for kind in rendered) == ["DOCUMENT", "INDEX"]  # and the shard
    cold = site.render_site(table_of(data, config).table, config, site_templates())
    on_disk = {
        str(path.relative_to(tmp_path / "site")): path.read_bytes()
        for path in (tmp_path / "site").rglob("*")
        if path.is_file()
    }
    assert on_disk == cold


# --------------------------------------------------------------------------
# the pages (pure)


def demo() -> tuple[RoutingTable, Config]:
    case = FIXTURES / "demo"
    config = resolve(
        schema("config"), {}, {}, yaml.safe_load((case / "config.yaml").read_text()), "demo"
    )
    snapshot = loads((case / "snapshot.json").read_text(), "demo")
    return table_of(snapshot, config).table, config


def test_a_kept_renderer_gives_the_bytes_of_a_fresh_one() -> None:
    table, config = demo()
    kept = site.Renderer(config, site_templates())
    for routes in (table.routes, table.routes[:3], table.routes, (), table.routes[2:]):
        changed = RoutingTable(table.domain, routes, table.problems)
        pages = site.pages(changed)
        assert {path: kept(page) for path, page in pages.items()} == site.render_site(
            changed, config, site_templates()
        )


@settings_(
    max_examples=examples(60),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.one_of(strategies.realistic_snapshots, strategies.colliding_snapshots()),
                min_size=1, max_size=4))  # fmt: skip
def test_the_site_lists_every_route_once_and_a_kept_renderer_matches_a_fresh_one(
    snapshots: list[dict[str, Any]],
) -> None:
    config = settings(domain="dev.test")
    kept = site.Renderer(config, site_templates())
    for snapshot in snapshots:
        table = table_of(snapshot, config).table
        pages = site.pages(table)
        files = {path: kept(page) for path, page in pages.items()}
        assert files == site.render_site(table, config, site_templates())
        listed = json.loads(files[site.DOCUMENT])
        hosts = [
            link["host"]
            for entry in listed["deployments"]
            for link in [*entry["services"], *([entry["default"]] if entry["default"] else [])]
        ]
        assert sorted(hosts) == sorted(str(route.host) for route in table.routes)
        routes = table.by_host()
        for entry in listed["deployments"]:
            for link in [*entry["services"], *([entry["default"]] if entry["default"] else [])]:
                members = sorted(routes[link["host"]].members, key=instance_order)
                assert link["instances"] == [
                    {"instance": member.instance, "address": member.upstream.text}
                    for member in members
                ]
        assert listed["problems"] == [problem.as_json() for problem in table.problems]
        labels = {entry["label"] for entry in listed["deployments"]}
        assert {path for path in files if path.startswith("not-found/")} == {
            shard_of(label) for label in labels
        }
        # the shards hold every listed deployment once, each in its label's shard, in order
        sharded = []
        for path, data in files.items():
            if path.startswith("not-found/"):
                entries = [
                    (entry["label"], entry["name"]) for entry in json.loads(data)["deployments"]
                ]
                assert entries == sorted(entries) and {shard_of(label) for label, _ in entries} == {
                    path
                }
                sharded.extend(entries)
        assert sorted(sharded) == sorted(
            (entry["label"], entry["name"]) for entry in listed["deployments"]
        )
        index = read_page(files[site.INDEX].decode())
        assert sorted(host_of(href) for href, _ in index.links if href.startswith("//")) == sorted(
            hosts
        )


def test_deployments_json_holds_the_documented_shape_one_deployment_a_line() -> None:
    table, config = demo()
    page = site.pages(table)[site.DOCUMENT]
    text = site.Renderer(config, site_templates())(page).decode("ascii")
    assert json.loads(text) == site.document(page, config)
    lines = text.splitlines()
    entries = [json.loads(line.strip().rstrip(",")) for line in lines if line.startswith("    ")]
    assert [entry.get("name", entry.get("key")) for entry in entries] == [
        "feature/login",
        "master",
        *(problem.key for problem in table.problems),
    ]
    assert entries[0]["services"][0] == {
        "service": "api",
        "host": "feature-login-api.localhost",
        "instances": [{"instance": None, "address": "127.0.0.1:9104"}],
    }
    empty = site.pages(RoutingTable(table.domain, ()))[site.DOCUMENT]
    assert json.loads(site.Renderer(config, site_templates())(empty))["deployments"] == []


def test_a_problem_belongs_to_the_deployment_whose_key_starts_its_key() -> None:
    config = settings()
    web = {"ip": "127.0.0.1", "port": "9100"}
    data = {
        "deployment": {
            "foo": {"service": {"web": web}},
            "foo-bar": {"service": {"web": web, "api": {"ip": "127.0.0.1"}}},
            "feature/x": {"service": {"web": web, "stray": {"ip": "127.0.0.1"}}},
        }
    }
    listings = {entry.name: entry for entry in site.listings(table_of(data, config).table)}
    assert [p.key for p in listings["foo"].problems] == []
    assert [p.key for p in listings["foo-bar"].problems] == ["/deployment/foo-bar/service/api"]
    assert [p.key for p in listings["feature/x"].problems] == [
        '/deployment/"feature/x"/service/stray'
    ]


def test_registry_strings_reach_the_pages_escaped_never_as_markup() -> None:
    case = FIXTURES / "hostile-values"
    config = resolve(
        schema("config"), {}, {}, yaml.safe_load((case / "config.yaml").read_text()), "hostile"
    )
    snapshot = loads((case / "snapshot.json").read_text(), "hostile")
    files = site.render_site(table_of(snapshot, config).table, config, site_templates())

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    markup = [text for text in strings(snapshot) if any(c in text for c in "<>&\"'")]
    assert markup, "the hostile case has names with markup characters"
    for path, data in files.items():
        if path.endswith(".html"):
            html = data.decode()
            leaked = [text for text in markup if text in html]
            assert not leaked, (path, leaked)
            # the only SSI command is the template's own echo of the host
            assert html.count("<!--#") == (1 if path == site.NOT_FOUND else 0), path
        else:  # JSON; a shard holds no markup character at all (nor so an SSI comment)
            text = data.decode("ascii")
            if path.startswith("not-found/"):
                assert not set(text) & set("<>&"), path
                for entry in json.loads(text)["deployments"]:
                    assert entry["name"] in snapshot["deployment"]
    names = {entry["name"] for entry in json.loads(files[site.DOCUMENT])["deployments"]}
    assert names <= set(snapshot["deployment"])


# --------------------------------------------------------------------------
# instances: routing tables built from validated deployments with several instances a service
# (site_harness.table), as validation hands them over once it reads the instance keys

CREATED = datetime(2026, 11, 27, 14, 30, tzinfo=UTC)


def login(web: Sequence[tuple[str | None, str, int]]) -> Any:
    """feature/login with `web` as its web service's instances, and an api of one."""
    return deployment("feature/login", {"web": web, "api": [(None, "127.0.0.1", 9200)]}, CREATED)


def solo() -> Any:
    return deployment("solo", {"web": [("v6", "::1", 9301), ("v4", "127.0.0.1", 9300)]})


WEB = [("b2", "127.0.0.1", 9102), (None, "127.0.0.1", 9100), ("a1", "127.0.0.1", 9101)]


def flat(html: bytes) -> str:
    """A page's text as a person reads it: its words, one space between each."""
    return " ".join(read_page(html.decode()).text.split())


def test_the_index_lists_each_services_instances_with_address_and_id() -> None:
    config = settings(domain="dev.test")
    files = site.render_site(routed_table(config, login(WEB), solo()), config, site_templates())
    index = flat(files[site.INDEX])
    assert (
        "feature-login-web.dev.test (web, 3 instances) 127.0.0.1:9100 ip/port keys "
        "127.0.0.1:9101 instance a1 127.0.0.1:9102 instance b2 "  # the plain keys first, then by id
    ) in index
    assert "feature-login-api.dev.test (api, 1 instance) 127.0.0.1:9200 ip/port keys " in index
    assert "solo-web.dev.test (web, 2 instances) 127.0.0.1:9300 instance v4 [::1]:9301 " \
        "instance v6 " in index  # fmt: skip
    # the default entry point reaches web, listed under web's own hostname: not again
    assert index.count("127.0.0.1:9101") == 1

    listed = {entry["name"]: entry for entry in json.loads(files[site.DOCUMENT])["deployments"]}
    assert json.loads(files[site.DOCUMENT])["version"] == 1
    web_instances = [
        {"instance": None, "address": "127.0.0.1:9100"},
        {"instance": "a1", "address": "127.0.0.1:9101"},
        {"instance": "b2", "address": "127.0.0.1:9102"},
    ]
    assert listed["feature/login"]["default"] == {
        "service": "web",
        "host": "feature-login.dev.test",
        "instances": web_instances,
    }
    assert listed["feature/login"]["services"] == [
        {
            "service": "api",
            "host": "feature-login-api.dev.test",
            "instances": [{"instance": None, "address": "127.0.0.1:9200"}],
        },
        {"service": "web", "host": "feature-login-web.dev.test", "instances": web_instances},
    ]
    assert listed["solo"]["services"][0]["instances"] == [
        {"instance": "v4", "address": "127.0.0.1:9300"},
        {"instance": "v6", "address": "[::1]:9301"},
    ]

    # the branch's 404 page says how many instances each service has, not where they are
    missing = files[shard_of("feature-login")].decode()
    [entry] = json.loads(missing)["deployments"]
    assert entry["services"] == [
        {"service": "api", "host": "feature-login-api.dev.test", "instance_count": 1},
        {"service": "web", "host": "feature-login-web.dev.test", "instance_count": 3},
    ]
    assert entry["default"] == {
        "service": "web",
        "host": "feature-login.dev.test",
        "instance_count": 3,
    }
    assert "127.0.0.1:" not in missing


def test_the_order_of_instances_never_changes_the_site() -> None:
    config = settings(domain="dev.test")
    templates = site_templates()
    made = {
        json.dumps(
            {
                path: data.decode()
                for path, data in site.render_site(
                    routed_table(config, login(order), solo()), config, templates
                ).items()
            }
        )
        for order in itertools.permutations(WEB)
    }
    assert len(made) == 1


def test_instance_ids_reach_the_pages_escaped_never_as_markup() -> None:
    config = settings(domain="dev.test")
    hostile = '<!--#exec cmd="id" --><img src=x onerror=alert(1)>&amp;'
    data = routed_table(config, login([(hostile, "127.0.0.1", 9101), (None, "127.0.0.1", 9100)]))
    files = site.render_site(data, config, site_templates())
    index = files[site.INDEX].decode()
    assert hostile not in index and "<img" not in index and "<!--#" not in index
    assert (
        "&lt;!--#exec cmd=&#34;id&#34; --&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in index
    )
    assert flat(files[site.INDEX]).count(f"instance {hostile}") == 1  # shown as text
    [web] = [
        link
        for link in json.loads(files[site.DOCUMENT])["deployments"][0]["services"]
        if link["service"] == "web"
    ]
    assert [item["instance"] for item in web["instances"]] == [None, hostile]


def test_a_default_entry_point_whose_service_lost_its_hostname_lists_the_instances() -> None:
    config = settings(domain="dev.test")
    # a-web.dev.test: service web of branch a, and the default entry point of branch a-web,
    # registered first, which wins it; a's web is still reached at a.dev.test
    a = deployment("a", {"web": [("one", "127.0.0.1", 9401), ("two", "127.0.0.1", 9402)]},
                   datetime(2026, 11, 28, tzinfo=UTC))  # fmt: skip
    older = deployment("a-web", {"web": [(None, "127.0.0.1", 9500)]}, CREATED)
    data = routed_table(config, a, older)
    assert [str(route.host) for route in data.routes if route.deployment == "a"] == ["a.dev.test"]
    [listing] = [entry for entry in site.listings(data) if entry.name == "a"]
    assert listing.default_alone and listing.services == ()
    index = flat(site.render_site(data, config, site_templates())[site.INDEX])
    assert "a.dev.test (web) 127.0.0.1:9401 instance one 127.0.0.1:9402 instance two " in index
    assert index.count("127.0.0.1:9500") == 1  # a-web's own web, under its hostname only
    [other] = [entry for entry in site.listings(data) if entry.name == "a-web"]
    assert not other.default_alone


def kept_routes(
    previous: Mapping[site.DeploymentKey, tuple[Route, ...]], table: RoutingTable
) -> dict[site.DeploymentKey, tuple[Route, ...]]:
    """table's routes by deployment, each deployment whose routes are equal keeping the tuple
    of `previous`, as the pipeline keeps it (Rendered.deployments)."""
    fresh = by_deployment(table)
    return {key: previous[key] if previous.get(key) == value else value
            for key, value in fresh.items()}  # fmt: skip


def test_an_instance_that_comes_goes_or_moves_rewrites_the_index_and_json_only(
    tmp_path: Path,
) -> None:
    config = settings(domain="dev.test", site_dir=str(tmp_path / "site"))
    one = [(None, "127.0.0.1", 9100)]
    two = [*one, ("a1", "127.0.0.1", 9101)]
    moved = [*one, ("a1", "127.0.0.1", 9111)]
    writer = SiteWriter(config, site_templates())
    rows: list[str] = []
    row = writer._render.row

    def counting(listing: site.Listing) -> Any:
        rows.append(listing.name)
        return row(listing)

    writer._render.row = counting  # type: ignore[method-assign]
    first = routed_table(config, login(one), solo())
    routes = by_deployment(first)
    assert writer.apply(first, routes).written == (
        "deployments.json",
        "index.html",
        "not-found.html",
        shard_of("feature-login"),
        shard_of("solo"),
    )
    steps = [
        # (web's instances, the files written): the branch's 404 page shows the count
        (two, ("deployments.json", "index.html", shard_of("feature-login"))),
        (moved, ("deployments.json", "index.html")),
        (moved, ()),
        (one, ("deployments.json", "index.html", shard_of("feature-login"))),
    ]
    for web, written in steps:
        rows.clear()
        now = routed_table(config, login(web), solo())
        before, routes = routes, kept_routes(routes, now)
        changed = [key for key in routes if routes[key] is not before.get(key)]
        assert changed == ([] if not written else [(Token("feature-login"), "feature/login")])
        plan = writer.apply(now, routes)
        assert plan.written == written and plan.removed == (), web
        assert rows == (["feature/login"] if written else []), web  # only its row again
        on_disk = {
            str(path.relative_to(tmp_path / "site")): path.read_bytes()
            for path in (tmp_path / "site").rglob("*")
            if path.is_file()
        }
        assert on_disk == site.render_site(now, config, site_templates())

    # equal routes in new tuples (a writer not told what was kept): nothing rendered or written
    rows.clear()
    again = routed_table(config, login(one), solo())
    assert writer.apply(again).changes is False
    assert rows == []


def test_through_the_pipeline_an_instance_that_moves_rewrites_the_index_and_json_only(
    tmp_path: Path,
) -> None:
    config = settings(site_dir=str(tmp_path / "site"))
    pipeline = Build(config, schema("snapshot"), environment(template_loader()))
    writer = SiteWriter(config, site_templates())
    rows: list[str] = []
    row = writer._render.row

    def counting(listing: site.Listing) -> Any:
        rows.append(listing.name)
        return row(listing)

    writer._render.row = counting  # type: ignore[method-assign]
    data = registry(_ports())
    rendered = pipeline(data)
    writer.apply(rendered.table, rendered.deployments)

    rows.clear()
    again = pipeline(json.loads(json.dumps(data)))  # equal, not the same objects
    assert again.deployments is not None and rendered.deployments is not None
    assert all(again.deployments[key] is rendered.deployments[key] for key in again.deployments)
    assert writer.apply(again.table, again.deployments).changes is False
    assert rows == []

    data = json.loads(json.dumps(data))  # a snapshot is never changed in place once built
    data["deployment"]["master"]["service"]["api"]["port"] = "9999"  # a redeploy elsewhere
    moved = pipeline(data)
    assert moved.deployments is not None
    changed = [
        key for key in moved.deployments if moved.deployments[key] is not again.deployments[key]
    ]
    assert changed == [(Token("master"), "master")]
    plan = writer.apply(moved.table, moved.deployments)
    assert plan.written == ("deployments.json", "index.html")  # the 404 page: the same count
    assert rows == ["master"]
    assert "127.0.0.1:9999 ip/port keys" in flat((tmp_path / "site" / "index.html").read_bytes())


# --------------------------------------------------------------------------
# the check of the nginx side


def rendered_demo(site_dir: str = "/srv/site") -> tuple[Rendered, Config]:
    config = resolve(
        schema("config"),
        {"site_dir": site_dir},
        {},
        yaml.safe_load((FIXTURES / "demo" / "config.yaml").read_text()),
        "demo",
    )
    snapshot = loads((FIXTURES / "demo" / "snapshot.json").read_text(), "demo")
    return table_of(snapshot, config), config


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("    root /srv/site;\n    types {}", "    root /;\n    types {}", "root must be"),
        ("text/html;\n    charset", "text/html;\n    root /etc;\n    charset", "root must be"),
        ("/not-found.html =404;", "/../../etc/passwd =404;", "try_files must be"),
        ("default /not-found.html;", "default /../../etc/passwd;", "must hold exactly"),
        ("/not-found/$1.json;", "/../$1.json;", "must hold exactly"),
        ("map $uri $devtest_not_found {", "map $request_uri $devtest_not_found {",
         "must be 'map [$]uri [$]devtest_not_found'"),
        ("    types { application/json json; }", "    types { text/plain json; }",
         "types block must be empty or hold only application/json json"),
        ("    types {}\n    default_type text/html;\n    charset utf-8;\n    add_header",
         "    types { text/plain conf; }\n    default_type text/html;\n    charset utf-8;\n"
         "    add_header", "types block must be empty or hold only application/json json"),
        ("server_name \"~^localhost$\";", "server_name \"~^localhost$\";\n    ssi on;",
         "'ssi' is not allowed inside 'server'"),
        ("    listen 127.0.0.1:8080;\n", "    listen 127.0.0.1:8081;\n", "listen addresses"),
    ],
)  # fmt: skip
def test_the_check_refuses_a_site_directive_the_template_does_not_write(
    old: str, new: str, said: str
) -> None:
    rendered, config = rendered_demo()
    assert checked_text(rendered, config) == rendered.text  # the bundled template passes
    assert rendered.skeleton.count(old) == 1, old
    forged = Rendered(
        rendered.snapshot_id,
        rendered.table,
        rendered.text.replace(old, new),
        rendered.skeleton.replace(old, new),
        rendered.fragments,
    )
    with pytest.raises(InternalError, match=said):  # the bundled template: a bug if it did
        checked_text(forged, config)


def test_the_domain_is_a_regex_of_itself_only() -> None:
    assert site_layout.domain_pattern("dev.example.com") == "dev[.]example[.]com"
    assert site_layout.try_files() == ["$devtest_not_found", "/not-found.html", "=404"]


def test_a_labels_shard_is_fnv1a_of_it_as_the_404_pages_script_computes_it() -> None:
    # FNV-1a 32 of "a" is 0xe40c292c (the published test vector): shard 2c
    assert site_layout.shard("a") == "2c"
    assert site_layout.shard("feature-login") == "3d"
    assert re.fullmatch(site_layout.data_map_pattern()[1:], "/.devtest-router/not-found/3d.json")
    assert not re.fullmatch(site_layout.data_map_pattern()[1:], "/.devtest-router/not-found/x.json")
