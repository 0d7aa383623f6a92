"""The index at scale: compact rows, the search box, the icon (issue 13, item 5).

The search box is tested in headless Chromium through the DevTools protocol (real keys: `/`,
letters, Escape) on a page that real nginx serves after `devtest-router apply`; the markup on
data. bench/index.py measures the same page at 10,000 deployments.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import strategies
from harness import Nginx, wait_for
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis_profiles import examples
from site_harness import Browser, Tab, read_page
from test_site import DOMAIN, Router, settings, site_templates, table_of

from generator.site import pages as site

SHOWN = "document.querySelectorAll('#deployments tbody tr:not([hidden])').length"
WORDS = ("login", "cart", "invoice", "search", "theme", "export")


def many(count: int) -> dict[str, Any]:
    """`count` deployments: feature/t0000-login ... with web and api services (and docs for
    every third), on private addresses nothing asks."""
    deployments = {}
    for number in range(count):
        services = {"web": 8000, "api": 9000, **({"docs": 7000} if number % 3 == 0 else {})}
        deployments[f"feature/t{number:04d}-{WORDS[number % len(WORDS)]}"] = {
            "created": "2026-11-20T09:00:00Z",
            "service": {
                name: {"ip": f"10.1.{number // 250}.{number % 250 + 1}", "port": str(port)}
                for name, port in services.items()
            },
        }
    return {"deployment": deployments}


def rows_of(html: str) -> list[str]:
    """The data-deployment of every row of the index, in order."""
    page = read_page(html)
    return [attrs["data-deployment"] for attrs in page.attributes if "data-deployment" in attrs]


@pytest.fixture
def router(nginx: Nginx, tmp_path: Path) -> Router:
    return Router(nginx, tmp_path)


def shown(tab: Tab, count: int) -> None:
    wait_for(lambda: tab.evaluate(SHOWN) == count, what=f"{count} rows shown")


# --------------------------------------------------------------------------
# in Chromium


@pytest.mark.integration
def test_the_search_box_filters_rows_slash_focuses_it_and_escape_clears_it(
    router: Router, tmp_path: Path
) -> None:
    count = 2 * site.ROWS_PER_TABLE + 10  # three tables of rows
    router.applied(many(count))
    with Browser(tmp_path / "chromium") as browser:
        tab = browser.tab()
        tab.navigate(f"http://{DOMAIN}:{router.nginx.port}/")
        assert tab.evaluate(SHOWN) == count
        assert tab.evaluate("document.getElementById('find').hidden") is False
        assert tab.evaluate("document.getElementById('shown').textContent") == (
            f"{count} of {count} deployments"
        )
        assert tab.evaluate("document.activeElement.id") != "search"

        tab.press("/")  # focuses the box, and types nothing into it
        assert tab.evaluate("document.activeElement.id") == "search"
        assert tab.evaluate("document.getElementById('search').value") == ""

        tab.type("T0123")  # the name, case-insensitive
        shown(tab, 1)
        assert (
            tab.evaluate(
                "document.querySelector('#deployments tbody tr:not([hidden])').dataset.deployment"
            )
            == "feature-t0123-search"
        )
        assert tab.evaluate("document.getElementById('shown').textContent") == (
            f"1 of {count} deployments"
        )
        # the tables with no row shown take no room
        assert (
            tab.evaluate("document.querySelectorAll('#deployments > div:not([hidden])').length")
            == 1
        )

        tab.press("Escape")  # clears: every row again
        shown(tab, count)
        assert tab.evaluate("document.getElementById('search').value") == ""
        assert tab.evaluate("document.getElementById('shown').textContent") == (
            f"{count} of {count} deployments"
        )

        tab.type("docs cart")  # every word: a service and a word of the name
        expected = sum(1 for n in range(count) if n % 3 == 0 and WORDS[n % len(WORDS)] == "cart")
        shown(tab, expected)
        tab.press("Escape")
        shown(tab, count)

        tab.type("t0042-login-api.localhost")  # a hostname
        shown(tab, 1)
        tab.press("Escape")
        tab.press("Escape")  # a second Escape leaves the box
        assert tab.evaluate("document.activeElement.id") != "search"
        tab.type("zzz")  # not in the box any more: nothing filters
        time.sleep(0.2)
        assert tab.evaluate(SHOWN) == count
        assert tab.exceptions() == []


@pytest.mark.integration
def test_chromium_asks_no_host_for_a_favicon(router: Router, tmp_path: Path) -> None:
    """Regression: every page view added a 404 for /favicon.ico to nginx's logs (the index's
    server has no such file; an unknown host's answer is its 404 page)."""
    access = tmp_path / "access.log"
    config = tmp_path / "config.yaml"
    config.write_text(f"access_log: {access}\n")
    code, err = router.apply(many(3), "--config", str(config))
    assert code == 0, err
    wait_for(lambda: len(router.nginx.worker_pids()) == 1, what="old nginx workers to quit")
    port = router.nginx.port
    with Browser(tmp_path / "chromium") as browser:
        for url in (
            f"http://{DOMAIN}:{port}/",  # the index
            f"http://nope.{DOMAIN}:{port}/",  # not-found.html
            f"http://feature-t0001-cart-nope.{DOMAIN}:{port}/",  # not-found/<label>.html
        ):
            tab = browser.tab()
            tab.navigate(url)
            assert tab.evaluate("document.querySelector('link[rel=icon]').href").startswith(
                "data:image/svg+xml,"
            )
        time.sleep(2)  # a browser asks for the icon after the load event: give it the time
    asked = access.read_text()
    assert "GET / " in asked and "nope.localhost" in asked  # the log is the one nginx writes
    assert "favicon" not in asked
    assert "favicon" not in router.nginx.error_log.read_text()


