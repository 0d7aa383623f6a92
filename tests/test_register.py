"""`register` and `deregister`: settings, slugs, address discovery, the three modes.

Pure parts (settings, the ECS metadata decision) are called directly. Discovery runs against a
real loopback HTTP server that implements the ECS task metadata v4 and IMDSv2 contracts; the
wrapper and the sidecar loop run as real processes; the TTL tests use a real etcd. Every test
talks to 127.0.0.1 only: DEVTEST_ROUTER_IMDS_URL always points at loopback, and no test
environment inherits ECS_CONTAINER_METADATA_URI_V4.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Result, run_main
from harness import LOOPBACK, Etcd, free_port, free_ports, http_request, port_open, wait_for

from generator.cli.exit_codes import ADDRESS, REGISTRY
from generator.core.errors import UsageError
from generator.core.names import label
from generator.register.discovery import MetadataUnavailable, ecs_address, instance_id, task_id
from generator.register.settings import DEFAULT_TTL, parse_drain, resolve, slug_note
from generator.registry.base import Entry, Removal
from generator.registry.file import FileRegistry

CLI = Path(sys.executable).with_name("devtest-router")
PYTHON = sys.executable
CREATED = "2026-11-28T02:00:00Z"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# Nothing listens on the discard port: an IMDS lookup a test did not mean to make fails fast.
NOWHERE = f"http://{LOOPBACK}:9"


# The instance id the tests give where they do not test how it is found.
INSTANCE = "c1"
TASK_ID = "8f3e1c2b9a7d4e6f8a1b2c3d4e5f6a7b"
TASK_ARN = f"arn:aws:ecs:us-west-2:111122223333:task/default/{TASK_ID}"


def namespace(**flags: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict.fromkeys(
        ("name", "service", "port", "ip", "ttl", "check_port", "instance")
    )
    base.update(once=False, command=[])
    base.update(flags)
    return argparse.Namespace(**base)


def usage_error(flags: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    with pytest.raises(UsageError) as caught:
        resolve(namespace(**flags), environ)
    return str(caught.value)


def cli(*argv: str, environ: Mapping[str, str] | None = None) -> Result:
    return run_main(list(argv), "", {"DEVTEST_ROUTER_IMDS_URL": NOWHERE, **(environ or {})})


def read_registry(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --------------------------------------------------------------------------
# settings (pure)


def test_settings_from_flags_beat_the_environment() -> None:
    environ = {"NAME": "env-branch", "SERVICE": "api", "PORT": "9000", "IP": "10.0.0.9"}
    settings = resolve(namespace(name="feature/x", port="8080"), environ)
    assert (settings.branch, settings.deployment) == ("feature/x", "feature-x")
    assert (settings.service_given, settings.service) == ("api", "api")
    assert (settings.port, settings.ip, settings.ttl) == (8080, "10.0.0.9", DEFAULT_TTL)


def test_settings_from_the_environment_alone() -> None:
    environ = {
        "NAME": "master",
        "SERVICE": "web",
        "PORT": "80",
        "DEVTEST_ROUTER_TTL": "0",
        "DEVTEST_ROUTER_CHECK_PORT": "8081",
    }
    settings = resolve(namespace(), environ)
    assert (settings.deployment, settings.service, settings.port) == ("master", "web", 80)
    assert (settings.ip, settings.ttl, settings.check_port) == (None, 0, 8081)


@pytest.mark.parametrize(
    ("flags", "environ", "line"),
    [
        ({}, {}, "NAME is not set: pass --name or set NAME (the branch name)"),
        ({"name": ""}, {"NAME": ""}, "NAME is not set: pass --name or set NAME (the branch name)"),
        (
            {"name": "x"},
            {},
            "SERVICE is not set: pass --service or set SERVICE (the service name, e.g. web)",
        ),
        (
            {"name": "x", "service": "web"},
            {},
            "PORT is not set: pass --port or set PORT (the port the service listens on)",
        ),
        (
            {"name": "x", "service": "web"},
            {"PORT": "abc"},
            "PORT 'abc' is not a port number 1-65535 (from PORT)",
        ),
        (
            {"name": "x", "service": "web", "port": "0"},
            {},
            "PORT '0' is not a port number 1-65535 (from --port)",
        ),
        (
            {"name": "x", "service": "web", "port": "65536"},
            {},
            "PORT '65536' is not a port number 1-65535 (from --port)",
        ),
        (
            {"name": "x", "service": "web", "port": "80", "ttl": "soon"},
            {},
            "TTL 'soon' is not a whole number of seconds, 0 (no TTL) or more (from --ttl)",
        ),
        (
            {"name": "x", "service": "web", "port": "80"},
            {"DEVTEST_ROUTER_TTL": "-5"},
            "TTL '-5' is not a whole number of seconds, 0 (no TTL) or more "
            "(from DEVTEST_ROUTER_TTL)",
        ),
        (
            {"name": "x", "service": "web", "port": "80"},
            {"IP": "10.0.0.300"},
            "IP '10.0.0.300' is not an IP address (from IP)",
        ),
        (
            {"name": "x", "service": "web", "port": "80", "check_port": "http"},
            {},
            "the check port 'http' is not a port number 1-65535 (from --check-port)",
        ),
    ],
)
def test_a_missing_or_bad_setting_is_one_line_naming_the_variable(
    flags: dict[str, Any], environ: dict[str, str], line: str
) -> None:
    assert usage_error(flags, environ) == line


def test_port_may_come_from_ecs_metadata_but_not_from_nowhere() -> None:
    environ = {"NAME": "x", "SERVICE": "web", "ECS_CONTAINER_METADATA_URI_V4": NOWHERE}
    assert resolve(namespace(), environ).port is None


def test_deregister_needs_only_name_and_service() -> None:
    settings = resolve(namespace(port="abc", ttl="x"), {"NAME": "a", "SERVICE": "b"}, False)
    assert (settings.deployment, settings.service, settings.port) == ("a", "b", None)


def test_slug_note_says_what_a_name_is_registered_as() -> None:
    def note(name: str, service: str) -> str | None:
        return slug_note(resolve(namespace(name=name, service=service, port="80"), {}))

    assert note("feature/Login", "web") == "registering feature/Login as feature-login"
    assert note("master", "Web_API") == "registering service Web_API as web-api"
    assert note("A", "B") == "registering A as a, service B as b"
    assert note("feature-login", "web") is None
    long_name = "feature/" + "very-long-branch-name-" * 4
    deployment = resolve(namespace(name=long_name, service="web", port="80"), {}).deployment
    assert deployment == label(long_name) and len(deployment) == 63
    assert note(long_name, "web") == f"registering {long_name} as {deployment}"


# --------------------------------------------------------------------------
# the instance id (pure)


@pytest.mark.parametrize(
    "given", ["c1", "a", "8f3e1c2b9a7d4e6f", "web.1", "web_2-b", "A" * 128, "0abc"]
)
def test_an_instance_id_of_the_right_shape_is_taken_as_given(given: str) -> None:
    environ = {"NAME": "x", "SERVICE": "web", "PORT": "80", "INSTANCE": given}
    assert resolve(namespace(), environ).instance == given
    assert resolve(namespace(instance=given), {"NAME": "x", "SERVICE": "web"}, False).instance


@pytest.mark.parametrize(
    "given", ["-a", ".a", "a b", "a/b", "a:b", "ü", "A" * 129, "a\n", " a", "a$", "{a}"]
)
def test_an_instance_id_of_another_shape_is_refused_in_one_line(given: str) -> None:
    environ = {"NAME": "x", "SERVICE": "web", "PORT": "80"}
    assert usage_error({"instance": given}, environ) == (
        f"INSTANCE {given!r} is not an instance id: 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit (from --instance)"
    )
    result = cli("register", "--once", "--ip", "10.0.0.5", environ={**environ, "INSTANCE": given})
    assert result.code == 2 and len(result.lines) == 1, result.err
    assert result.lines[0].endswith("(from INSTANCE)")


def test_the_ecs_task_id_is_the_end_of_the_task_arn() -> None:
    assert task_id({"TaskARN": TASK_ARN}) == TASK_ID
    old_format = f"arn:aws:ecs:us-west-2:111122223333:task/{TASK_ID}"  # no cluster in the ARN
    assert task_id({"TaskARN": old_format}) == TASK_ID
    for document in ({}, {"TaskARN": 7}, {"TaskARN": "arn:aws:ecs:x:1:task/a b"}, [], None):
        assert task_id(document) is None


def test_the_instance_id_is_the_first_that_applies() -> None:
    assert instance_id("given", "task", "host", "random") == ("given", "INSTANCE")
    assert instance_id(None, "task", "host", "random") == ("task", "the ECS task id")
    assert instance_id(None, None, "a1b2c3d4e5f6", "random") == ("a1b2c3d4e5f6", "the hostname")
    assert instance_id(None, None, "", "r4nd0m") == ("r4nd0m", "a random id")
    assert instance_id(None, None, "host name?", "r4nd0m") == ("r4nd0m", "a random id")
    assert instance_id(None, None, "", None) is None  # deregister: no random id


# --------------------------------------------------------------------------
# the ECS metadata decision (pure); samples shaped as AWS documents them

AWSVPC = {
    "DockerId": "cd189a933e5849daa93386466019ab50-2495160603",
    "Name": "web",
    "DockerName": "web",
    "Image": "111122223333.dkr.ecr.us-west-2.amazonaws.com/web:latest",
    "Labels": {"com.amazonaws.ecs.container-name": "web"},
    "DesiredStatus": "RUNNING",
    "KnownStatus": "RUNNING",
    "Limits": {"CPU": 2},
    "Type": "NORMAL",
    "ContainerARN": "arn:aws:ecs:us-west-2:111122223333:container/05966557-f16c-49cb-9352",
    "Ports": [{"ContainerPort": 8080, "Protocol": "tcp", "HostPort": 8080}],
    "Networks": [
        {
            "NetworkMode": "awsvpc",
            "IPv4Addresses": ["10.0.2.106"],
            "AttachmentIndex": 0,
            "MACAddress": "0a:0c:e0:48:96:d3",
            "IPv4SubnetCIDRBlock": "10.0.2.0/24",
            "PrivateDNSName": "ip-10-0-2-106.us-west-2.compute.internal",
            "SubnetGatewayIpv4Address": "10.0.2.1/24",
        }
    ],
}
BRIDGE = {
    "DockerId": "43481a6ce4842eec8fe72fc28500c6b52edcc0917f105b83379f88cac1ff3946",
    "Name": "web",
    "DockerName": "ecs-web-5-web-f6f8a3d9c4a0b1d45400",
    "Image": "nginx:latest",
    "DesiredStatus": "RUNNING",
    "KnownStatus": "RUNNING",
    "Limits": {"CPU": 0, "Memory": 256},
    "Type": "NORMAL",
    "Ports": [
        {"ContainerPort": 80, "Protocol": "tcp", "HostPort": 32768, "HostIp": "0.0.0.0"},
        {"ContainerPort": 80, "Protocol": "tcp", "HostPort": 32768, "HostIp": "::"},
        {"ContainerPort": 9000, "Protocol": "udp", "HostPort": 32770, "HostIp": "0.0.0.0"},
        {"ContainerPort": 9000, "Protocol": "tcp", "HostPort": 32769, "HostIp": "0.0.0.0"},
    ],
    "Networks": [{"NetworkMode": "bridge", "IPv4Addresses": ["172.17.0.2"]}],
}


def test_awsvpc_uses_the_task_address_and_the_container_port() -> None:
    found = ecs_address(AWSVPC, 8080)
    assert (found.ip, found.port, found.container_port) == ("10.0.2.106", 8080, 8080)
    found = ecs_address(AWSVPC, None)  # PORT unset: the container's first port
    assert (found.ip, found.port) == ("10.0.2.106", 8080)
    without_ports = {k: v for k, v in AWSVPC.items() if k != "Ports"}
    assert ecs_address(without_ports, 3000).port == 3000


def test_bridge_uses_the_host_port_mapped_to_port_and_asks_for_the_host_address() -> None:
    found = ecs_address(BRIDGE, 80)
    assert (found.ip, found.port, found.container_port) == (None, 32768, 80)
    found = ecs_address(BRIDGE, 9000)  # the TCP mapping, not the UDP one
    assert (found.ip, found.port, found.container_port) == (None, 32769, 9000)
    found = ecs_address(BRIDGE, None)  # PORT unset: the first TCP mapping gives both
    assert (found.port, found.container_port) == (32768, 80)


def test_host_network_uses_the_host_address_and_the_container_port() -> None:
    host = {**BRIDGE, "Networks": [{"NetworkMode": "host"}], "Ports": []}
    found = ecs_address(host, 8080)
    assert (found.ip, found.port) == (None, 8080)


@pytest.mark.parametrize(
    ("document", "port", "error", "text"),
    [
        (BRIDGE, 8080, UsageError, "PORT 8080 is not a published container port"),
        ({**BRIDGE, "Ports": []}, None, UsageError, "PORT is not set"),
        (
            {**BRIDGE, "Ports": [{"ContainerPort": 80, "Protocol": "tcp"}]},
            80,
            UsageError,
            "container port 80 has no HostPort",
        ),
        ({**AWSVPC, "Ports": []}, None, UsageError, "PORT is not set"),
        (
            {**AWSVPC, "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": []}]},
            80,
            MetadataUnavailable,
            "no usable Networks[0].IPv4Addresses[0]",
        ),
        ({**AWSVPC, "Networks": [{"NetworkMode": "none"}]}, 80, MetadataUnavailable, "'none'"),
        (["not", "an", "object"], 80, MetadataUnavailable, "not a JSON object"),
    ],
)
def test_unusable_ecs_metadata_is_one_clear_line(
    document: Any, port: int | None, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        ecs_address(document, port)
    assert text in str(caught.value) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------
# a real loopback server with the ECS task metadata v4 and IMDSv2 contracts


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    server: _MetadataServer
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _log(self) -> None:
        self.server.requests.append(
            (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        )

    def do_PUT(self) -> None:
        self._log()
        if self.path != "/latest/api/token":
            return self._send(404, b"not found")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self._send(400, b"missing or invalid token ttl")
        self._send(200, self.server.token.encode())

    def do_GET(self) -> None:
        self._log()
        if self.path == "/v4/container":
            return self._send(200, json.dumps(self.server.container).encode(), "application/json")
        if self.path == "/v4/container/task" and self.server.task is not None:
            return self._send(200, json.dumps(self.server.task).encode(), "application/json")
        if self.path == "/latest/meta-data/local-ipv4":
            if self.headers.get("X-aws-ec2-metadata-token") != self.server.token:
                return self._send(401, b"unauthorized")  # IMDSv2 only
            return self._send(200, self.server.local_ipv4.encode())
        self._send(404, b"not found")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MetadataServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    container: Any
    task: Any  # the task metadata document; None: 404
    local_ipv4: str
    token: str
    requests: list[tuple[str, str, dict[str, str]]]


@dataclass
class Metadata:
    server: _MetadataServer
    thread: threading.Thread
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.port = int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ecs_uri(self) -> str:
        return f"{self.url}/v4/container"

    @property
    def paths(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in self.server.requests]


@pytest.fixture
def metadata() -> Iterator[Metadata]:
    server = _MetadataServer((LOOPBACK, 0), _MetadataHandler)
    server.container, server.local_ipv4 = AWSVPC, "10.0.1.23"
    server.task = {"Cluster": "default", "TaskARN": TASK_ARN, "Family": "web", "Revision": "5"}
    server.token, server.requests = "AQAEAN-test-token==", []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Metadata(server, thread)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def once(registry: Path, environ: Mapping[str, str], *flags: str) -> Result:
    return cli("register", "--registry", f"file:{registry}", "--once", *flags, environ=environ)


def registered(
    registry: Path, deployment: str = "feature-x", service: str = "web", instance: str = INSTANCE
) -> Any:
    """The instance's {"ip": ..., "port": ...} in a file registry; None when it is not there."""
    if not registry.exists():
        return None
    node = read_registry(registry)["deployment"].get(deployment)
    node = node.get("service", {}).get(service) if isinstance(node, dict) else None
    return node.get("instance", {}).get(instance) if isinstance(node, dict) else None


