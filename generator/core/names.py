"""Branch and service names to DNS labels.

A hostname label is lowercase `[a-z0-9-]`, at most 63 characters, with no hyphen at either end.
Names are slugified the way GitLab computes CI_COMMIT_REF_SLUG (lowercase, every other character
to `-`, trim hyphens at the ends), so a pipeline can predict its URL from that variable. Where
GitLab cuts at 63 characters, a longer label here keeps its first characters and ends in a hash of
the whole label, so two long names that share a prefix still get two hostnames, the same ones on
every machine and every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from generator.core.model import Token

MAX_LABEL = 63
HASH_LENGTH = 6
_NOT_SLUG = re.compile(r"[^a-z0-9]")


@functools.lru_cache(maxsize=1 << 16)  # pure; names repeat across routes and applies
def slug(name: str) -> str:
    """GitLab's CI_COMMIT_REF_SLUG rule, without its cut at 63 characters (label() shortens).

    >>> slug("Feature/JIRA-123_login")
    'feature-jira-123-login'
    """
    return _NOT_SLUG.sub("-", name.lower()).strip("-")


def short_hash(text: str) -> str:
    # surrogatepass: a lone surrogate from a JSON \ud800 escape still hashes; it never crashes
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]


def label(*names: str) -> Token:
    """The DNS label for the joined slugs of `names`, shortened with a hash suffix when too long.

    A name with no usable character (all symbols, or all non-ASCII) still gets a stable label: the
    hash of the raw name.
    """
    if len(names) == 1:
        return _single_label(names[0])
    return _label(names)


# A branch's label is asked for by each of its routes; a (branch, service) pair's only once per
# change of the deployment (the pipeline keeps its routes), so only single names are cached.
@functools.lru_cache(maxsize=1 << 16)
def _single_label(name: str) -> Token:
    return _label((name,))


def _label(names: tuple[str, ...]) -> Token:
    parts = [slug(name) or f"x{short_hash(name)}" for name in names]
    joined = "-".join(parts)
    if len(joined) > MAX_LABEL:
        keep = joined[: MAX_LABEL - HASH_LENGTH - 1].rstrip("-")
        joined = f"{keep}-{short_hash(joined)}"
    return Token(joined)


def hostname(deployment: str, service: str | None, domain: str) -> Token:
    """<deployment>-<service>.<domain>, or <deployment>.<domain> (the default entry point)."""
    first = label(deployment) if service is None else label(deployment, service)
    return Token(f"{first}.{domain}")


# Problems name registry keys: printed whatever a key holds, on one line.
_PLAIN = re.compile(r"[A-Za-z0-9._~:@+=,-]{1,64}")


def show(value: Any, limit: int = 48) -> str:
    """A registry value or key, safe to print on one line whatever it holds."""
    if isinstance(value, str):
        if _PLAIN.fullmatch(value):
            return value
        cut = value if len(value) <= limit else value[:limit] + "..."
        return json.dumps(cut, ensure_ascii=True)
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a directory" if value else "an empty directory"
    if isinstance(value, list):
        return "a list"
    return show(json.dumps(value), limit)


def key_path(*parts: str) -> str:
    return "/" + "/".join(_key_part(part) for part in parts)


def _key_part(part: str) -> str:
    """A key as show() prints it; a shortened one ends in a hash of the whole, so that two long
    names sharing a prefix stay two keys (and two problems)."""
    shown = show(part)
    if shown.endswith('..."'):
        shown += "~" + short_hash(part)
    return shown
