"""`devtest-router wait`: a route is up only when an instance of its service answers. What each
answer means (probe.judge), checked against a real nginx's own error pages and a service's own
502, and `wait` end to end: a route whose instance does not listen yet is not up, and is up once
the instance listens."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, Etcd, Nginx, free_ports, wait_for
from test_outage import Keys
from watch_harness import BIN, DOMAIN, Frontend, registry_url

from generator.cli.probe import answers, judge

HOST = "feature-web.dev.test"
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
    b"Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"
)


@pytest.mark.parametrize(
    ("status", "marker", "body", "up", "says"),
    [
        (200, "", b"hello", True, "answers (200)"),
        (404, "", b"not here", True, "answers (404)"),  # the service's own 404
        (502, "", b"my own bad gateway", True, "answers (502)"),  # a service's own 502
        (504, "", b"{}", True, "answers (504)"),
        (500, "", NGINX_502, True, "answers (500)"),  # only nginx's 502 and 504 pages
        (404, "unknown-host", b"<html>", False, "does not route feature-web.dev.test yet"),
        (502, "no-instance", NGINX_502, False, "no instance of its service answers yet (502)"),
        (504, "no-instance", b"", False, "no instance of its service answers yet (504)"),
        (502, "", NGINX_502, False, "no instance of its service answers yet (502)"),
        (504, "", NGINX_502.replace(b"502", b"504"), False, "answers yet (504)"),
        (502, "", NGINX_502.replace(b"nginx/1.22.1", b"nginx"), False, "answers yet (502)"),
        (503, "", b"starting", False, "answers that it is unavailable (503)"),
    ],
)
def test_what_an_answer_means(status: int, marker: str, body: bytes, up: bool, says: str) -> None:
    ok, what = judge(HOST, status, marker, body)
    assert ok is up
    assert says in what


# --------------------------------------------------------------------------
# a real nginx


class Service(http.server.ThreadingHTTPServer):
    """A service's instance on 127.0.0.1:port that answers `status` (after `delay` s)."""

    daemon_threads = True

    def __init__(self, port: int, status: int = 200, delay: float = 0.0) -> None:
        answer, pause = status, delay

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                time.sleep(pause)
                body = f"the service's own {answer}".encode()
                self.send_response(answer)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__((LOOPBACK, port), Handler)
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.fixture
def services() -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(port: int, status: int = 200, delay: float = 0.0) -> Service:
        started.append(Service(port, status, delay))
        return started[-1]

    try:
        yield start
    finally:
        for service in started:
            service.stop()


# What the frontend would need in routes.conf.j2's default server to mark its own 502 and 504
# (the template is not changed here; this server block only has the lines in question).
MARKED = """
    error_page 502 @devtest_no_instance_502;
    error_page 504 @devtest_no_instance_504;
    location @devtest_no_instance_502 {
        add_header X-Devtest-Router no-instance always;
        return 502;
    }
    location @devtest_no_instance_504 {
        add_header X-Devtest-Router no-instance always;
        return 504;
    }
"""


@pytest.mark.integration
@pytest.mark.parametrize("marked", [False, True], ids=["nginx-page", "marker"])
def test_nginx_own_502_and_504_are_not_up_and_a_service_own_502_is(
    marked: bool, nginx: Nginx, services: Callable[..., Service]
) -> None:
    silent, own, slow = free_ports(3)
    services(own, 502)
    services(slow, 200, delay=3)  # longer than proxy_read_timeout below: nginx's 504
    (nginx.conf_dir / "routes.conf").write_text(
        f"""
map $host $devtest_upstream {{
    hostnames;
    default "";
    silent.dev.test 127.0.0.1:{silent};
    own.dev.test 127.0.0.1:{own};
    slow.dev.test 127.0.0.1:{slow};
}}
server {{
    listen 127.0.0.1:{nginx.port} default_server;
    location / {{
        proxy_pass http://$devtest_upstream;
        proxy_read_timeout 1s;
    }}
{MARKED if marked else ""}
}}
"""
    )
    nginx.reload()
    frontend = f"http://127.0.0.1:{nginx.port}"
    assert answers(frontend, "own.dev.test") == (True, "own.dev.test answers (502)")
    for host, status in (("silent.dev.test", 502), ("slow.dev.test", 504)):
        assert answers(frontend, host) == (
            False,
            f"{host} is routed but no instance of its service answers yet ({status})",
        )


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}


@pytest.mark.integration
def test_wait_is_not_up_while_the_instance_does_not_listen_and_up_once_it_does(
    etcd: Etcd, nginx: Nginx, tmp_path: Path, services: Callable[..., Service]
) -> None:
    [port] = free_ports(1)  # registered, but nothing listens there yet
    router = Frontend(nginx, registry_url("etcd2", etcd), tmp_path)
    router.start()
    try:
        Keys("etcd2", etcd).register("feature", port, 60)
        waiting = [
            str(BIN), "wait", "--name", "feature", "--service", "web", "--domain", DOMAIN,
            "--frontend", f"http://127.0.0.1:{nginx.port}",
        ]  # fmt: skip
        seen = f"{HOST} is routed but no instance of its service answers yet (502)"

        def not_up_yet() -> bool:
            done = subprocess.run(
                [*waiting, "--timeout", "0"], env=_environ(), capture_output=True, text=True
            )
            assert done.returncode == 1, done.stderr
            return seen in done.stderr

        wait_for(not_up_yet, 60, what=f"the route to be there; watcher log:\n{router.log_tail()}")
        waiter = subprocess.Popen(
            [*waiting, "--timeout", "60"], env=_environ(), stderr=subprocess.PIPE, text=True
        )
        try:
            assert waiter.stderr is not None
            first = waiter.stderr.readline()  # what it saw first: not up
            services(port)  # the instance starts listening
            _, rest = waiter.communicate(timeout=60)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait()
        assert waiter.returncode == 0, first + rest
        assert first == f"devtest-router: {seen}\n"
        assert rest == f"devtest-router: {HOST} answers (200)\n"
    finally:
        router.stop()
