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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import Error, UsageError
from .keytree import PREFIX as PREFIX  # re-exported: the backends and tests import them here
from .keytree import Change, KeyTree
from .keytree import build_snapshot as build_snapshot
from .snapshot import loads

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


@dataclass(frozen=True, slots=True)
class Changes:
    """What a watch saw after some index."""

    index: int  # watch again after this
    changes: tuple[Change, ...] | None  # in order; None: unknown, read everything again


@dataclass(frozen=True, slots=True)
class Entry:
    """One service container's registration, under keys named by the slug of its branch."""

    deployment: str
    service: str
    ip: str
    port: int
    created: str  # RFC 3339, UTC


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
        """Write ip, port and (unless present) created, expiring after `ttl` seconds."""

    def keepalive(self, entry: Entry, ttl: int) -> None:
        """Extend the entry's TTL without waking watchers; rewrite whatever already expired."""

    def deregister(self, entry: Entry) -> None:
        """Delete the service's keys, and the deployment's when no other service is left."""

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
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed [ of an IPv6 address
        raise UsageError(f"registry {url!r}: {error}; use etcd://HOST:PORT") from None
    if parts.scheme not in schemes:
        raise UsageError(
            f"registry {url!r}: unknown scheme; use etcd://HOST:PORT[,HOST:PORT] (v2 API), "
            "etcd3://HOST:PORT[,...] (v3 API), http://HOST:PORT (v2, as REGISTRY_URL) or "
            "file:PATH"
        )
    kind, tls = schemes[parts.scheme]
    endpoints = []
    for item in parts.netloc.split(","):
        found = _HOST_PORT.fullmatch(item)
        if not found or not 0 < int(found.group("port")) < 65536:
            raise UsageError(
                f"registry {url!r}: {item!r} is not HOST:PORT with a port 1-65535 "
                "(credentials go in --etcd-user and DEVTEST_ROUTER_ETCD_PASSWORD, not the URL)"
            )
        endpoints.append(Endpoint(found.group("host").strip("[]"), int(found.group("port"))))
    return kind, tuple(endpoints), tls, parts.path


def open_registry(url: str, tls: Tls = Tls(), timeout: float = 5.0) -> Registry:
    """The backend for `url` (see parse_url). Connects lazily: a down etcd fails on first use."""
    kind, endpoints, secure, path = parse_url(url)
    if kind == "file":
        return FileRegistry(Path(path))
    if kind == "etcd2":
        from .etcd2 import EtcdV2Registry  # imported on use: cold `apply` runs never pay for it

        return EtcdV2Registry(endpoints, secure, tls, timeout)
    from .etcd3 import EtcdV3Registry

    return EtcdV3Registry(endpoints, secure, tls, timeout)


class FileRegistry:
    """A YAML or JSON file holding a snapshot; a change of its modification time is a change.

    For local use and demos. Registration rewrites the file (atomically, under a lock); a file
    has no TTLs, so a killed process leaves its entry until it is deregistered.
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

    def _edit(self, change: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = loads(self.path.read_text(encoding="utf-8"), str(self.path))
            except FileNotFoundError:
                data = {"deployment": {}}
            change(data["deployment"])
            descriptor, staged = tempfile.mkstemp(dir=self.path.parent, prefix=".registry.")
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=2, sort_keys=True)
                file.write("\n")
            os.chmod(staged, 0o644)
            os.replace(staged, self.path)

    def register(self, entry: Entry, ttl: int) -> None:
        def change(deployments: dict[str, Any]) -> None:
            deployment = deployments.setdefault(entry.deployment, {})
            if not isinstance(deployment, dict):
                deployment = deployments[entry.deployment] = {}
            deployment.setdefault("created", entry.created)
            services = deployment.setdefault("service", {})
            services[entry.service] = {"ip": entry.ip, "port": str(entry.port)}

        self._edit(change)

    def keepalive(self, entry: Entry, ttl: int) -> None:
        """Nothing expires in a file; put the entry back only if someone removed it."""
        current = self.read().snapshot["deployment"].get(entry.deployment)
        services = current.get("service") if isinstance(current, dict) else None
        if not isinstance(services, dict) or entry.service not in services:
            self.register(entry, ttl)

    def deregister(self, entry: Entry) -> None:
        def change(deployments: dict[str, Any]) -> None:
            deployment = deployments.get(entry.deployment)
            if not isinstance(deployment, dict):
                return
            services = deployment.get("service")
            if isinstance(services, dict):
                services.pop(entry.service, None)
            if not services:
                deployments.pop(entry.deployment, None)

        self._edit(change)

    def close(self) -> None:
        pass


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
