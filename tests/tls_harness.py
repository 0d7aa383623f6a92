"""Test helpers for TLS and websockets: a self-signed wildcard certificate made with openssl,
HTTPS requests with SNI to 127.0.0.1, and a websocket echo backend on loopback.

Real parts only: the openssl binary, Python's ssl module, the websockets library.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from harness import LOOPBACK, Response, find_binary
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve


@dataclass(frozen=True)
class Certificate:
    certificate: Path  # PEM; self-signed, so it is also the trust anchor of the test's clients
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this certificate and checks hostnames against it."""
        return ssl.create_default_context(cafile=str(self.certificate))


def wildcard_certificate(folder: Path, domain: str) -> Certificate:
    """A self-signed certificate for *.<domain> with <domain> itself as a second name."""
    folder.mkdir(parents=True, exist_ok=True)
    certificate, key = folder / f"wildcard.{domain}.pem", folder / f"wildcard.{domain}.key"
    argv = [
        find_binary("openssl"), "req", "-x509", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-days", "2",
        "-subj", f"/CN=*.{domain}",
        "-addext", f"subjectAltName=DNS:*.{domain},DNS:{domain}",
        "-keyout", str(key), "-out", str(certificate),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl could not make the certificate:\n{done.stderr}"
    return Certificate(certificate, key)


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:port, presenting `server_name` in SNI (and checked against the
    certificate), as a browser that resolved the name to this frontend would."""

    def __init__(
        self, port: int, server_name: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(LOOPBACK, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._tls_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)


def https_request(
    port: int, host: str, context: ssl.SSLContext, path: str = "/", timeout: float = 5
) -> Response:
    """One GET over TLS to 127.0.0.1:port with SNI and Host `host` (no redirects, no proxy)."""
    conn = _SNIConnection(port, host, context, timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        data = resp.read()
        headers = {name.lower(): value for name, value in resp.getheaders()}
        return Response(resp.status, headers, data)
    finally:
        conn.close()


def negotiated_protocol(port: int, host: str, context: ssl.SSLContext) -> str | None:
    """The ALPN protocol the server picks when a client offers h2 and http/1.1."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.selected_alpn_protocol()


class WebsocketEcho:
    """A websocket server on 127.0.0.1 that answers every message with '<name>: <message>'."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: Server = serve(self._echo, LOOPBACK, 0)
        self.port: int = int(self._server.socket.getsockname()[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _echo(self, connection: ServerConnection) -> None:
        for message in connection:
            connection.send(f"{self.name}: {message!s}")

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


def open_websocket(
    port: int, host: str, context: ssl.SSLContext | None = None, timeout: float = 5
) -> ClientConnection:
    """A websocket to ws(s)://<host>/ through the frontend at 127.0.0.1:port (Host and SNI:
    `host`; the name is never resolved)."""
    scheme = "wss" if context is not None else "ws"
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    return connect(
        f"{scheme}://{host}:{port}/",
        sock=sock,
        ssl=context,
        open_timeout=timeout,
        close_timeout=timeout,
    )


def echo(connection: ClientConnection, message: str, timeout: float = 5) -> str:
    connection.send(message)
    answer = connection.recv(timeout=timeout)
    return answer if isinstance(answer, str) else answer.decode()
