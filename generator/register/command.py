"""`register` and `deregister`: a service container's registration, replacing the curl snippet.

The original registration PUT /deployment/$NAME/service/$SERVICE/{ip,port} and
/deployment/$NAME/created into etcd once, with no TTL, and DELETEd them on a clean shutdown: a
killed container left its route behind, and a container stopping during a redeploy deleted its
successor's keys. `register` writes one *instance* of the service, each container under its
own id: /deployment/<branch>/service/<service>/instance/<id>/{ip,port} (and created), under the
slugs the generator uses for hostnames, with a TTL. It keeps them alive (without waking the
watcher) while the service runs, so a killed container's instance goes away within the TTL, and
it owns what it wrote: it refreshes and deletes its keys only while they are still its own.

Three modes: a wrapper (`register -- CMD ARGS`: start CMD, register once its port answers,
deregister when it exits), a sidecar loop (no CMD: register until signalled) and `--once`.

The pure parts (settings, slugs, the ECS metadata decision) are plain functions over plain
values; the IO (HTTP to the metadata endpoints, signals, the child process) is kept apart.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import ipaddress
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import Any

from generator.core.errors import Error, UsageError
from generator.core.keys import created_key, instance_key, service_key
from generator.core.model import RFC3339
from generator.core.names import label
from generator.registry.base import Entry, Registry, RegistryUnavailable, Removal
from generator.registry.open import add_registry_arguments, registry_from_args
from generator.secret import child_environment, redact
from generator.streams import Streams

DEFAULT_TTL = 30
# With CMD, seconds between deleting the instance's keys and passing SIGTERM on: the watcher
# applies the removal (its quiet period and an apply, well under a second) while CMD still
# serves, so no request is sent to a server that is going away. Platforms allow 10-30 s.
DEFAULT_DRAIN = 3.0
MAX_DRAIN = 600.0
MAX_TTL = 9_000_000_000  # seconds: etcd's own largest lease TTL
IMDS_URL = "http://169.254.169.254"
METADATA_TIMEOUT = 2.0  # seconds per metadata request: the endpoints are local or absent
IMDS_TOKEN_TTL = 60  # seconds an IMDSv2 token lives; we use it at once
PORT_POLL = 0.1  # seconds between connection attempts while CMD starts
CHILD_POLL = 1.0  # longest sleep while CMD runs (SIGCHLD wakes us sooner)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPING = (signal.SIGTERM, signal.SIGINT)
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


class MetadataUnavailable(Error):
    """The ECS task metadata or EC2 instance metadata endpoint cannot be reached or read."""

    exit_code = 4


# --------------------------------------------------------------------------
# settings (pure)


@dataclass(frozen=True, slots=True)
class Settings:
    name: str  # NAME as given: the branch
    service_name: str  # SERVICE as given
    deployment: str  # label(name): the key and hostname label the generator uses
    service: str  # label(service_name)
    port: int | None  # PORT; None: from the ECS metadata
    ip: str | None  # IP; None: discovered
    ttl: int  # seconds; 0: no TTL and no keepalive
    check_port: int | None  # the port CMD must answer on before we register (None: port)
    once: bool
    command: tuple[str, ...]
    instance: str | None = None  # --instance or INSTANCE; None: discovered (see instance_id)
    instance_source: str = "INSTANCE"  # where `instance` came from, for log lines
    drain: float = DEFAULT_DRAIN  # with CMD: seconds between deregistering and passing SIGTERM on


def _setting(
    args: argparse.Namespace, environ: Mapping[str, str], attribute: str, variable: str
) -> tuple[str | None, str]:
    """(value, where it came from) of a flag or its environment variable; empty means unset."""
    flag = getattr(args, attribute, None)
    if flag:
        return str(flag), "--" + attribute.replace("_", "-")
    value = environ.get(variable)
    if value:
        return value, variable
    return None, variable


def _shown(text: str) -> str:
    """A setting's text for an error line: quoted, and cut when long (a 5,000-digit PORT)."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_port(text: str, what: str, source: str) -> int:
    value = text.strip()
    # at most 5 digits: int() of a text past 4,300 digits raises (Python's own guard)
    if value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536:
        return int(value)
    raise UsageError(f"{what} {_shown(text)} is not a port number 1-65535 (from {source})")


