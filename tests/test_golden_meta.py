"""The golden check can fail: a one-byte change in an expected file is reported, not blessed."""

from __future__ import annotations

import shutil
from pathlib import Path

from test_golden import CONF, FIXTURES, REGENERATE, compare, produce

CASE = "two-branches"


def test_one_corrupted_byte_in_expected_conf_is_a_mismatch(tmp_path: Path) -> None:
    case = tmp_path / CASE
    shutil.copytree(FIXTURES / CASE, case)
    assert compare(case, produce(case)) == [], "the untouched copy must match"

    conf = case / CONF
    text = bytearray(conf.read_bytes())
    at = text.index(b"10.0.3.7:32768") + len("10.0.3.")
    text[at] = ord("8")  # feat-x's web upstream, 10.0.3.7 -> 10.0.3.8
    conf.write_bytes(bytes(text))
    corrupted = conf.read_bytes()

    mismatches = compare(case, produce(case))

    assert len(mismatches) == 1, mismatches
    report = mismatches[0]
    assert str(conf) in report
    assert f"first at byte {at}" in report
    assert "-    feat-x-web.dev.example.com feat-x/web/10.0.3.8:32768;" in report
    assert "+    feat-x-web.dev.example.com feat-x/web/10.0.3.7:32768;" in report
    assert REGENERATE in report
    assert conf.read_bytes() == corrupted, "comparing must never rewrite the expected file"


def test_a_server_missing_from_an_upstream_group_is_a_mismatch(tmp_path: Path) -> None:
    case = tmp_path / "replicas"
    shutil.copytree(FIXTURES / "replicas", case)
    conf = case / CONF
    server = "    server 10.0.12.3:32881 max_fails=1 fail_timeout=10s;\n"
    text = conf.read_text(encoding="utf-8")
    assert text.count(server) == 1, "the replicas case's web group holds this server once"
    conf.write_text(text.replace(server, ""), encoding="utf-8")

    mismatches = compare(case, produce(case))

    assert len(mismatches) == 1, mismatches
    assert str(conf) in mismatches[0]
    assert "+" + server.rstrip("\n") in mismatches[0]
    assert conf.read_text(encoding="utf-8") == text.replace(server, "")
