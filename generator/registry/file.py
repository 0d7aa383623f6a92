"""The registry in a YAML or JSON file: for local use and demos."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from generator.core.keys import CREATED, INSTANCE, SERVICE, instance_path
from generator.core.snapshot import loads
from generator.registry.base import Changes, Entry, Read, RegistryUnavailable, Removal, address


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
            raise RegistryUnavailable(
                f"registry {self.path}: no such file (check --registry / REGISTRY_URL)"
            )
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
            services = deployment.get(SERVICE) if isinstance(deployment, dict) else None
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
    for name in instance_path(entry.service, entry.instance):
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
    deployment.setdefault(CREATED, entry.created)
    node = deployment
    for name in instance_path(entry.service, entry.instance):
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
    instances = service.get(INSTANCE)
    if isinstance(instances, dict):
        if entry.instance is not None and instances.get(entry.instance) == {}:
            del instances[entry.instance]
        if not instances:
            del service[INSTANCE]
    if not service:
        del services[entry.service]