def parse_drain(text: str, source: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = -1.0
    if 0 <= value <= MAX_DRAIN:  # nan fails both comparisons
        return value
    raise UsageError(
        f"drain {text!r} is not a number of seconds from 0 to {MAX_DRAIN} (from {source})"
    )


def parse_ttl(text: str, source: str) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise UsageError(
            f"TTL {_shown(text)} is not a whole number of seconds, 0 (no TTL) or more "
            f"(from {source})"
        )
    if int(value.lstrip("0")[:12] or "0") > MAX_TTL:  # int() of 4,300 digits would raise
        raise UsageError(f"TTL {_shown(text)} is more than {MAX_TTL} seconds (from {source})")
    return int(value.lstrip("0") or "0")


def parse_ip(text: str, source: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise UsageError(f"IP {text!r} is not an IP address (from {source})") from None


def parse_instance(text: str, source: str) -> str:
    if INSTANCE_ID.fullmatch(text):
        return text
    raise UsageError(
        f"INSTANCE {text!r} is not an instance id: 1-128 letters, digits, '.', '_' or '-', "
        f"starting with a letter or digit (from {source})"
    )


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str], need_address: bool = True
) -> Settings:
    """The settings from flags, else the environment; UsageError names the variable at fault.

    Without need_address (deregister) only NAME, SERVICE and INSTANCE are looked at, not PORT,
    IP or the TTL.
    """
    name, _ = _setting(args, environ, "name", "NAME")
    if name is None:
        raise UsageError("NAME is not set: pass --name or set NAME (the branch name)")
    service_name, _ = _setting(args, environ, "service", "SERVICE")
    if service_name is None:
        raise UsageError(
            "SERVICE is not set: pass --service or set SERVICE (the service name, e.g. web)"
        )
    port: int | None = None
    ip: str | None = None
    ttl = DEFAULT_TTL
    instance: str | None = None
    text, instance_source = _setting(args, environ, "instance", "INSTANCE")
    if text is not None:
        instance = parse_instance(text, instance_source)
    check_port: int | None = None
    drain = DEFAULT_DRAIN
    if need_address:
        text, source = _setting(args, environ, "port", "PORT")
        if text is not None:
            port = parse_port(text, "PORT", source)
        elif not environ.get("ECS_CONTAINER_METADATA_URI_V4"):
            raise UsageError(
                "PORT is not set: pass --port or set PORT (the port the service listens on)"
            )
        text, source = _setting(args, environ, "ip", "IP")
        if text is not None:
            ip = parse_ip(text, source)
        text, source = _setting(args, environ, "ttl", "DEVTEST_ROUTER_TTL")
        if text is not None:
            ttl = parse_ttl(text, source)
        text, source = _setting(args, environ, "check_port", "DEVTEST_ROUTER_CHECK_PORT")
        if text is not None:
            check_port = parse_port(text, "the check port", source)
        text, source = _setting(args, environ, "drain", "DEVTEST_ROUTER_DRAIN")
        if text is not None:
            drain = parse_drain(text, source)
    return Settings(
        name=name,
        service_name=service_name,
        deployment=str(label(name)),
        service=str(label(service_name)),
        port=port,
        ip=ip,
        ttl=ttl,
        check_port=check_port,
        once=bool(getattr(args, "once", False)),
        command=tuple(getattr(args, "command", None) or ()),
        instance=instance,
        instance_source=instance_source,
        drain=drain,
    )


def slug_note(settings: Settings, verb: str = "registering") -> str | None:
    """One line when a name is not already the label it is registered under, else None."""
    changes = []
    if settings.deployment != settings.name:
        changes.append(f"{settings.name} as {settings.deployment}")
    if settings.service != settings.service_name:
        changes.append(f"service {settings.service_name} as {settings.service}")
    return f"{verb} {', '.join(changes)}" if changes else None


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


