"""The registry in etcd's v2 API, through python-etcd (etcd 3.4 and 3.5 started with --enable-v2).

An instance's keys are /deployment/<branch>/service/<service>/instance/<id>/{ip,port} (an entry
without an instance id: the service's own {ip,port}, as the original script wrote them with
curl) and /deployment/<branch>/created, with a TTL. A registration owns the values it wrote:
register() writes plainly (the newest registration of an instance wins), keepalive() refreshes
with refresh=true&prevExist=true&prevValue=<ours> (a compare-and-swap of the TTL alone, which
wakes no watcher; etcd 3.4 takes prevValue with refresh) and writes an expired key again only
create-only (prevExist=false), deregister() deletes with prevValue (compare-and-delete).
"""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import etcd
import urllib3
from urllib3.exceptions import MaxRetryError

from generator.core.keys import (
    PREFIX,
    created_key,
    deployment_key,
    instances_key,
    ip_key,
    port_key,
    service_key,
    services_key,
)
from generator.core.snapshot import parse_json
from generator.memory import no_gc
from generator.registry.base import (
    Changes,
    Endpoint,
    Entry,
    HistoryLost,
    Read,
    RegistryUnavailable,
    Removal,
    Tls,
    address,
)
from generator.registry.etcd_common import MIN_WATCH, SHORTEST_WATCH, describe, first_line, why
from generator.registry.keytree import Change, KeyTree

T = TypeVar("T")


