"""The registry in etcd's v3 API, through its JSON gateway (/v3/, etcd 3.4 and later) and etcd3gw.

Keys as in v2 (/deployment/<branch>/service/<service>/instance/<id>/{ip,port}, or the service's
own {ip,port} for an entry without an instance id, and /deployment/<branch>/created), attached
to a lease per registration, which owns them: register() puts them on a new lease (the newest
registration of an instance wins); keepalive() refreshes the lease, which creates no event, and
puts back only keys that are absent (a transaction comparing create_revision with 0), never
over another lease's; deregister() deletes them in a transaction comparing their lease with
ours, then revokes our lease (which removes only keys attached to it). The `deregister` command,
which holds no lease, compares the values instead. v2 and v3 keys live apart in etcd: v3
readers see only what v3 registrants wrote.

etcd3gw does the requests (sessions, TLS, lease grant/keepalive/revoke, transactions). Added
on top of its session and post(), each where it falls short (see the comments there): the
range with its header revision, the watch, failover across endpoints and user/password auth.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import requests
import urllib3
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
)
from etcd3gw.lease import Lease

from generator.core.keys import (
    UNDER,
    created_key,
    deployment_key,
    ip_key,
    port_key,
    service_key,
    services_key,
)
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

# Keys per range request of a full read: at 100,000 routes (210,000 keys) 11 ranges, each
# answered in a fraction of the timeout even on a busy member.
PAGE_SIZE = 20_000

_GRPC_NOT_FOUND = 5
_GRPC_UNAUTHENTICATED = 16


class _Unanswered(Exception):
    """The member took the request but did not answer as etcd does: try another one."""


class _TokenRejected(Exception):
    """The member does not know our auth token (expired, or issued by another member)."""


# Failures of one member: the next endpoint may answer. (503 and 500 are etcd's "no leader",
# "request timed out" and the like; etcd3gw maps them to these exceptions.)
_MEMBER_FAILURES = (
    ConnectionFailedError,
    ConnectionTimeoutError,
    InternalServerError,
    requests.RequestException,  # refused, timed out, or cut off mid-stream (ChunkedEncodingError)
    _Unanswered,
)


class EtcdV3Registry:
    """Registry over etcd's v3 JSON gateway at one or more members, with failover."""

    def __init__(
        self, endpoints: tuple[Endpoint, ...], secure: bool, tls: Tls, timeout: float
    ) -> None:
        self.description = describe("v3", endpoints, secure, tls)
        self.endpoints = endpoints
        self.tls = tls
        self.timeout = timeout
        self.page_size = PAGE_SIZE  # keys per range of a full read
        # One client (and so one requests session, with its own auth token) per endpoint:
        # etcd3gw talks to a single host. api_path is fixed at /v3/ (etcd >= 3.4) instead of
        # etcd3gw's discovery, which costs a GET /version per endpoint.
        self._clients = [
            Etcd3Client(
                host=e.host,
                port=e.port,
                protocol="https" if secure else "http",
                ca_cert=tls.ca,
                cert_key=tls.key,
                cert_cert=tls.cert,
                timeout=timeout,
                api_path="/v3/",
            )
            for e in endpoints
        ]
        for client in self._clients:
            # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the session's CA, so
            # --etcd-ca would be ignored wherever they are set; etcd is not reached through
            # proxies from the environment either (nor is it by the v2 backend).
            client.session.trust_env = False
            if tls.cert and not tls.key:  # etcd3gw only takes a separate certificate and key
                client.session.cert = tls.cert
        self._current = 0  # the endpoint that answered last; tried first
        self._leases: dict[tuple[str, str, str | None], int] = {}  # see _owner(); lease ID

    # ----------------------------------------------------------------------------------------
    # failover and authentication: etcd3gw has neither

    def _call(self, action: Callable[[Etcd3Client], T]) -> T:
        """action(client) on the endpoint that answered last, else on the others in turn.

        While members answer with errors such as "leader changed" or "no leader" (an election
        after a member died), all are asked again until `timeout` has passed.
        """
        deadline = time.monotonic() + self.timeout
        count = len(self._clients)
        while True:
            failures: list[str] = []
            transient = False
            for step in range(count):
                index = (self._current + step) % count
                client = self._clients[index]
                endpoint = f"{client.host}:{client.port}"
                try:
                    result = self._authenticated(client, action)
                except _MEMBER_FAILURES as error:
                    answered = isinstance(error, _Unanswered) or (
                        isinstance(error, Etcd3Exception) and bool(_grpc(error))
                    )
                    transient = transient or answered
                    reason = _message(error) if answered else why(error, self.timeout)
                    failures.append(f"{endpoint}: {reason}")
                    continue
                except Etcd3Exception as error:
                    message = _message(error)
                    if any(word in message for word in ("user name is empty", "permission denied")):
                        message += "; check --etcd-user and DEVTEST_ROUTER_ETCD_PASSWORD"
                    raise RegistryUnavailable(
                        f"{self.description}: {endpoint} refused the request: {message}"
                    ) from None
                self._current = index
                return result
            if not transient or time.monotonic() >= deadline:
                raise RegistryUnavailable(
                    f"{self.description} is unavailable ({'; '.join(failures)}): start etcd or "
                    "point --registry / REGISTRY_URL at a member that runs"
                )
            time.sleep(0.1)

    def _authenticated(self, client: Etcd3Client, action: Callable[[Etcd3Client], T]) -> T:
        if not self.tls.user:
            return action(client)
        for attempt in (1, 2):
            if "Authorization" not in client.session.headers:
                self._authenticate(client)
            try:
                return action(client)
            except (Etcd3Exception, _TokenRejected) as error:
                rejected = isinstance(error, _TokenRejected) or (
                    _grpc_code(error) == _GRPC_UNAUTHENTICATED
                )
                if not rejected or attempt == 2:
                    raise
                # Simple tokens expire (5 minutes idle by default) and are only valid on the
                # member that issued them: authenticate again, once.
                del client.session.headers["Authorization"]
        raise AssertionError("unreachable")

    def _authenticate(self, client: Etcd3Client) -> None:
        # The gateway has no basic auth: POST /v3/auth/authenticate for a token, then send it
        # as the Authorization header (etcd3gw has no support for this).
        try:
            reply = client.post(
                client.get_url("/auth/authenticate"),
                json={"name": self.tls.user, "password": self.tls.password},
            )
        except _MEMBER_FAILURES:
            raise
        except Etcd3Exception as error:
            raise RegistryUnavailable(
                f"{self.description}: authentication as {self.tls.user!r} failed "
                f"({_message(error)}); check --etcd-user and DEVTEST_ROUTER_ETCD_PASSWORD"
            ) from None
        client.session.headers["Authorization"] = str(reply["token"])

    # ----------------------------------------------------------------------------------------
    # reading

    def read(self) -> Read:
        def action(client: Etcd3Client) -> Read:
            # Not etcd3gw's get_prefix(): it drops the response header, and with it the
            # revision this snapshot is at, which wait() needs.
            with no_gc():
                try:
                    revision, kvs = self._read_pages(client)
                    keys = KeyTree(_pairs(kvs))
                except ValueError as error:  # _Malformed and binascii.Error are ValueErrors
                    raise RegistryUnavailable(
                        f"{self.description}: not etcd's answer ({first_line(error)}); is "
                        "--registry an etcd member's gateway?"
                    ) from None
            # v3 has no directories: no key under the prefix is an absent prefix
            return Read(keys.snapshot(), revision, keys, absent=not kvs)

        return self._call(action)

    def _read_pages(self, client: Etcd3Client) -> tuple[int, list[Any]]:
        """Every key under the prefix, in ranges of at most `page_size` keys, all at the first
        range's revision (one consistent snapshot): the revision and the key-values. etcd
        answers a range only once it has built all of it, so one range of a large registry
        (210,000 keys at 100,000 routes) could outlast the timeout on a busy member, which
        then never reads; each page comes well within it."""
        url = client.get_url("/kv/range")
        request: dict[str, Any] = {**_range(UNDER), "limit": self.page_size}
        reply = client.post(url, json=request)
        revision = _revision(reply)
        kvs = _kvs(reply)
        after = b""
        while reply.get("more") is True:
            last = kvs[-1].get("key") if kvs and isinstance(kvs[-1], dict) else None
            if not isinstance(last, str):
                raise _Malformed("a range has more keys but its last key is missing")
            following = binascii.a2b_base64(last) + b"\0"  # the first key after the last one
            if following <= after:  # a page that does not move on would be asked forever
                raise _Malformed("a range's keys do not follow the range before it")
            after = following
            request = {**request, "key": base64.b64encode(after).decode(), "revision": revision}
            reply = client.post(url, json=request)
            kvs.extend(_kvs(reply))
        return revision, kvs

    def wait(self, after: int, timeout: float) -> int | None:
        changes = self.watch(after, timeout)
        return None if changes is None else changes.index

    def watch(self, after: int, timeout: float) -> Changes | None:
        deadline = time.monotonic() + timeout
        return self._call(lambda client: self._watch(client, after, deadline))

    def _watch(self, client: Etcd3Client, after: int, deadline: float) -> Changes | None:
        """The first change after `after` (all events of its revision), None at the deadline.

        Not etcd3gw's watch_prefix(): it skips a response with `canceled` (so a compacted
        start revision or a rejected token leaves it waiting forever), its request has no
        timeout, and its thread and queue are more than one blocking read needs.
        """
        request: dict[str, Any] = {"create_request": {**_range(UNDER), "start_revision": after + 1}}
        while True:
            # Each read may wait at most this long; a member quiet for `self.timeout` is asked
            # again, so that one that stopped answering is noticed. Until etcd confirms the
            # watch (created) at least MIN_WATCH; after that only until the deadline.
            step = min(max(deadline - time.monotonic(), MIN_WATCH), self.timeout)
            created = False
            try:
                with client.session.post(
                    client.get_url("/watch"),
                    json=request,
                    stream=True,
                    timeout=(self.timeout, step),
                ) as response:
                    if response.status_code >= 500:
                        raise _Unanswered(f"HTTP {response.status_code} {response.reason}")
                    if response.status_code != 200:
                        raise Etcd3Exception(response.text, response.reason)
                    confirmed: list[bool] = []  # [True] once etcd confirmed the watch
                    for line in _messages(response, confirmed, self.timeout, deadline):
                        if not line.strip():
                            continue
                        try:
                            message = json.loads(line)
                        except ValueError:
                            message = None
                        if not isinstance(message, dict):
                            raise _Unanswered(f"not etcd's answer: {line[:80]!r}")
                        if "error" in message:  # the gateway lost its connection to etcd
                            error = message["error"]
                            detail = error.get("message") if isinstance(error, dict) else error
                            raise _Unanswered(_shown(detail))
                        result = message.get("result", {})
                        compact = (
                            result.get("compact_revision", 0) if isinstance(result, dict) else None
                        )
                        if not isinstance(compact, int | str) or not str(compact).isdigit():
                            raise _Unanswered(f"not etcd's answer: {line[:80]!r}")
                        if int(compact):
                            raise HistoryLost(
                                f"{self.description}: revision {after + 1} was compacted "
                                f"(compact revision {result['compact_revision']})"
                            )
                        if result.get("canceled"):
                            reason = str(result.get("cancel_reason", "watch canceled"))
                            if "auth token" in reason:
                                raise _TokenRejected(reason)
                            raise Etcd3Exception(reason, reason)
                        if result.get("created") and not created:
                            created = True
                            confirmed.append(True)
                            _wait_until(response, deadline)
                        events = result.get("events")
                        if events:
                            return _changes(events)
                raise _Unanswered("the watch ended")
            except (requests.ConnectionError, requests.Timeout) as error:
                if not (created and _timed_out(error)):
                    raise  # no watch established: the member failed
                if time.monotonic() >= deadline:
                    return None

    # ----------------------------------------------------------------------------------------
    # registering

    def register(self, entry: Entry, ttl: int) -> None:
        self._call(lambda client: self._register(client, entry, ttl))

    def _register(self, client: Etcd3Client, entry: Entry, ttl: int) -> None:
        if ttl <= 0:  # no TTL: keys without a lease stay until deregistered, like the snippet's
            self._put_entry(client, entry, 0)
            return
        lease = client.lease(ttl)
        self._put_entry(client, entry, lease.id)  # plainly: the newest registration wins
        old = self._leases.get(_owner(entry))
        self._leases[_owner(entry)] = lease.id
        if old is not None and old != lease.id:  # registered again: retire the old lease
            self._move_created(client, entry.deployment, old, to=lease.id)
            _revoke(client, old)

    def _put_entry(self, client: Etcd3Client, entry: Entry, lease: int) -> None:
        """ip and port, and created unless present, all with `lease`: one transaction."""
        ip, port = _keys(entry)
        puts = [_put(ip, entry.ip, lease), _put(port, str(entry.port), lease)]
        created = _put(created_key(entry.deployment), entry.created, lease)
        client.transaction(
            {
                "compare": [_absent(created_key(entry.deployment))],
                "success": [*puts, created],
                "failure": puts,
            }
        )

    def keepalive(self, entry: Entry, ttl: int) -> str | None:
        def action(client: Etcd3Client) -> str | None:
            lease = self._leases.get(_owner(entry))
            if lease is None:
                lease = self._find_lease(client, entry)
            if lease is not None and Lease(lease, client).refresh() <= 0:
                lease = None  # expired, and with it our keys
            keys = [*_keys(entry), created_key(entry.deployment)]
            if lease is not None:
                self._leases[_owner(entry)] = lease
                # Read-only (no revision, no event) while everything is there. `created` goes
                # when the lease it is attached to ends (another service's, which may have
                # crashed).
                check = client.transaction(
                    {
                        "compare": [*(_on(key, lease) for key in keys[:2]), _present(keys[2])],
                        "success": [],
                        "failure": [_get(key) for key in keys],
                    }
                )
                if check.get("succeeded"):
                    return None
                found = _responses(check)
            else:
                found = self._get(client, keys)
            # Write again only what is absent (create-only), never over another lease's keys.
            ip, port = (found.get(key) for key in keys[:2])
            if any(kv is not None and _lease(kv) != lease for kv in (ip, port)):
                return _holder(ip, port)  # a newer registration of this instance
            if lease is None:
                lease = client.lease(ttl).id
                old = self._leases.get(_owner(entry))
                self._leases[_owner(entry)] = lease
                if old is not None and old != lease:
                    self._move_created(client, entry.deployment, old, to=lease)
            missing = [key for key in keys[:2] if found.get(key) is None]
            values = {keys[0]: entry.ip, keys[1]: str(entry.port)}
            if missing:
                reply = client.transaction(
                    {
                        "compare": [_absent(key) for key in missing],
                        "success": [_put(key, values[key], lease) for key in missing],
                        "failure": [_get(key) for key in keys[:2]],
                    }
                )
                if not reply.get("succeeded"):  # written meanwhile: by a newer registration
                    now = _responses(reply)
                    return _holder(now.get(keys[0]), now.get(keys[1]))
            created = _put(keys[2], entry.created, lease)
            client.transaction({"compare": [_absent(keys[2])], "success": [created], "failure": []})
            return None

        return self._call(action)

    def deregister(self, entry: Entry, force: bool = False) -> Removal:
        def action(client: Etcd3Client) -> Removal:
            lease = self._leases.get(_owner(entry))
            if force:
                removal, released = self._remove_all(client, entry)
            elif lease is not None:
                removal, released = self._remove_leased(client, entry, lease)
            else:
                removal, released = self._remove_by_value(client, entry)
            # `created` next, then our lease, which holds nothing by then. Revoking first would
            # delete a `created` on our lease that a sibling registering meanwhile relies on.
            leases = sorted(released | ({lease} if lease else set()))
            for each in leases or (None,):
                self._release_created(client, entry.deployment, each)
            if lease is not None:
                _revoke(client, lease)
            self._leases.pop(_owner(entry), None)
            return removal

        return self._call(action)

    def _remove_leased(
        self, client: Etcd3Client, entry: Entry, lease: int
    ) -> tuple[Removal, set[int]]:
        """Delete the entry's keys while they are on our lease (a transaction)."""
        keys = _keys(entry)
        reply = client.transaction(
            {
                "compare": [_on(key, lease) for key in keys],
                "success": [_delete(key) for key in keys],
                "failure": [_get(key) for key in keys],
            }
        )
        if reply.get("succeeded"):
            return Removal(True), set()
        found = _responses(reply)
        ours = [kv for kv in found.values() if _lease(kv) == lease]
        for kv in ours:  # a half left of ours (the other deleted behind our back)
            client.transaction(
                {"compare": [_unchanged(kv)], "success": [_delete(_text(kv["key"]))]}
            )
        others = [kv for kv in found.values() if _lease(kv) != lease]
        ip, port = (found.get(key) for key in keys)
        return Removal(bool(ours), _holder(ip, port) if others else None), set()

    def _remove_by_value(self, client: Etcd3Client, entry: Entry) -> tuple[Removal, set[int]]:
        """Delete the entry's keys while they hold its address (not registered here: the
        `deregister` command); the lease they were on is left to its registration."""
        keys = _keys(entry)
        found = self._get(client, keys)
        ip, port = (found.get(key) for key in keys)
        if ip is None and port is None:
            return Removal(False), set()
        if _holder(ip, port) != entry.address:
            return Removal(False, _holder(ip, port)), set()
        assert ip is not None and port is not None
        reply = client.transaction(  # unless they changed since they were read
            {
                "compare": [_unchanged(ip), _unchanged(port)],
                "success": [_delete(key) for key in keys],
                "failure": [_get(key) for key in keys],
            }
        )
        if not reply.get("succeeded"):
            now = _responses(reply)
            return Removal(False, _holder(now.get(keys[0]), now.get(keys[1]))), set()
        return Removal(True), {_lease(ip), _lease(port)} - {0}

    def _remove_all(self, client: Etcd3Client, entry: Entry) -> tuple[Removal, set[int]]:
        """Delete whatever is there: the instance's keys, or (no instance) the whole service."""
        if entry.instance is None:
            ranges = [_range(service_key(entry.deployment, entry.service) + "/")]
        else:
            ranges = [_range(key, False) for key in _keys(entry)]
        leases: set[int] = set()
        deleted = 0
        for each in ranges:
            reply = client.post(client.get_url("/kv/deleterange"), json={**each, "prev_kv": True})
            deleted += int(reply.get("deleted", 0))
            leases |= {_lease(kv) for kv in reply.get("prev_kvs", [])} - {0}
        return Removal(deleted > 0), leases

    def _find_lease(self, client: Etcd3Client, entry: Entry) -> int | None:
        """The lease of the entry's keys when they hold its address (registered by this entry
        before, in another process), else None."""
        keys = _keys(entry)
        found = self._get(client, keys)
        ip, port = (found.get(key) for key in keys)
        if ip is None or port is None or _holder(ip, port) != entry.address:
            return None
        lease = _lease(ip)
        return lease if lease and lease == _lease(port) else None

    def _get(self, client: Etcd3Client, keys: list[str]) -> dict[str, dict[str, Any]]:
        """{key: raw key-value} of those of `keys` that exist, read at one revision."""
        reply = client.transaction({"compare": [], "success": [_get(key) for key in keys]})
        return _responses(reply)

    def _release_created(self, client: Etcd3Client, deployment: str, lease: int | None) -> None:
        """Delete `created` if no service is left; else move it off `lease` (about to be
        revoked) onto a remaining service's lease.

        Each step is a transaction that holds only if what it read is unchanged (no service
        appeared, the chosen service is still there), so a sibling registering concurrently
        never loses `created`; after a concurrent change it reads again.
        """
        created_path = created_key(deployment)
        services = services_key(deployment) + "/"
        for _ in range(10):
            kvs = self._range(client, deployment_key(deployment) + "/")
            created = kvs.get(created_path)
            # keys still on `lease` go with it (a half of ours deleted behind our back)
            others = [
                kv
                for key, kv in kvs.items()
                if key.startswith(services) and (lease is None or _lease(kv) != lease)
            ]
            if created is None:
                return
            if not others:
                left = [kv for key, kv in kvs.items() if key.startswith(services)]
                compare = [_unchanged(created), *(_unchanged(kv) for kv in left)]
                if not left:
                    compare.append(_absent(services, prefix=True))
                change: dict[str, Any] = {"request_delete_range": {"key": created["key"]}}
            elif lease is not None and int(created.get("lease", 0)) == lease:
                compare = [_unchanged(created), _unchanged(others[0])]
                change = {"request_put": _reput(created, int(others[0].get("lease", 0)))}
            else:
                return
            reply = client.transaction({"compare": compare, "success": [change], "failure": []})
            if reply.get("succeeded"):
                return
        raise RegistryUnavailable(f"{self.description}: {created_path} keeps changing; try again")

    def _move_created(self, client: Etcd3Client, deployment: str, lease: int, to: int) -> None:
        """Attach `created`, if on `lease`, to lease `to` (registered again: a new lease)."""
        created = self._range(client, created_key(deployment), prefix=False).get(
            created_key(deployment)
        )
        if created is not None and int(created.get("lease", 0)) == lease:
            client.transaction(  # if it changed meanwhile, it is not ours to move any more
                {
                    "compare": [_unchanged(created)],
                    "success": [{"request_put": _reput(created, to)}],
                    "failure": [],
                }
            )

    def _range(self, client: Etcd3Client, key: str, prefix: bool = True) -> dict[str, Any]:
        """{key: raw key-value from the gateway} for `key` or every key under it."""
        reply = client.post(client.get_url("/kv/range"), json=_range(key, prefix))
        return {_text(kv["key"]): kv for kv in reply.get("kvs", [])}

    def close(self) -> None:
        for client in self._clients:
            client.session.close()


