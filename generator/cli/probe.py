"""`devtest-router wait`: poll a route through the frontend until an instance of its service
answers.

What the frontend says, and what it means (judge() decides, from the status, the frontend's
marker header and the start of the body):
- its own 404 page for a hostname it does not route (header `X-Devtest-Router: unknown-host`):
  not routed yet;
- a 502 or 504 that nginx made itself, because no instance accepted the connection or answered
  in time: routed, but no instance answers yet. The frontend marks those with
  `X-Devtest-Router: no-instance` where its template does; without the marker, nginx's own
  error page gives it away (`<hr><center>nginx`). An nginx inside the container that cannot
  reach its app makes the same page, and that service does not answer yet either;
- a 503: the service answers that it is unavailable (not ready): not yet;
- anything else, a service's own 502 or 504 included (nginx passes it through as it is): the
  service answers.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from generator.core.errors import UsageError

MARKER = "X-Devtest-Router"  # the frontend's own answers: unknown-host, no-instance
NO_INSTANCE = "no-instance"
NGINX_ERROR_PAGE = b"<hr><center>nginx"  # nginx's built-in error pages end with it
NGINX_ERRORS = {502, 504}  # what nginx answers when no instance accepts or answers in time
UNAVAILABLE = 503  # a service saying it is not ready
BODY_LIMIT = 64 * 1024  # enough to see an error page; a service's long answer is not read


def judge(host: str, status: int, marker: str, body: bytes) -> tuple[bool, str]:
    """Whether an answer for `host` means an instance of its service answers; and what it is.

    `marker` is the frontend's X-Devtest-Router header ("" if none), `body` the start of the
    body."""
    if marker == NO_INSTANCE or (status in NGINX_ERRORS and NGINX_ERROR_PAGE in body):
        return False, f"{host} is routed but no instance of its service answers yet ({status})"
    if marker:
        return False, f"the frontend does not route {host} yet"
    if status == UNAVAILABLE:
        return False, f"{host} is routed but its service answers that it is unavailable (503)"
    return True, f"{host} answers ({status})"


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
        body = response.read(BODY_LIMIT)
    except (OSError, http.client.HTTPException) as error:
        return False, f"frontend {frontend} does not answer HTTP ({type(error).__name__}: {error})"
    finally:
        connection.close()
    return judge(host, response.status, response.getheader(MARKER) or "", body)


def wait_until_routed(
    frontend: str,
    host: str,
    timeout: float,
    log: Callable[[str], None],
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll until an instance answers for `host` or `timeout` seconds pass; logs each change
    of what it sees."""
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