class _FailFastRetry(urllib3.Retry):
    """urllib3's default: every request is retried 3 more times, so a member that does not
    answer costs 4 timeouts before python-etcd fails over. Timeouts (and refused connections:
    urllib3's NewConnectionError is a ConnectTimeoutError) are not retried here, other errors
    still are (such as a stale pooled connection after a restart)."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> _FailFastRetry:
        if isinstance(error, urllib3.exceptions.TimeoutError):
            raise MaxRetryError(_pool, url or "", error)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class _Client(etcd.Client):  # type: ignore[misc]  # python-etcd has no type hints
    """etcd.Client whose connection pool fails over at the first timeout (see _FailFastRetry).

    python-etcd creates its pool and queries /v2/machines inside __init__, so the retry policy
    has to be in place when the pool is assigned.
    """

    @property
    def http(self) -> Any:
        return self.__dict__.get("_pool")

    @http.setter
    def http(self, pool: urllib3.PoolManager) -> None:
        pool.connection_pool_kw["retries"] = _FailFastRetry(redirect=3)
        self.__dict__["_pool"] = pool


class EtcdV2Registry:
    """Registry over etcd's v2 keys API at one or more members.

    python-etcd fails over to the next member (allow_reconnect) when the one in use does not
    answer. When none does it raises, and its list of members is left empty; the client is then
    built again from the configured endpoints on the next call.
    """

    def __init__(
        self, endpoints: tuple[Endpoint, ...], secure: bool, tls: Tls, timeout: float
    ) -> None:
        self.description = describe("v2", endpoints, secure, tls)
        self.endpoints = endpoints
        self.secure = secure
        self.tls = tls
        self.timeout = timeout
        self._client: Any = None
        # Deployments whose `created` carries our TTL; one written without a TTL (by the
        # original curl script) is left alone, or it would start to expire.
        self._created_ttl: dict[str, bool] = {}

    # ----------------------------------------------------------------------------------------
    # connection and errors

    def _connect(self) -> Any:
        if self._client is None:
            cert: str | tuple[str, str] | None = self.tls.cert
            if self.tls.cert and self.tls.key:
                cert = (self.tls.cert, self.tls.key)
            self._client = _Client(
                host=tuple((e.host, e.port) for e in self.endpoints),
                protocol="https" if self.secure else "http",
                allow_reconnect=True,
                read_timeout=self.timeout,
                ca_cert=self.tls.ca,
                cert=cert,
                username=self.tls.user,
                password=self.tls.password,
            )
        return self._client

    def _call(self, action: Callable[[Any], T]) -> T:
        deadline = time.monotonic() + self.timeout
        cluster_changed = False
        while True:
            try:
                return action(self._connect())
            except etcd.EtcdClusterIdChanged:
                # python-etcd raises this once, then trusts the new cluster: read it again.
                if cluster_changed:
                    raise RegistryUnavailable(
                        f"{self.description}: the cluster changed twice while reading it"
                    ) from None
                cluster_changed = True
            except etcd.EtcdInsufficientPermissions:
                raise RegistryUnavailable(
                    f"{self.description}: permission denied; check --etcd-user and "
                    "DEVTEST_ROUTER_ETCD_PASSWORD"
                ) from None
            except (
                etcd.EtcdConnectionFailed,
                urllib3.exceptions.HTTPError,
                http.client.HTTPException,
                OSError,
            ) as error:
                self.close()
                raise RegistryUnavailable(self._unavailable(error)) from None
            except etcd.EtcdException as error:
                # Also what python-etcd raises from its constructor when no member answers.
                cause = getattr(error, "cause", None) or error.__cause__ or error.__context__
                if cause is not None:
                    self.close()
                    raise RegistryUnavailable(self._unavailable(cause)) from None
                # etcd answered, but without a leader (an election after a member died):
                # python-etcd only fails over when a member does not answer. Ask again.
                if _transient(error) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise RegistryUnavailable(f"{self.description}: {first_line(error)}") from None

    def _unavailable(self, error: BaseException) -> str:
        return (
            f"{self.description} is unavailable ({why(error, self.timeout)}): start etcd "
            "or point --registry / REGISTRY_URL at a member that runs"
        )

    # ----------------------------------------------------------------------------------------
    # reading

    def read(self) -> Read:
        def action(client: Any) -> Read:
            try:
                # Not quorum=true: during an election a quorum read hangs until the timeout;
                # the watch is served by the member alone anyway. Not client.read(): its
                # result objects cost more than the request at 100,000 routes.
                response = client.api_execute(
                    client.key_endpoint + PREFIX, client._MGET, params={"recursive": "true"}
                )
            except etcd.EtcdKeyNotFound as error:  # no /deployment: see registry.present
                payload = error.payload if isinstance(error.payload, dict) else {}
                index = self._index(payload.get("index", 0))
                return Read({"deployment": {}}, index, KeyTree(), absent=True)
            with no_gc():
                try:
                    # however deep its directories nest (a 1,500-level key is valid etcd)
                    node = parse_json(response.data)["node"]
                    keys = KeyTree(_values(node))
                except (ValueError, KeyError, TypeError) as error:  # _Malformed is a ValueError
                    raise RegistryUnavailable(
                        f"{self.description}: not etcd's answer ({first_line(error)})"
                    ) from None
            return Read(keys.snapshot(), self._index(response.getheader("x-etcd-index")), keys)

        return self._call(action)

    def _index(self, value: object) -> int:
        """An etcd index from an answer (a header, a payload or an event), or
        RegistryUnavailable: a proxy or another server answered, not etcd."""
        if value is None:  # no X-Etcd-Index header
            return 0
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not (text.isascii() and text.isdigit() and len(text) <= 20):
            raise RegistryUnavailable(
                f"{self.description}: not etcd's answer (an index of "
                f"{_shown(value)} is not a number); is --registry an etcd member?"
            )
        return int(text)

    def wait(self, after: int, timeout: float) -> int | None:
        changes = self.watch(after, timeout)
        return None if changes is None else changes.index

    def watch(self, after: int, timeout: float) -> Changes | None:
        deadline = time.monotonic() + timeout

        def action(client: Any) -> Changes | None:
            while True:
                step = min(max(deadline - time.monotonic(), SHORTEST_WATCH), self.timeout)
                # Connecting gets the whole timeout; only waiting for an event is cut short.
                limits = urllib3.Timeout(connect=self.timeout, read=step)
                try:
                    event = client.watch(PREFIX, index=after + 1, recursive=True, timeout=limits)
                except etcd.EtcdWatchTimedOut:
                    if time.monotonic() >= deadline:
                        return None
                    continue  # quiet for `self.timeout`: watch again
                except etcd.EtcdConnectionFailed as error:
                    # No headers within a wait shorter than MIN_WATCH (a quiet period): not
                    # yet a member that fails; a longer wait says. python-etcd dropped the
                    # member from its list meanwhile: build the client again.
                    if step >= MIN_WATCH or not _read_timed_out(error):
                        raise
                    self.close()
                    return None
                except (etcd.EtcdEventIndexCleared, etcd.EtcdWatcherCleared):
                    raise HistoryLost(
                        f"{self.description}: events after index {after} were cleared "
                        "(etcd v2 keeps only the last 1000)"
                    ) from None
                except etcd.EtcdClusterIdChanged:
                    raise HistoryLost(f"{self.description}: another etcd cluster") from None
                return Changes(self._index(event.modifiedIndex), _change(event))

        return self._call(action)

    # ----------------------------------------------------------------------------------------
    # registering

    def register(self, entry: Entry, ttl: int) -> None:
        def action(client: Any) -> None:
            # Plain writes: the newest registration of an instance wins (see keepalive).
            if ttl <= 0:  # no TTL, like the original snippet: the keys stay until deleted
                client.write(ip_key(entry.key), entry.ip)
                client.write(port_key(entry.key), str(entry.port))
                with contextlib.suppress(etcd.EtcdAlreadyExist):
                    client.write(created_key(entry.deployment), entry.created, prevExist=False)
                return
            client.write(ip_key(entry.key), entry.ip, ttl=ttl)
            client.write(port_key(entry.key), str(entry.port), ttl=ttl)
            self._keep_created(client, entry, ttl)

        self._call(action)
        # Instances of this deployment whose keys expired (a wrapper killed with SIGKILL, a
        # container gone without deregistering) leave empty directories behind; the snapshot
        # never shows them, but they pile up, one per instance id. A failure here costs nothing.
        with contextlib.suppress(etcd.EtcdException, RegistryUnavailable):
            self._call(lambda client: _sweep(client, services_key(entry.deployment)))

    def keepalive(self, entry: Entry, ttl: int) -> str | None:
        def action(client: Any) -> str | None:
            for key, value in (
                (ip_key(entry.key), entry.ip),
                (port_key(entry.key), str(entry.port)),
            ):
                try:  # only while it holds what we wrote; a refresh wakes no watcher
                    client.refresh(key, ttl, prevValue=value)
                    continue
                except etcd.EtcdKeyNotFound:
                    pass
                except etcd.EtcdCompareFailed:  # a newer registration of this instance
                    return _held(client, entry)
                try:  # expired: write it again, create-only (watchers see that)
                    client.write(key, value, ttl=ttl, prevExist=False)
                except etcd.EtcdAlreadyExist:  # written meanwhile: by us, or by a newer one
                    try:
                        client.refresh(key, ttl, prevValue=value)
                    except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                        return _held(client, entry)
            if self._created_ttl.get(entry.deployment):
                try:
                    client.refresh(created_key(entry.deployment), ttl)
                    return None
                except etcd.EtcdKeyNotFound:
                    pass
            self._keep_created(client, entry, ttl)
            return None

        return self._call(action)

    def _keep_created(self, client: Any, entry: Entry, ttl: int) -> None:
        """Create `created` with a TTL, or refresh the TTL of the one there (if it has one)."""
        key = created_key(entry.deployment)
        for _ in range(5):  # each retry follows a concurrent create or expiry
            try:
                client.write(key, entry.created, ttl=ttl, prevExist=False)
                self._created_ttl[entry.deployment] = True
                return
            except etcd.EtcdAlreadyExist:
                pass
            try:
                if client.read(key).ttl is None:
                    self._created_ttl[entry.deployment] = False
                    return
                client.refresh(key, ttl)
                self._created_ttl[entry.deployment] = True
                return
            except etcd.EtcdKeyNotFound:
                continue
        raise RegistryUnavailable(f"{self.description}: {key} keeps changing; try again")

    def deregister(self, entry: Entry, force: bool = False) -> Removal:
        def action(client: Any) -> Removal:
            service = service_key(entry.deployment, entry.service)
            removal = Removal(False)
            if force:
                with contextlib.suppress(etcd.EtcdKeyNotFound):
                    client.delete(service if entry.instance is None else entry.key, recursive=True)
                    removal = Removal(True)
            else:
                # Only an address that is wholly ours: a newer registration of the instance may
                # hold the same ip, or the same port. Each key is deleted with the index it was
                # read at (compare-and-delete), so one written since stays.
                found = _nodes(client, entry)
                ours = {"ip": entry.ip, "port": str(entry.port)}
                if any(node.value != ours[name] for name, node in found.items()):
                    held = (found[name].value if name in found else None for name in ours)
                    removal = Removal(False, address(*held))
                else:
                    for node in found.values():
                        with contextlib.suppress(etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                            client.delete(node.key, prevIndex=node.modifiedIndex)
                            removal = Removal(True)
            # v2 has no transactions. Directories are deleted without recursive=true, which
            # fails once a sibling registering concurrently has written into them: its keys
            # stay. Only `created` can race (see below).
            emptied = [service, services_key(entry.deployment)]
            if entry.instance is not None:
                emptied[:0] = [entry.key, instances_key(entry.deployment, entry.service)]
            for directory in emptied:
                if not _remove_empty_dirs(client, directory):
                    return removal  # something else is still registered under it
            try:
                gone = client.pop(created_key(entry.deployment))
            except etcd.EtcdKeyNotFound:
                gone = None
            if gone is not None and _has_values(client, services_key(entry.deployment)):
                # A sibling registered in between and found our `created`: put it back.
                with contextlib.suppress(etcd.EtcdAlreadyExist):
                    client.write(gone.key, gone.value, ttl=gone.ttl, prevExist=False)
                return removal
            _remove_empty_dirs(client, deployment_key(entry.deployment))
            self._created_ttl.pop(entry.deployment, None)
            return removal

        return self._call(action)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.http is not None:
            client.http.clear()


class _Malformed(ValueError):
    """A node of a read that is not of the shape etcd answers with."""


def _values(node: Any) -> Iterator[tuple[str, str]]:
    """(key, value) of every key under a node of a recursive read (directories left out);
    _Malformed for a node, a list of nodes, a key or a value of a shape etcd never sends."""
    pending = [node]
    while pending:
        current = pending.pop()
        if not isinstance(current, dict):
            raise _Malformed(f"a node is {type(current).__name__}, not an object")
        if current.get("dir"):
            nodes = current.get("nodes", [])
            if not isinstance(nodes, list):
                raise _Malformed(f"the nodes of a directory are {type(nodes).__name__}, not a list")
            pending.extend(nodes)
        elif "value" in current:
            key, value = current.get("key"), current["value"]
            if not isinstance(key, str) or not isinstance(value, str):
                raise _Malformed(f"the key {_shown(key)} or its value is not a string")
            yield key, value


def _shown(value: object) -> str:
    """A value from an answer for a log line: short, one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_WRITES = frozenset({"set", "create", "update", "compareAndSwap"})
