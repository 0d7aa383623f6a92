"""Registries: the records every backend shares and the Registry protocol they implement.

One small interface (Registry) over three backends: etcd's v2 API (etcd2.py), etcd's v3 API
through its JSON gateway (etcd3.py) and a file (file.py); open.py picks one for a URL. All of
them hand out the same etcdwatch-shaped snapshot:
{"deployment": {<branch>: {"created": ..., "service": {...}}}}. This module imports no backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from generator.core.errors import Error
from generator.core.keys import PREFIX, instance_key
from generator.registry.keytree import Change, KeyTree


class RegistryUnavailable(Error):
    """The registry cannot be reached or read; nothing was changed."""


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
    """One service container's registration: one instance of a service.

    `deployment` and `service` are the names it is registered under (the key segments, as in
    Route). `register` passes the labels of the branch and of the service as given, so an
    entry of its is registered under its own labels.

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


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