# --------------------------------------------------------------------------------------------
# gateway JSON: keys and values are base64; int64 fields are strings in answers


def _b64(text: str) -> str:
    # Not etcd3gw's _encode: it encodes str as Latin-1, while its prefix helper uses UTF-8.
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode("utf-8", errors="replace")


class _Malformed(ValueError):
    """An answer that is not of the shape etcd's gateway sends."""


def _shown(value: object) -> str:
    """A value from an answer for a log line: short, one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _revision(reply: Any) -> int:
    """The revision in a range's header; _Malformed if there is none that is a number."""
    header = reply.get("header") if isinstance(reply, dict) else None
    revision = header.get("revision") if isinstance(header, dict) else None
    text = revision if isinstance(revision, str) else str(revision)
    if isinstance(revision, bool) or not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise _Malformed(f"a revision of {_shown(revision)} is not a number")
    return int(text)


def _kvs(reply: Any) -> list[Any]:
    """A range's key-values (none: the gateway leaves the field out)."""
    kvs = reply.get("kvs", []) if isinstance(reply, dict) else None
    if not isinstance(kvs, list):
        raise _Malformed(f"kvs is {type(kvs).__name__}, not a list")
    return kvs


def _pairs(kvs: list[Any]) -> Iterator[tuple[str, str]]:
    """(key, value) of a range's key-values, decoded (an empty value is left out by the
    gateway); _Malformed for a key-value of another shape."""
    decode = binascii.a2b_base64
    for kv in kvs:
        if not isinstance(kv, dict):
            raise _Malformed(f"a key-value is {type(kv).__name__}, not an object")
        value = kv.get("value")
        if not isinstance(kv.get("key"), str) or not isinstance(value, str | None):
            raise _Malformed(f"the key {_shown(kv.get('key'))} or its value is not base64 text")
        yield (
            decode(kv["key"]).decode("utf-8", errors="replace"),
            decode(value).decode("utf-8", errors="replace") if value else "",
        )


