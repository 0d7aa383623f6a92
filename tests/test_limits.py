"""Issue 10: a registry entry can only ever cost its own deployment.

Depth (snapshot.MAX_DEPTH levels below /deployment/<branch>), YAML aliases
(snapshot.MAX_ALIAS_VALUES) and the size of a value (the max_value_bytes setting) are limits
enforced while reading and validating, without recursion on registry data: an entry beyond them
is a problem with its key path, and every other deployment still routes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples
from test_cli import cli

from generator.core.config import resolve
from generator.core.errors import UsageError
from generator.core.keys import PREFIX
from generator.core.snapshot import MAX_DEPTH, TOO_DEEP, Refused, loads, parse_json
from generator.registry.keytree import Change, KeyTree, build_snapshot
from generator.watch.engine import _PLAIN

BIN = Path(sys.executable).parent / "devtest-router"
CREATED = "2026-11-28T10:00:00Z"
GOOD = {"created": CREATED, "service": {"web": {"ip": "127.0.0.1", "port": "8080"}}}
SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "schema/config.schema.json").read_text()
)


def nested(levels: int) -> str:
    """A deployment 'deepy' whose key is /deployment/deepy/a/a/.../v: `levels` below it."""
    inner = '{"a": ' * (levels - 1) + '{"v": "1"}' + "}" * (levels - 1)
    return '{"deployment": {"deepy": ' + inner + ', "good": ' + json.dumps(GOOD) + "}}"


def check(path: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "check", "--json", "--allow-loopback", *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang guard only: a hang fails the test instead of the run
        env={"PATH": "/usr/bin:/bin"},
    )


def problems(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return {problem["key"]: problem for problem in json.loads(result.stdout)["problems"]}


def routes(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {route["host"] for route in json.loads(result.stdout)["routes"]}


# ------------------------------------------------------------------------------------------
# depth: read without recursion, the deep deployment skipped, the rest routes


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=examples(300), deadline=None)
@given(JSON_VALUES, st.sampled_from([None, 2, 0]))
def test_the_parse_without_recursion_reads_what_json_loads_reads(value: Any, indent: Any) -> None:
    from generator.core.snapshot import _parse_deep

    text = json.dumps(value, indent=indent)
    assert _parse_deep(text) == json.loads(text)


@pytest.mark.parametrize("bad", ['{"a" 1}', "[1,]", "[1 2]", "{", "[" * 100_000, '{"a":1}x', ""])
def test_the_parse_without_recursion_refuses_what_json_loads_refuses(bad: str) -> None:
    from generator.core.snapshot import _parse_deep

    with pytest.raises(json.JSONDecodeError):
        _parse_deep(bad)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 600, 1_100, 1_500, 20_000])
def test_a_deployment_too_deep_is_left_out_while_reading_and_the_rest_kept(levels: int) -> None:
    snapshot = loads(nested(levels))
    assert snapshot["deployment"]["deepy"] is TOO_DEEP
    assert snapshot["deployment"]["good"] == GOOD
    assert parse_json(nested(levels).encode())["deployment"]["good"] == GOOD


def test_a_deployment_at_the_depth_limit_is_read() -> None:
    deployment = loads(nested(MAX_DEPTH))["deployment"]["deepy"]
    assert not isinstance(deployment, Refused)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1_500, 20_000])
def test_check_skips_only_the_deep_deployment(levels: int, tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(nested(levels))
    result = check(path)
    found = problems(result)
    assert found["/deployment/deepy"]["code"] == "too-deep"
    assert found["/deployment/deepy"]["message"].startswith(
        f"nests deeper than {MAX_DEPTH} levels: the deployment is skipped; "
    )
    assert routes(result) == {"good-web.localhost", "good.localhost"}


def test_a_deep_non_deployment_key_still_makes_the_snapshot_unusable(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text('{"deployment": {}, "other": ' + "[" * 2_000 + "]" * 2_000 + "}")
    result = check(path)
    assert result.returncode == 123, result.stderr
    assert "beside /deployment nests too much" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def deep_key(name: str, levels: int) -> str:
    return f"{PREFIX}/{name}/" + "a/" * (levels - 1) + "v"


GOOD_KEYS = [
    (f"{PREFIX}/good/created", CREATED),
    (f"{PREFIX}/good/service/web/ip", "127.0.0.1"),
    (f"{PREFIX}/good/service/web/port", "8080"),
]


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1_500])
def test_keytree_leaves_a_deep_deployment_out_on_reads_and_events(levels: int) -> None:
    pairs = [*GOOD_KEYS, (deep_key("deepy", levels), "1"), (f"{PREFIX}/deepy/created", CREATED)]
    read = KeyTree(pairs)
    expected = {"deployment": {"good": GOOD, "deepy": TOO_DEEP}}
    assert read.snapshot() == expected == build_snapshot(pairs)
    assert read.snapshot()["deployment"]["deepy"] is TOO_DEEP

    events = KeyTree(GOOD_KEYS)
    events.apply([Change(deep_key("deepy", levels), "1")])
    assert events.snapshot()["deployment"]["deepy"] is TOO_DEEP
    events.apply([Change(deep_key("deepy", levels), None)])
    assert "deepy" not in events.snapshot()["deployment"]
    events.apply([Change(deep_key("deepy", levels), "1"), Change(f"{PREFIX}/deepy", None, True)])
    assert events.snapshot() == {"deployment": {"good": GOOD}}


def test_keytree_at_the_depth_limit_builds_the_deployment() -> None:
    tree = KeyTree([(deep_key("deepy", MAX_DEPTH), "1")])
    assert not isinstance(tree.snapshot()["deployment"]["deepy"], Refused)


# ------------------------------------------------------------------------------------------
# YAML aliases: a billion laughs costs its deployment, fast


LAUGHS = """deployment:
  good: {created: "2026-11-28T10:00:00Z", service: {web: {ip: 127.0.0.1, port: "8080"}}}
  lol:
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_billion_laughs_costs_only_its_deployment(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    result = check(path, timeout=60)
    found = problems(result)
    assert found["/deployment/lol"]["code"] == "too-many-aliases"
    assert routes(result) == {"good-web.localhost", "good.localhost"}


def test_yaml_aliases_that_repeat_a_few_values_are_read() -> None:
    text = """deployment:
  base: &base {created: "2026-11-28T10:00:00Z", service: {web: {ip: 127.0.0.1, port: "80"}}}
  copy: *base
"""
    snapshot = loads(text)
    assert snapshot["deployment"]["copy"] == snapshot["deployment"]["base"]


def test_billion_laughs_beside_the_deployments_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS.replace("  lol:", "lol:").replace("\n    ", "\n  "))
    result = check(path, timeout=60)
    assert result.returncode == 123, result.stderr
    assert "repeats (YAML aliases) too much" in result.stderr