_REMOVALS = frozenset({"delete", "compareAndDelete", "expire"})


def _change(event: Any) -> tuple[Change, ...] | None:
    """What a v2 watch event changed; None if it is not of a shape expected (read it all).

    A removed node takes everything under it (a directory deleted or expired); a written key
    has a value. A directory created (or set over a key: v2 replaces it) is empty; one updated
    only had its TTL changed, and keeps its keys.
    """
    key, action = event.key, event.action
    if not isinstance(key, str):
        return None
    if action in _REMOVALS or (event.dir and action in ("set", "create")):
        return (Change(key, None, subtree=True),)
    if event.dir and action == "update":
        return ()
    if action in _WRITES and not event.dir and isinstance(event.value, str):
        return (Change(key, event.value),)
    return None


def _has_values(client: Any, directory: str) -> bool:
    """Whether any key with a value is under `directory` (not only empty directories)."""
    try:
        return any(not node.dir for node in client.read(directory, recursive=True).leaves)
    except etcd.EtcdKeyNotFound:
        return False


def _remove_empty_dirs(client: Any, directory: str) -> bool:
    """Delete `directory` if only empty directories are under it (etcd v2 keeps them after
    their keys expire); False, deleting nothing more, once a key with a value is found.

    Each directory is deleted with dir=true alone, which fails if a key appeared in it since.
    """
    for _ in range(5):
        try:
            client.delete(directory, dir=True)
            return True
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return True
        except etcd.EtcdDirNotEmpty:
            pass
        try:
            nodes = list(client.read(directory, recursive=True).get_subtree())
        except etcd.EtcdKeyNotFound:
            return True
        if any(not node.dir for node in nodes):
            return False
        for node in sorted(nodes, key=lambda node: -node.key.count("/")):  # deepest first
            if node.key != directory:
                with contextlib.suppress(etcd.EtcdKeyNotFound, etcd.EtcdDirNotEmpty):
                    client.delete(node.key, dir=True)
    return False


