"""A sorted list of a mapping's keys, kept up to date as a few keys come and go: the order the
watch engine renders deployments in and the order the site lists them in, without sorting
100,000 keys again for every event."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any


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