@pytest.mark.integration
def test_awsvpc_discovery_from_the_ecs_metadata_server(metadata: Metadata, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    environ = {
        "NAME": "feature/x",
        "SERVICE": "web",
        "ECS_CONTAINER_METADATA_URI_V4": metadata.ecs_uri,
        "DEVTEST_ROUTER_IMDS_URL": metadata.url,
    }
    result = once(registry, environ)
    assert result.code == 0, result.err
    assert registered(registry, instance=TASK_ID) == {"ip": "10.0.2.106", "port": "8080"}
    # awsvpc needs no instance metadata; the task's metadata gives the instance id
    assert metadata.paths == [("GET", "/v4/container"), ("GET", "/v4/container/task")]
    assert "ECS task metadata, awsvpc" in result.err
    assert f"/service/web/instance/{TASK_ID} -> 10.0.2.106:8080" in result.err
    assert "instance id from the ECS task id" in result.err


@pytest.mark.integration
def test_bridge_discovery_takes_the_host_port_and_the_instance_address(
    metadata: Metadata, tmp_path: Path
) -> None:
    metadata.server.container = BRIDGE
    registry = tmp_path / "registry.json"
    environ = {
        "NAME": "feature/x",
        "SERVICE": "web",
        "PORT": "9000",
        "ECS_CONTAINER_METADATA_URI_V4": metadata.ecs_uri,
        "DEVTEST_ROUTER_IMDS_URL": metadata.url,
    }
    result = once(registry, environ, "--instance", INSTANCE)
    assert result.code == 0, result.err
    assert registered(registry) == {"ip": "10.0.1.23", "port": "32769"}
    assert metadata.paths == [  # an instance id given: no task metadata asked for it
        ("GET", "/v4/container"),
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/local-ipv4"),
    ]
    put, get = metadata.server.requests[1][2], metadata.server.requests[2][2]
    assert put["x-aws-ec2-metadata-token-ttl-seconds"].isdigit()
    assert get["x-aws-ec2-metadata-token"] == metadata.server.token


@pytest.mark.integration
def test_without_ecs_the_address_comes_from_imdsv2(metadata: Metadata, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    environ = {"DEVTEST_ROUTER_IMDS_URL": metadata.url}
    result = once(
        registry, environ, "--name", "feature/x", "--service", "web", "--port", "8080",
        "--instance", INSTANCE,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert registered(registry) == {"ip": "10.0.1.23", "port": "8080"}
    assert [path for _, path in metadata.paths] == [
        "/latest/api/token",
        "/latest/meta-data/local-ipv4",
    ]


@pytest.mark.integration
def test_ip_given_no_metadata_asked(metadata: Metadata, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    environ = {
        "IP": "10.9.9.9",
        "PORT": "8080",
        "INSTANCE": INSTANCE,
        "ECS_CONTAINER_METADATA_URI_V4": metadata.ecs_uri,
        "DEVTEST_ROUTER_IMDS_URL": metadata.url,
    }
    result = once(registry, environ, "--name", "feature/x", "--service", "web")
    assert result.code == 0, result.err
    assert registered(registry) == {"ip": "10.9.9.9", "port": "8080"}
    assert metadata.paths == []


@pytest.mark.parametrize("which", ["ecs", "imds"])
def test_metadata_server_down_is_one_clear_line(which: str, tmp_path: Path) -> None:
    down = f"http://{LOOPBACK}:{free_port()}"
    environ = {"NAME": "x", "SERVICE": "web", "PORT": "80", "DEVTEST_ROUTER_IMDS_URL": down}
    if which == "ecs":
        environ["ECS_CONTAINER_METADATA_URI_V4"] = f"{down}/v4/container"
    registry = tmp_path / "registry.json"
    result = once(registry, environ)
    assert result.code == ADDRESS  # its own address, not the registry: 4 is the registry's
    assert len(result.lines) == 1 and "Traceback" not in result.err
    what = "ECS task metadata (ECS_CONTAINER_METADATA_URI_V4)"
    if which == "imds":
        what = "EC2 instance metadata"
    assert result.lines[0].startswith(f"devtest-router: {what} at {down}/")
    assert "Connection refused; pass --ip" in result.lines[0]
    assert not registry.exists()


@pytest.mark.integration
def test_an_imds_that_never_answers_gives_up_in_seconds_with_the_hop_limit_hint(
    tmp_path: Path,
) -> None:
    # the kernel completes the handshake for a listening socket nobody accepts on: the request
    # goes out and no answer comes, as when IMDSv2's answer dies one hop short of a container
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(8)
        url = f"http://{LOOPBACK}:{silent.getsockname()[1]}"
        environ = {"NAME": "x", "SERVICE": "web", "PORT": "80", "DEVTEST_ROUTER_IMDS_URL": url}
        started = time.monotonic()
        result = once(tmp_path / "registry.json", environ)
        assert time.monotonic() - started < 10
    assert result.code == ADDRESS and len(result.lines) == 1, result.err
    assert f"EC2 instance metadata at {url}/latest/api/token: no answer within" in result.err
    assert "hop limit" in result.err


@pytest.mark.integration
def test_an_ecs_metadata_error_status_is_one_clear_line(metadata: Metadata, tmp_path: Path) -> None:
    environ = {
        "NAME": "x",
        "SERVICE": "web",
        "ECS_CONTAINER_METADATA_URI_V4": f"{metadata.url}/v4/no-such-container",
    }
    result = once(tmp_path / "registry.json", environ)
    assert result.code == ADDRESS and len(result.lines) == 1, result.err
    assert "/v4/no-such-container: HTTP 404 Not Found; pass --ip and --port" in result.err


@pytest.mark.integration
def test_without_task_metadata_the_instance_id_falls_back_to_the_hostname_in_one_line(
    metadata: Metadata, tmp_path: Path
) -> None:
    metadata.server.task = None  # /task answers 404
    registry = tmp_path / "registry.json"
    environ = {
        "NAME": "feature/x",
        "SERVICE": "web",
        "ECS_CONTAINER_METADATA_URI_V4": metadata.ecs_uri,
    }
    result = once(registry, environ)
    assert result.code == 0, result.err  # a registration all the same, not "unreachable"
    hostname = socket.gethostname()
    assert registered(registry, instance=hostname) == {"ip": "10.0.2.106", "port": "8080"}
    assert result.lines[1] == (
        "devtest-router: ECS task metadata (ECS_CONTAINER_METADATA_URI_V4/task) at "
        f"{metadata.ecs_uri}/task: HTTP 404 Not Found; the instance id falls back to the "
        "hostname (set INSTANCE to choose one)"
    )
    assert "instance id from the hostname" in result.lines[2]
    assert len(result.lines) == 3, result.err


def test_a_task_metadata_endpoint_that_is_down_is_no_registry_failure(tmp_path: Path) -> None:
    down = f"http://{LOOPBACK}:{free_port()}/v4/container"
    registry = tmp_path / "registry.json"
    environ = {  # the address is given: only the instance id asks the metadata endpoint
        "NAME": "feature/x",
        "SERVICE": "web",
        "IP": "10.0.0.5",
        "PORT": "8080",
        "ECS_CONTAINER_METADATA_URI_V4": down,
    }
    result = once(registry, environ)
    assert result.code == 0, result.err
    assert "registry" not in result.lines[1] and "unreachable" not in result.err
    assert result.lines[1].startswith(
        f"devtest-router: ECS task metadata (ECS_CONTAINER_METADATA_URI_V4/task) at {down}/task:"
    )
    assert result.lines[1].endswith(
        "Connection refused; the instance id falls back to the hostname (set INSTANCE to "
        "choose one)"
    )
    assert registered(registry, instance=socket.gethostname())


@pytest.mark.parametrize("down", ["metadata", "registry"])
def test_issue_12_metadata_down_is_not_registry_down(down: str, tmp_path: Path) -> None:
    """register exited 4, "registry unreachable", when the cloud metadata lookup failed and
    the registry was fine: each has its own code now (the installed binary, a real run)."""
    closed = f"http://{LOOPBACK}:{free_port()}"
    registry = f"file:{tmp_path / 'registry.json'}"
    env = clean_env(NAME="x", SERVICE="web", DEVTEST_ROUTER_IMDS_URL=closed)
    if down == "metadata":  # the registry is a file that can be written; the address is unknown
        env["ECS_CONTAINER_METADATA_URI_V4"] = f"{closed}/v4/container"
    else:  # the address is given; nothing answers at the registry
        env.update(IP="10.0.0.5", PORT="8080", INSTANCE=INSTANCE)
        registry = f"etcd://{LOOPBACK}:{free_port()}"
    done = subprocess.run(
        [str(CLI), "register", "--once", "--registry", registry, "-v"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    said = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    if down == "metadata":
        assert done.returncode == ADDRESS == 6, done.stderr
        assert f"devtest-router: asking the ECS task metadata at {closed}/v4/container" in said[-2]
        what = "ECS task metadata (ECS_CONTAINER_METADATA_URI_V4)"
        assert said[-1].startswith(f"devtest-router: {what} at {closed}/v4/container: ")
        assert not (tmp_path / "registry.json").exists()
    else:
        assert done.returncode == REGISTRY == 4, done.stderr
        assert "asking" not in done.stderr  # the address was given: no metadata asked


@pytest.mark.integration
def test_a_task_arn_of_another_shape_falls_back_to_the_hostname(
    metadata: Metadata, tmp_path: Path
) -> None:
    metadata.server.task = {"TaskARN": "arn:aws:ecs:us-west-2:1:task/not an id"}
    registry = tmp_path / "registry.json"
    environ = {"NAME": "x", "SERVICE": "web", "ECS_CONTAINER_METADATA_URI_V4": metadata.ecs_uri}
    result = once(registry, environ)
    assert result.code == 0, result.err
    assert result.lines[0] == (
        f"devtest-router: ECS task metadata at {metadata.ecs_uri}/task: no TaskARN ending in an "
        "instance id; the instance id falls back to the hostname (set INSTANCE to choose one)"
    )


def test_without_ecs_or_instance_the_hostname_is_the_instance_id(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    environ = {"NAME": "feature/x", "SERVICE": "web", "IP": "10.0.0.5", "PORT": "8080"}
    result = once(registry, environ)
    assert result.code == 0, result.err
    hostname = socket.gethostname()
    assert registered(registry, instance=hostname) == {"ip": "10.0.0.5", "port": "8080"}
    assert result.lines[-1].startswith(
        f"devtest-router: registered /deployment/feature-x/service/web/instance/{hostname} -> "
        "10.0.0.5:8080 (address from IP, instance id from the hostname) in file "
    )


# --------------------------------------------------------------------------
# --once and deregister against a file registry


FILE_ENVIRON = {
    "NAME": "feature/x",
    "SERVICE": "web",
    "PORT": "8080",
    "IP": "10.0.0.5",
    "INSTANCE": INSTANCE,
}


def test_once_writes_an_instance_and_deregister_removes_it(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    result = once(registry, FILE_ENVIRON, "--ttl", "0")
    assert result.code == 0, result.err
    assert result.lines[0] == "devtest-router: registering feature/x as feature-x"
    assert result.lines[1].startswith(
        "devtest-router: registered /deployment/feature-x/service/web/instance/c1 -> "
        "10.0.0.5:8080 (address from IP, instance id from INSTANCE) in file "
    )
    snapshot = read_registry(registry)
    created = snapshot["deployment"]["feature-x"]["created"]
    assert RFC3339.match(created)
    # the snippet's .../service/web/{ip,port}, one level down: .../instance/c1/{ip,port}
    assert snapshot == {
        "deployment": {
            "feature-x": {
                "created": created,
                "service": {"web": {"instance": {"c1": {"ip": "10.0.0.5", "port": "8080"}}}},
            }
        }
    }

    result = cli("deregister", "--registry", f"file:{registry}", environ=FILE_ENVIRON)
    assert result.code == 0, result.err
    assert read_registry(registry) == {"deployment": {}}
    assert result.lines == [
        "devtest-router: deregistering feature/x as feature-x",
        "devtest-router: deregistered /deployment/feature-x/service/web/instance/c1 (instance "
        f"id from INSTANCE) from file {registry}",
    ]


def test_the_generator_routes_what_register_wrote(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    assert once(registry, FILE_ENVIRON, "--ttl", "0").code == 0
    routed = subprocess.run(
        [CLI, "check", "--json", "--allow-loopback", str(registry)],
        capture_output=True,
        text=True,
        env={**os.environ, "DEVTEST_ROUTER_DOMAIN": "example.test"},
    )
    hosts = {route["host"] for route in json.loads(routed.stdout)["routes"]}
    assert "feature-x-web.example.test" in hosts, routed.stderr


def test_deregister_keeps_the_branch_while_another_service_is_registered(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    for service, port in (("web", "80"), ("api", "81")):
        environ = {**FILE_ENVIRON, "SERVICE": service, "PORT": port}
        assert once(registry, environ).code == 0
    result = cli(
        "deregister", "--registry", f"file:{registry}", "--name", "feature/x", "--service", "web",
        "--instance", INSTANCE, "--ip", "10.0.0.5", "--port", "80",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert registered(registry, service="web") is None
    assert registered(registry, service="api") == {"ip": "10.0.0.5", "port": "81"}
    assert "created" in read_registry(registry)["deployment"]["feature-x"]


def test_a_file_registry_keeps_the_same_ownership_rules(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path / "registry.json")
    old, new = (Entry("feat-x", "web", ip, 8080, CREATED, "a") for ip in ("10.0.3.7", "10.0.3.8"))
    other = Entry("feat-x", "web", "10.0.3.9", 8080, CREATED, "b")
    registry.register(old, 0)
    registry.register(other, 0)
    registry.register(new, 0)  # the same instance id: the newest wins
    assert registry.keepalive(old, 0) == "10.0.3.8:8080"
    assert registry.deregister(old) == Removal(False, "10.0.3.8:8080")
    assert registered(registry.path, "feat-x", instance="a") == {"ip": "10.0.3.8", "port": "8080"}
    assert registry.deregister(new) == Removal(True)
    assert registry.keepalive(other, 0) is None
    assert registry.deregister(Entry("feat-x", "web", "", 0, CREATED, "b"), force=True) == (
        Removal(True)
    )
    assert read_registry(registry.path) == {"deployment": {}}
    registry.register(other, 0)
    registry.register(Entry("feat-x", "web", "10.0.3.1", 80, CREATED), 0)  # the seed's keys
    assert registry.deregister(Entry("feat-x", "web", "", 0, CREATED), force=True) == (
        Removal(True)
    )
    assert read_registry(registry.path) == {"deployment": {}}


def test_once_with_a_command_is_a_usage_error(tmp_path: Path) -> None:
    environ = {"NAME": "x", "SERVICE": "web", "PORT": "80", "IP": "10.0.0.5"}
    result = cli(
        "register", "--registry", f"file:{tmp_path / 'r.json'}", "--once", "--", "true",
        environ=environ,
    )  # fmt: skip
    assert result.code == 2 and "--once" in result.err


def test_no_registry_is_a_usage_error() -> None:
    environ = {"NAME": "x", "SERVICE": "web", "PORT": "80", "IP": "10.0.0.5"}
    result = cli("register", "--once", environ=environ)
    assert result.code == 2 and "REGISTRY_URL" in result.err


# --------------------------------------------------------------------------
# real processes: the wrapper and the sidecar loop

_CHILD = """\
import os, signal, socket, sys, time
port, folder = int(sys.argv[1]), sys.argv[2]

def note(name):
    open(os.path.join(folder, name), "w").close()

def on_signal(signum, frame):
    note("got-" + signal.Signals(signum).name)
    if signum == signal.SIGTERM:
        sys.exit(7)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGHUP, on_signal)
note("started")
while not os.path.exists(os.path.join(folder, "listen")):
    time.sleep(0.02)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)
server.settimeout(0.05)
while not os.path.exists(os.path.join(folder, "exit")):
    try:
        server.accept()[0].close()
    except socket.timeout:
        pass
sys.exit(3)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without registration settings, IMDS pointed at loopback."""
    drop = {
        "NAME", "SERVICE", "PORT", "IP", "INSTANCE", "REGISTRY_URL",
        "ECS_CONTAINER_METADATA_URI_V4",
    }  # fmt: skip
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in drop and not key.startswith("DEVTEST_ROUTER_")
    }
    return {**env, "DEVTEST_ROUTER_IMDS_URL": NOWHERE, **extra}


class Running:
    """A devtest-router process (after `prefix`, e.g. unshare) with its output in a file."""

    def __init__(
        self, argv: list[str], folder: Path, env: dict[str, str], prefix: Sequence[str] = ()
    ) -> None:
        self.log = folder / "register.err"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*prefix, str(CLI), *argv],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
            )

    @property
    def err(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    started: list[Running] = []

    def start(*argv: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Running:
        running = Running(list(argv), tmp_path, env or clean_env(), prefix)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()


@pytest.fixture
def child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    return script


def wrapper_argv(registry: Path, port: int, *command: str, drain: str = "0") -> list[str]:
    return [
        "register", "--registry", f"file:{registry}", "--name", "feature/x",
        "--service", "web", "--port", str(port), "--ip", "127.0.0.1", "--instance", INSTANCE,
        "--drain", drain, "--", *command,
    ]  # fmt: skip


@pytest.mark.integration
def test_wrapper_registers_once_the_port_answers_and_deregisters_on_sigterm(
    run: Any, tmp_path: Path, child: Path
) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    wrapper = run(*wrapper_argv(registry, port, PYTHON, str(child), str(port), str(tmp_path)))
    wait_for(lambda: (tmp_path / "started").exists(), what="the child to start")
    wait_for(lambda: "registering once" in wrapper.err, what="the wrapper to wait for the port")
    time.sleep(0.3)  # three port checks' worth: the port is closed, nothing may be registered
    assert not port_open(port) and registered(registry) is None
    (tmp_path / "listen").touch()
    wait_for(lambda: registered(registry), what="the entry")
    assert registered(registry) == {"ip": "127.0.0.1", "port": str(port)}

    wrapper.proc.send_signal(signal.SIGHUP)  # passed on, and nothing else
    wait_for(lambda: (tmp_path / "got-SIGHUP").exists(), what="the child to get SIGHUP")
    assert wrapper.proc.poll() is None and registered(registry)

    wrapper.proc.send_signal(signal.SIGTERM)
    assert wrapper.wait() == 7  # the child's status: its SIGTERM handler exits 7
    assert (tmp_path / "got-SIGTERM").exists()
    assert registered(registry) is None
    lines = wrapper.err.splitlines()
    assert "devtest-router: SIGTERM received; deregistering, then passing it on" in lines
    assert lines[-1] == f"devtest-router: {PYTHON} exited with status 7"


@pytest.mark.integration
def test_wrapper_drains_cmd_keeps_serving_until_the_drain_is_over(
    run: Any, tmp_path: Path, child: Path
) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    argv = wrapper_argv(registry, port, PYTHON, str(child), str(port), str(tmp_path), drain="30")
    wrapper = run(*argv)
    (tmp_path / "listen").touch()
    wait_for(lambda: registered(registry), what="the entry")

    wrapper.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: registered(registry) is None, what="the entry to be deleted at once")
    wait_for(lambda: "passing it on in 30 s (--drain)" in wrapper.err, what="the drain line")
    time.sleep(0.5)  # the child is not told yet: it still serves while the frontend drops it
    assert not (tmp_path / "got-SIGTERM").exists() and port_open(port)
    assert wrapper.proc.poll() is None

    wrapper.proc.send_signal(signal.SIGTERM)  # a second one goes on at once
    assert wrapper.wait() == 7
    assert (tmp_path / "got-SIGTERM").exists()


@pytest.mark.integration
def test_wrapper_passes_sigterm_on_when_the_drain_is_over(
    run: Any, tmp_path: Path, child: Path
) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    argv = wrapper_argv(registry, port, PYTHON, str(child), str(port), str(tmp_path), drain="1")
    wrapper = run(*argv)
    (tmp_path / "listen").touch()
    wait_for(lambda: registered(registry), what="the entry")
    wrapper.proc.send_signal(signal.SIGTERM)
    assert wrapper.wait() == 7
    assert registered(registry) is None and (tmp_path / "got-SIGTERM").exists()


@pytest.mark.parametrize("drain", ["-1", "nan", "601", "soon"])
def test_a_drain_that_is_not_0_to_600_seconds_is_one_line(drain: str) -> None:
    with pytest.raises(UsageError, match=f"drain '{drain}' is not a number of seconds"):
        parse_drain(drain, "--drain")


@pytest.mark.integration
def test_wrapper_around_http_server_as_documented(run: Any, tmp_path: Path) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    server = [PYTHON, "-m", "http.server", str(port), "--bind", LOOPBACK]
    wrapper = run(*wrapper_argv(registry, port, *server))
    wait_for(lambda: registered(registry), what="the entry")
    assert port_open(port)
    child_pid = int(re.findall(r"\(pid (\d+)\)", wrapper.err)[0])
    wrapper.proc.send_signal(signal.SIGTERM)
    assert wrapper.wait() == 128 + signal.SIGTERM  # http.server dies of the SIGTERM passed on
    assert registered(registry) is None
    assert not Path(f"/proc/{child_pid}").exists()
    assert "was killed by SIGTERM (status 143)" in wrapper.err


@pytest.mark.integration
def test_wrapper_exits_with_the_childs_status_when_it_exits_by_itself(
    run: Any, tmp_path: Path, child: Path
) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    (tmp_path / "listen").touch()
    wrapper = run(*wrapper_argv(registry, port, PYTHON, str(child), str(port), str(tmp_path)))
    wait_for(lambda: registered(registry), what="the entry")
    (tmp_path / "exit").touch()
    assert wrapper.wait() == 3
    assert registered(registry) is None
    assert "deregistered /deployment/feature-x/service/web/instance/c1 from" in wrapper.err


def test_wrapper_gives_up_in_one_line_when_the_child_exits_before_listening(
    run: Any, tmp_path: Path
) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    wrapper = run(*wrapper_argv(registry, port, "sh", "-c", "exit 5"))
    assert wrapper.wait() == 5
    assert not registry.exists()
    assert wrapper.err.splitlines()[-1] == (
        f"devtest-router: sh exited with status 5 before 127.0.0.1:{port} accepted "
        "connections; not registered"
    )


@pytest.mark.integration
def test_wrapper_refuses_a_port_another_process_already_listens_on(
    run: Any, tmp_path: Path
) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    with socket.create_server((LOOPBACK, port)):  # someone else's server on the port
        wrapper = run(*wrapper_argv(registry, port, "touch", str(tmp_path / "ran")))
        assert wrapper.wait() == 2
    assert not (tmp_path / "ran").exists() and not registry.exists()
    assert wrapper.err.splitlines()[-1:] == [
        f"devtest-router: 127.0.0.1:{port} already accepts connections before touch started: "
        "another process listens there and would be registered in its place; stop it or use "
        "another PORT (or --check-port)"
    ]


def test_wrapper_cannot_run_a_missing_command(run: Any, tmp_path: Path) -> None:
    wrapper = run(*wrapper_argv(tmp_path / "r.json", free_port(), "no-such-command-here"))
    assert wrapper.wait() == 127
    assert "cannot run 'no-such-command-here'" in wrapper.err
    assert "Traceback" not in wrapper.err


def test_sidecar_on_a_file_registry_deregisters_on_sigint(run: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    sidecar = run(
        "register", "--registry", f"file:{registry}", "--name", "feature/x", "--service", "web",
        "--port", "8080", "--ip", "10.0.0.5", "--instance", INSTANCE,
    )  # fmt: skip
    wait_for(lambda: registered(registry), what="the entry")
    sidecar.proc.send_signal(signal.SIGINT)
    assert sidecar.wait() == 0
    assert registered(registry) is None


def test_sidecar_keepalive_puts_back_an_entry_removed_behind_its_back(
    run: Any, tmp_path: Path
) -> None:
    # a file has no TTL; its keepalive rewrites a missing entry, which shows it runs every ttl/3
    registry = tmp_path / "registry.json"
    sidecar = run(
        "register", "--registry", f"file:{registry}", "--name", "feature/x", "--service", "web",
        "--port", "8080", "--ip", "10.0.0.5", "--ttl", "1", "--instance", INSTANCE,
    )  # fmt: skip
    wait_for(lambda: registered(registry), what="the entry")
    assert cli("deregister", "--registry", f"file:{registry}", "--name", "feature/x",
               "--service", "web", "--force").code == 0  # fmt: skip
    assert registered(registry) is None
    wait_for(lambda: registered(registry), timeout=60, what="the keepalive to rewrite the entry")
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.wait() == 0
    assert registered(registry) is None


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _children(pid: int) -> dict[int, tuple[str, str]]:
    """{child pid: (command name, state)} of every child of pid, zombies included."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(parent) == pid:
            found[int(entry.name)] = (name, state)
    return found


@pytest.mark.integration
@pytest.mark.skipif(  # under CI=true it runs, and a machine that cannot do it fails it
    os.environ.get("CI") != "true" and not _unshare_works(),
    reason="cannot make a pid namespace (unshare --pid)",
)
def test_as_pid_1_the_wrapper_reaps_orphans(run: Any, tmp_path: Path, child: Path) -> None:
    registry, port = tmp_path / "registry.json", free_port()
    (tmp_path / "listen").touch()
    # the subshell exits at once: its `sleep` is orphaned to the namespace's init, the wrapper
    script = f"(sleep 1 &); exec {PYTHON} {child} {port} {tmp_path}"
    wrapper = run(
        *wrapper_argv(registry, port, "sh", "-c", script),
        prefix=["unshare", "--pid", "--fork", "--kill-child"],
    )
    wait_for(lambda: registered(registry), what="the entry")
    (init,) = _children(wrapper.proc.pid)  # unshare's child: the wrapper, pid 1 inside
    assert "sleep" in {name for name, _ in _children(init).values()}
    wait_for(
        lambda: "sleep" not in {name for name, _ in _children(init).values()},
        timeout=5,
        what="the orphaned sleep to be reaped (not left a zombie)",
    )
    os.kill(init, signal.SIGTERM)
    assert wrapper.wait() == 7, wrapper.err
    assert registered(registry) is None


# --------------------------------------------------------------------------
# TTL and keepalive against a real etcd (v2 API, REGISTRY_URL as the containers set it)


def etcd_node(etcd: Etcd, key: str) -> Any:
    """The v2 node at key (with its ttl and expiration), or None when it does not exist."""
    response = http_request(
        etcd.client_port, f"{LOOPBACK}:{etcd.client_port}", f"/v2/keys{key}?recursive=true"
    )
    if response.status == 404:
        return None
    assert response.status == 200, response.text
    return response.json()["node"]


def service_keys(etcd: Etcd) -> dict[str, Any]:
    """{"ip": node, "port": node} of feature-x/web's instance c1 in etcd (empty when gone)."""
    node = etcd_node(etcd, f"/deployment/feature-x/service/web/instance/{INSTANCE}")
    if node is None:
        return {}
    return {child["key"].rsplit("/", 1)[1]: child for child in node.get("nodes", [])}


def sidecar_argv(ttl: int) -> list[str]:
    return [
        "register", "--name", "feature/x", "--service", "web", "--port", "8080",
        "--ip", "10.0.0.5", "--ttl", str(ttl), "--instance", INSTANCE,
    ]  # fmt: skip


@pytest.mark.integration
def test_sidecar_keeps_keys_alive_without_waking_watchers_and_a_killed_ones_expire(
    run: Any, etcd: Etcd
) -> None:
    ttl = 2
    sidecar = run(*sidecar_argv(ttl), env=clean_env(REGISTRY_URL=etcd.url))
    created = "/deployment/feature-x/created"
    wait_for(
        lambda: set(service_keys(etcd)) == {"ip", "port"} and etcd_node(etcd, created),
        what="the keys",
    )
    keys = service_keys(etcd)
    assert (keys["ip"]["value"], keys["port"]["value"]) == ("10.0.0.5", "8080")
    assert 0 < keys["ip"]["ttl"] <= ttl and 0 < etcd_node(etcd, created)["ttl"] <= ttl
    first = keys["ip"]["expiration"]

    # a watcher (the frontend's) sees no event for ttl + 0.5 s while ~3 keepalives refresh
    host = f"{LOOPBACK}:{etcd.client_port}"
    index = int(http_request(etcd.client_port, host, "/v2/keys/").headers["x-etcd-index"])
    watch = f"/v2/keys/deployment?wait=true&recursive=true&waitIndex={index + 1}"
    with pytest.raises(TimeoutError):
        woken = http_request(etcd.client_port, host, watch, timeout=ttl + 0.5)
        pytest.fail(f"a keepalive woke the watcher: {woken.text}")

    # past the TTL the keys are still there, with a later expiration: kept alive
    keys = service_keys(etcd)
    assert set(keys) == {"ip", "port"} and etcd_node(etcd, created), sidecar.err
    assert keys["ip"]["expiration"] != first
    assert sidecar.proc.poll() is None

    sidecar.proc.kill()  # no deregistration: the TTL has to do it
    sidecar.wait()
    wait_for(lambda: not service_keys(etcd), timeout=60, what="the keys to expire")
    wait_for(lambda: not etcd_node(etcd, created), timeout=60, what="created to expire")


@pytest.mark.integration
def test_sidecar_sigterm_removes_the_keys_at_once(run: Any, etcd: Etcd) -> None:
    sidecar = run(*sidecar_argv(30), env=clean_env(REGISTRY_URL=etcd.url))
    wait_for(lambda: set(service_keys(etcd)) == {"ip", "port"}, what="the keys")
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.wait() == 0, sidecar.err
    assert service_keys(etcd) == {}  # no waiting: deregistered before the exit
    assert etcd_node(etcd, "/deployment/feature-x/created") is None


@pytest.mark.integration
def test_once_with_ttl_0_writes_keys_without_ttl_like_the_snippet(etcd: Etcd) -> None:
    environ = {"REGISTRY_URL": etcd.url, "NAME": "feature/x", "SERVICE": "web", "INSTANCE": "c1"}
    result = cli(
        "register", "--once", "--ttl", "0", "--port", "8080", "--ip", "10.0.0.5", environ=environ
    )
    assert result.code == 0, result.err
    keys = service_keys(etcd)
    assert (keys["ip"]["value"], keys["port"]["value"]) == ("10.0.0.5", "8080")
    assert "ttl" not in keys["ip"] and "ttl" not in keys["port"]
    time.sleep(1.5)  # a ttl of 0 sent to etcd would expire the keys at once: they must stay
    assert set(service_keys(etcd)) == {"ip", "port"}
    created = etcd_node(etcd, "/deployment/feature-x/created")
    assert RFC3339.match(created["value"])
    assert cli("deregister", "--port", "8080", "--ip", "10.0.0.5", environ=environ).code == 0
    assert service_keys(etcd) == {}
    assert etcd_node(etcd, "/deployment/feature-x") is None


@pytest.mark.integration
def test_wrapper_keeps_its_service_while_the_registry_is_away_and_registers_when_it_is_back(
    run: Any, tmp_path: Path, child: Path
) -> None:
    port = free_port()
    (tmp_path / "listen").touch()
    client, peer = free_ports(2)
    etcd = Etcd(tmp_path / "etcd", client_port=client, peer_port=peer)
    argv = [
        "register", "--name", "feature/x", "--service", "web", "--port", str(port),
        "--ip", "127.0.0.1", "--ttl", "3", "--instance", INSTANCE,
        "--", PYTHON, str(child), str(port), str(tmp_path),
    ]  # fmt: skip
    wrapper = run(*argv, env=clean_env(REGISTRY_URL=etcd.url))
    wait_for(lambda: "registration failed, retrying" in wrapper.err, what="one retry line")
    assert wrapper.proc.poll() is None and port_open(port), "the service keeps running"
    try:
        etcd.start()
        wait_for(
            lambda: set(service_keys(etcd)) == {"ip", "port"},
            timeout=10,
            what=f"the keys once etcd is up:\n{wrapper.err}",
        )
        assert wrapper.err.count("registration failed") == 1, "said once, not per attempt"
        wrapper.proc.send_signal(signal.SIGTERM)
        assert wrapper.wait() == 7, wrapper.err  # the child's status
        assert service_keys(etcd) == {}
        assert "Traceback" not in wrapper.err
    finally:
        etcd.stop()


def test_an_unreachable_registry_is_one_line_and_exit_4() -> None:
    down = f"http://{LOOPBACK}:{free_ports(1)[0]}"
    environ = {"REGISTRY_URL": down, "NAME": "x", "SERVICE": "web", "PORT": "80", "IP": "10.0.0.5"}
    result = cli("register", "--once", environ=environ)
    assert result.code == REGISTRY == 4, result.err
    assert len(result.lines) == 1 and "Traceback" not in result.err
