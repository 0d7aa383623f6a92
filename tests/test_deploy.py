"""deploy/: the scripts the images run, run outside Docker against a real etcd and nginx; and
the files that cannot run here (compose, ECS, CI, Dockerfiles, systemd) held to the code.

No Docker engine runs on the development machine, so no image is built: the entrypoints and
the health check run as the images run them, with paths and binaries moved by environment
variables (deploy_harness.py).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_harness import Frontend, Service, v2_keys
from harness import Backend, Etcd, Nginx, find_binary, http_request, pid_alive, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def frontend(tmp_path: Path, etcd: Etcd) -> Iterator[Frontend]:
    started = Frontend(tmp_path / "frontend", etcd)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def put_v2(etcd: Etcd, key: str, value: str) -> None:
    """A PUT as the original curl registration snippet makes it."""
    answer = http_request(
        etcd.client_port,
        f"127.0.0.1:{etcd.client_port}",
        f"/v2/keys{key}",
        method="PUT",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=f"value={value}".encode(),
    )
    assert answer.status in (200, 201), answer.text


# --------------------------------------------------------------------------
# the frontend image's entrypoint and health check


def test_frontend_routes_a_registered_backend_through_its_nginx(
    frontend: Frontend, etcd: Etcd, backends: Callable[..., dict[str, Backend]]
) -> None:
    web = backends("feature-web")["feature-web"]
    put_v2(etcd, "/deployment/feature/service/web/ip", "127.0.0.1")
    put_v2(etcd, "/deployment/feature/service/web/port", str(web.port))
    put_v2(etcd, "/deployment/feature/created", "2026-01-01T00:00:00Z")

    def routed() -> bool:
        status, body = frontend.route("feature-web.dev.test", "/hello")
        return status == 200 and b'"feature-web"' in body

    wait_for(routed, 20, what=f"feature-web.dev.test to reach its backend\n{frontend.tail()}")
    assert web.requests[-1]["path"] == "/hello"
    assert web.requests[-1]["host"] == "feature-web.dev.test"
    status, _ = frontend.route("feature.dev.test")  # the default entry point (web)
    assert status == 200


def test_health_check_passes_while_the_frontend_runs_and_fails_without_nginx(
    frontend: Frontend,
) -> None:
    healthy = frontend.health()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("healthy:")

    # nginx stops: the health check says so, and the entrypoint stops the watcher and exits
    nginx_pid, watcher_pid = frontend.nginx_pid, frontend.watcher_pid
    subprocess.run(["kill", "-QUIT", str(nginx_pid)], check=True)
    wait_for(lambda: not pid_alive(nginx_pid), 15, what="nginx to stop")
    sick = frontend.health()
    assert sick.returncode == 1
    assert sick.stdout.startswith("unhealthy: nginx does not answer"), sick.stdout
    assert frontend.proc is not None
    assert frontend.proc.wait(15) != 0, frontend.tail()
    assert not pid_alive(watcher_pid), frontend.tail()
    assert "nginx exited" in frontend.log.read_text()


def test_health_check_fails_without_the_watcher(frontend: Frontend, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    elsewhere = tmp_path / "other-run"
    elsewhere.mkdir()
    (elsewhere / "watcher.pid").write_text(f"{dead.pid}\n")
    sick = frontend.health(FRONTEND_RUN_DIR=str(elsewhere))
    assert sick.returncode == 1
    assert sick.stdout.startswith("unhealthy: the watcher is not running"), sick.stdout
    assert frontend.health().returncode == 0


def test_health_check_fails_on_an_nginx_without_our_config(tmp_path: Path) -> None:
    with Nginx(tmp_path / "plain") as plain:
        (plain.conf_dir / "other.conf").write_text(
            f"server {{ listen 127.0.0.1:{plain.port} default_server; return 404; }}\n"
        )
        plain.reload()
        frontend_run = tmp_path / "run"
        frontend_run.mkdir()
        result = subprocess.run(
            [str(Path(__file__).parent.parent / "deploy/frontend/healthcheck.sh")],
            env={
                "PATH": "/usr/bin:/bin",
                "CURL_BIN": find_binary("curl"),
                "HEALTHCHECK_URL": f"http://127.0.0.1:{plain.port}/",
                "FRONTEND_RUN_DIR": str(frontend_run),
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "without devtest-router's unknown-host page" in result.stdout, result.stdout


def test_sigterm_stops_nginx_and_the_watcher(frontend: Frontend) -> None:
    assert frontend.proc is not None
    pids = frontend.pids()
    assert len(pids) >= 4  # the entrypoint, nginx's master and a worker, the watcher
    frontend.proc.send_signal(signal.SIGTERM)
    assert frontend.proc.wait(20) == 0, frontend.tail()
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 10, what="every pid to be gone")
    assert "SIGTERM received: stopping the watcher and nginx" in frontend.log.read_text()
    assert not (frontend.run_dir / "watcher.pid").exists()


# --------------------------------------------------------------------------
# the example service's entrypoint


def test_service_entrypoint_registers_is_routed_and_deregisters_on_sigterm(
    frontend: Frontend, etcd: Etcd, tmp_path: Path
) -> None:
    service = Service(tmp_path / "service", etcd, name="feature/Deploy", service="api")
    try:
        service.start()
        key = "/deployment/feature-deploy/service/api"
        wait_for(
            lambda: v2_keys(etcd, key).get(f"{key}/port") == str(service.port),
            20,
            what=f"the service's keys in etcd\n{service.tail()}",
        )
        assert v2_keys(etcd, key)[f"{key}/ip"] == "127.0.0.1"
        assert "/deployment/feature-deploy/created" in v2_keys(etcd, "/deployment/feature-deploy")

        def routed() -> bool:
            status, body = frontend.route("feature-deploy-api.dev.test", "/x")
            return status == 200 and b'"service": "api"' in body

        wait_for(routed, 20, what=f"the frontend to route to the service\n{frontend.tail()}")
        _, body = frontend.route("feature-deploy-api.dev.test", "/x")
        assert b'"branch": "feature/Deploy"' in body

        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(20) == 0, service.tail()
        assert v2_keys(etcd, "/deployment/feature-deploy") == {}, service.tail()
        wait_for(
            lambda: frontend.route("feature-deploy-api.dev.test")[0] == 404,
            20,
            what="the route to go once the service deregistered",
        )
    finally:
        service.stop()


def test_service_entrypoint_without_a_registry_runs_the_command_unregistered(
    tmp_path: Path, etcd: Etcd
) -> None:
    service = Service(tmp_path / "service", etcd, name="feature", service="web")
    del service.env["REGISTRY_URL"]
    try:
        service.start()
        wait_for(
            lambda: _answers(service.port), 20, what=f"the unregistered service\n{service.tail()}"
        )
        assert v2_keys(etcd, "/deployment") == {}
        assert "REGISTRY_URL is not set" in service.log.read_text()
    finally:
        service.stop()


def _answers(port: int) -> bool:
    try:
        return http_request(port, "localhost", timeout=1).status == 200
    except OSError:
        return False
