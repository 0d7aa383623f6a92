"""TLS (tls_certificate, tls_certificate_key, tls_listen), the HTTP to HTTPS redirect, and
websockets through reloads: against a real nginx with a self-signed wildcard certificate made
by openssl, real HTTP and websocket backends, loopback only.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Result, run_main
from harness import (
    Backend,
    Nginx,
    Response,
    find_binary,
    http_request,
    pid_alive,
    wait_for,
)
from template_harness import override
from tls_harness import (
    Certificate,
    WebsocketEcho,
    echo,
    https_request,
    negotiated_protocol,
    open_websocket,
    wildcard_certificate,
)
from websockets.exceptions import ConnectionClosed

DOMAIN = "dev.test"
OUTPUT = "devtest-router.conf"
LOCK = f".{OUTPUT}.lock"  # apply's lock file, left beside the output by design

BackendFactory = Callable[..., dict[str, Backend]]
Snapshot = dict[str, Any]


# --------------------------------------------------------------------------
# helpers


def snapshot(deployments: Mapping[str, Mapping[str, int]]) -> Snapshot:
    """{"branch": {"service": port}} as etcdwatch hands it over, created in the given order."""
    return {
        "deployment": {
            branch: {
                "created": f"2026-01-{day:02d}T09:00:00Z",
                "service": {
                    name: {"ip": "127.0.0.1", "port": str(port)} for name, port in services.items()
                },
            }
            for day, (branch, services) in enumerate(deployments.items(), start=1)
        }
    }


def cli(argv: list[str], stdin: str = "", environ: Mapping[str, str] | None = None) -> Result:
    return run_main(argv, stdin, environ)


CLEAN = json.dumps({"deployment": {"feat": {"service": {"web": {"ip": "10.0.0.5", "port": "80"}}}}})
PAIR = ["--tls-certificate", "/etc/ssl/dev.pem", "--tls-certificate-key", "/etc/ssl/dev.key"]


class Frontend:
    """devtest-router apply for one test's nginx: plain HTTP on nginx.ports[0] and, with a
    certificate, HTTPS on nginx.ports[1]."""

    def __init__(self, nginx: Nginx, tmp: Path, certificate: Certificate | None) -> None:
        self.nginx = nginx
        self.certificate = certificate
        self.plain_port, self.tls_port = nginx.ports[0], nginx.ports[1]
        self.output = nginx.conf_dir / OUTPUT
        self.environ = {
            "DEVTEST_ROUTER_ACCESS_LOG": str(tmp / "router.access.log"),
            "DEVTEST_ROUTER_SITE_DIR": str(tmp / "site"),  # never the default under /var/lib
        }

    def argv(self) -> list[str]:
        tls = []
        if self.certificate is not None:
            tls = [
                "--tls-listen", f"127.0.0.1:{self.tls_port}",
                "--tls-certificate", str(self.certificate.certificate),
                "--tls-certificate-key", str(self.certificate.key),
            ]  # fmt: skip
        return [
            "apply",
            "--domain", DOMAIN,
            "--allow-loopback",
            "--listen", f"127.0.0.1:{self.plain_port}",
            *tls,
            "--output", str(self.output),
            "--nginx", find_binary("nginx"),
            "--test-command", self.nginx.test_command,
            "--reload-command", self.nginx.reload_command,
        ]  # fmt: skip

    def apply(self, data: Snapshot) -> Result:
        """Apply `data` and assert that it was installed and nginx told to reload."""
        result = cli(self.argv(), json.dumps(data), self.environ)
        assert result.code == 0, result.err
        assert result.lines[-1].startswith("devtest-router: applied "), result.err
        return result

    def settled(self, old_workers: set[int]) -> None:
        """Wait until the workers in `old_workers` are gone and one new worker serves."""

        def replaced() -> bool:
            current = self.nginx.worker_pids()
            return len(current) == 1 and not current & old_workers

        wait_for(replaced, what="nginx to reload and its old workers to exit")

    def applied(self, data: Snapshot) -> None:
        old = self.nginx.worker_pids()
        self.apply(data)
        self.settled(old)

    def https(self, host: str, path: str = "/") -> Response:
        assert self.certificate is not None
        return https_request(self.tls_port, host, self.certificate.client_context(), path)


def answer(request: Callable[[], Response]) -> Response | None:
    try:
        return request()
    except (OSError, http.client.HTTPException):
        return None


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return wildcard_certificate(tmp_path / "tls", DOMAIN)


@pytest.fixture
def websocket_backends() -> Iterator[Callable[[str], WebsocketEcho]]:
    started: list[WebsocketEcho] = []

    def make(name: str) -> WebsocketEcho:
        server = WebsocketEcho(name)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


# --------------------------------------------------------------------------
# settings: both or neither, paths as tokens, files nginx can read


@pytest.mark.parametrize(
    ("flags", "given", "missing"),
    [
        (PAIR[:2], "tls_certificate", "tls_certificate_key"),
        (PAIR[2:], "tls_certificate_key", "tls_certificate"),
    ],
)
def test_one_of_the_pair_alone_is_one_line_and_writes_nothing(
    tmp_path: Path, flags: list[str], given: str, missing: str
) -> None:
    output = tmp_path / "out" / OUTPUT
    output.parent.mkdir()
    result = cli(["apply", *flags, "--output", str(output), "--nginx", "false"], CLEAN)
    assert result.code == 2
    assert result.lines == [
        f"devtest-router: setting {given} is set (from --{given.replace('_', '-')}) but "
        f"{missing} is not: TLS needs both the certificate and its key; set both, or neither "
        "for plain HTTP"
    ]
    assert list(output.parent.iterdir()) == []
    # the same from the environment, for render too
    environ = {"DEVTEST_ROUTER_" + given.upper(): flags[1]}
    rendered = cli(["render"], CLEAN, environ)
    assert rendered.code == 2 and rendered.out == ""
    assert rendered.lines == [
        result.lines[0].replace(
            f"--{given.replace('_', '-')}", f"environment variable DEVTEST_ROUTER_{given.upper()}"
        )
    ]


@pytest.mark.parametrize(
    "path", ["/etc/ssl/my cert.pem", "/etc/ssl/dev.pem;", '/etc/"ssl"/x', "/etc/$x"]
)
def test_a_certificate_path_with_other_characters_is_one_line(path: str) -> None:
    """(A relative path is taken from the current directory, as every path setting's: see
    test_config.py.)"""
    result = cli(["render", "--tls-certificate", path, *PAIR[2:]], CLEAN)
    assert result.code == 2 and result.out == ""
    assert len(result.lines) == 1
    line = result.lines[0]
    assert line.startswith(f"devtest-router: setting tls_certificate = {json.dumps(path)} from ")
    assert "a path of letters, digits, '.', '_', '/' and '-' only" in line


def test_tls_listen_may_not_share_an_address_with_listen() -> None:
    result = cli(["render", *PAIR, "--listen", "8080", "--tls-listen", "8080"], CLEAN)
    assert result.code == 2
    assert result.lines == [
        "devtest-router: setting tls_listen (from --tls-listen) shares 8080 with listen "
        "(from --listen): plain HTTP and HTTPS need addresses of their own"
    ]


def test_tls_listen_defaults_to_443_and_the_redirect_then_names_no_port() -> None:
    text = cli(["render", *PAIR], CLEAN).out
    assert "    listen 443 ssl http2 default_server;\n" in text
    assert "    listen 80 default_server;\n" in text
    assert "    return 301 https://$host$request_uri;\n" in text
    # from the environment, comma-separated like listen; the redirect goes to the first one
    text = cli(["render", *PAIR], CLEAN, {"DEVTEST_ROUTER_TLS_LISTEN": "8443,[::1]:9443"}).out
    assert "    listen 8443 ssl http2 default_server;\n" in text
    assert "    listen [::1]:9443 ssl http2 default_server;\n" in text
    assert "    return 301 https://$host:8443$request_uri;\n" in text
    # TLS off: tls_listen is not used at all
    plain = cli(["render", "--tls-listen", "8443"], CLEAN).out
    assert "ssl" not in plain and "return 301" not in plain


@pytest.mark.parametrize("missing", ["certificate", "key"])
def test_a_certificate_or_key_file_nginx_cannot_read_is_one_line_and_writes_nothing(
    tmp_path: Path, certificate: Certificate, missing: str
) -> None:
    files = {"certificate": certificate.certificate, "key": certificate.key}
    files[missing] = tmp_path / "tls" / f"gone.{missing}"
    output = tmp_path / "out" / OUTPUT
    output.parent.mkdir()
    argv = [
        "apply", "--domain", DOMAIN, "--allow-loopback",
        "--tls-certificate", str(files["certificate"]),
        "--tls-certificate-key", str(files["key"]),
        "--output", str(output), "--nginx", find_binary("nginx"),
        "--test-command", "false", "--reload-command", "false",
    ]  # fmt: skip
    result = cli(argv, CLEAN, {"DEVTEST_ROUTER_ACCESS_LOG": "off"})
    setting = "tls_certificate" if missing == "certificate" else "tls_certificate_key"
    assert result.code == 2
    assert result.lines == [
        f"devtest-router: setting {setting}: cannot read {files[missing]} (No such file or "
        "directory); nginx must read it: fix the path or the file's permissions; nothing was "
        "changed"
    ]
    assert [entry.name for entry in output.parent.iterdir()] == [LOCK]
    # the dry run runs the same checks
    dry = cli([*argv, "--dry-run"], CLEAN, {"DEVTEST_ROUTER_ACCESS_LOG": "off"})
    assert (dry.code, dry.lines) == (2, result.lines)


# --------------------------------------------------------------------------
# the crossplane check: only the configured certificate and listen forms pass


@pytest.mark.parametrize(
    ("tls", "old", "new", "refusal"),
    [
        (
            False,
            "    client_max_body_size {{ client_max_body_size }};",
            "    client_max_body_size 1m;\n    ssl_certificate /etc/passwd;",
            "ssl_certificate must name the configured tls_certificate (not set: TLS is off)",
        ),
        (
            True,
            "    ssl_certificate {{ tls_certificate }};",
            "    ssl_certificate /etc/ssl/other.pem;",
            "ssl_certificate must name the configured tls_certificate (/etc/ssl/dev.pem)",
        ),
        (
            True,
            "    ssl_certificate_key {{ tls_certificate_key }};",
            "    ssl_certificate_key /etc/ssl/dev.pem;",
            "ssl_certificate_key must name the configured tls_certificate_key (/etc/ssl/dev.key)",
        ),
        (
            True,
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            "    ssl_protocols TLSv1 TLSv1.2 TLSv1.3;",
            "ssl_protocols may name only ['TLSv1.2', 'TLSv1.3']",
        ),
        (
            False,
            "    listen {{ address }}{% if default_server %}",
            "    listen {{ address }} ssl{% if default_server %}",
            "parameter 'ssl' is not one the settings make",
        ),
        (
            True,
            " ssl http2{% if default_server %}",
            " ssl http2 reuseport{% if default_server %}",
            "parameter 'reuseport' is not one the settings make",
        ),
        (
            True,
            " ssl http2{% if default_server %}",
            "{% if default_server %}",
            "listen addresses ['8443'] of a server",
        ),
        (
            False,
            "    listen {{ address }}{% if default_server %}",
            "    listen 9999{% if default_server %}",
            "listen addresses ['9999'] of a server",
        ),
        (
            False,
            "{% call listen_lines(default_server=true) %}{% endcall %}\n    server_name _;",
            "    server_name _;",
            "listen addresses [] of a server",
        ),
        (
            True,
            "{% if tls %}\n\n# Plain HTTP",
            "{% if false %}\n\n# Plain HTTP",
            "no server listens on the configured listen ['80']",
        ),
    ],
)
def test_the_check_refuses_other_certificates_protocols_and_listen_forms(
    tmp_path: Path, tls: bool, old: str, new: str, refusal: str
) -> None:
    folder = override(tmp_path, old, new)
    settings = [*PAIR, "--tls-listen", "8443"] if tls else []
    assert cli(["render", *settings], CLEAN).code == 0  # the bundled template passes
    result = cli(["render", "--template-dir", str(folder), *settings], CLEAN)
    assert result.code == 123 and result.out == ""
    assert len(result.lines) == 1
    assert refusal in result.lines[0], result.err


def test_the_listen_macro_prints_only_checked_values(tmp_path: Path) -> None:
    """A call block prints the macro's text as is; values in it still meet the Token gate."""
    folder = override(tmp_path, "listen {{ address }} ssl", "listen {{ address ~ '' }} ssl")
    result = cli(["render", "--template-dir", str(folder), *PAIR], CLEAN)
    assert result.code == 2
    assert "printed a str that was never checked" in result.err


