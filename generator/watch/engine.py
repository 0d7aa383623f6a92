"""The pipeline, its checks and apply for a long-running process (the watcher, benchmarks).

Each step keeps what it did for the deployments that did not change (see pipeline.Pipeline and
apply.Checker), so an apply costs in proportion to the change, not to the registry, and still
writes exactly what a cold run writes, every byte of it checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jinja2

from generator.core.config import Config
from generator.core.pipeline import Applied, Pipeline, Plan, Rendered, in_window, record
from generator.nginx.apply import Checker, Known, apply_then, checked_text, plan

T = TypeVar("T")  # what apply_then's `after` returns


class Engine:
    def __init__(
        self,
        config: Config,
        snapshot_schema: Mapping[str, Any],
        templates: jinja2.Environment,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.build = Pipeline(config, snapshot_schema, templates)
        self._checker = Checker()
        self._known: Known | None = None  # what the last apply installed
        self._clock = clock
        # the applies of the safety threshold's window (config.removal_window), oldest first
        self._recent: tuple[Applied, ...] = ()

    def check(self, rendered: Rendered) -> None:
        """The crossplane gate (no nginx); raises like apply would."""
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
