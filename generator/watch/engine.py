"""The pipeline, the check and apply for a long-running process (the watcher, benchmarks).

Each step keeps what it did for the deployments that did not change (Build, and
apply.Checker), so an apply costs in proportion to the change, not to the registry, and still
writes exactly what a cold run (pipeline.build) writes, every byte of it checked.
"""

from __future__ import annotations

import bisect
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import jinja2

from generator.core import pipeline
from generator.core.config import Config
from generator.core.model import DeploymentKey, Problem, Route, RoutingTable, Token
from generator.core.names import label
from generator.core.pipeline import Applied, Plan, Rendered, in_window, record
from generator.core.render import (
    Part,
    group_of,
    joined_routes_id,
    render_group,
    skeleton_text,
    splice,
)
from generator.core.routing import Candidate, allowed_masks, candidates, reserved_hosts, settle_host
from generator.core.snapshot import deployment_part, deployment_text, snapshot_id_of
from generator.core.validate import SnapshotValidator, validate_deployment
from generator.memory import no_gc
from generator.nginx.apply import Checker, Known, apply_then, checked_text, plan
from generator.sorted_keys import update_sorted

T = TypeVar("T")  # what apply_then's `after` returns


def build(
    snapshot: Mapping[str, Any],
    config: Config,
    snapshot_schema: Mapping[str, Any],
    templates: jinja2.Environment,
) -> Rendered:
    """pipeline.build, from scratch, without the cyclic garbage collector (see memory.no_gc)."""
    with no_gc():
        return pipeline.build(snapshot, config, snapshot_schema, templates)


# Canonical JSON of objects, lists, strings and null only (no number, true or false).
# Possessive: no backtracking state is kept per character (a regex that may backtrack holds
# memory for every character it matched, many times the text). Only matched against texts of at
# most max_value_bytes; a longer deployment's text is compared instead.
_PLAIN = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|[{}\[\]:,]|null)*+')


class _Work(NamedTuple):
    """What the stages made of one deployment, kept while its content stays the same."""

    value: Any  # as last read
    # only objects, lists, strings and null: then `==` with `value` means the same JSON
    plain: bool
    part: bytes  # its part of snapshot_id (snapshot.deployment_part): the key of what is kept
    candidates: tuple[Candidate, ...]  # routing.candidates of its validated deployment
    problems: tuple[Problem, ...]  # of validate_deployment and candidates


_LINES = operator.attrgetter("lines")