# --------------------------------------------------------------------------
# through a real nginx


@pytest.mark.integration
def test_https_with_sni_reaches_each_backend_and_plain_http_redirects(
    nginx: Nginx, tmp_path: Path, certificate: Certificate, backends: BackendFactory
) -> None:
    found = backends("main-web", "main-api", "feature-login-web")
    frontend = Frontend(nginx, tmp_path, certificate)
    frontend.applied(
        snapshot(
            {
                "main": {"web": found["main-web"].port, "api": found["main-api"].port},
                "feature/login": {"web": found["feature-login-web"].port},
            }
        )
    )
    for host, backend in [
        (f"main-web.{DOMAIN}", "main-web"),
        (f"main-api.{DOMAIN}", "main-api"),
        (f"feature-login-web.{DOMAIN}", "feature-login-web"),
        (f"main.{DOMAIN}", "main-web"),  # the default entry point
        (f"feature-login.{DOMAIN}", "feature-login-web"),
    ]:
        response = frontend.https(host, "/some/path?q=1")
        assert response.status == 200, (host, response.text)
        seen = response.json()
        assert (seen["name"], seen["host"], seen["path"]) == (backend, host, "/some/path?q=1")
        assert seen["x-forwarded-proto"] == "https"

    # the certificate's second name, the bare domain, verifies too, and serves the index over
    # HTTPS (its server listens through the same macro as the routes' server)
    index = frontend.https(DOMAIN)
    assert index.status == 200, index.text
    assert f"//main-web.{DOMAIN}/" in index.text and f"//feature-login.{DOMAIN}/" in index.text
    assert frontend.https(DOMAIN, "/deployments.json").json()["deployments"]
    unknown = frontend.https(f"nobody-web.{DOMAIN}")
    assert unknown.status == 404 and unknown.headers["x-devtest-router"] == "unknown-host"
    # the client really checks names: one the certificate does not cover is refused
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(frontend.tls_port, "main-web.other.test", certificate.client_context())
    # HTTP/2 for clients that offer it (browsers); HTTP/1.1 for the rest (as above)
    context = certificate.client_context()
    assert negotiated_protocol(frontend.tls_port, f"main-web.{DOMAIN}", context) == "h2"

    # plain HTTP: every hostname, known or not, gets a 301 to the same URL over HTTPS
    for host in (f"main-web.{DOMAIN}", f"main.{DOMAIN}", f"nobody-web.{DOMAIN}", DOMAIN):
        response = http_request(frontend.plain_port, host, "/some/path?q=1")
        assert response.status == 301, (host, response.text)
        assert response.headers["location"] == (f"https://{host}:{frontend.tls_port}/some/path?q=1")
    # the redirects reached no backend: each saw only its HTTPS requests above
    assert {name: len(backend.requests) for name, backend in found.items()} == {
        "main-web": 2,
        "main-api": 1,
        "feature-login-web": 2,
    }


