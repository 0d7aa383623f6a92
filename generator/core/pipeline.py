"""The pure pipeline: snapshot to routing table to config text, and what applying it would do."""

from __future__ import annotations

import bisect
import difflib
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import jinja2

from generator.core.check import destination
from generator.core.config import Config
from generator.core.model import Problem, Route, RoutingTable, Token
from generator.core.names import key_path, label
from generator.core.render import (
    Part,
    group_of,
    joined_routes_id,
    render_group,
    skeleton_text,
    splice,
)
from generator.core.routing import Candidate, candidates, reserved_hosts, settle_host
from generator.core.snapshot import Refused, canonical, deployment_part, snapshot_id_of
from generator.core.validate import Oversized, SnapshotValidator, find_oversized
from generator.memory import no_gc


@dataclass(frozen=True, slots=True)
class Rendered:
    snapshot_id: str
    table: RoutingTable
    text: str
    # text with render.ROUTES_MARKER in place of the deployments' lines, and
    # render.UPSTREAMS_MARKER in place of their upstream blocks
    skeleton: str
    # each deployment's lines and upstream blocks, with what they must hold
    fragments: tuple[Part, ...]
    # (label, name) -> the deployment's routes by hostname, the same tuple while they stay the
    # same (site_apply.SiteWriter compares them by identity); None: not kept
    deployments: Mapping[tuple[Token, str], tuple[Route, ...]] | None = None


# Canonical JSON of objects, lists, strings and null only (no number, true or false).
# Possessive: no backtracking state is kept per character (a regex that may backtrack holds
# memory for every character it matched, many times the text). Only matched against texts of at
# most max_value_bytes; a longer deployment is walked instead (validate.find_oversized).
_PLAIN = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|[{}\[\]:,]|null)*+')


class _Work(NamedTuple):
    """What was done for one deployment, kept while its content stays the same."""

    value: Any  # as last read
    # only objects, lists, strings and null: then `==` with `value` means the same JSON
    plain: bool
    part: bytes  # its part of snapshot_id (snapshot.deployment_part)
    candidates: tuple[Candidate, ...]
    problems: tuple[Problem, ...]


GroupKey = tuple[Token, str]  # (deployment label, deployment): the file's order of deployments
_LINES = operator.attrgetter("lines")