def _changes(events: list[Any]) -> Changes:
    """A watch response's events (one revision) as changes; changes None (read it all) for an
    event not of the shape expected. Without a revision the answer is not etcd's."""
    try:
        revision = max(int(event["kv"]["mod_revision"]) for event in events)
    except (KeyError, TypeError, ValueError) as error:
        raise _Unanswered(f"a watch event without a revision ({first_line(error)})") from None
    changes: list[Change] = []
    try:
        for event in events:
            kv = event["kv"]
            key = _text(kv["key"])
            kind = event.get("type", "PUT")  # the gateway leaves out PUT, the enum's zero
            if kind == "PUT":
                changes.append(Change(key, _text(kv["value"]) if kv.get("value") else ""))
            elif kind == "DELETE":
                changes.append(Change(key, None))
            else:
                return Changes(revision, None)
    except (KeyError, TypeError, ValueError, AttributeError):
        return Changes(revision, None)
    return Changes(revision, tuple(changes))


def _range(key: str, prefix: bool = True) -> dict[str, str]:
    """{"key": ...} for one key, with "range_end" for every key that starts with `key`."""
    if not prefix:
        return {"key": _b64(key)}
    raw = key.encode("utf-8")
    end = raw[:-1] + bytes([raw[-1] + 1])  # our prefixes end in "/": no 0xff overflow
    return {"key": _b64(key), "range_end": base64.b64encode(end).decode("ascii")}


