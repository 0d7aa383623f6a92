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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK, Etcd

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


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Stub

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: Any, headers: dict[str, str]) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/v2/machines"):
            self._send(f"http://{LOOPBACK}:{self.server.server_port}".encode(), {})
        else:
            self._send(*self.server.answer)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(*self.server.answer)


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub((LOOPBACK, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.pop("REGISTRY_URL", None)
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
