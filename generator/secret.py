"""Secrets: kept out of every child process and every message.

The only secret devtest-router reads is etcd's password, and only from the environment
(DEVTEST_ROUTER_ETCD_PASSWORD: never a flag, which `ps` shows, and never the URL, which is
refused). No child needs it: not the wrapped CMD of `register -- CMD` (the branch's own server),
not nginx, test_command or reload_command. `child_environment` is the environment every child
starts with; `redact` is how a URL (a registry URL, a metadata endpoint) appears in a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# Every variable holding a secret that devtest-router reads. Children never see them.
SECRET_VARIABLES = frozenset({"DEVTEST_ROUTER_ETCD_PASSWORD"})

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?://)?")


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child process starts with: ours (os.environ unless given) without the
    secret variables."""
    source = os.environ if environ is None else environ
    return {key: value for key, value in source.items() if key not in SECRET_VARIABLES}


def redact(url: str) -> str:
    """`url` as a message shows it: whatever stands before the last '@' after the scheme
    (user:password@, or several of them in a list of endpoints) becomes '***'.

    Deliberately blunt: a password holding '/', ',', ':' or '@' still leaves nothing of itself
    behind, at the price of hiding some endpoints of a URL that is refused anyway. A file: URL
    names a path, never a secret, and is shown as it is.
    """
    if url.startswith("file:"):
        return url
    before, at, after = url.rpartition("@")
    if not at:
        return url
    scheme = _SCHEME.match(before)
    return f"{scheme.group(0) if scheme else ''}***@{after}"
