"""Registries: where service containers register and where the watcher reads them.

One small interface (Registry) over three backends: etcd's v2 API (python-etcd; etcd 3.4 and 3.5
with --enable-v2), etcd's v3 API through its JSON gateway (etcd3gw; etcd 3.4 and later) and a
file (YAML or JSON), the default when no etcd is given. All of them hand out the same
etcdwatch-shaped snapshot: {"deployment": {<branch>: {"created": ..., "service": {...}}}}.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from generator.core.errors import Error, UsageError
from generator.core.keys import PREFIX, instance_key
from generator.core.snapshot import loads
from generator.registry.keytree import Change, KeyTree
from generator.registry.keytree import build_snapshot as build_snapshot
from generator.secret import redact

# Where watch and snapshot look when neither --registry nor REGISTRY_URL names an etcd.
DEFAULT_REGISTRY = "file:/var/lib/devtest-router/registry.json"


class RegistryUnavailable(Error):
    """The registry cannot be reached or read; nothing was changed."""

    exit_code = 4


class HistoryLost(Exception):
    """The watch fell too far behind (etcd v2 cleared the index, v3 compacted): re-read in full."""


@dataclass(frozen=True, slots=True)
class Read:
    snapshot: dict[str, Any]  # {"deployment": {...}}, as etcdwatch writes it
    index: int  # watch for changes after this (v2 X-Etcd-Index, v3 revision, file mtime in ns)
    keys: KeyTree | None = None  # the keys read (etcd); the watcher applies later events to them
    # no /deployment at all (v2: key not found; v3: no key under /deployment/): see present()
    absent: bool = False


def present(read: Read, description: str, allow_empty: bool) -> Read:
    """`read`, unless its /deployment prefix is absent and that is not allowed: then
    RegistryUnavailable. An absent prefix is what a wrong API version (v3 over v2 data, or the
    reverse) or another etcd reads as; taken for "no services" it would remove every route.
    The first `register` creates the prefix; before that, a fresh registry needs allow_empty.
    """
    if read.absent and not allow_empty:
        raise RegistryUnavailable(
            f"{description}: {PREFIX} is absent (no key under it): the wrong API version "
            "(etcd:// is v2, etcd3:// is v3) or the wrong registry? A fresh registry has none "
            "until the first `register`: pass --allow-empty (DEVTEST_ROUTER_ALLOW_EMPTY=1) to "
            "take it for no services"
        )
    return read


@dataclass(frozen=True, slots=True)
class Changes:
    """What a watch saw after some index."""

    index: int  # watch again after this
    changes: tuple[Change, ...] | None  # in order; None: unknown, read everything again


@dataclass(frozen=True, slots=True)
class Entry:
    """One service container's registration: one instance of a service, under keys named by the
    slug of its branch.

    Its keys are /deployment/<deployment>/service/<service>/instance/<instance>/{ip,port}, or,
    with instance None, the service's own /deployment/<deployment>/service/<service>/{ip,port}
    (the seed's layout, as curl wrote it), and /deployment/<deployment>/created.
    """

    deployment: str
    service: str
    ip: str
    port: int
    created: str  # RFC 3339, UTC
    instance: str | None = None  # the instance id; None: the service's own ip and port keys

    @property
    def key(self) -> str:
        """The directory its ip and port keys are in."""
        return instance_key(self.deployment, self.service, self.instance)

    @property
    def address(self) -> str:
        return address(self.ip, str(self.port))


def address(ip: str | None, port: str | None) -> str:
    """ip:port for a log line ([ip]:port for IPv6; ? for a half that is missing)."""
    host = "?" if ip is None else f"[{ip}]" if ":" in ip else ip
    return f"{host}:{'?' if port is None else port}"


@dataclass(frozen=True, slots=True)
class Removal:
    """What deregister() did."""

    deleted: bool  # keys were deleted (False: none of the entry's were there)
    other: str | None = None  # the address found in the entry's keys instead, left alone


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS and authentication options for etcd (all optional)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None


class Registry(Protocol):
    description: str  # for log lines: "etcd v2 at 127.0.0.1:2379"

    def read(self) -> Read:
        """The whole /deployment prefix at one index. Raises RegistryUnavailable."""

    def wait(self, after: int, timeout: float) -> int | None:
        """Block until something under /deployment changes after `after`.

        Returns an index to pass as `after` next time, or None when `timeout` seconds pass
        first. Raises HistoryLost (re-read, then wait after the read's index) and
        RegistryUnavailable.
        """

    def watch(self, after: int, timeout: float) -> Changes | None:
        """As wait(), with what changed: the events of the first change after `after`."""

    def register(self, entry: Entry, ttl: int) -> None:
        """Write the entry's ip and port (whatever is there: the newest registration wins) and,
        unless present, created, expiring after `ttl` seconds (0: never)."""

    def keepalive(self, entry: Entry, ttl: int) -> str | None:
        """Extend the TTL of the entry's keys without waking watchers, only while they are the
        entry's (v2: hold its values; v3: are on its lease); write again, create-only, those
        that expired.

        Returns None when kept, else the address found in the keys instead (a newer
        registration with the same instance id): nothing was written, and that one keeps them.
        """

    def deregister(self, entry: Entry, force: bool = False) -> Removal:
        """Delete the entry's keys, only while they are the entry's (as for keepalive; a
        backend that did not register the entry itself compares the values); with `force`
        whatever is there: the instance's keys, or with instance None the whole service (its
        own keys and every instance's). Then the emptied directories, and the deployment's
        `created` once no service is left.
        """

    def close(self) -> None: ...


_HOST_PORT = re.compile(
    r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})", re.ASCII
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


def parse_url(url: str) -> tuple[str, tuple[Endpoint, ...], bool, str]:
    """(kind, endpoints, tls, path) of a registry URL; kind is etcd2, etcd3 or file.

    etcd://host:port[,host:port...] and http(s)://host:port (REGISTRY_URL as the original
    registration script uses it) mean etcd's v2 API; etcd3://... its v3 API; etcds:// and
    etcd3s:// the same over TLS; file:PATH a YAML or JSON file.
    """
    if url.startswith("file:"):
        path = url[len("file:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise UsageError(f"registry {url}: file: needs a path, e.g. file:registry.yaml")
        return "file", (), False, path
    schemes = {
        "http": ("etcd2", False),
        "https": ("etcd2", True),
        "etcd": ("etcd2", False),
        "etcds": ("etcd2", True),
        "etcd3": ("etcd3", False),
        "etcd3s": ("etcd3", True),
    }
    shown = redact(url)
    if shown != url:  # an '@': user:password@, which must not be in the URL (nor in a message)
        raise UsageError(
            f"registry {shown!r}: credentials do not go in the URL; give the user in "
            "--etcd-user (or DEVTEST_ROUTER_ETCD_USER) and the password in "
            "DEVTEST_ROUTER_ETCD_PASSWORD"
        )
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed [ of an IPv6 address
        raise UsageError(f"registry {shown!r}: {error}; use etcd://HOST:PORT") from None
    if parts.scheme not in schemes:
        raise UsageError(
            f"registry {shown!r}: unknown scheme; use etcd://HOST:PORT[,HOST:PORT] (v2 API), "
            "etcd3://HOST:PORT[,...] (v3 API), http://HOST:PORT (v2, as REGISTRY_URL) or "
            "file:PATH"
        )
    kind, tls = schemes[parts.scheme]
    endpoints = []
    for item in parts.netloc.split(","):
        found = _HOST_PORT.fullmatch(item)
        if not found or not 0 < int(found.group("port")) < 65536:
            raise UsageError(f"registry {shown!r}: {item!r} is not HOST:PORT with a port 1-65535")
        endpoints.append(Endpoint(found.group("host").strip("[]"), int(found.group("port"))))
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        # a path was silently ignored before: say so rather than read another prefix
        raise UsageError(
            f"registry {url!r}: a path, query or fragment is not taken (the prefix is fixed at "
            f"{PREFIX}); give only the scheme and HOST:PORT, e.g. http://etcd:2379"
        )
    return kind, tuple(endpoints), tls, parts.path


def open_registry(url: str, tls: Tls = Tls(), timeout: float = 5.0) -> Registry:
    """The backend for `url` (see parse_url). Connects lazily: a down etcd fails on first use."""
    kind, endpoints, secure, path = parse_url(url)
    if kind == "file":
        return FileRegistry(Path(path))
    if kind == "etcd2":
        from generator.registry.etcd2 import (
            EtcdV2Registry,  # imported on use: cold `apply` runs never pay for it
        )

        return EtcdV2Registry(endpoints, secure, tls, timeout)
    from generator.registry.etcd3 import EtcdV3Registry

    return EtcdV3Registry(endpoints, secure, tls, timeout)


class FileRegistry:
    """A YAML or JSON file holding a snapshot; a change of its modification time is a change.

    For local use and demos. Registration rewrites the file (atomically, under a lock); a file
    has no TTLs, so a killed process leaves its entry until it is deregistered. Ownership is by
    value, as in etcd v2: an instance holding another address is neither put back nor deleted.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"

    def _stamp(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0
        except OSError as error:
            raise RegistryUnavailable(f"registry {self.path}: {error.strerror}") from None

    def read(self) -> Read:
        stamp = self._stamp()
        if stamp == 0:
            raise RegistryUnavailable(f"registry {self.path}: no such file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as error:
            raise RegistryUnavailable(f"registry {self.path}: {error.strerror}") from None
        return Read(loads(text, str(self.path)), stamp)

    def wait(self, after: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            stamp = self._stamp()
            if stamp != after:
                return stamp
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(0.05, left))

    def watch(self, after: int, timeout: float) -> Changes | None:
        """A file says only that it changed: read it again."""
        stamp = self.wait(after, timeout)
        return None if stamp is None else Changes(stamp, None)

    def _edit(self, change: Callable[[dict[str, Any]], bool]) -> None:
        """change(deployments) under the lock; the file is written again if it returns True."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = loads(self.path.read_text(encoding="utf-8"), str(self.path))
            except FileNotFoundError:
                data = {"deployment": {}}
            if not change(data["deployment"]):
                return
            descriptor, staged = tempfile.mkstemp(dir=self.path.parent, prefix=".registry.")
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=2, sort_keys=True)
                file.write("\n")
            os.chmod(staged, 0o644)
            os.replace(staged, self.path)

    def register(self, entry: Entry, ttl: int) -> None:
        self._edit(lambda deployments: _write(deployments, entry))

    def keepalive(self, entry: Entry, ttl: int) -> str | None:
        """Nothing expires in a file: put the entry back only if someone removed it."""
        other: list[str] = []

        def change(deployments: dict[str, Any]) -> bool:
            found = _held(_keys(deployments, entry))
            if found is None:
                return _write(deployments, entry)
            if found != entry.address:
                other.append(found)
            return False

        self._edit(change)
        return other[0] if other else None

    def deregister(self, entry: Entry, force: bool = False) -> Removal:
        removal = [Removal(False)]

        def change(deployments: dict[str, Any]) -> bool:
            deployment = deployments.get(entry.deployment)
            services = deployment.get("service") if isinstance(deployment, dict) else None
            if not isinstance(deployment, dict) or not isinstance(services, dict):
                return False
            if force and entry.instance is None:
                removal[0] = Removal(services.pop(entry.service, None) is not None)
            else:
                keys = _keys(deployments, entry)
                found = _held(keys)
                if keys is not None and found is not None:
                    if force or found == entry.address:
                        keys.pop("ip", None)
                        keys.pop("port", None)
                        removal[0] = Removal(True)
                    else:
                        removal[0] = Removal(False, found)
                _prune(services, entry)
            if not services:
                deployments.pop(entry.deployment, None)
            return removal[0].deleted

        self._edit(change)
        return removal[0]

    def close(self) -> None:
        pass


def _keys(deployments: dict[str, Any], entry: Entry) -> dict[str, Any] | None:
    """The mapping that holds the entry's ip and port in a file registry, if there is one."""
    node: Any = deployments.get(entry.deployment)
    path = ["service", entry.service]
    if entry.instance is not None:
        path += ["instance", entry.instance]
    for name in path:
        node = node.get(name) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _held(keys: dict[str, Any] | None) -> str | None:
    """The address in an ip and port mapping; None when it has neither."""
    if keys is None or (keys.get("ip") is None and keys.get("port") is None):
        return None
    ip, port = keys.get("ip"), keys.get("port")
    return address(None if ip is None else str(ip), None if port is None else str(port))


def _write(deployments: dict[str, Any], entry: Entry) -> bool:
    deployment = deployments.get(entry.deployment)
    if not isinstance(deployment, dict):
        deployment = deployments[entry.deployment] = {}
    deployment.setdefault("created", entry.created)
    node = deployment
    path = ["service", entry.service]
    if entry.instance is not None:
        path += ["instance", entry.instance]
    for name in path:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node.update(ip=entry.ip, port=str(entry.port))
    return True


def _prune(services: dict[str, Any], entry: Entry) -> None:
    """Remove the entry's instance, the service's instance mapping and the service once empty."""
    service = services.get(entry.service)
    if not isinstance(service, dict):
        return
    instances = service.get("instance")
    if isinstance(instances, dict):
        if entry.instance is not None and instances.get(entry.instance) == {}:
            del instances[entry.instance]
        if not instances:
            del service["instance"]
    if not service:
        del services[entry.service]


def add_registry_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--registry and etcd's TLS and authentication options, shared by every registry command."""
    group = parser.add_argument_group("registry")
    group.add_argument(
        "--registry",
        metavar="URL",
        help="etcd://HOST:PORT[,HOST:PORT...] (v2 API), etcd3://... (v3 API), etcds:// and "
        "etcd3s:// (TLS), http://HOST:PORT (v2, as the original REGISTRY_URL) or file:PATH "
        f"(default: $REGISTRY_URL{', else ' + default if default else ''})",
    )
    group.add_argument(
        "--etcd-ca", metavar="FILE", help="CA bundle for etcd's TLS (env DEVTEST_ROUTER_ETCD_CA)"
    )
    group.add_argument(
        "--etcd-cert", metavar="FILE", help="client certificate (env DEVTEST_ROUTER_ETCD_CERT)"
    )
    group.add_argument(
        "--etcd-key", metavar="FILE", help="client certificate's key (env DEVTEST_ROUTER_ETCD_KEY)"
    )
    group.add_argument(
        "--etcd-user",
        metavar="NAME",
        help="etcd user (env DEVTEST_ROUTER_ETCD_USER); the password only from the environment: "
        "DEVTEST_ROUTER_ETCD_PASSWORD",
    )
    group.set_defaults(registry_default=default)


def registry_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Registry:
    """The registry named by --registry or REGISTRY_URL (the password only from the environment:
    DEVTEST_ROUTER_ETCD_PASSWORD, never on a command line where `ps` shows it)."""
    url = args.registry or environ.get("REGISTRY_URL") or args.registry_default
    if not url:
        raise UsageError("no registry: set REGISTRY_URL or --registry (e.g. etcd://127.0.0.1:2379)")

    def option(name: str) -> str | None:
        value: str | None = getattr(args, f"etcd_{name}", None)
        return value or environ.get(f"DEVTEST_ROUTER_ETCD_{name.upper()}") or None

    tls = Tls(
        ca=option("ca"),
        cert=option("cert"),
        key=option("key"),
        user=option("user"),
        password=environ.get("DEVTEST_ROUTER_ETCD_PASSWORD") or None,
    )
    return open_registry(url, tls)