def _sweep(client: Any, directory: str) -> None:
    """Delete the directories under `directory` that hold no key with a value (etcd v2 keeps a
    directory when the last key in it expires), deepest first. Each is deleted with dir=true
    alone, which fails if a registration has written a key in it since: that one stays."""
    try:
        nodes = list(client.read(directory, recursive=True).get_subtree())
    except etcd.EtcdKeyNotFound:
        return
    holding = {directory}
    for node in nodes:
        if not node.dir:
            parts = node.key.split("/")
            holding.update("/".join(parts[:end]) for end in range(1, len(parts)))
    empty = [node.key for node in nodes if node.dir and node.key not in holding]
    for key in sorted(empty, key=lambda key: -key.count("/")):
        with contextlib.suppress(etcd.EtcdKeyNotFound, etcd.EtcdDirNotEmpty, etcd.EtcdNotDir):
            client.delete(key, dir=True)


def _read_timed_out(error: BaseException) -> bool:
    """Whether python-etcd gave up on a member because a read timed out (not a refusal)."""
    seen: object = error
    for _ in range(5):
        if isinstance(seen, urllib3.exceptions.ReadTimeoutError):
            return True
        seen = getattr(seen, "cause", None) or getattr(seen, "reason", None)
    return False


def _transient(error: Exception) -> bool:
    """An etcd error that a moment later may be gone: no leader, raft busy or timed out."""
    payload = getattr(error, "payload", None) or {}
    status = payload.get("status") if isinstance(payload, dict) else None
    return isinstance(error, etcd.EtcdLeaderElectionInProgress) or (
        isinstance(status, int) and status >= 500
    )


def _nodes(client: Any, entry: Entry) -> dict[str, Any]:
    """{"ip": node, "port": node} of those of the entry's keys that exist (and are not dirs)."""
    found = {}
    for name in ("ip", "port"):
        try:
            node = client.read(f"{entry.key}/{name}")
        except etcd.EtcdKeyNotFound:
            continue
        if not node.dir:
            found[name] = node
    return found


def _held(client: Any, entry: Entry) -> str:
    """The address in the entry's ip and port keys now (another registration's)."""
    found = _nodes(client, entry)
    return address(*(found[name].value if name in found else None for name in ("ip", "port")))
