"""The site folder's layout as the nginx config relies on it: the pages' paths, and the chain
nginx follows to find an unknown hostname's 404 page. The config (render, check) and the site
(generator/site) both read it from here."""

from __future__ import annotations

from generator.core.model import Token

INDEX = "index.html"
DOCUMENT = "deployments.json"
NOT_FOUND = "not-found.html"
NOT_FOUND_DIR = "not-found"

# How many times nginx cuts the last `-segment` off an unknown hostname's first label to find
# a deployment's 404 page (feature-x-my-api -> feature-x-my -> feature-x): a fixed chain of
# maps, whatever the number of routes. A service part with more hyphens than this gets the
# generic page.
ASKED_LEVELS = 8


def try_files() -> list[str]:
    """What nginx tries for an unknown hostname, the longest label first (see ASKED_LEVELS)."""
    pages = [f"/{NOT_FOUND_DIR}/$devtest_asked_{level}.html" for level in range(ASKED_LEVELS)]
    return [*pages, f"/{NOT_FOUND}", "=404"]


def domain_pattern(domain: str) -> Token:
    """The domain as a regex that matches only itself: dots as `[.]` (a Token has no `\\`)."""
    return Token(domain.replace(".", "[.]"))
