"""Where a container answers and which instance it is: the instance id, the ECS task metadata
decision (pure functions over plain values), and the ECS and EC2 metadata endpoints (IO)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import secrets
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from generator.core.errors import Error, MetadataUnavailable, UsageError
from generator.register.settings import INSTANCE_ID, Settings
from generator.secret import redact
from generator.streams import Log, Streams

IMDS_URL = "http://169.254.169.254"
METADATA_TIMEOUT = 2.0  # seconds per metadata request: the endpoints are local or absent
IMDS_TOKEN_TTL = 60  # seconds an IMDSv2 token lives; we use it at once


# --------------------------------------------------------------------------
# the instance id (pure)


def task_id(task: Any) -> str | None:
    """The ECS task id in a task metadata v4 document (GET $ECS_CONTAINER_METADATA_URI_V4/task):
    the last `/` segment of its TaskARN; None when there is none of an instance id's shape."""
    arn = task.get("TaskARN") if isinstance(task, dict) else None
    if not isinstance(arn, str):
        return None
    last = arn.rsplit("/", 1)[-1]
    return last if INSTANCE_ID.fullmatch(last) else None


def instance_id(
    given: str | None, task: str | None, hostname: str | None, random: str | None
) -> tuple[str, str] | None:
    """(id, where it came from) of the first that applies: --instance/INSTANCE (already
    checked), the ECS task id, the hostname (a container id in Docker and compose), a random
    id; None when none does (no random id given: deregister cannot use one)."""
    if given is not None:
        return given, "INSTANCE"  # the caller names the flag or variable it came from
    if task is not None:
        return task, "the ECS task id"
    if hostname and INSTANCE_ID.fullmatch(hostname):
        return hostname, "the hostname"
    if random is not None:
        return random, "a random id"
    return None


# --------------------------------------------------------------------------
# the ECS task metadata decision (pure)


@dataclass(frozen=True, slots=True)
class Found:
    """What the ECS container metadata says about where the service answers."""

    ip: str | None  # None: the host's address (bridge and host modes): ask EC2 metadata
    port: int  # the port to register (the host port in bridge mode)
    container_port: int  # the port the service listens on inside the container
    how: str  # for the log line


def _mappings(container: Mapping[str, Any]) -> list[tuple[int, int | None]]:
    """(container port, host port or None) of the container's TCP port mappings, in order."""
    found: list[tuple[int, int | None]] = []
    ports = container.get("Ports")
    for item in ports if isinstance(ports, list) else []:
        if not isinstance(item, dict) or str(item.get("Protocol", "tcp")).lower() != "tcp":
            continue
        inside, outside = item.get("ContainerPort"), item.get("HostPort")
        if not isinstance(inside, int) or isinstance(inside, bool) or not 0 < inside < 65536:
            continue
        valid = isinstance(outside, int) and not isinstance(outside, bool) and 0 < outside < 65536
        found.append((inside, outside if valid else None))
    return found


