"""The site folder's layout as the nginx config relies on it: the pages' paths, and how an
unknown hostname's 404 page finds the deployments its hostname begins with. The config (render,
check) and the site (generator/site) both read it from here.

One 404 page (not-found.html) answers every hostname no route answers. Its script reads the
deployments of the labels that may begin the hostname from a shard of the site's data,
not-found/<shard>.json, which it asks its own hostname for at DATA_PATH/<shard>.json: nginx
serves that path from the site folder to unknown hostnames only (a routed hostname proxies
every path to its service), and the page to every other path.
"""

from __future__ import annotations

from generator.core.model import Token

INDEX = "index.html"
DOCUMENT = "deployments.json"
NOT_FOUND = "not-found.html"
NOT_FOUND_DIR = "not-found"  # the shards: not-found/<shard>.json
DATA_PATH = "/.devtest-router/not-found"  # where the 404 page's script asks for a shard
DATA_FILE = "$devtest_not_found"  # nginx's variable: the file to serve for the path asked

# A deployment's shard: FNV-1a (32 bits) of its label, the low byte in two hex digits. The 404
# page's script computes the same (templates/site/not-found.html.j2). Stable: a deployment
# stays in its shard whatever else comes and goes, so a change rewrites one shard.
SHARDS = 256
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

# How many times the 404 page cuts the last `-segment` off an unknown hostname's first label to
# find a deployment's label (feature-x-my-api -> feature-x-my -> feature-x): the longest label
# that has a deployment wins. A service part with more hyphens than this gets the generic page.
ASKED_LEVELS = 8


def shard(label: str) -> str:
    """The shard of a deployment label: two hex digits."""
    value = _FNV_OFFSET
    for byte in label.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return f"{value % SHARDS:02x}"


def shard_path(name: str) -> str:
    """A shard's file, relative to the site folder."""
    return f"{NOT_FOUND_DIR}/{name}.json"


def try_files() -> list[str]:
    """What nginx tries for an unknown hostname: the file the data map names for the path asked
    (a shard, or the page), then the page (a shard that is not there: no deployment in it)."""
    return [DATA_FILE, f"/{NOT_FOUND}", "=404"]


def data_map_pattern() -> str:
    """The data map's regex over $uri: a shard's path, its file as $1."""
    path = DATA_PATH.replace(".", "[.]")
    return f"~^{path}/([0-9a-f][0-9a-f])[.]json$"


def domain_pattern(domain: str) -> Token:
    """The domain as a regex that matches only itself: dots as `[.]` (a Token has no `\\`)."""
    return Token(domain.replace(".", "[.]"))