# --------------------------------------------------------------------------
# the markup (no browser)


def index_of(count: int) -> str:
    config = settings(domain=DOMAIN)
    table = table_of(many(count), config).table
    return site.render_site(table, config, site_templates())[site.INDEX].decode()


def test_without_javascript_every_row_shows_and_the_box_does_not() -> None:
    html = index_of(site.ROWS_PER_TABLE + 1)
    assert re.search(r'<p id="find" hidden>', html)
    assert "<tr hidden" not in html and "<div hidden" not in html
    assert len(rows_of(html)) == site.ROWS_PER_TABLE + 1
    # the rows go in tables of ROWS_PER_TABLE, after the header's own
    tables = re.findall(r"<div><table><tbody>\n(.*?)</tbody></table></div>", html, re.S)
    assert [table.count("<tr ") for table in tables] == [site.ROWS_PER_TABLE, 1]


def test_a_row_is_compact_and_reads_as_before() -> None:
    """A row: one <p> a service, no lists, no class names; its text as the index always said."""
    html = index_of(1)
    [row] = re.findall(r"<tr data-deployment=.*?</tr>\n", html, re.S)
    assert row == (
        '<tr data-deployment="feature-t0000-login"><td><b>feature/t0000-login</b></td>\n'
        '<td><a href="//feature-t0000-login.localhost/">feature-t0000-login.localhost</a>'
        " <i>(web)</i></td>\n"
        "<td>\n"
        '<p><a href="//feature-t0000-login-api.localhost/">feature-t0000-login-api.localhost</a>'
        " <i>(api, 1 instance)</i> <small><code>10.1.0.1:9000</code> ip/port keys</small></p>\n"
        '<p><a href="//feature-t0000-login-docs.localhost/">feature-t0000-login-docs.localhost</a>'
        " <i>(docs, 1 instance)</i> <small><code>10.1.0.1:7000</code> ip/port keys</small></p>\n"
        '<p><a href="//feature-t0000-login-web.localhost/">feature-t0000-login-web.localhost</a>'
        " <i>(web, 1 instance)</i> <small><code>10.1.0.1:8000</code> ip/port keys</small></p>\n"
        "</td>\n"
        '<td><time datetime="2026-11-20T09:00:00Z">2026-11-20 09:00 UTC</time></td></tr>\n'
    )
    text = " ".join(read_page(row).text.split())
    assert text == (
        "feature/t0000-login feature-t0000-login.localhost (web) "
        "feature-t0000-login-api.localhost (api, 1 instance) 10.1.0.1:9000 ip/port keys "
        "feature-t0000-login-docs.localhost (docs, 1 instance) 10.1.0.1:7000 ip/port keys "
        "feature-t0000-login-web.localhost (web, 1 instance) 10.1.0.1:8000 ip/port keys "
        "2026-11-20 09:00 UTC"
    )


@settings_(
    max_examples=examples(60),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st_snapshot=strategies.realistic_snapshots | strategies.colliding_snapshots())
def test_every_deployment_of_the_table_is_one_row_of_the_index(
    st_snapshot: dict[str, Any],
) -> None:
    config = settings(domain="dev.test")
    table = table_of(st_snapshot, config).table
    html = site.render_site(table, config, site_templates())[site.INDEX].decode()
    listed = site.listings(table)
    assert rows_of(html) == [str(listing.label) for listing in listed]
    names = re.findall(r'<tr data-deployment="[^"]*"><td><b>([^<]*)</b>', html)
    assert len(names) == len(listed)
    if listed:
        assert f"{len(listed)} of {len(listed)} deployment" in html
