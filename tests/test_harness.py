"""The harness itself, against the real nginx and etcd."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    Backend,
    Etcd,
    Nginx,
    b64,
    http_request,
    pid_alive,
    port_open,
    unb64,
    wait_for,
)

pytestmark = pytest.mark.integration

BackendFactory = Callable[..., dict[str, Backend]]


def proxy_server(port: int, host: str, backend: Backend) -> str:
    return f"""
server {{
    listen 127.0.0.1:{port};
    server_name {host};
    location / {{
        proxy_pass http://{backend.address};
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
}}
"""


def test_nginx_starts_with_empty_conf_d(nginx: Nginx) -> None:
    assert nginx.conf_dir.is_dir() and not any(nginx.conf_dir.iterdir())
    assert nginx.worker_pids()
    assert not port_open(nginx.port)
    assert nginx.check_config().returncode == 0


def test_backend_echoes_request(backends: BackendFactory) -> None:
    web = backends("web")["web"]
    r = http_request(web.port, "example.test", "/x?y=1", headers={"X-Real-IP": "10.1.2.3"})
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "name": "web",
        "method": "GET",
        "path": "/x?y=1",
        "host": "example.test",
        "x-forwarded-for": None,
        "x-forwarded-proto": None,
        "x-forwarded-host": None,
        "x-real-ip": "10.1.2.3",
    }


def test_reload_routes_host_to_backend(nginx: Nginx, backends: BackendFactory) -> None:
    bs = backends("web", "api")
    (nginx.conf_dir / "web.conf").write_text(proxy_server(nginx.port, "web.test", bs["web"]))
    (nginx.conf_dir / "api.conf").write_text(proxy_server(nginx.port, "api.test", bs["api"]))
    before = nginx.worker_pids()

    nginx.reload()

    after = nginx.worker_pids()
    assert after and not (after & before)
    for name in ("web", "api"):
        r = http_request(nginx.port, f"{name}.test", "/hello")
        assert r.status == 200
        body = r.json()
        assert body["name"] == name
        assert body["host"] == f"{name}.test"
        assert body["path"] == "/hello"
        assert body["x-real-ip"] == "127.0.0.1"
        assert body["x-forwarded-proto"] == "http"
    assert len(bs["web"].requests) == 1


def test_reload_rejects_bad_config(nginx: Nginx) -> None:
    (nginx.conf_dir / "bad.conf").write_text("server { listen 127.0.0.1:1; bogus_directive; }\n")
    assert nginx.check_config().returncode != 0
    before = nginx.worker_pids()
    try:
        nginx.reload(timeout=2)
    except AssertionError as exc:
        assert "bogus_directive" in str(exc)
    else:
        raise AssertionError("reload of a broken config succeeded")
    assert nginx.worker_pids() == before


def test_nginx_stop_leaves_no_process(tmp_path: Path) -> None:
    server = Nginx(tmp_path / "n")
    with server:
        pids = {server.pid, *server.worker_pids()}
        assert all(pid_alive(p) for p in pids)
    assert not any(pid_alive(p) for p in pids)


def test_etcd_v2_put_get(etcd: Etcd) -> None:
    host = f"127.0.0.1:{etcd.client_port}"
    form = urllib.parse.urlencode({"value": "hello"}).encode()
    put = http_request(
        etcd.client_port, host, "/v2/keys/devtest/greeting", method="PUT",
        headers={"Content-Type": "application/x-www-form-urlencoded"}, body=form,
    )  # fmt: skip
    assert put.status in (200, 201), put.text
    got = http_request(etcd.client_port, host, "/v2/keys/devtest/greeting")
    assert got.status == 200
    assert got.json()["node"]["value"] == "hello"


def test_etcd_v3_gateway_put_range(etcd: Etcd) -> None:
    etcd.v3("kv/put", {"key": b64("/devtest/a"), "value": b64("1")})
    got = etcd.v3("kv/range", {"key": b64("/devtest/a")})
    assert [unb64(kv["value"]) for kv in got["kvs"]] == ["1"]


def test_etcd_restart_keeps_data(etcd: Etcd) -> None:
    etcd.v3("kv/put", {"key": b64("k"), "value": b64("v")})
    old_pid = etcd.pid
    etcd.restart()
    assert etcd.pid != old_pid and not pid_alive(old_pid)
    assert unb64(etcd.v3("kv/range", {"key": b64("k")})["kvs"][0]["value"]) == "v"


def test_etcd_pause_resume(etcd: Etcd) -> None:
    etcd.pause()
    assert not etcd.healthy()
    etcd.resume()
    wait_for(etcd.healthy, what="etcd healthy after SIGCONT")


def test_etcd_stop_and_kill_leave_no_process(tmp_path: Path) -> None:
    for how in ("stop", "kill"):
        member = Etcd(tmp_path / how)
        member.start()
        pid = member.pid
        getattr(member, how)()
        assert not pid_alive(pid)


def test_etcd_cluster_has_three_healthy_members(etcd_cluster: list[Etcd]) -> None:
    assert all(m.healthy() for m in etcd_cluster)
    for m in etcd_cluster:
        members = m.v3("cluster/member/list", {})["members"]
        assert sorted(x["name"] for x in members) == ["etcd0", "etcd1", "etcd2"]
        assert sorted(x["clientURLs"][0] for x in members) == sorted(e.url for e in etcd_cluster)
    leaders = {m.v3("maintenance/status", {})["leader"] for m in etcd_cluster}
    assert len(leaders) == 1