class Pipeline:
    """Validate, route and render snapshots, again and again.

    Everything is kept between builds and redone only where a deployment changed: its
    validation and route candidates (the deployment compared by content), the collisions of
    the hostnames it asks for, the lines of the deployments whose routes those decide, and
    the counts the rest of the file prints. A fresh Pipeline is the cold run: the same code
    with every deployment new, so the bytes are the same whether work was kept or not.

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
        self._groups: dict[GroupKey, Part] = {}
        self._pooled: set[GroupKey] = set()  # the deployments that have upstream blocks
        self._group_keys: list[GroupKey] = []  # sorted
        self._group_routes: dict[GroupKey, tuple[Route, ...]] = {}
        self._lengths: dict[int, int] = {}  # hostname length -> routes
        self._created: dict[datetime, int] = {}  # created -> routes

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
            refused = isinstance(value, Refused)
            # no canonical JSON starts with "!": a refused deployment's part is its own
            text = "!" + value if refused else canonical(value)
            part = deployment_part(name, text)
            if kept is not None and kept.part == part:
                continue
            asked: tuple[Candidate, ...] = ()
            if refused:
                plain = False
                problems: tuple[Problem, ...] = (
                    Problem(key_path("deployment", name), value.code, str(value)),
                )
            elif len(text) <= self._max_value_bytes:  # no value in it can be longer
                plain = _PLAIN.fullmatch(text) is not None
                asked, problems = self._deployment(name, value)
            else:
                oversized, plain = find_oversized(value, self._max_value_bytes)
                asked, problems = self._deployment(name, value, oversized)
            changed.append((name, kept, _Work(value, plain, part, asked, problems)))
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

        keys: dict[GroupKey, Part | None] = {}
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
        skeleton = skeleton_text(
            self.config,
            self._templates,
            table_id=joined_routes_id(joined, blocks),
            newest=max(self._created, default=None),
            routes_count=len(self._routes),
            deployments_count=len(parts),
            longest=max(self._lengths, default=1),
            pools=bool(pooled),
        )
        identity = snapshot_id_of(snapshot, [work[name].part for name in self._names])
        text = splice(skeleton, joined, blocks)
        return Rendered(identity, table, text, skeleton, parts, dict(self._group_routes))

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
        elif isinstance(contenders, list):
            winner, lost = settle_host(host, contenders, self._reserved)
        elif host not in self._reserved:
            winner, lost = contenders, []  # the common case, as settle_host would have it
        else:
            winner, lost = settle_host(host, [contenders], self._reserved)
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

    def _group(self, name: str) -> dict[GroupKey, Part | None]:
        """The lines of deployment `name` as its routes now stand (None: it routes nothing)."""
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

    def _deployment(
        self, name: str, value: Any, oversized: Oversized | None = None
    ) -> tuple[tuple[Candidate, ...], tuple[Problem, ...]]:
        if oversized is None:  # the common case, called as before
            deployment, problems = self._validator.deployment(name, value)
        else:
            deployment, problems = self._validator.deployment(name, value, oversized)
        if deployment is None:
            return (), tuple(problems)
        asked, trouble = candidates(deployment, self.config)
        return tuple(asked), (*problems, *trouble)


def _host(route: Route) -> str:
    return route.host


def _step(counts: dict[Any, int], key: Any, step: int) -> None:
    count = counts.get(key, 0) + step
    if count:
        counts[key] = count
    else:
        del counts[key]


def update_sorted(items: list[Any], touched: Iterable[Any], present: Mapping[Any, Any]) -> None:
    """Keep `items` the sorted keys of `present`, after the keys `touched` came or went."""
    touched = list(touched)
    if len(touched) * 16 > len(items) + 64:  # many: sorting all is cheaper than inserting
        items[:] = sorted(present)
        return
    for key in touched:
        at = bisect.bisect_left(items, key)
        there = at < len(items) and items[at] == key
        if key in present and not there:
            items.insert(at, key)
        elif key not in present and there:
            del items[at]


def build(
    snapshot: Mapping[str, Any],
    config: Config,
    snapshot_schema: Mapping[str, Any],
    templates: jinja2.Environment,
) -> Rendered:
    """Validate, route and render a loaded snapshot (see snapshot.loads), from scratch."""
    return Pipeline(config, snapshot_schema, templates)(snapshot)


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying `new` over `current` would change."""

    current: str | None
    new: str
    current_routes: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def changes(self) -> bool:
        return self.current != self.new

    def diff(self, path: str) -> str:
        return "".join(
            difflib.unified_diff(
                (self.current or "").splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=f"{path} (in place)" if self.current is not None else "/dev/null",
                tofile=f"{path} (rendered)",
            )
        )

    def summary(self) -> str:
        return (
            f"{len(self.added)} routes added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed"
        )


def route_destination(route: Route) -> str:
    """Where `route` sends requests, as plans compare routes (check.destination): its target,
    and the servers of its upstream group when it has one."""
    if len(route.members) > 1:
        upstreams = route.upstreams
        if len(upstreams) > 1:
            return destination(route.target, [upstream.text for upstream in upstreams])
    return route.target


def make_plan(current: str | None, current_routes: Mapping[str, str], rendered: Rendered) -> Plan:
    """`current_routes` maps each hostname in the file in place to its destination (see
    check.routes_in): a route whose upstream group's servers changed is a changed route."""
    new_routes = {str(route.host): route_destination(route) for route in rendered.table.routes}
    return Plan(
        current=current,
        new=rendered.text,
        current_routes=len(current_routes),
        added=tuple(sorted(new_routes.keys() - current_routes.keys())),
        removed=tuple(sorted(current_routes.keys() - new_routes.keys())),
        changed=tuple(
            sorted(
                host
                for host in new_routes.keys() & current_routes.keys()
                if new_routes[host] != current_routes[host]
            )
        ),
    )


