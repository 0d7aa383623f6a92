"""What the registry does with answers etcd never gives: a stub etcd (a real HTTP server on
loopback) answers in malformed shapes, and an absent /deployment prefix on a real etcd.

Each is a registry error (exit 4, one line), never an internal error (exit 3), and an absent
prefix is never taken for "no services" unless --allow-empty says so.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, Backend, Etcd, wait_for
from watch_harness import DOMAIN, Frontend

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "devtest-router"
GOOD_NODE = {
    "key": "/deployment",
    "dir": True,
    "nodes": [{"key": "/deployment/a/created", "value": "2026-01-01T00:00:00Z"}],
}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


GOOD_KV = {"key": _b64("/deployment/a/created"), "value": _b64("2026-01-01T00:00:00Z")}


class _Stub(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # what GET /v2/keys/deployment and POST /v3/kv/range answer: (body, headers)
    answer: tuple[Any, dict[str, str]] = ({}, {})
    reads: list[float]  # when each full read (not a watch) came, time.monotonic()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Stub

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: Any, headers: dict[str, str], status: int = 200) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/v2/machines"):
            self._send(f"http://{LOOPBACK}:{self.server.server_port}".encode(), {})
        elif "wait=true" in self.path:  # every watch fails, as etcd says a bad request
            error = {"errorCode": 209, "message": "Invalid field", "cause": "stub", "index": 7}
            self._send(error, {"X-Etcd-Index": "7"}, 400)
        else:
            self.server.reads.append(time.monotonic())
            self._send(*self.server.answer)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(*self.server.answer)


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub((LOOPBACK, 0), _Handler)
    server.reads = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.pop("REGISTRY_URL", None)
    env.update(extra)
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


V2_ANSWERS = {
    "node null": ({"action": "get", "node": None}, {"X-Etcd-Index": "7"}),
    "nodes a string": (
        {"action": "get", "node": {"key": "/deployment", "dir": True, "nodes": "abc"}},
        {"X-Etcd-Index": "7"},
    ),
    "a node a number": (
        {"action": "get", "node": {"key": "/deployment", "dir": True, "nodes": [5]}},
        {"X-Etcd-Index": "7"},
    ),
    "a numeric value": (
        {
            "action": "get",
            "node": {
                "key": "/deployment",
                "dir": True,
                "nodes": [{"key": "/deployment/a/created", "value": 5}],
            },
        },
        {"X-Etcd-Index": "7"},
    ),
    "a non-numeric index": ({"action": "get", "node": GOOD_NODE}, {"X-Etcd-Index": "seven"}),
    "a list": ([1, 2], {"X-Etcd-Index": "7"}),
}

V3_ANSWERS = {
    "kvs a string": ({"header": {"revision": "7"}, "kvs": "abc"}, {}),
    "a kv a number": ({"header": {"revision": "7"}, "kvs": [5]}, {}),
    "a numeric value": (
        {"header": {"revision": "7"}, "kvs": [{"key": GOOD_KV["key"], "value": 5}]},
        {},
    ),
    "a non-numeric revision": ({"header": {"revision": "seven"}, "kvs": [GOOD_KV]}, {}),
    "header null": ({"header": None, "kvs": [GOOD_KV]}, {}),
    "no header": ({"kvs": [GOOD_KV]}, {}),
    "a key that is not base64": ({"header": {"revision": "7"}, "kvs": [{"key": "a"}]}, {}),
    "a list": ([1, 2], {}),
}


@pytest.mark.parametrize(
    ("scheme", "case"),
    [("etcd", case) for case in V2_ANSWERS] + [("etcd3", case) for case in V3_ANSWERS],
)
def test_a_malformed_answer_is_a_registry_error_in_one_line(
    stub: _Stub, scheme: str, case: str
) -> None:
    stub.answer = (V2_ANSWERS if scheme == "etcd" else V3_ANSWERS)[case]
    url = f"{scheme}://{LOOPBACK}:{stub.server_port}"
    result = _run("snapshot", "--registry", url)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not etcd's answer" in lines[0], lines[0]
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("scheme", ["etcd", "etcd3"])
def test_well_formed_stub_answers_read(stub: _Stub, scheme: str) -> None:
    """The stub itself is good enough for a read: the failures above are the shapes'."""
    stub.answer = (
        ({"action": "get", "node": GOOD_NODE}, {"X-Etcd-Index": "7"})
        if scheme == "etcd"
        else ({"header": {"revision": "7"}, "kvs": [GOOD_KV]}, {})
    )
    result = _run("snapshot", "--registry", f"{scheme}://{LOOPBACK}:{stub.server_port}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"deployment": {"a": {"created": "2026-01-01T00:00:00Z"}}}


@pytest.mark.parametrize("scheme", ["etcd", "etcd3"])
def test_an_absent_prefix_is_a_registry_error_unless_allow_empty(etcd: Etcd, scheme: str) -> None:
    url = f"{scheme}://{LOOPBACK}:{etcd.client_port}"
    result = _run("snapshot", "--registry", url)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "/deployment is absent" in lines[0] and "--allow-empty" in lines[0], lines[0]
    allowed = _run("snapshot", "--registry", url, "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout) == {"deployment": {}}
    from_env = _run("snapshot", "--registry", url, DEVTEST_ROUTER_ALLOW_EMPTY="1")
    assert from_env.returncode == 0, from_env.stderr


def test_a_watch_that_fails_while_reads_succeed_backs_off_and_says_it_once(
    stub: _Stub,
    frontend: Callable[..., Frontend],
    backends: Callable[..., dict[str, Backend]],
) -> None:
    """Each good read used to reset the backoff and the line said once: a full read and an
    apply every 0.3 s, and the same error line each time."""
    web = backends("web")["web"]
    node = {
        "key": "/deployment",
        "dir": True,
        "nodes": [
            {"key": "/deployment/a/created", "value": "2026-01-01T00:00:00Z"},
            {"key": "/deployment/a/service/web/ip", "value": "127.0.0.1"},
            {"key": "/deployment/a/service/web/port", "value": str(web.port)},
        ],
    }
    stub.answer = ({"action": "get", "node": node}, {"X-Etcd-Index": "7"})
    router = frontend(f"etcd://{LOOPBACK}:{stub.server_port}")
    router.wait_route(f"a-web.{DOMAIN}", "web")
    wait_for(lambda: len(stub.reads) >= 6, 90, what=f"six reads\n{router.log_tail()}")
    gaps = [later - earlier for earlier, later in zip(stub.reads, stub.reads[1:], strict=False)]
    # backoff after 1, 2, 3, 4 failures in a row: 0.2, 0.5, 1, 2 s (at least: never less)
    assert gaps[4] >= 2.0, gaps
    text = router.log.read_text()
    assert text.count("Invalid field") == 1, text
    assert "readable again" not in text and "internal error" not in text, text