def _put(key: str, value: str, lease: int) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}}


def _absent(key: str, prefix: bool = False) -> dict[str, Any]:
    """Compare: no such key (with prefix: no key in the range; etcd >= 3.3)."""
    return {**_range(key, prefix), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def _present(key: str) -> dict[str, Any]:
    return {**_range(key, False), "target": "CREATE", "result": "GREATER", "create_revision": 0}


def _reput(kv: dict[str, Any], lease: int) -> dict[str, Any]:
    """A put of the key-value as read (base64 still), on `lease` (0: none)."""
    return {"key": kv["key"], "value": kv.get("value", ""), "lease": lease}


def _unchanged(kv: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": kv["key"],
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": kv["mod_revision"],
    }


def _owner(entry: Entry) -> tuple[str, str, str | None]:
    return (entry.deployment, entry.service, entry.instance)


def _keys(entry: Entry) -> list[str]:
    """The entry's ip and port keys."""
    return [ip_key(entry.key), port_key(entry.key)]


def _on(key: str, lease: int) -> dict[str, Any]:
    """Compare: the key is attached to `lease` (false when it does not exist)."""
    return {"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def _get(key: str) -> dict[str, Any]:
    return {"request_range": _range(key, False)}


def _delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": _range(key, False)}


def _responses(reply: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{key: raw key-value} of the ranges a transaction answered (keys that exist)."""
    found: dict[str, dict[str, Any]] = {}
    for response in reply.get("responses", []):
        for kv in response.get("response_range", {}).get("kvs", []):
            found[_text(kv["key"])] = kv
    return found


def _lease(kv: dict[str, Any]) -> int:
    return int(kv.get("lease", 0))


def _holder(ip: dict[str, Any] | None, port: dict[str, Any] | None) -> str:
    """The address in raw ip and port key-values (of another registration, for a log line)."""

    def value(kv: dict[str, Any] | None) -> str | None:
        return None if kv is None else _text(kv["value"]) if kv.get("value") else ""

    return address(value(ip), value(port))


def _revoke(client: Etcd3Client, lease: int) -> None:
    try:
        Lease(lease, client).revoke()
    except Etcd3Exception as error:
        if _grpc_code(error) != _GRPC_NOT_FOUND:
            raise  # not found: expired already, its keys are gone


def _messages(
    response: requests.Response, confirmed: list[bool], timeout: float, deadline: float
) -> Iterator[bytes]:
    """The watch's messages, one a line. Once the watch is created, its reads wait only until
    the deadline (see _wait_until); but a message that has begun to arrive is read whole, each
    read waiting up to `timeout`: an event with a large value (a megabyte) takes many reads,
    and cut off at a short quiet period it would be asked for again, and cut off again, forever.
    (Not requests' iter_lines: it joins a long line's 512-byte chunks at quadratic cost.)"""
    pending = b""
    for chunk in response.iter_content(chunk_size=65536):
        pending += chunk
        if b"\n" not in chunk:
            if pending.strip() and confirmed:
                _wait_until(response, time.monotonic() + timeout)  # a message is arriving
            continue
        *lines, pending = pending.split(b"\n")
        yield from lines
        if confirmed:  # between messages wait only until the deadline; the rest of one, longer
            _wait_until(response, time.monotonic() + timeout if pending.strip() else deadline)
    if pending:
        yield pending


def _wait_until(response: requests.Response, deadline: float) -> None:
    """Wait for the watch's events only until `deadline` (a burst's quiet period, shorter than
    the MIN_WATCH given to the request for etcd to confirm it): requests sets one read timeout
    for a whole request, the socket takes a new one for the reads still to come."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(deadline - time.monotonic(), SHORTEST_WATCH))


def _timed_out(error: BaseException) -> bool:
    # requests reports a read timeout inside a streamed body as ConnectionError(ReadTimeoutError)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.Timeout | TimeoutError | urllib3.exceptions.TimeoutError):
            return True
        seen = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
    return False


def _grpc(error: Etcd3Exception) -> dict[str, Any]:
    """The gateway's error body: {"error": ..., "message": ..., "code": <gRPC code>}."""
    try:
        body = json.loads(error.detail_text or "")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _grpc_code(error: Etcd3Exception) -> int | None:
    code = _grpc(error).get("code")
    return code if isinstance(code, int) else None


def _message(error: BaseException) -> str:
    body = _grpc(error) if isinstance(error, Etcd3Exception) else {}
    detail = getattr(error, "detail_text", None)
    text = body.get("message") or body.get("error") or detail or first_line(error)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__
