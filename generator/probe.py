"""`devtest-router wait`: poll a route through the frontend until its service answers."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from .errors import UsageError

UNKNOWN_HOST = "X-Devtest-Router"  # the frontend's own 404 page for hostnames it does not route
NOT_YET = {502, 503, 504}  # the route exists but the container does not answer yet


def answers(frontend: str, host: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether `host` reaches a service through the frontend at URL `frontend`; and what it got."""
    parts = urlsplit(frontend)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"frontend {frontend!r} is not an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError as error:
        raise UsageError(f"frontend {frontend!r}: {error}") from None
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, port, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/", headers={"Host": host})
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as error:
        return False, f"frontend {frontend} does not answer HTTP ({type(error).__name__}: {error})"
    finally:
        connection.close()
    if response.getheader(UNKNOWN_HOST):
        return False, f"the frontend does not route {host} yet"
    if response.status in NOT_YET:
        return False, f"{host} is routed but its service does not answer yet ({response.status})"
    return True, f"{host} answers ({response.status})"


def wait_until_routed(
    frontend: str,
    host: str,
    timeout: float,
    log: Callable[[str], None],
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll until `host` answers or `timeout` seconds pass; logs each change of what it sees."""
    deadline = clock() + timeout
    said = ""
    while True:
        ok, what = answers(frontend, host, timeout=min(5.0, max(timeout, 0.1)))
        if what != said:
            log(what)
            said = what
        if ok:
            return True
        if clock() >= deadline:
            return False
        sleep(min(interval, max(0.0, deadline - clock())))
