"""Validation: the fastjsonschema fast path never changes what jsonschema decides."""

from __future__ import annotations

from typing import Any

import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generator import resources
from generator.validate import SnapshotValidator

FAST = SnapshotValidator(resources.schema("snapshot"))
REFERENCE = SnapshotValidator(resources.schema("snapshot"), fast=False)


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(strategies.deployments, strategies.trees, strategies.leaves))
def test_the_fast_path_decides_as_jsonschema_does(value: Any) -> None:
    assert FAST.deployment("b", value) == REFERENCE.deployment("b", value)


def test_a_port_with_a_trailing_newline_is_decided_as_jsonschema_decides() -> None:
    # fastjsonschema's $ does not match before a final newline, Python's re (jsonschema) does:
    # such a value goes to jsonschema, and the guard refuses the port later.
    value = {"service": {"web": {"ip": "10.0.0.1", "port": "80\n"}}}
    assert FAST.deployment("b", value) == REFERENCE.deployment("b", value)