class Build:
    """pipeline.build for one snapshot after another, keeping each stage's results.

    A cache around the pipeline's per-deployment functions, not a second copy of them: each
    deployment's validate_deployment and candidates are kept by its content (deployment_part),
    each hostname's settle_host by who asks for it, each deployment's render_group by its
    routes, and the figures skeleton_text prints; only what a change touches is made again.
    A fresh Build is the cold run: the same calls with every deployment new, so the bytes are
    those of pipeline.build whether work was kept or not (a property test says so).

    A snapshot is data: once built, it is not changed in place (the watcher reads a new one for
    every apply). A deployment of strings only is compared with `==` to the one kept from an
    earlier snapshot, and may be that very object (a snapshot made from another shares them).
    """

    def __init__(
        self, config: Config, snapshot_schema: Mapping[str, Any], templates: jinja2.Environment
    ) -> None:
        self.config = config
        self._validator = SnapshotValidator(snapshot_schema)
        self._templates = templates
        self._reserved = reserved_hosts(config)
        self._allowed = allowed_masks(config)  # the guard's networks, made once
        self._max_value_bytes = config.max_value_bytes
        self._reset()

    def _reset(self) -> None:
        self._work: dict[str, _Work] = {}
        self._names: list[str] = []  # sorted
        # hostname -> who asks for it: one candidate, or a list of two or more (few: a list
        # for each of 100,000 hostnames would cost 7 MB)
        self._contenders: dict[str, Candidate | list[Candidate]] = {}
        self._winners: dict[str, Route] = {}
        self._lost: dict[str, list[Problem]] = {}  # hostname -> its losers' problems
        self._hosts: list[str] = []  # sorted, the winners' hostnames
        self._routes: list[Route] = []  # the winners, in the order of _hosts
        self._problem_counts: dict[Problem, int] = {}
        self._problems: tuple[Problem, ...] = ()
        self._problems_changed = False
        self._groups: dict[DeploymentKey, Part] = {}
        self._pooled: set[DeploymentKey] = set()  # the deployments that have upstream blocks
        self._group_keys: list[DeploymentKey] = []  # sorted
        self._group_routes: dict[DeploymentKey, tuple[Route, ...]] = {}
        self._lengths: dict[int, int] = {}  # hostname length -> routes
        self._created: dict[datetime, int] = {}  # created -> routes
        # render.public_labels, kept: whether each deployment that routes is public, how many
        # public and other deployments route under each label, and the labels all public
        self._public_of: dict[DeploymentKey, bool] = {}
        self._label_counts: dict[Token, list[int]] = {}  # label -> [public, not public]
        self._public: set[Token] = set()

    def __call__(self, snapshot: Mapping[str, Any]) -> Rendered:
        with no_gc():
            try:
                return self._build(snapshot)
            except BaseException:  # e.g. an override template fails: kept work may be half
                self._reset()  # updated, so the next build starts cold
                raise

    def _build(self, snapshot: Mapping[str, Any]) -> Rendered:
        deployments: Mapping[str, Any] = snapshot["deployment"]
        changed: list[tuple[str, _Work | None, _Work | None]] = []
        work = self._work
        for name, value in deployments.items():
            kept = work.get(name)
            if kept is not None and kept.plain and kept.value == value:
                continue
            text = deployment_text(value)
            part = deployment_part(name, text)
            if kept is not None and kept.part == part:
                continue
            # a refused deployment's text starts with "!": never plain
            plain = len(text) <= self._max_value_bytes and _PLAIN.fullmatch(text) is not None
            changed.append(
                (name, kept, _Work(value, plain, part, *self._deployment(name, value, text)))
            )
        added = sum(1 for _, kept, _ in changed if kept is None)
        if len(work) + added > len(deployments):  # some were removed
            changed.extend((name, work[name], None) for name in work.keys() - deployments.keys())

        hosts: set[str] = set()
        dirty: set[str] = set()  # deployments whose lines may change
        for name, old, new in changed:
            dirty.add(name)
            if old is not None:
                self._count(old.problems, -1)
                for candidate in old.candidates:
                    host = candidate.host
                    hosts.add(host)
                    asking = self._contenders[host]
                    if not isinstance(asking, list):
                        del self._contenders[host]
                        continue
                    others = [c for c in asking if c is not candidate]
                    self._contenders[host] = others if len(others) > 1 else others[0]
            if new is not None:
                self._count(new.problems, 1)
                for candidate in new.candidates:
                    hosts.add(candidate.host)
                    present = self._contenders.get(candidate.host)
                    if present is None:
                        self._contenders[candidate.host] = candidate
                    elif isinstance(present, list):
                        present.append(candidate)
                    else:
                        self._contenders[candidate.host] = [present, candidate]
                work[name] = new
            else:
                del work[name]
        update_sorted(self._names, {name for name, _, _ in changed}, work)

        placed: dict[str, Route] = {}  # new winners
        for settled in hosts:
            self._settle(settled, dirty, placed)
        self._place(hosts, placed)

        keys: dict[DeploymentKey, Part | None] = {}
        for name in dirty:
            keys.update(self._group(name))
        for key, made in keys.items():
            if made is None:
                self._groups.pop(key, None)
            else:
                self._groups[key] = made
            if made is not None and made.blocks:
                self._pooled.add(key)
            else:
                self._pooled.discard(key)
            self._count_public(key, made is not None)
        update_sorted(self._group_keys, keys.keys(), self._groups)

        if self._problems_changed:
            self._problems = tuple(sorted(self._problem_counts))
            self._problems_changed = False
        table = RoutingTable(self.config.domain, tuple(self._routes), self._problems)
        parts = tuple(map(self._groups.__getitem__, self._group_keys))  # map: the hot path
        joined = "".join(map(_LINES, parts))
        # few deployments have upstream blocks: join theirs only, in file order
        pooled = sorted(self._pooled)
        blocks = "".join([self._groups[key].blocks for key in pooled])
        public = tuple(sorted(self._public))
        skeleton = skeleton_text(
            self.config,
            self._templates,
            table_id=joined_routes_id(joined, blocks),
            newest=max(self._created, default=None),
            routes_count=len(self._routes),
            deployments_count=len(parts),
            longest=max(self._lengths, default=1),
            pools=bool(pooled),
            public=public,
        )
        identity = snapshot_id_of(snapshot, [work[name].part for name in self._names])
        text = splice(skeleton, joined, blocks)
        return Rendered(identity, table, text, skeleton, parts, dict(self._group_routes), public)

    def _count_public(self, key: DeploymentKey, routes: bool) -> None:
        """Keep the public labels as deployment `key` now routes (`routes`: it routes at all)."""
        shared = key[0]
        counts = self._label_counts.setdefault(shared, [0, 0])
        before = self._public_of.pop(key, None)
        if before is not None:
            counts[0 if before else 1] -= 1
        if routes:
            now = self._group_routes[key][0].public
            self._public_of[key] = now
            counts[0 if now else 1] += 1
        if counts[0] and not counts[1]:
            self._public.add(shared)
        else:
            self._public.discard(shared)
        if not any(counts):
            del self._label_counts[shared]

    def _deployment(
        self, name: str, value: Any, text: str
    ) -> tuple[tuple[Candidate, ...], tuple[Problem, ...]]:
        """The validate and route stages of one deployment (what pipeline.build does for each)."""
        deployment, problems = validate_deployment(
            name, value, self._validator, self._max_value_bytes, text
        )
        if deployment is None:
            return (), tuple(problems)
        asked, trouble = candidates(deployment, self.config, self._allowed)
        return tuple(asked), (*problems, *trouble)

    def _count(self, problems: Iterable[Problem], step: int) -> None:
        counts = self._problem_counts
        changed = False
        for problem in problems:
            count = counts.get(problem, 0) + step
            if count:
                counts[problem] = count
                changed = changed or count == step  # a new one
            else:
                del counts[problem]
                changed = True
        self._problems_changed = self._problems_changed or changed

    def _settle(self, host: str, dirty: set[str], placed: dict[str, Route]) -> None:
        """Settle one hostname again; the deployments of its old and new winner are dirty."""
        contenders = self._contenders.get(host)
        winner: Route | None
        lost: list[Problem]
        if contenders is None:
            winner, lost = None, []
        else:
            asking = contenders if isinstance(contenders, list) else [contenders]
            winner, lost = settle_host(host, asking, self._reserved)
        if host in self._lost:
            self._count(self._lost.pop(host), -1)
        if lost:
            self._lost[host] = lost
            self._count(lost, 1)
        old = self._winners.pop(host, None)
        lengths, created = self._lengths, self._created
        if old is not None:
            dirty.add(old.deployment)
            _step(lengths, len(host), -1)
            if old.created is not None:
                _step(created, old.created, -1)
        if winner is not None:
            dirty.add(winner.deployment)
            self._winners[host] = placed[host] = winner
            lengths[len(host)] = lengths.get(len(host), 0) + 1
            if winner.created is not None:
                created[winner.created] = created.get(winner.created, 0) + 1

    def _place(self, hosts: set[str], placed: dict[str, Route]) -> None:
        """The sorted hostnames and routes after `hosts` were settled again."""
        if len(hosts) * 16 > len(self._hosts) + 64:  # many changed: sorting all is cheaper
            self._hosts = sorted(self._winners)
            self._routes = [self._winners[host] for host in self._hosts]
            return
        for host in hosts:
            at = bisect.bisect_left(self._hosts, host)
            present = at < len(self._hosts) and self._hosts[at] == host
            if host in placed:
                if present:
                    self._routes[at] = placed[host]
                else:
                    self._hosts.insert(at, host)
                    self._routes.insert(at, placed[host])
            elif present:
                del self._hosts[at]
                del self._routes[at]

    def _group(self, name: str) -> dict[DeploymentKey, Part | None]:
        """The part of deployment `name` as its routes now stand (None: it routes nothing)."""
        work = self._work.get(name)
        key = (label(name), name)
        if work is None:
            self._group_routes.pop(key, None)
            return {key: None}
        routes = sorted(
            (c for c in work.candidates if self._winners.get(c.host) is c),
            key=_host,
        )
        if not routes:
            self._group_routes.pop(key, None)
            return {key: None}
        self._group_routes[key] = tuple(routes)
        return {key: render_group(group_of(routes), self._templates)}


