"""deploy/: the scripts the images run, run outside Docker against a real etcd and nginx; and
the files that cannot run here (compose, ECS, CI, Dockerfiles, systemd) held to the code.

No Docker engine runs on the development machine, so no image is built: the entrypoints and
the health check run as the images run them, with paths and binaries moved by environment
variables (deploy_harness.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_harness import (
    Frontend,
    Service,
    dockerfile_instructions,
    image_env,
    v2_keys,
)
from harness import Backend, Etcd, Nginx, find_binary, http_request, pid_alive, wait_for

from generator.cli.parser import build_parser
from generator.core.config import ENV_PREFIX
from generator.nginx.wrapper import TEMP_PATHS
from generator.resources import schema


@pytest.fixture
def frontend(tmp_path: Path, etcd: Etcd) -> Iterator[Frontend]:
    started = Frontend(tmp_path / "frontend", etcd)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def register_feature(etcd: Etcd, port: int) -> None:
    """feature's web service at 127.0.0.1:port, written as the original curl snippet writes it."""
    etcd.put("etcd2", "/deployment/feature/service/web/ip", "127.0.0.1")
    etcd.put("etcd2", "/deployment/feature/service/web/port", str(port))
    etcd.put("etcd2", "/deployment/feature/created", "2026-01-01T00:00:00Z")


# --------------------------------------------------------------------------
# the frontend image's entrypoint and health check


@pytest.mark.integration
def test_frontend_routes_a_registered_backend_through_its_nginx(
    frontend: Frontend, etcd: Etcd, backends: Callable[..., dict[str, Backend]]
) -> None:
    web = backends("feature-web")["feature-web"]
    register_feature(etcd, web.port)

    def routed() -> bool:
        status, body = frontend.route("feature-web.dev.test", "/hello")
        return status == 200 and b'"feature-web"' in body

    wait_for(routed, 60, what=f"feature-web.dev.test to reach its backend\n{frontend.tail()}")
    assert web.requests[-1]["path"] == "/hello"
    assert web.requests[-1]["host"] == "feature-web.dev.test"
    # The default entry point (web). Polled: right after a reload a worker of the config before
    # (no routes yet) can still take a connection.
    wait_for(lambda: frontend.route("feature.dev.test")[0] == 200, 60, what="feature.dev.test")


@pytest.mark.integration
def test_health_check_passes_while_the_frontend_runs_and_fails_without_nginx(
    frontend: Frontend,
) -> None:
    healthy = frontend.health()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("healthy:")

    # nginx stops: the health check says so, and the entrypoint stops the watcher and exits
    nginx_pid, watcher_pid = frontend.nginx_pid, frontend.watcher_pid
    os.kill(nginx_pid, signal.SIGQUIT)
    wait_for(lambda: not pid_alive(nginx_pid), 60, what="nginx to stop")
    sick = frontend.health()
    assert sick.returncode == 1
    assert sick.stdout.startswith("unhealthy: nginx does not answer"), sick.stdout
    assert frontend.proc is not None
    assert frontend.proc.wait(15) != 0, frontend.tail()
    assert not pid_alive(watcher_pid), frontend.tail()
    assert "nginx exited" in frontend.log.read_text()


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_sigterm_stops_nginx_and_the_watcher(frontend: Frontend) -> None:
    assert frontend.proc is not None
    pids = frontend.pids()
    assert len(pids) >= 4  # the entrypoint, nginx's master and a worker, the watcher
    frontend.proc.send_signal(signal.SIGTERM)
    assert frontend.proc.wait(20) == 0, frontend.tail()
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 60, what="every pid to be gone")
    assert "SIGTERM received: stopping the watcher and nginx" in frontend.log.read_text()
    assert not (frontend.run_dir / "watcher.pid").exists()


@pytest.mark.integration
def test_frontend_logs_requests_to_stdout_and_nginx_to_stderr(frontend: Frontend) -> None:
    """What `docker logs` shows: the access log line of every request on the entrypoint's stdout
    (the image's DEVTEST_ROUTER_ACCESS_LOG=/dev/stdout), nginx's own messages on its stderr
    (nginx.conf's `error_log stderr`), and no log file anywhere."""
    assert frontend.route("nobody-here.dev.test", "/logged-path")[0] == 404

    def logged() -> bool:
        return "/logged-path" in frontend.out.read_text(encoding="utf-8")

    wait_for(logged, 30, what=f"the access log line on stdout\n{frontend.tail()}")
    (line,) = [x for x in frontend.out.read_text().splitlines() if "/logged-path" in x]
    assert '"GET /logged-path HTTP/1.1" 404' in line and "host=nobody-here.dev.test" in line
    errors = frontend.log.read_text(encoding="utf-8")
    assert re.search(r"^\S+ \S+ \[notice\] \d+#\d+: start worker process", errors, re.M), errors
    assert "/logged-path" not in errors
    assert "[notice]" not in frontend.out.read_text(encoding="utf-8")
    assert sorted(frontend.base.rglob("*.log")) == [frontend.log, frontend.out]