# ------------------------------------------------------------------------------------------
# value size: max_value_bytes


def test_plain_json_is_matched_without_memory_per_character() -> None:
    # the possessive pattern: no backtracking state per character of a long string
    text = json.dumps({"a": "x" * 20_000_000, "b": None}, sort_keys=True, separators=(",", ":"))
    assert _PLAIN.fullmatch(text) is not None
    assert _PLAIN.fullmatch(text.replace("null", "1")) is None


def peak_rss_mb(result_usage: Any) -> float:
    return float(result_usage.ru_maxrss) / 1024


def test_a_50_mb_created_costs_its_key_and_memory_proportional_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    huge = "2026-11-28T10:00:00Z" + "0" * 50_000_000
    path.write_text(json.dumps({"deployment": {"good": {**GOOD, "created": huge}}}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = check(path)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    found = problems(result)
    problem = found["/deployment/good/created"]
    assert problem["code"] == "value-too-large"
    assert problem["message"] == (
        "is 50000020 bytes, more than max_value_bytes (4096): the key is ignored; registry "
        "values are short (addresses, ports, times): write the right value, or raise "
        "max_value_bytes"
    )
    assert routes(result) == {"good-web.localhost", "good.localhost"}
    # the file is read once (50 MB), parsed once (50 MB) and its canonical JSON made once
    # (50 MB): about 4 times the file, on top of the interpreter's 60 MB or so
    if peak > before:  # ru_maxrss of children is the largest child so far
        assert peak / 1024 < 60 + 5 * 50, f"check peaked at {peak / 1024:.0f} MB"


@pytest.mark.parametrize(
    ("key", "code", "cost"),
    [
        ("service/web/ip", "value-too-large", "the instance is skipped"),
        ("service/web/port", "value-too-large", "the instance is skipped"),
        ("created", "value-too-large", "the key is ignored"),
        ("stray", "value-too-large", "the key is ignored"),
        ("service/web/stray", "value-too-large", "the key is ignored"),
        ("service/web/instance/i1/ip", "value-too-large", "the instance is skipped"),
    ],
)
def test_a_value_over_max_value_bytes_costs_what_the_table_says(
    key: str, code: str, cost: str, tmp_path: Path
) -> None:
    deployment: dict[str, Any] = json.loads(json.dumps(GOOD))
    deployment["service"]["web"]["instance"] = {"i0": {"ip": "127.0.0.2", "port": "81"}}
    if key.startswith("service/web/instance/i1"):
        deployment["service"]["web"]["instance"]["i1"] = {"ip": "127.0.0.3", "port": "82"}
    node = deployment
    *parents, last = key.split("/")
    for part in parents:
        node = node[part]
    secret = "s3cr3t" + "\u00e9" * 3_000  # 6,006 bytes, 3,006 characters
    node[last] = secret
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"deployment": {"dep": deployment, "good": GOOD}}))
    result = check(path)
    found = problems(result)
    assert "s3cr3t" not in result.stdout
    problem = found[f"/deployment/dep/{key}"]
    assert problem["code"] == code
    assert f"is 6006 bytes, more than max_value_bytes (4096): {cost}; " in problem["message"]
    assert {"good-web.localhost", "good.localhost"} <= routes(result)
    if cost == "the key is ignored":
        assert "dep-web.localhost" in routes(result)


