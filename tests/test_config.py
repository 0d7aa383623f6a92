"""Issue 12, a new user's first hour with the settings and the input: a terminal on standard
input is refused at once.

A real process where a terminal is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import CLEAN, CLI, clean_env, write

from generator.cli.exit_codes import USAGE


def applying(tmp_path: Path, *extra: str) -> list[str]:
    """apply's arguments into tmp_path/out; nothing is reached (the command stops before)."""
    (tmp_path / "out").mkdir(exist_ok=True)
    return [
        "apply",
        *("--output", str(tmp_path / "out" / "router.conf")),
        *("--site-dir", str(tmp_path / "out" / "site")),
        *("--nginx", "true", "--test-command", "false", "--reload-command", "false"),
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# a terminal on standard input: one line, exit 2, instead of waiting silently


@pytest.mark.parametrize("command", ["check", "render", "apply"])
def test_a_terminal_on_standard_input_is_refused_at_once(command: str, tmp_path: Path) -> None:
    """The real command with a pseudo-terminal as its standard input (no file given). Before,
    it waited for a snapshot nobody was typing: the timeout fails the test."""
    argv = applying(tmp_path, "--domain", "dev.test") if command == "apply" else [command]
    leader, follower = os.openpty()
    try:
        started = time.monotonic()
        done = subprocess.run(
            [str(CLI), *argv],
            stdin=follower,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == USAGE, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line == (
        f"devtest-router: standard input is a terminal, not a snapshot: give a snapshot file "
        f"(devtest-router {command} SNAPSHOT), or pipe one in (devtest-router snapshot "
        f"--registry URL | devtest-router {command})"
    )
    assert time.monotonic() - started < 60


def test_a_snapshot_file_is_read_whatever_standard_input_is(tmp_path: Path) -> None:
    snapshot = write(tmp_path / "snapshot.json", json.dumps(CLEAN))
    leader, follower = os.openpty()
    try:
        done = subprocess.run(
            [str(CLI), "check", "--domain", "dev.test", str(snapshot)],
            stdin=follower,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 routes under dev.test")