@pytest.mark.integration
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_a_websocket_survives_an_apply_and_reload(
    nginx: Nginx,
    tmp_path: Path,
    certificate: Certificate,
    backends: BackendFactory,
    websocket_backends: Callable[[str], WebsocketEcho],
    tls: bool,
) -> None:
    """An open websocket stays with the old worker through a reload; new requests go to the
    new worker; the old worker leaves once the connection closes."""
    socket_server = websocket_backends("feat-live")
    other = backends("other-web")["other-web"]
    frontend = Frontend(nginx, tmp_path, certificate if tls else None)
    port = frontend.tls_port if tls else frontend.plain_port
    context = certificate.client_context() if tls else None
    frontend.applied(snapshot({"feat": {"live": socket_server.port}}))

    with open_websocket(port, f"feat-live.{DOMAIN}", context) as connection:
        assert echo(connection, "before") == "feat-live: before"
        [serving] = nginx.worker_pids()
        before = frontend.output.read_bytes()

        frontend.apply(
            snapshot({"feat": {"live": socket_server.port}, "other": {"web": other.port}})
        )

        # nginx really reloaded: a new config and a new worker, which serves the new route
        assert frontend.output.read_bytes() != before
        assert f"other-web.{DOMAIN}".encode() in frontend.output.read_bytes()
        wait_for(lambda: nginx.worker_pids() - {serving}, what="a new nginx worker")

        def new_route() -> Response:
            if tls:
                return frontend.https(f"other-web.{DOMAIN}")
            return http_request(port, f"other-web.{DOMAIN}")

        def routed() -> bool:  # until the old worker has stopped accepting, it may answer 404
            response = answer(new_route)
            return (
                response is not None
                and response.status == 200
                and response.json()["name"] == "other-web"
            )

        wait_for(routed, what="the new route through the new worker")
        assert pid_alive(serving), "the old worker left while a websocket was open"

        # the same connection, still held by the old worker, still echoes
        assert echo(connection, "after") == "feat-live: after"
        # and a new connection, through the new worker
        with open_websocket(port, f"feat-live.{DOMAIN}", context) as fresh:
            assert echo(fresh, "fresh") == "feat-live: fresh"
    wait_for(
        lambda: not pid_alive(serving), what="the old worker to exit once its websocket closed"
    )