def discover(settings: Settings, environ: Mapping[str, str]) -> Address:
    """--ip/IP; else ECS task metadata v4 when ECS_CONTAINER_METADATA_URI_V4 is set (it also
    gives the port when PORT is not set); else EC2 instance metadata (IMDSv2)."""
    imds = environ.get("DEVTEST_ROUTER_IMDS_URL") or IMDS_URL
    ecs = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if settings.ip is not None and settings.port is not None:
        return Address(settings.ip, settings.port, settings.port, "IP")
    if ecs:
        found = ecs_address(ecs_container(ecs), settings.port)
        if settings.ip is not None:
            return Address(settings.ip, found.port, found.container_port, f"IP, {found.how}")
        if found.ip is not None:
            return Address(found.ip, found.port, found.container_port, found.how)
        how = f"{found.how}, EC2 instance metadata"
        return Address(instance_ipv4(imds), found.port, found.container_port, how)
    assert settings.port is not None  # resolve() requires PORT without ECS metadata
    return Address(instance_ipv4(imds), settings.port, settings.port, "EC2 instance metadata")


# --------------------------------------------------------------------------
# signals and the child process (IO)


class SignalWaiter:
    """Signals as events: the handlers only note them (through the wakeup fd) and wait() sleeps
    until one arrives or the timeout passes. Main thread only."""

    def __init__(self, signums: Sequence[int]) -> None:
        self.signums = tuple(signums)
        self._old: dict[int, Any] = {}
        self._old_fd = -1
        self._read = self._write = -1

    def __enter__(self) -> SignalWaiter:
        self._read, self._write = os.pipe()  # not inherited by CMD (O_CLOEXEC)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in self.signums:
            self._old[signum] = signal.signal(signum, self._note)
        return self

    @staticmethod
    def _note(signum: int, frame: FrameType | None) -> None:
        pass  # the wakeup fd carries the signal's number to wait()

    def wait(self, timeout: float | None) -> list[int]:
        """The signals received since the last call (oldest first), after at most `timeout`."""
        wait = None if timeout is None else max(0.0, timeout)
        select.select([self._read], [], [], wait)
        try:
            return list(os.read(self._read, 4096))
        except BlockingIOError:
            return []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)