def _host(route: Route) -> str:
    return route.host


def _step(counts: dict[Any, int], key: Any, step: int) -> None:
    count = counts.get(key, 0) + step
    if count:
        counts[key] = count
    else:
        del counts[key]


class Engine:
    def __init__(
        self,
        config: Config,
        snapshot_schema: Mapping[str, Any],
        templates: jinja2.Environment,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.build = Build(config, snapshot_schema, templates)
        self._checker = Checker()
        self._known: Known | None = None  # what the last apply installed
        self._clock = clock
        # the applies of the safety threshold's window (config.removal_window), oldest first
        self._recent: tuple[Applied, ...] = ()

    def check(self, rendered: Rendered) -> None:
        """The check alone (crossplane parses the text back; not nginx's test); raises like
        apply would."""
        checked_text(rendered, self.config, self._checker)

    def plan(self, rendered: Rendered) -> Plan:
        recent = in_window(self._recent, self._clock(), self.config.removal_window)
        return plan(rendered, self.config, self._checker, self._known, recent)

    def apply_then(self, rendered: Rendered, after: Callable[[], T]) -> tuple[Plan, T]:
        """apply.apply_then (the plan, and what `after`, the site, returned), remembering what
        it installed and, for the safety threshold's window, what it removed."""
        now = self._clock()
        recent = in_window(self._recent, now, self.config.removal_window)
        result, done = apply_then(rendered, self.config, after, self._checker, self._known, recent)
        self._known = rendered
        self._recent = record(recent, result, now) if self.config.removal_window > 0 else ()
        return result, done
