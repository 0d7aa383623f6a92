"""The registry's keys under /deployment, kept between reads and changed by watch events.

A full read at 100,000 routes costs seconds (HTTP, JSON, base64, building the snapshot); a
watch event names the one key that changed. The watcher keeps the keys, grouped by deployment
(the first path segment under /deployment), applies each event to its group and rebuilds only
the groups that changed, so an event costs what the change is. `snapshot()` is always what
build_snapshot would give for the same keys: each group is built by the same rules.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from generator.core.keys import PREFIX, UNDER, deployment_of, segments
from generator.core.snapshot import MAX_DEPTH, TOO_DEEP
from generator.memory import no_gc

# A key's segments from its deployment's name on: /deployment/<branch> and MAX_DEPTH more. A
# deployment with a deeper key is left out of the snapshot (snapshot.TOO_DEEP in its place):
# it costs only itself, and no later stage recurses on it.
_LONGEST = MAX_DEPTH + 1


@dataclass(frozen=True, slots=True)
class Change:
    """One watch event: `key` now holds `value`, or (value None) is gone, and with `subtree`
    also every key under it (an etcd v2 directory deleted or expired)."""

    key: str
    value: str | None
    subtree: bool = False


def _insert(root: dict[str, Any], key: str, value: str) -> bool:
    """Put `value` at `key`'s path under `root`; False (nothing put) for a key too deep."""
    parts = segments(key)
    if len(parts) > _LONGEST:
        return False
    _place(root, parts, value)
    return True


_intern = sys.intern


def _place(root: dict[str, Any], parts: list[str], value: str) -> None:
    """Put `value` at the path `parts` under `root` (build_snapshot's rules: a directory beats
    a stray leaf, whichever comes first).

    The segments are interned: "service", "ip", "port" and each service's name would
    otherwise be a string of their own in every deployment (three in four of the strings the
    kept keys hold, 16 MB at 100,000 routes)."""
    node = root
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[_intern(part)] = {}
        node = child
    if not isinstance(node.get(parts[-1]), dict):
        node[_intern(parts[-1])] = value


def _leaves(tree: Any, at: str) -> Iterator[tuple[str, str]]:
    """(key, value) of every leaf of a deployment's tree, `at` its key."""
    if not isinstance(tree, dict):
        yield at, tree
        return
    for part, child in tree.items():
        yield from _leaves(child, f"{at}/{part}")


def _count(tree: Any) -> int:
    """How many leaves a deployment's tree holds."""
    if not isinstance(tree, dict):
        return 1
    return sum(_count(child) for child in tree.values())


def build_snapshot(pairs: Iterable[tuple[str, str | None]]) -> dict[str, Any]:
    """The etcdwatch-shaped snapshot of (key, value) pairs under /deployment.

    A value of None marks a directory. Empty directories are left out: etcd v2 keeps them after
    their keys expire, and a service directory emptied by its TTL is a service that left, not
    one half-written. Keys are split on '/': a branch name with '/' registered unslugified
    nests, as it does in etcd v2.
    """
    deployments: dict[str, Any] = {}
    deep: set[str] = set()
    for key, value in pairs:
        name = deployment_of(key) if value is not None else None
        if name is not None and value is not None and not _insert(deployments, key, value):
            deep.add(name)
    deployments.update(dict.fromkeys(deep, TOO_DEEP))
    return {"deployment": deployments}