@pytest.mark.integration
def test_worker_shutdown_timeout_bounds_how_long_an_old_worker_keeps_a_websocket(
    tmp_path: Path, websocket_backends: Callable[[str], WebsocketEcho], backends: BackendFactory
) -> None:
    """With worker_shutdown_timeout in nginx.conf (docs/tls.md), an old worker closes the
    connections it still holds and exits, instead of lingering for as long as they stay open."""
    server = Nginx(tmp_path / "nginx")
    server.write_main_conf()
    text = server.main_conf.read_text()
    server.main_conf.write_text(
        text.replace("worker_processes 1;\n", "worker_processes 1;\nworker_shutdown_timeout 1s;\n")
    )
    socket_server = websocket_backends("feat-live")
    other = backends("other-web")["other-web"]
    with server:
        frontend = Frontend(server, tmp_path, None)
        frontend.applied(snapshot({"feat": {"live": socket_server.port}}))
        with open_websocket(frontend.plain_port, f"feat-live.{DOMAIN}") as connection:
            assert echo(connection, "before") == "feat-live: before"
            [serving] = server.worker_pids()
            frontend.apply(
                snapshot({"feat": {"live": socket_server.port}, "other": {"web": other.port}})
            )
            wait_for(lambda: not pid_alive(serving), timeout=60, what="the old worker to exit")
            with pytest.raises(ConnectionClosed):
                echo(connection, "after")