def plan_between(installed: Rendered, rendered: Rendered) -> Plan:
    """make_plan for `rendered` over the file of `installed`, from the deployments whose routes
    changed (a deployment whose routes tuple is the same object has the same routes)."""
    before, after = installed.deployments, rendered.deployments
    if before is None or after is None:
        routes = {str(route.host): route_destination(route) for route in installed.table.routes}
        return make_plan(installed.text, routes, rendered)
    keys = [key for key, routes in after.items() if before.get(key) is not routes]
    if len(before) + sum(1 for key in keys if key not in before) > len(after):  # some went
        keys.extend(before.keys() - after.keys())
    old = {route.host: route_destination(route) for key in keys for route in before.get(key, ())}
    new = {route.host: route_destination(route) for key in keys for route in after.get(key, ())}
    return Plan(
        current=installed.text,
        new=rendered.text,
        current_routes=len(installed.table.routes),
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(host for host in new.keys() & old.keys() if new[host] != old[host])),
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """An apply the safety threshold's window remembers (see removal_refusal)."""

    at: float  # when it was applied, in the caller's clock's seconds
    routes: int  # the routes in place before it
    removed: frozenset[str]  # the hostnames it removed
    # the hostnames it added that an earlier apply of the window had removed (back again)
    returned: frozenset[str] = frozenset()


def in_window(history: Sequence[Applied], now: float, window: float) -> tuple[Applied, ...]:
    """The applies of `history` (oldest first) less than `window` seconds before `now`."""
    return tuple(applied for applied in history if now - applied.at < window)


def gone_in(recent: Sequence[Applied]) -> set[str]:
    """The hostnames the applies of `recent` (oldest first) removed and did not add back."""
    gone: set[str] = set()
    for applied in recent:
        gone -= applied.returned
        gone |= applied.removed
    return gone


def record(recent: Sequence[Applied], plan: Plan, at: float) -> tuple[Applied, ...]:
    """`recent` with the apply of `plan` at `at` added (a plan without changes adds nothing)."""
    if not plan.changes:
        return tuple(recent)
    returned = frozenset(plan.added) & gone_in(recent) if recent else frozenset()
    return (*recent, Applied(at, plan.current_routes, frozenset(plan.removed), returned))


def removal_refusal(plan: Plan, config: Config, recent: Sequence[Applied] = ()) -> str | None:
    """Why the safety threshold refuses this plan, or None.

    The routes this plan removes count together with those the applies of `recent` (the
    window: removal_window seconds back, oldest first) removed and did not add back, against
    the most routes in place in the window, so that removals in steps are judged as the whole
    they make. Without `recent` (a single `apply`) the plan is judged alone.
    """
    if config.force:
        return None
    most = max([plan.current_routes, *(applied.routes for applied in recent)])
    if most <= config.removal_guard_min_routes:
        return None
    gone = gone_in(recent) - set(plan.added)
    earlier = len(gone - set(plan.removed))
    gone |= set(plan.removed)
    if len(gone) <= config.max_removed_fraction * most:
        return None
    advice = "Check it with `devtest-router check`; --force applies anyway"
    if not earlier:
        return (
            f"refusing to remove {len(plan.removed)} of {plan.current_routes} routes at once "
            f"(more than {config.max_removed_fraction:.0%}): an emptied or misread registry? "
            + advice
        )
    return (
        f"refusing to remove {len(plan.removed)} more routes: with the {earlier} removed in the "
        f"last {config.removal_window:g} s (removal_window), {len(gone)} of the {most} routes "
        f"in place then would be gone (more than {config.max_removed_fraction:.0%}): a "
        "registry emptied step by step? " + advice
    )