class KeyTree:
    """The keys with a value under /deployment, by deployment, and the snapshot they make.

    Snapshots share the value of every deployment that did not change with the snapshot before
    (they are built anew, never changed in place, so sharing is safe).

    One copy of the keys: a deployment's part of the snapshot is its keys whenever each key is
    one leaf of it, at the key's own path, and the key is written plainly (no doubled or
    trailing '/'): then the keys are read back from the leaves when an event changes the
    deployment. Only for the others (a directory that hid a stray value, one key too deep,
    a key spelled with extra slashes) are the keys kept as well, by name, as read.
    """

    def __init__(self, pairs: Iterable[tuple[str, str | None]] = ()) -> None:
        # build_snapshot's loop, splitting each key once (a full read at 100,000 routes is
        # 175,000 keys), that also groups the keys by deployment.
        groups: dict[str, dict[str, str]] = {}
        deployments: dict[str, Any] = {}
        deep: list[str] = []
        cut = len(PREFIX)
        with no_gc():
            for key, value in pairs:
                if value is None or not key.startswith(UNDER):
                    continue
                parts = key[cut:].strip("/").split("/")
                name = parts[0]
                if not name:
                    continue
                name = parts[0] = _intern(name)
                group = groups.get(name)
                if group is None:
                    group = groups[name] = {}
                group[key] = value
                if len(parts) > _LONGEST:
                    deep.append(name)
                else:
                    _place(deployments, parts, value)
            deployments.update(dict.fromkeys(deep, TOO_DEEP))
            # deployment -> {key: value}, only where the tree alone does not hold the keys
            self._groups = {
                name: group
                for name, group in groups.items()
                if not _plain(name, group, deployments[name])
            }
        del groups
        self._trees = deployments  # deployment -> its part of the snapshot
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        """How many keys with a value."""
        return sum(
            len(self._groups[name]) if name in self._groups else _count(tree)
            for name, tree in self._trees.items()
        )

    def _group(self, name: str) -> dict[str, str] | None:
        """The keys of deployment `name`, to be changed (None: it has none)."""
        group = self._groups.get(name)
        if group is None and name in self._trees:
            group = self._groups[name] = dict(_leaves(self._trees[name], f"{PREFIX}/{name}"))
        return group

    def apply(self, changes: Iterable[Change]) -> None:
        """Change the keys as the events say, in their order."""
        for change in changes:
            if change.value is not None:
                name = deployment_of(change.key)
                if name is not None:
                    group = self._group(name)
                    if group is None:
                        group = self._groups[name] = {}
                    group[change.key] = change.value
                    self._dirty.add(name)
            elif change.subtree and change.key.rstrip("/") == PREFIX:
                self._dirty.update(self._trees)
                self._dirty.update(self._groups)
                self._groups.clear()
                self._trees.clear()
            else:
                self._delete(change)

    def _delete(self, change: Change) -> None:
        name = deployment_of(change.key)
        group = self._group(name) if name is not None else None
        if name is None or group is None:
            return
        group.pop(change.key, None)
        if change.subtree:
            under = change.key.rstrip("/") + "/"
            for key in [key for key in group if key.startswith(under)]:
                del group[key]
        self._dirty.add(name)

    def snapshot(self) -> dict[str, Any]:
        """{"deployment": {...}}: what build_snapshot gives for the keys held now."""
        for name in self._dirty:
            group = self._groups.get(name)
            if not group:
                self._groups.pop(name, None)
                self._trees.pop(name, None)
                continue
            root: dict[str, Any] = {}
            deep = False
            for key, value in group.items():
                deep = not _insert(root, key, value) or deep
            tree = self._trees[name] = TOO_DEEP if deep else root[_intern(name)]
            if _plain(name, group, tree):
                del self._groups[name]  # the tree holds its keys
        self._dirty.clear()
        return {"deployment": dict(self._trees)}


def _plain(name: str, group: dict[str, str], tree: Any) -> bool:
    """Whether deployment `name`'s tree holds exactly its keys (`group`), each a leaf at its own
    path, written plainly: then _leaves gives the keys back."""
    if tree is TOO_DEEP or _count(tree) != len(group):  # a hidden value: fewer leaves
        return False
    after = len(UNDER)  # build_snapshot ignores the slashes at either end of a key; _leaves
    # writes none there
    return all(key[-1] != "/" and key[after] != "/" for key in group)