def ecs_address(container: Any, port: int | None) -> Found:
    """Where the container described by ECS task metadata v4 (GET $ECS_CONTAINER_METADATA_URI_V4)
    answers, for the service listening on `port` inside it (None: its first mapped port).

    awsvpc: the task's own address (Networks[0].IPv4Addresses[0]) and the container port.
    bridge: the host's address (None here) and the HostPort that Ports[] maps the port to.
    host: the host's address and the container port. Raises UsageError when PORT is not
    published and MetadataUnavailable when the document is not usable.
    """
    if not isinstance(container, dict):
        raise MetadataUnavailable("ECS container metadata is not a JSON object")
    networks = container.get("Networks")
    network = networks[0] if isinstance(networks, list) and networks else None
    mode = network.get("NetworkMode") if isinstance(network, dict) else None
    mappings = _mappings(container)

    def first_port(what: str) -> int:
        if port is not None:
            return port
        if not mappings:
            raise UsageError(
                f"PORT is not set and the ECS container metadata ({what}) lists no TCP port "
                "mapping: pass --port or set PORT"
            )
        return mappings[0][0]

    if mode == "awsvpc":
        assert isinstance(network, dict)
        addresses = network.get("IPv4Addresses")
        address = addresses[0] if isinstance(addresses, list) and addresses else None
        try:
            ip = str(ipaddress.ip_address(str(address)))
        except ValueError:
            raise MetadataUnavailable(
                f"ECS container metadata (awsvpc) has no usable Networks[0].IPv4Addresses[0] "
                f"({address!r}): pass --ip or set IP"
            ) from None
        inside = first_port("awsvpc")
        return Found(ip, inside, inside, "ECS task metadata, awsvpc")
    if mode == "host":
        inside = first_port("host network")
        return Found(None, inside, inside, "ECS task metadata, host network")
    if mode in ("bridge", "default", "nat") or (mode is None and mappings):
        shown = ", ".join(f"{a}->{b or 'unpublished'}" for a, b in mappings) or "none"
        if port is None:
            if not mappings:
                first_port(str(mode or "bridge"))  # raises
            mapping = mappings[0]
        else:
            matches = [item for item in mappings if item[0] == port]
            if not matches:
                raise UsageError(
                    f"PORT {port} is not a published container port in the ECS metadata "
                    f"(TCP mappings: {shown}): set PORT to a mapped container port, or pass "
                    "--ip and --port"
                )
            mapping = matches[0]
        inside, outside = mapping
        if outside is None:
            raise UsageError(
                f"container port {inside} has no HostPort in the ECS metadata (TCP mappings: "
                f"{shown}): publish it in the task definition, or pass --ip and --port"
            )
        return Found(
            None, outside, inside, f"ECS task metadata, {mode or 'bridge'} {inside}->{outside}"
        )
    raise MetadataUnavailable(
        f"ECS container metadata: network mode {mode!r} is not supported (awsvpc, bridge or "
        "host): pass --ip and --port"
    )


# --------------------------------------------------------------------------
# metadata endpoints (IO)

# Never through a proxy: the metadata endpoints are link-local (or, in tests, loopback).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoAnswer(MetadataUnavailable):
    """The endpoint took the connection (or the packets) and never answered."""


def _http(
    url: str, what: str, method: str = "GET", headers: Mapping[str, str] | None = None
) -> bytes:
    """The body of a 200 answer; MetadataUnavailable (one line) for anything else."""
    shown = redact(url)  # a user:password@ in an endpoint never reaches a message
    try:
        request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    except ValueError as error:  # not a URL at all
        said = str(error).replace(url, shown)
        raise UsageError(f"{what}: {shown!r} is not a URL ({said})") from None
    silent = f"{what} at {shown}: no answer within {METADATA_TIMEOUT:g}s"
    try:
        with _OPENER.open(request, timeout=METADATA_TIMEOUT) as response:
            body: bytes = response.read(1 << 20)
            return body
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code} {error.reason}"
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise _NoAnswer(silent) from None
        reason = getattr(error.reason, "strerror", None) or str(error.reason)
    except TimeoutError:
        raise _NoAnswer(silent) from None
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    raise MetadataUnavailable(f"{what} at {shown}: {reason}")


def ecs_container(uri: str) -> Any:
    """The container's ECS task metadata v4 document."""
    what = "ECS task metadata (ECS_CONTAINER_METADATA_URI_V4)"
    hint = "; pass --ip and --port, or set IP and PORT"
    try:
        body = _http(uri, what)
    except MetadataUnavailable as error:
        raise MetadataUnavailable(f"{error}{hint}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise MetadataUnavailable(
            f"{what} at {redact(uri)}: the answer is not JSON{hint}"
        ) from None


def ecs_task(uri: str) -> Any:
    """The task's ECS task metadata v4 document ($ECS_CONTAINER_METADATA_URI_V4/task)."""
    url = f"{uri.rstrip('/')}/task"
    what = "ECS task metadata (ECS_CONTAINER_METADATA_URI_V4/task)"
    body = _http(url, what)
    try:
        return json.loads(body)
    except ValueError:
        raise MetadataUnavailable(f"{what} at {redact(url)}: the answer is not JSON") from None