def exit_status(returncode: int) -> int:
    """A shell's $? for a child's return code: 128+N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def how_it_ended(returncode: int) -> str:
    """'exited with status 3', or 'was killed by SIGTERM (status 143)'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (status {exit_status(returncode)})"
    return f"exited with status {returncode}"


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A preexec step that makes the child get SIGTERM when `parent` dies, even of SIGKILL
    (Linux's PR_SET_PDEATHSIG); None where there is no prctl (not Linux).

    Without it, a wrapper killed with SIGKILL (nothing of it runs any more: no deregistration,
    no signal passed on) would leave CMD serving in its own process group, unregistered, until
    someone finds it. The kernel signals CMD alone (a stop signal the wrapper passes on goes to
    CMD's whole group); CMD's own children get what CMD does to them on SIGTERM. The death
    signal is tied to the thread that forked: CMD is started from the main thread, which lives
    as long as the wrapper. A prctl that fails (a sandbox forbidding it) leaves CMD as before.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(128 + signal.SIGTERM)

    return die_with_parent


class Child:
    """CMD in its own process group (signals go to the group, once, from us) with our stdio,
    without the secret variables (secret.child_environment), and SIGTERMed if we die."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = tuple(command)
        self.proc = subprocess.Popen(
            self.command,
            process_group=0,
            env=child_environment(),
            preexec_fn=_dies_with(os.getpid()),  # safe: the wrapper has one thread
        )
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        """The child's return code once it has exited. As PID 1 (a container's init), also
        reap whatever orphans were handed to us."""
        if os.getpid() == 1 and self.proc.returncode is None:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == self.pid:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.pid, signum)

    def wait(self, waiter: SignalWaiter) -> int:
        """Wait for the child to exit, still forwarding signals; its return code."""
        while (code := self.poll()) is None:
            for signum in waiter.wait(CHILD_POLL):
                if signum in FORWARDED:
                    self.signal(signum)
        return code


# --------------------------------------------------------------------------
# the commands


def _now() -> str:
    return datetime.now(UTC).strftime(RFC3339)


class Session:
    """One instance in one registry: register, keep alive, deregister, with one line each."""

    def __init__(
        self, registry: Registry, entry: Entry, ttl: int, streams: Streams, how: str
    ) -> None:
        self.registry, self.entry, self.ttl, self.streams = registry, entry, ttl, streams
        self.how = how  # where the address (and the instance id) came from, for the log line
        self.registered = False
        self.superseded = False  # a newer registration holds our instance: hands off
        self._failing = False

    @property
    def key(self) -> str:
        return self.entry.key

    def _say(self, message: str, level: str = "info") -> None:
        entry = self.entry
        self.streams.say(
            message,
            level,
            deployment=entry.deployment,
            service=entry.service,
            instance=entry.instance,
            key=self.key,
        )

    def register(self, how: str, refreshed: bool = True) -> None:
        self.registry.register(self.entry, self.ttl)
        self.registered = True
        if not self.ttl:
            ttl = "no ttl"
        elif refreshed:
            ttl = f"ttl {self.ttl}s, refreshed every {self.ttl / 3:g}s"
        else:
            ttl = (
                f"ttl {self.ttl}s, not refreshed: the keys expire unless written again "
                "(--ttl 0 keeps them)"
            )
        self._say(
            f"registered {self.key} -> {self.entry.address} ({how}) in "
            f"{self.registry.description}; {ttl}"
        )

    def keepalive(self) -> None:
        """Refresh the TTL (or register, if that has not worked yet); a failure is reported
        once and retried next time: a registry that is away for a while must not end the
        service. Once a newer registration holds the instance, nothing more is written."""
        if self.superseded or (self.registered and not self.ttl):
            return  # no TTL: nothing expires, nothing to refresh
        try:
            other = None
            if self.registered:
                other = self.registry.keepalive(self.entry, self.ttl)
            else:
                self.register(self.how)
        except Exception as error:  # anything at all: the service keeps running
            if not self._failing:
                what = str(error) if isinstance(error, Error) else f"internal error: {error!r}"
                step = "keepalive" if self.registered else "registration"
                self._say(
                    f"{step} failed, retrying every {_retry(self.ttl):g}s (a registered entry "
                    f"expires {self.ttl}s after the last success): {what}",
                    "error",
                )
            self._failing = True
            return
        if other is not None:
            self.superseded = True
            self._say(
                f"{self.key} holds {other} now, not {self.entry.address}: a newer registration "
                f"with the same instance id {self.entry.instance} replaced this one, which "
                "stops refreshing it; give each container its own INSTANCE (or leave it unset)",
                "error",
            )
            return
        if self._failing:
            self._say(f"the registry answers again: {self.key} refreshed")
        self._failing = False

    def deregister(self) -> bool:
        if not self.registered:
            return True
        self.registered = False
        try:
            removal = self.registry.deregister(self.entry)
        except Error as error:
            expiry = f"; it expires within {self.ttl}s" if self.ttl else ""
            self._say(f"could not deregister {self.key}{expiry}: {error}", "error")
            return False
        if removal.other is not None:
            self._say(
                f"left {self.key} as it is: it holds {removal.other}, a newer registration's, "
                f"not {self.entry.address}"
            )
        else:
            self._say(f"deregistered {self.key} from {self.registry.description}")
        return True


def _run_register(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    settings = resolve(args, environ)
    if settings.once and settings.command:
        raise UsageError("--once writes the keys and exits: it takes no command after --")
    note = slug_note(settings)
    if note:
        streams.say(note)
    address = discover(settings, environ)
    found = discover_instance(settings, environ, streams)
    assert found is not None  # a random id when nothing else applies
    instance, instance_from = found
    registry = registry_from_args(args, environ)
    entry = Entry(settings.deployment, settings.service, address.ip, address.port, _now(), instance)
    how = f"address from {address.how}, instance id from {instance_from}"
    session = Session(registry, entry, settings.ttl, streams, how)
    try:
        if settings.once:
            session.register(how, refreshed=False)
            return 0
        if settings.command:
            return _wrap(session, settings, address, streams)
        return _sidecar(session, streams)
    finally:
        registry.close()


def _retry(ttl: int) -> float:
    """Seconds between keepalives (a third of the TTL), or between attempts to register."""
    return ttl / 3 if ttl else 5.0


def _next_keepalive(ttl: int) -> float:
    return time.monotonic() + ttl / 3 if ttl else float("inf")


def _sidecar(session: Session, streams: Streams) -> int:
    with SignalWaiter(FORWARDED) as waiter:
        session.register(session.how)
        due = _next_keepalive(session.ttl)
        while True:
            timeout = None if due == float("inf") else due - time.monotonic()
            received = waiter.wait(timeout)
            stop = [signum for signum in received if signum in STOPPING]
            if stop:
                streams.say(f"{signal.Signals(stop[0]).name} received; deregistering")
                return 0 if session.deregister() else RegistryUnavailable.exit_code
            if time.monotonic() >= due:
                session.keepalive()
                due = _next_keepalive(session.ttl)


def _wrap(session: Session, settings: Settings, address: Address, streams: Streams) -> int:
    command = settings.command
    check = settings.check_port or address.container_port
    if port_answers(check):  # someone else's server would be registered as CMD's
        streams.say(
            f"127.0.0.1:{check} already accepts connections before {command[0]} started: "
            "another process listens there and would be registered in its place; stop it or "
            "use another PORT (or --check-port)"
        )
        return UsageError.exit_code
    with SignalWaiter((*FORWARDED, signal.SIGCHLD)) as waiter:
        try:
            child = Child(command)
        except OSError as error:
            missing = isinstance(error, FileNotFoundError)
            streams.say(f"cannot run {command[0]!r}: {error.strerror or error}")
            return 127 if missing else 126
        try:
            streams.say(
                f"started {command[0]} (pid {child.pid}); registering once 127.0.0.1:{check} "
                "accepts connections"
            )
            stopping = False
            # 1. wait for the port (or for CMD to exit, or for a signal)
            while not stopping:
                code = child.poll()
                if code is not None:
                    streams.say(
                        f"{command[0]} {how_it_ended(code)} before "
                        f"127.0.0.1:{check} accepted connections; not registered"
                    )
                    return exit_status(code)
                if port_answers(check):
                    break
                for signum in waiter.wait(PORT_POLL):
                    if signum in FORWARDED:
                        child.signal(signum)
                    if signum in STOPPING:
                        stopping = True
            # 2. register and keep alive until CMD exits or we are told to stop; a registry
            # that does not answer yet is retried while CMD keeps serving
            if not stopping:
                session.keepalive()
            due = time.monotonic() + _retry(session.ttl)
            # A stop signal held back while the frontend drops this instance, and when it goes
            # on to CMD (see DEFAULT_DRAIN); a second stop signal goes on at once.
            held: tuple[int, float] | None = None
            while (code := child.poll()) is None:
                timeout = min(CHILD_POLL, due - time.monotonic())
                if held is not None:
                    timeout = min(timeout, held[1] - time.monotonic())
                for signum in waiter.wait(max(timeout, 0.0)):
                    first_stop = signum in STOPPING and not stopping
                    if signum in STOPPING:
                        stopping = True
                    if first_stop and session.registered:
                        name = signal.Signals(signum).name
                        later = f" in {settings.drain:g} s (--drain)" if settings.drain else ""
                        streams.say(f"{name} received; deregistering, then passing it on{later}")
                        session.deregister()  # first, so no new request is routed to CMD
                        if settings.drain:
                            held = (signum, time.monotonic() + settings.drain)
                            continue
                    if signum in FORWARDED:
                        child.signal(signum)
                        if signum in STOPPING:
                            held = None
                if held is not None and time.monotonic() >= held[1]:
                    child.signal(held[0])
                    held = None
                if not stopping and time.monotonic() >= due:
                    session.keepalive()
                    due = time.monotonic() + _retry(session.ttl)
            streams.say(f"{command[0]} {how_it_ended(code)}")
            session.deregister()
            return exit_status(code)
        finally:
            if child.poll() is None:  # an unexpected error: do not leave CMD behind
                child.signal(signal.SIGTERM)
                child.wait(waiter)


def _run_deregister(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    settings = resolve(args, environ, need_address=False)
    force = bool(getattr(args, "force_removal", False))
    ip: str | None = None
    port: int | None = None
    text, source = _setting(args, environ, "ip", "IP")
    if text is not None:
        ip = parse_ip(text, source)
    text, source = _setting(args, environ, "port", "PORT")
    if text is not None:
        port = parse_port(text, "PORT", source)
    service = service_key(settings.deployment, settings.service)
    if not force and (ip is None or port is None):
        raise UsageError(
            f"deregister removes an instance of {service} only while it holds the address it "
            "registered: pass --ip and --port (or set IP and PORT) as registered, or --force to "
            "remove whatever is there"
        )
    note = slug_note(settings, "deregistering")
    if note:
        streams.say(note)
    instance, instance_from = settings.instance, settings.instance_source
    if not force:  # the instance `register` in this container would have used
        found = discover_instance(settings, environ, streams, random=False)
        if found is None:
            raise UsageError(
                f"no instance id for {service}: the hostname {socket.gethostname()!r} is not "
                "one; pass --instance or set INSTANCE"
            )
        instance, instance_from = found
    entry = Entry(settings.deployment, settings.service, ip or "", port or 0, _now(), instance)
    registry = registry_from_args(args, environ)
    try:
        removal = registry.deregister(entry, force=force)
    finally:
        registry.close()
    return _said(removal, entry, force, instance_from, registry.description, streams)


def _said(
    removal: Removal, entry: Entry, force: bool, source: str, where: str, streams: Streams
) -> int:
    """The deregister command's one line about what it did, and its exit status."""
    what = entry.key if entry.instance is None else f"{entry.key} (instance id from {source})"
    if force and entry.instance is None:
        what = f"{entry.key} (the service: its own ip/port keys and every instance)"
    if removal.other is not None:
        streams.say(
            f"left {what} as it is: it holds {removal.other}, not {entry.address} (a newer "
            "registration's); --force removes it anyway"
        )
        return 1
    if not removal.deleted:
        streams.say(f"nothing to deregister: {what} holds no keys in {where}")
        return 0
    streams.say(f"deregistered {what} from {where}")
    return 0


# --------------------------------------------------------------------------
# the command line

_EPILOG = """\
environment (a flag beats its variable):
  NAME, SERVICE, PORT, IP       as the original registration snippet's Docker variables
  INSTANCE                      --instance
  REGISTRY_URL                  the registry (http://HOST:PORT is etcd's v2 API, as before)
  DEVTEST_ROUTER_TTL            --ttl
  DEVTEST_ROUTER_CHECK_PORT     --check-port
  DEVTEST_ROUTER_DRAIN          --drain
  ECS_CONTAINER_METADATA_URI_V4 set by ECS: the address (and PORT) and the instance id come
                                from task metadata
  DEVTEST_ROUTER_IMDS_URL       EC2 instance metadata (default: http://169.254.169.254)

keys: /deployment/<branch>/service/<service>/instance/<id>/{ip,port} and
/deployment/<branch>/created. Each container is one instance of its service; the watcher
routes to all of a service's instances.

instance id, first that applies: --instance/INSTANCE (1-128 of A-Z a-z 0-9 . _ -, starting
with a letter or digit); the ECS task id (the end of the TaskARN that
$ECS_CONTAINER_METADATA_URI_V4/task gives; if that cannot be read, said in one line, the
hostname instead); the hostname (in Docker and compose, the container id); a random id. Two
containers that register one instance id replace each other: the newest wins, and the older
one stops refreshing it (said once).

address discovery, first that applies: --ip/IP; ECS task metadata v4 (awsvpc: the task's
address and the container port; bridge: the host's address and the HostPort mapped to PORT;
it also gives PORT when unset); EC2 instance metadata (IMDSv2 local-ipv4).

A registration only refreshes and deletes keys that are still its own (etcd v2 and files:
that hold its address; etcd v3: that are on its lease); a newer registration's are left
alone. With -- CMD, a registry that does not answer is retried (said once) while CMD keeps
serving.

exit codes:
    0  registered (--once), or stopped by SIGTERM/SIGINT and deregistered (or found a newer
       registration in its place and left it)
    2  a missing or bad setting
    4  the registry or a metadata endpoint for the address cannot be reached (without CMD,
       also when deregistering on SIGTERM/SIGINT fails)
  N    with -- CMD: CMD's exit status (128+S when signal S killed it; 126/127: cannot run it)
"""

_DEREGISTER_EPILOG = """\
environment (a flag beats its variable): NAME, SERVICE, INSTANCE, IP, PORT, REGISTRY_URL, as for
register.

Without --force, the instance (--instance/INSTANCE, else found as register finds it: the ECS
task id, else the hostname) is removed only while it holds the address IP:PORT, as
registered; if a newer registration holds it, it is left. With --force, whatever is there is
removed: the instance given with --instance/INSTANCE, or without one the whole service (its
own ip/port keys and every instance). /deployment/<branch>/created goes once no service of
the branch is left.

exit codes:
    0  deregistered, or nothing was registered there
    1  left as it is: the instance holds another address (a newer registration's)
    2  a missing or bad setting, or neither IP and PORT nor --force
    4  the registry cannot be reached
"""


# In the commands' descriptions: the keys of an instance, as the layout spells them.
_INSTANCE_KEYS = instance_key("<branch>", "<service>", "<id>") + "/{ip,port}"


def _identity(parser: argparse.ArgumentParser, address: bool) -> None:
    group = parser.add_argument_group("registration")
    group.add_argument("--name", metavar="BRANCH", help="the branch (env NAME); slugged")
    group.add_argument(
        "--service", metavar="NAME", help="the service, e.g. web (env SERVICE); slugged"
    )
    if not address:
        group.add_argument(
            "--instance",
            metavar="ID",
            help="the instance to remove (env INSTANCE; default: as register finds it, or "
            "with --force the whole service)",
        )
        group.add_argument("--ip", metavar="ADDRESS", help="the address it registered (env IP)")
        group.add_argument("--port", metavar="PORT", help="the port it registered (env PORT)")
        group.add_argument(
            "--force",
            action="store_true",
            dest="force_removal",  # not the `force` setting of apply and watch
            help="remove whatever is there, without comparing the address",
        )
        group.add_argument("--ttl", help=argparse.SUPPRESS)  # accepted, so one setup serves both
        return
    group.add_argument(
        "--instance",
        metavar="ID",
        help="this container's instance id (env INSTANCE; default: the ECS task id, else the "
        "hostname, else a random id)",
    )
    group.add_argument(
        "--port",
        metavar="PORT",
        help="the port the service listens on (env PORT; under ECS, the task metadata gives "
        "it when unset)",
    )
    group.add_argument(
        "--ip", metavar="ADDRESS", help="the address to register (env IP; default: discovered)"
    )
    group.add_argument(
        "--ttl",
        metavar="SECONDS",
        help=f"the keys expire this long after the last refresh; 0: never (env "
        f"DEVTEST_ROUTER_TTL; default: {DEFAULT_TTL})",
    )


def add_commands(commands: Any) -> None:
    """Add `register` and `deregister` to the CLI's subparsers."""
    register = commands.add_parser(
        "register",
        help="register a service container (replaces the curl snippet); -- CMD wraps CMD",
        description=f"Write {_INSTANCE_KEYS} and {created_key('<branch>')} with a TTL and keep "
        "them alive; delete them on SIGTERM/SIGINT. With -- CMD ARGS: start CMD, register once "
        "its port answers on 127.0.0.1, on SIGTERM/SIGINT deregister first, pass "
        "SIGTERM/SIGINT/SIGHUP on, deregister when it exits and exit with its status. Without "
        "CMD: register and keep alive until signalled. With --once: write once.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _identity(register, address=True)
    group = register.add_argument_group("mode")
    group.add_argument(
        "--once",
        action="store_true",
        help="write the keys once (with the TTL: --ttl 0 keeps them, like the snippet) and exit",
    )
    group.add_argument(
        "--check-port",
        metavar="PORT",
        help="with CMD: register once 127.0.0.1:PORT accepts connections (env "
        "DEVTEST_ROUTER_CHECK_PORT; default: PORT)",
    )
    group.add_argument(
        "--drain",
        metavar="SECONDS",
        help="with CMD: on SIGTERM/SIGINT, deregister, then wait this long before passing the "
        "signal on, so the frontend stops routing here while CMD still serves (env "
        f"DEVTEST_ROUTER_DRAIN; default: {DEFAULT_DRAIN:g}; a second signal goes on at once)",
    )
    register.add_argument(
        "command", nargs="*", metavar="-- CMD ARGS", help="run CMD and register while it runs"
    )
    add_registry_arguments(register, default=None)
    register.set_defaults(run=_run_register)

    deregister = commands.add_parser(
        "deregister",
        help="delete an instance's keys if it still holds IP:PORT, or with --force a service's "
        "(the branch's too when no service is left)",
        description=f"Delete {_INSTANCE_KEYS} while they hold IP:PORT, or with --force "
        "whatever is there (without --instance: the whole service), and the branch's keys "
        "when no other service is left. Takes the same settings as register.",
        epilog=_DEREGISTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _identity(deregister, address=False)
    add_registry_arguments(deregister, default=None)
    deregister.set_defaults(run=_run_deregister)
