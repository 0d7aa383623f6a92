"""What the etcd v2 and v3 backends share: option checks and failures said in a few words."""

from __future__ import annotations

import http.client
import socket
import ssl

import urllib3

from generator.core.errors import UsageError
from generator.registry.base import Endpoint, Tls

# A watch request that gets no answer at all within this long means a member that does not
# answer. A shorter one (a burst's quiet period) that times out means only "no change yet".
MIN_WATCH = 0.2
# The shortest wait for a change: quiet periods shorter than MIN_WATCH are kept, not rounded up.
SHORTEST_WATCH = 0.005


def describe(api: str, endpoints: tuple[Endpoint, ...], secure: bool, tls: Tls) -> str:
    """ "etcd v2 at host:port,..." for log lines, once the options are known to fit together."""
    if not endpoints:
        raise UsageError(f"registry: etcd {api} needs at least one HOST:PORT")
    description = f"etcd {api} at " + ",".join(f"{e.host}:{e.port}" for e in endpoints)
    check_tls(description, secure, tls)
    if api == "v2" and not all(_latin1(text) for text in (tls.user, tls.password) if text):
        # HTTP basic auth carries Latin-1 only; the error would show the character at fault
        raise UsageError(
            f"{description}: --etcd-user or DEVTEST_ROUTER_ETCD_PASSWORD has a character that "
            "etcd's v2 API (HTTP basic auth) cannot carry, outside Latin-1; use the v3 API "
            "(etcd3://) or another password"
        )
    return description


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def check_tls(description: str, secure: bool, tls: Tls) -> None:
    """The TLS and user options make sense together; one UsageError line if not."""
    if not secure and (tls.ca or tls.cert or tls.key):
        raise UsageError(
            f"{description}: --etcd-ca/--etcd-cert/--etcd-key need a TLS registry URL "
            "(etcds:// or etcd3s://)"
        )
    if tls.key and not tls.cert:
        raise UsageError(f"{description}: --etcd-key needs --etcd-cert")
    if bool(tls.user) != bool(tls.password):
        raise UsageError(
            f"{description}: etcd authentication needs both --etcd-user and "
            "DEVTEST_ROUTER_ETCD_PASSWORD"
        )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def why(error: BaseException, timeout: float) -> str:
    """The root cause of a failed request, in a few words."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        for linked in (
            getattr(current, "reason", None),
            getattr(current, "cause", None),
            current.__cause__,
            current.__context__,
            *current.args,
        ):
            if isinstance(linked, BaseException):
                pending.append(linked)
    # Most specific first: urllib3's NewConnectionError (refused) is also a ConnectTimeoutError.
    reasons: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (ConnectionRefusedError, "connection refused"),
        (socket.gaierror, "unknown host"),
        (ssl.SSLError, "TLS failed"),
        (
            (
                ConnectionResetError,
                http.client.RemoteDisconnected,
                urllib3.exceptions.ProtocolError,
            ),
            "connection closed by etcd",
        ),
        ((TimeoutError, urllib3.exceptions.TimeoutError), f"no answer within {timeout:g}s"),
    ]
    for kinds, reason in reasons:
        for current in chain:
            if isinstance(current, kinds):
                if isinstance(current, ssl.SSLError):
                    return f"TLS: {current.reason or first_line(current)}"
                return reason
    return first_line(error)