def test_max_value_bytes_is_a_validated_setting(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"deployment": {"dep": {**GOOD, "stray": "x" * 600}}}))
    assert "/deployment/dep/stray" in problems(check(path))
    small = check(path, "--config", str(_config(tmp_path, "max_value_bytes: 512")))
    assert problems(small)["/deployment/dep/stray"]["code"] == "value-too-large"
    for bad in ("0", "100", "2000000", "nan", "big"):
        with pytest.raises(UsageError, match="max_value_bytes"):
            resolve(SCHEMA, {}, {"DEVTEST_ROUTER_MAX_VALUE_BYTES": bad})
    assert resolve(SCHEMA, {}, {}).max_value_bytes == 4096


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text + "\n")
    return path


def test_a_deep_snapshot_still_reports_a_key_given_twice() -> None:
    """Past json.loads' nesting the parse without recursion reads a snapshot by the same rules:
    a key given twice (in another deployment) is still a duplicate-key problem."""
    deep = '{"x": ' * 1500 + "1" + "}" * 1500
    text = (
        '{"deployment": {"deepy": {"service": ' + deep + "}, "
        '"twice": {"service": {"web": {"ip": "10.0.0.1", "port": "80", "port": "81"}}}}}'
    )
    result = cli("check", "--json", stdin=text)
    assert result.code == 0, result.err
    codes = {(p["key"], p["code"]) for p in json.loads(result.out)["problems"]}
    assert ("/deployment/twice/service/web/port", "duplicate-key") in codes, codes
    assert ("/deployment/deepy", "too-deep") in codes, codes