def discover_instance(
    settings: Settings, environ: Mapping[str, str], streams: Streams, random: bool = True
) -> tuple[str, str] | None:
    """(id, where it came from) as instance_id() decides, asking the ECS task metadata when
    ECS_CONTAINER_METADATA_URI_V4 is set. A metadata failure is said in one line and the id
    falls back to the hostname: it does not stop a registration."""
    if settings.instance is not None:
        return settings.instance, settings.instance_source
    task: str | None = None
    uri = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if uri:
        fallback = "the instance id falls back to the hostname (set INSTANCE to choose one)"
        try:
            task = task_id(ecs_task(uri))
        except Error as error:
            streams.say(f"{error}; {fallback}", "warning")
        else:
            if task is None:
                streams.say(
                    f"ECS task metadata at {uri.rstrip('/')}/task: no TaskARN ending in an "
                    f"instance id; {fallback}",
                    "warning",
                )
    return instance_id(None, task, socket.gethostname(), secrets.token_hex(6) if random else None)


def instance_ipv4(base: str) -> str:
    """The instance's private IPv4 address from EC2 instance metadata, with an IMDSv2 token."""
    base = base.rstrip("/")
    what = "EC2 instance metadata"
    hint = "; pass --ip or set IP"
    try:
        token = _http(
            f"{base}/latest/api/token",
            what,
            "PUT",
            {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)},
        )
        body = _http(
            f"{base}/latest/meta-data/local-ipv4",
            what,
            headers={"X-aws-ec2-metadata-token": token.decode("ascii", "replace").strip()},
        )
    except _NoAnswer as error:  # the classic cause: the token's answer is one hop short
        raise MetadataUnavailable(
            f"{error} (from a bridge-mode container, IMDSv2 needs the instance's metadata "
            f"hop limit at 2 or more){hint}"
        ) from None
    except MetadataUnavailable as error:
        raise MetadataUnavailable(f"{error}{hint}") from None
    text = body.decode("ascii", "replace").strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise MetadataUnavailable(
            f"{what} at {base}: local-ipv4 {text[:60]!r} is not an IP address{hint}"
        ) from None


@dataclass(frozen=True, slots=True)
class Address:
    ip: str
    port: int  # registered
    container_port: int  # where CMD listens, for the port check
    how: str


def _silent(message: str, level: str = "info", /, **fields: object) -> None:
    """A Log that writes nothing."""


def discover(settings: Settings, environ: Mapping[str, str], log: Log = _silent) -> Address:
    """--ip/IP; else ECS task metadata v4 when ECS_CONTAINER_METADATA_URI_V4 is set (it also
    gives the port when PORT is not set); else EC2 instance metadata (IMDSv2). Each metadata
    endpoint asked is said in a debug line."""
    imds = environ.get("DEVTEST_ROUTER_IMDS_URL") or IMDS_URL
    ecs = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if settings.ip is not None and settings.port is not None:
        return Address(settings.ip, settings.port, settings.port, "IP")
    if ecs:
        log(f"asking the ECS task metadata at {redact(ecs)} for the address", "debug")
        found = ecs_address(ecs_container(ecs), settings.port)
        if settings.ip is not None:
            return Address(settings.ip, found.port, found.container_port, f"IP, {found.how}")
        if found.ip is not None:
            return Address(found.ip, found.port, found.container_port, found.how)
        how = f"{found.how}, EC2 instance metadata"
        log(f"asking EC2 instance metadata at {redact(imds)} for the host's address", "debug")
        return Address(instance_ipv4(imds), found.port, found.container_port, how)
    assert settings.port is not None  # resolve() requires PORT without ECS metadata
    log(f"asking EC2 instance metadata at {redact(imds)} for the address", "debug")
    return Address(instance_ipv4(imds), settings.port, settings.port, "EC2 instance metadata")
