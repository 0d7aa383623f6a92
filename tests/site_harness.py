"""Helpers for the site tests: routing tables with several instances a service, reading the
pages' links, and headless Chromium on loopback only.

Chromium is Debian's `chromium` package (scripts/install-deps installs it). It runs with its own
profile folder, resolves `localhost` and `*.localhost` to 127.0.0.1 and every other name to
nothing, and uses no proxy, so it contacts nothing but the loopback nginx of the test.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

from harness import find_binary

from generator.core import routing
from generator.core.config import Config
from generator.core.model import Deployment, Instance, Member, RoutingTable, Service

InstanceSpec = tuple[str | None, str, int]  # (instance id or None: the ip/port keys, ip, port)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "build" / "test-artifacts"  # gitignored (build/)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-pings",
    "--no-proxy-server",
    "--host-resolver-rules=MAP localhost 127.0.0.1, MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND",
)


# --------------------------------------------------------------------------
# routing tables with instances: routing.build_table on validated deployments (what validation
# hands over once it reads .../service/<service>/instance/<id>/{ip,port})


def deployment(
    name: str,
    services: Mapping[str, Sequence[InstanceSpec]],
    created: datetime | None = None,
) -> Deployment:
    """A validated deployment whose services have the instances given, in the order given."""
    return Deployment(
        name,
        created,
        tuple(
            Service(service, tuple(Instance(id, ip, str(port)) for id, ip, port in instances))
            for service, instances in sorted(services.items())
        ),
        tuple(sorted(services)),
    )


def table(config: Config, *deployments: Deployment) -> RoutingTable:
    """The routing table of `deployments`, as the pipeline routes them."""
    return routing.build_table(deployments, config)


def with_members(
    table: RoutingTable, deployment: str, service: str, members: Sequence[Member]
) -> RoutingTable:
    """`table` with the routes of one service (its hostname and the default entry point) going
    to `members` instead."""
    members = tuple(members)
    routes = tuple(
        dataclasses.replace(route, members=members, pool=routing.pool(deployment, service, members))
        if (route.deployment, route.service) == (deployment, service)
        else route
        for route in table.routes
    )
    return RoutingTable(table.domain, routes, table.problems)


# --------------------------------------------------------------------------
# reading pages


@dataclass
class Page:
    """What a page holds that the tests read: its links and the text of its elements by id."""

    links: list[tuple[str, str]] = field(default_factory=list)  # (href, text)
    text_by_id: dict[str, str] = field(default_factory=dict)
    attributes: list[dict[str, str]] = field(default_factory=list)  # of every element
    text: str = ""


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._href: str | None = None
        self._link_text: list[str] = []
        self._ids: list[tuple[str, str, list[str]]] = []  # open elements with an id
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.page.attributes.append({"tag": tag, **values})
        if tag == "a" and "href" in values:
            self._href, self._link_text = values["href"], []
        if "id" in values:
            self._ids.append((tag, values["id"], []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.page.links.append((self._href, "".join(self._link_text).strip()))
            self._href = None
        if self._ids and self._ids[-1][0] == tag:
            _, ident, parts = self._ids.pop()
            self.page.text_by_id[ident] = "".join(parts).strip()

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        if self._href is not None:
            self._link_text.append(data)
        for _, _, parts in self._ids:
            parts.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = "".join(self._text)


def read_page(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page


# --------------------------------------------------------------------------
# headless Chromium


def chromium(url: str, profile: Path, *extra: str, timeout: float = 120) -> str:
    """Run headless Chromium on `url` with `extra` flags (e.g. --dump-dom); its stdout.

    Started in a session of its own and, if it overruns, stopped as that process group (its
    renderer and helper processes with it), never by name.
    """
    binary = find_binary("chromium")
    profile.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(profile),  # crash reports, caches and fonts' caches stay in the test's folder
        "XDG_CONFIG_HOME": str(profile / "config"),
        "XDG_CACHE_HOME": str(profile / "cache"),
    }
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile / 'user-data'}", *extra, url]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"chromium did not finish {url} within {timeout:g} s") from None
    if process.returncode != 0:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-20:])
        raise AssertionError(f"chromium exited {process.returncode} on {url}:\n{tail}")
    return out.decode("utf-8", errors="replace")