# --------------------------------------------------------------------------
# least privilege: nginx and the watcher as one unprivileged user, 80/443 through a capability

UNPRIVILEGED = ("nobody", "nogroup")


def require_root(what: str) -> None:
    """Skipped without root, except under CI=true, where it fails: CI runs as root."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} needs root (CI runs as root)", pytrace=False)
        pytest.skip(f"{what} needs root")


def privileged_loopback_port() -> int:
    """A port below 1024 that is free on 127.0.0.1 (binding it takes root, which the caller has)."""
    for port in random.sample(range(600, 1024), 424):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024 on 127.0.0.1")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path is root's alone)."""
    require_root("running nginx and the watcher as another user")
    folder = Path(tempfile.mkdtemp(prefix="devtest-router-unprivileged-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def nginx_copy(folder: Path, capability: bool) -> Path:
    """The system's nginx copied to `folder` (root's, 0755), with the image's file capability
    (`setcap cap_net_bind_service=+ep`, as deploy/frontend/Dockerfile sets it) if asked."""
    folder.mkdir(mode=0o755)
    copy = folder / "nginx"
    shutil.copy2(find_binary("nginx"), copy)
    copy.chmod(0o755)
    if capability:
        subprocess.run([find_binary("setcap"), "cap_net_bind_service=+ep", str(copy)], check=True)
    return copy


def uids(pid: int) -> list[int]:
    """The real, effective, saved and filesystem uid of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("Uid:")]
    return [int(x) for x in line.split()[1:]]


AMBIENT = ("--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service", "--no-new-privs")


@pytest.mark.integration
@pytest.mark.parametrize(
    "capability", ["file", "ambient"], ids=["image-file-capability", "units-ambient-capability"]
)
def test_frontend_runs_unprivileged_on_a_privileged_port_and_reloads_nginx(
    capability: str, scratch: Path, etcd: Etcd, backends: Callable[..., dict[str, Backend]]
) -> None:
    """nginx and the watcher as `nobody`, nginx's master on a port below 1024, and the watcher
    applying a route change with `nginx -s reload` (and its `nginx -t` binding that port too).
    `file`: the image's arrangement, the entrypoint started as its USER and nginx holding the
    capability on its file. `ambient`: the systemd units' (AmbientCapabilities=
    CAP_NET_BIND_SERVICE, NoNewPrivileges=true) on the system's nginx."""
    nginx = nginx_copy(scratch / "bin", capability=True) if capability == "file" else None
    frontend = Frontend(
        scratch / "frontend",
        etcd,
        port=privileged_loopback_port(),
        nginx_bin=str(nginx) if nginx else None,
        run_as=UNPRIVILEGED,
        setpriv=AMBIENT if capability == "ambient" else (),
    )
    try:
        frontend.start()
        pids = frontend.pids()
        assert len(pids) >= 4, (
            frontend.tail()
        )  # the entrypoint, nginx's master and a worker, the watcher
        nobody = pwd.getpwnam(UNPRIVILEGED[0]).pw_uid
        assert {pid: uids(pid) for pid in pids} == {pid: [nobody] * 4 for pid in pids}

        web = backends("feature-web")["feature-web"]
        register_feature(etcd, web.port)

        def routed() -> bool:
            status, body = frontend.route("feature-web.dev.test", "/after-reload")
            return status == 200 and b'"feature-web"' in body

        wait_for(routed, 60, what=f"the route change to be applied\n{frontend.tail()}")
        # only a reload loads a new route: the watcher's `nginx -s reload`, as nobody
        assert "signal 1 (SIGHUP) received from" in frontend.log.read_text(), frontend.tail()
        health = frontend.health()  # the HEALTHCHECK runs as the image's USER too
        assert health.returncode == 0, health.stdout + health.stderr
        wait_for(
            lambda: "/after-reload" in frontend.out.read_text(), 30, what="the access log line"
        )
        assert frontend.proc is not None
        frontend.proc.send_signal(signal.SIGTERM)
        assert frontend.proc.wait(20) == 0, frontend.tail()
    finally:
        frontend.stop()


def nginx_test_as_nobody(folder: Path, nginx: Path | str, *setpriv: str) -> str:
    """`nginx -t` of a server on a port below 1024, started by an unprivileged shell as the
    entrypoint starts nginx (so only file or ambient capabilities can help), with setpriv's
    extra options; what it printed, and `exit N`."""
    port = privileged_loopback_port()
    conf = folder / f"test-{port}.conf"
    temp = "\n".join(f"{name}_temp_path {folder / name};" for name in TEMP_PATHS)
    conf.write_text(
        f"pid {folder / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; {temp}\n"
        f"server {{ listen 127.0.0.1:{port}; return 204; }} }}\n"
    )
    shutil.chown(folder, *UNPRIVILEGED)
    done = subprocess.run(
        [
            find_binary("setpriv"),
            f"--reuid={UNPRIVILEGED[0]}",
            f"--regid={UNPRIVILEGED[1]}",
            "--clear-groups",
            *setpriv,
            "bash",
            "-c",
            '"$@"',
            "-",
            str(nginx),
            "-e",
            "stderr",
            "-p",
            f"{folder}/",
            "-c",
            str(conf),
            "-t",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return f"{done.stdout}{done.stderr}exit {done.returncode}"


@pytest.mark.integration
def test_what_lets_unprivileged_nginx_bind_below_1024(scratch: Path) -> None:
    """The claims of docs/security.md about the capability, each run for real (`nginx -t`
    binds every listen address):"""
    capped = nginx_copy(scratch / "capped", capability=True)
    plain = nginx_copy(scratch / "plain", capability=False)
    work = scratch / "work"
    work.mkdir()
    denied = "failed (13: Permission denied)"
    # the image: the file capability alone lets the unprivileged user bind
    assert nginx_test_as_nobody(work, capped).endswith("test is successful\nexit 0")
    # without it, the same user cannot
    assert denied in nginx_test_as_nobody(work, plain)
    # no-new-privileges keeps the file capability from applying (compose relies on Docker's
    # net.ipv4.ip_unprivileged_port_start=0 instead, which this machine does not set)
    if Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "0":
        assert denied in nginx_test_as_nobody(work, capped, "--no-new-privs")
    # a bounding set without the capability (cap_drop: ALL without cap_add: NET_BIND_SERVICE)
    # refuses to run the binary at all
    refused = nginx_test_as_nobody(work, capped, "--bounding-set=-net_bind_service")
    assert "Operation not permitted" in refused and refused.endswith("exit 126"), refused
    # the systemd units: an ambient capability, which no-new-privileges keeps
    assert nginx_test_as_nobody(work, plain, *AMBIENT).endswith("exit 0")


# --------------------------------------------------------------------------
# the example service's entrypoint


@pytest.mark.integration
def test_service_entrypoint_registers_is_routed_and_deregisters_on_sigterm(
    frontend: Frontend, etcd: Etcd, tmp_path: Path
) -> None:
    service = Service(tmp_path / "service", etcd, name="feature/Deploy", service="api")
    try:
        service.start()
        key = "/deployment/feature-deploy/service/api/instance/"

        def registered() -> bool:
            """One instance (its id is the container's hostname) and the deployment's created."""
            keys = v2_keys(etcd, "/deployment/feature-deploy")
            instances = {name[len(key) :].split("/")[0] for name in keys if name.startswith(key)}
            if len(instances) != 1 or "/deployment/feature-deploy/created" not in keys:
                return False
            at = key + instances.pop()
            return len(keys) == 3 and (keys.get(f"{at}/ip"), keys.get(f"{at}/port")) == (
                "127.0.0.1",
                str(service.port),
            )

        wait_for(registered, 60, what=f"the service's keys in etcd\n{service.tail()}")

        # One answer decides: during a reload an old nginx worker can still take a connection
        # with the old table, so a second request could race it.
        def routed() -> bool:
            status, body = frontend.route("feature-deploy-api.dev.test", "/x")
            return (
                status == 200
                and b'"service": "api"' in body
                and b'"branch": "feature/Deploy"' in body
            )

        wait_for(routed, 60, what=f"the frontend to route to the service\n{frontend.tail()}")

        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(20) == 0, service.tail()
        assert v2_keys(etcd, "/deployment/feature-deploy") == {}, service.tail()
        wait_for(
            lambda: frontend.route("feature-deploy-api.dev.test")[0] == 404,
            60,
            what="the route to go once the service deregistered",
        )
    finally:
        service.stop()


@pytest.mark.integration
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


# --------------------------------------------------------------------------
# the files that never run here, held to the code so that they cannot drift silently

REPO = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO / "deploy"
CI_FILES = ("deploy/ci/github-actions.yml", "deploy/ci/gitlab-ci.yml")
DOCKERFILES = ("deploy/frontend/Dockerfile", "deploy/service/Dockerfile")
SCRIPTS = (
    "deploy/frontend/entrypoint.sh",
    "deploy/frontend/healthcheck.sh",
    "deploy/service/entrypoint.sh",
)
PLATFORM_VARIABLES = {"PATH", "GIT_STRATEGY"}  # read by the OS or the CI platform itself


def variables_the_code_reads() -> set[str]:
    """Environment variables devtest-router, the deploy scripts or the example app read."""
    known = {ENV_PREFIX + key.upper() for key in schema("config")["properties"]}
    for path in [*sorted((REPO / "generator").rglob("*.py")), DEPLOY_DIR / "service/app.py"]:
        text = path.read_text(encoding="utf-8")
        known |= set(re.findall(r'environ\.get\(\s*"([A-Z][A-Z0-9_]*)"', text))
        known |= set(re.findall(r'\bsetting\([^)]*?"([A-Z][A-Z0-9_]*)"\s*\)', text))
        known |= {ENV_PREFIX + name for name in re.findall(r'ENV_PREFIX \+ "([A-Z_]+)"', text)}
        known |= {f"{ENV_PREFIX}ETCD_{n.upper()}" for n in re.findall(r'"--etcd-([a-z]+)"', text)}
    for script in SCRIPTS:
        known |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (REPO / script).read_text()))
    # the search itself must keep finding what it is known to find
    assert {"NAME", "SERVICE", "PORT", "IP", "REGISTRY_URL", "DEVTEST_ROUTER_TTL"} <= known
    assert {"DEVTEST_ROUTER_DOMAIN", "DEVTEST_ROUTER_FRONTEND", "DEVTEST_ROUTER_ETCD_CA"} <= known
    assert {"NGINX_BIN", "ROUTER_BIN", "HEALTHCHECK_URL"} <= known
    return known


def commands() -> dict[str, set[str]]:
    """devtest-router's subcommands and each one's options, from the CLI's own parser."""
    parser = build_parser()
    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = {opt for item in sub._actions for opt in item.option_strings}
    assert {"watch", "wait", "register", "deregister"} <= set(found)
    return found


def invocations(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, --options) of every `devtest-router SUBCOMMAND ...` in text."""
    found = []
    for match in re.finditer(r"(\S*)\s*\bdevtest-router[ \t]+([a-z][a-z-]*)([^\n;&|)]*)", text):
        if match.group(1) in ("install", "-q"):  # pip install devtest-router PACKAGE
            continue
        found.append((match.group(2), re.findall(r"(--[a-z][a-z-]*)", match.group(3))))
    return found


def strings(document: object) -> Iterator[str]:
    """Every string value in a parsed YAML or JSON document (keys left out)."""
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from strings(value)
    elif isinstance(document, list):
        for value in document:
            yield from strings(value)


def ci_variables(path: str, document: dict[Any, Any]) -> dict[str, str]:
    """The variables a pipeline sets: env (GitHub: workflow, job, step) or variables (GitLab)."""
    found: dict[str, str] = {}
    maps = [document.get("env"), document.get("variables")]
    for job in document.get("jobs", {}).values() if "github" in path else document.values():
        if isinstance(job, dict):
            maps += [job.get("env"), job.get("variables")]
            maps += [step.get("env") for step in job.get("steps", []) if isinstance(step, dict)]
    for mapping in maps:
        found.update({str(k): str(v) for k, v in (mapping or {}).items()})
    return found


def test_ci_pipelines_parse_and_use_only_what_exists() -> None:
    known = commands()
    read = variables_the_code_reads()
    for path in CI_FILES:
        document = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
        texts = list(strings(document))
        used = invocations("\n".join(texts))
        assert {"wait", "deregister"} <= {name for name, _ in used}, path
        for name, options in used:
            assert name in known, f"{path}: devtest-router has no command {name}"
            for option in options:
                assert option in known[name], f"{path}: devtest-router {name} has no {option}"
        for file in re.findall(r"\b(deploy/[\w./@-]+)", "\n".join(texts)):
            assert (REPO / file).exists(), f"{path} names {file}, which does not exist"
        for variable, value in ci_variables(path, document).items():
            referenced = any(
                re.search(rf"\$\{{?{variable}\b", text) for text in texts if text != value
            )
            assert variable in read | PLATFORM_VARIABLES or referenced, (
                f"{path} sets {variable}, which neither devtest-router nor the pipeline reads"
            )


def test_ci_pipelines_deploy_wait_test_and_tear_down() -> None:
    github = yaml.safe_load((REPO / CI_FILES[0]).read_text(encoding="utf-8"))
    events = github[True]  # YAML 1.1 reads the key `on` as true
    assert "push" in events and "delete" in events
    deploy_steps = [step.get("run", "") for step in github["jobs"]["deploy"]["steps"]]
    waits = [i for i, run in enumerate(deploy_steps) if "devtest-router wait" in run]
    tests = [i for i, run in enumerate(deploy_steps) if "pytest" in run]
    assert waits and tests and waits[0] < tests[0]
    teardown = github["jobs"]["teardown"]
    assert "delete" in teardown["if"] and teardown["env"]["NAME"] == "${{ github.event.ref }}"

    gitlab = yaml.safe_load((REPO / CI_FILES[1]).read_text(encoding="utf-8"))
    stop = gitlab["deploy"]["environment"]["on_stop"]
    assert gitlab[stop]["environment"] == {
        "name": gitlab["deploy"]["environment"]["name"],
        "action": "stop",
    }
    assert any("devtest-router deregister" in line for line in gitlab[stop]["script"])
    assert any("devtest-router wait" in line for line in gitlab["integration"]["script"])


def test_github_hostname_snippet_runs_and_names_the_route() -> None:
    text = (REPO / CI_FILES[0]).read_text(encoding="utf-8")
    snippet = re.search(r"python3 -c '([^']+)'", text)
    assert snippet is not None
    done = subprocess.run(
        [sys.executable, "-c", snippet.group(1)],
        env={"NAME": "Feature/Login", "DEVTEST_ROUTER_DOMAIN": "dev.example.com"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "feature-login-web.dev.example.com"


def test_ecs_task_definition_uses_dynamic_host_ports_and_the_pipelines_fill_it() -> None:
    path = DEPLOY_DIR / "ecs/service-task-definition.json"
    task = json.loads(path.read_text(encoding="utf-8"))
    assert task["networkMode"] == "bridge"
    (container,) = task["containerDefinitions"]
    (mapping,) = container["portMappings"]
    assert mapping["hostPort"] == 0
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert {"NAME", "SERVICE", "REGISTRY_URL", "PORT"} <= set(env)
    assert set(env) <= variables_the_code_reads()
    # register finds the host port ECS chose by matching PORT to the container port
    assert env["PORT"] == str(mapping["containerPort"])
    assert "IP" not in env  # the address comes from the metadata, not from the definition
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", path.read_text()))
    for ci in CI_FILES:
        text = (REPO / ci).read_text(encoding="utf-8")
        substituted = re.search(r"envsubst '([^']+)'", text)
        assert substituted is not None, ci
        listed = set(re.findall(r"\$([A-Z_]+)", substituted.group(1)))
        assert placeholders == listed, f"{ci} fills {listed}, the definition has {placeholders}"
        document = yaml.safe_load(text)
        defined = set(ci_variables(ci, document)) | set(
            re.findall(r'echo "([A-Z_]+)=[^"]*" >> "\$GITHUB_ENV"', text)
        )
        assert listed - {"REGISTRY_URL"} <= defined, f"{ci}: {listed - defined} never set"


def test_compose_file_matches_the_images_and_the_code() -> None:
    compose = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    read = variables_the_code_reads()
    services = compose["services"]
    assert "--enable-v2=true" in services["etcd"]["command"]  # REGISTRY_URL http:// is v2
    default_networks = schema("config")["properties"]["allowed_networks"]["default"]
    registering = 0
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY_DIR / build["context"]).resolve()
            assert context == REPO
            assert (context / build["dockerfile"]).is_file(), name
        env = service.get("environment", {})
        assert set(env) <= read, f"{name}: {set(env) - read} are read by nothing"
        if "REGISTRY_URL" in env:
            assert env["REGISTRY_URL"].startswith("http://etcd:"), name
        if "NAME" in env:  # a service container: everything register needs, outside ECS
            registering += 1
            assert {"SERVICE", "PORT", "IP", "REGISTRY_URL"} <= set(env), name
            assert env["IP"] == service["networks"]["devtest"]["ipv4_address"]
            address = ipaddress.ip_address(env["IP"])
            assert any(address in ipaddress.ip_network(net) for net in default_networks)
    assert registering == 2
    assert services["frontend"]["build"]["dockerfile"] == "deploy/frontend/Dockerfile"


def dockerfile(path: str) -> tuple[dict[str, str], dict[str, str], list[list[str]], str]:
    """(COPY destination: source, ENV name: value, exec-form commands, every RUN joined) of a
    Dockerfile."""
    copies: dict[str, str] = {}
    execs: list[list[str]] = []
    runs: list[str] = []
    for word, rest in dockerfile_instructions(REPO / path):
        if word == "COPY":
            *sources, dest = rest.split()
            for source in sources:
                copies[
                    dest.rstrip("/") + "/" + Path(source).name if dest.endswith("/") else dest
                ] = source
        elif word == "RUN":
            runs.append(rest)
        elif word in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
            execs.append(json.loads(rest[rest.index("[") :]))
    return copies, image_env(REPO / path), execs, "\n".join(runs)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfiles_copy_and_run_files_that_exist(path: str) -> None:
    copies, env, execs, runs = dockerfile(path)
    for source in copies.values():
        assert (REPO / source).exists(), f"{path} copies {source}, which does not exist"
    assert set(env) - {"PATH"} <= variables_the_code_reads(), path
    for argv in execs:
        for word in (w for w in argv if not w.startswith("-")):
            copied = any(dest.endswith("/" + word) or dest == word for dest in copies)
            installed = re.search(rf"apt-get install[^\n&]*\b{re.escape(word)}\b", runs)
            assert copied or installed or word == "python3", f"{path} runs {word}: not in the image"
    for dest, source in copies.items():
        if source.startswith("deploy/") and dest.startswith("/usr/local/bin/"):
            assert os.access(REPO / source, os.X_OK), f"{source} is not executable"


def test_frontend_nginx_conf_bounds_old_workers() -> None:
    text = (DEPLOY_DIR / "frontend/nginx.conf").read_text(encoding="utf-8")
    assert re.search(r"^worker_shutdown_timeout \d+[sm];", text, re.M)
    assert not re.search(r"^\s*map_hash", text, re.M)  # the generated file sizes them


def test_systemd_units_name_what_exists() -> None:
    """Every devtest-router command and option a unit runs exists, and every variable it or an
    env file sets is read (verify and the hardening: test_deploy_files.py)."""
    read = variables_the_code_reads()
    units = sorted((DEPLOY_DIR / "systemd").glob("*.service"))
    assert len(units) == 3
    for env_file in sorted((DEPLOY_DIR / "systemd").glob("*.env")):
        names = re.findall(r"^([A-Z][A-Z0-9_]*)=", env_file.read_text(), re.M)
        assert names and set(names) <= read, env_file.name
    running = 0
    for unit in units:
        text = unit.read_text(encoding="utf-8")
        execs = "\n".join(re.findall(r"^Exec\w+=(.*)$", text, re.M))
        running += bool(invocations(execs))
        for name, options in invocations(execs):
            assert name in commands() and set(options) <= commands()[name], unit.name
        assert set(re.findall(r"^Environment=([A-Z_]+)=", text, re.M)) <= read
    assert running == 2  # the watcher and the registration; the third runs nginx


def test_deploy_docs_use_real_commands_and_list_every_file() -> None:
    known = commands()
    for doc in (REPO / "docs/ci.md", DEPLOY_DIR / "README.md"):
        text = doc.read_text(encoding="utf-8")
        fenced = re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S)
        code = fenced + re.findall(
            r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        )
        used = invocations("\n".join(code))
        assert used, doc.name
        for name, options in used:
            assert name in known, f"{doc.name}: devtest-router has no command {name}"
            assert set(options) <= known[name], f"{doc.name}: devtest-router {name} {options}"
        for link in re.findall(r"\]\((\.\./[^)#]+|[\w./-]+\.(?:md|yml|json))\)", text):
            assert (doc.parent / link).resolve().exists(), f"{doc.name} links to {link}"
    listed = (DEPLOY_DIR / "README.md").read_text(encoding="utf-8")
    for path in sorted(DEPLOY_DIR.rglob("*")):
        if path.is_file() and path.name != "README.md":
            name = str(path.relative_to(DEPLOY_DIR))
            assert f"`{name}`" in listed, f"deploy/README.md does not list {name}"
