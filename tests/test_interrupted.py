"""An apply cut short by SIGKILL at any point is finished or undone by the next apply.

Real nginx, real `devtest-router apply` processes killed at the moment that matters: the test
command (or the reload, or nginx's test of the staged file) touches a marker file and sleeps,
the test polls for the marker and kills the whole process group. The next apply (or a watcher
that starts then) must test and reload whatever the file in place is, unless it is the file
last tested and reloaded; it removes the staged files the killed one left behind.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Backend, Nginx, find_binary, wait_for
from test_apply import (
    CHECKED,
    CLI,
    DOMAIN,
    LOCK,
    OUTPUT,
    TESTED,
    BackendFactory,
    Router,
    Snapshot,
    ports,
    snapshot,
)
from watch_harness import Frontend

pytestmark = pytest.mark.integration


@pytest.fixture
def router(nginx: Nginx, tmp_path: Path) -> Router:
    return Router(nginx, tmp_path)


@pytest.fixture
def two(backends: BackendFactory) -> tuple[Snapshot, Snapshot]:
    """(master alone, master and feature/login), each with web and api."""
    found: dict[str, Backend] = backends(
        "master-web", "master-api", "feature-login-web", "feature-login-api"
    )
    master = {"master": ports(found, "master", "web", "api")}
    both = {**master, "feature/login": ports(found, "feature-login", "web", "api")}
    return snapshot(master), snapshot(both)


def slow(marker: Path, then: str) -> str:
    """A command line that touches `marker`, sleeps (to be killed), then runs `then`."""
    script = f"touch {shlex.quote(str(marker))} && sleep 60 && {then}"
    return shlex.join(["sh", "-c", script])


def killed_apply(router: Router, data: Snapshot, marker: Path, *extra: str) -> None:
    """Run the installed `apply` in its own process group, SIGKILL the group once `marker`
    exists (the process is then inside the step that touched it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    given = router.tmp / "killed-snapshot.json"
    given.write_text(json.dumps(data), encoding="utf-8")
    said = router.tmp / "killed-apply.log"
    with given.open("rb") as stdin, said.open("wb") as log:
        process = subprocess.Popen(
            [str(CLI), *router.argv(*extra)],
            stdin=stdin,
            stdout=log,
            stderr=log,
            env=environ,
            start_new_session=True,
        )
    try:

        def reached() -> bool:
            assert process.poll() is None, said.read_text()
            return marker.exists()

        wait_for(reached, 60, what=f"apply to reach {marker.name}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)
    assert process.returncode == -signal.SIGKILL


def applied_line(router: Router) -> str:
    return f"devtest-router: applied {router.output}: "


@pytest.mark.parametrize("step", ["test", "reload"])
def test_an_apply_killed_in_the_test_or_reload_is_finished_by_the_next_one(
    router: Router, two: tuple[Snapshot, Snapshot], tmp_path: Path, step: str
) -> None:
    master, both = two
    router.applied(master)
    marker = tmp_path / "marker"
    if step == "test":
        extra = ["--test-command", slow(marker, router.nginx.test_command)]
    else:
        counted = shlex.split(router.reload_command)[2]
        script = f"{counted} && touch {shlex.quote(str(marker))} && sleep 60"
        extra = ["--reload-command", shlex.join(["sh", "-c", script])]
    killed_apply(router, both, marker, *extra)
    assert router.output.read_text() == router.render(both)  # in place: never recorded
    reloads = router.reloads()
    assert reloads == (1 if step == "test" else 2)
    if step == "test":
        router.unknown(f"feature-login-web.{DOMAIN}")  # nginx still serves the old file

    again = router.applied(both)  # the same snapshot: not "nothing to do"
    assert again.lines[0].startswith(applied_line(router)), again.err
    assert "nginx reloaded" in again.err
    assert "had not been tested and reloaded" in again.err
    assert router.reloads() == reloads + 1
    router.routes_to(f"feature-login-web.{DOMAIN}", "feature-login-web")

    settled = router.apply(both)
    assert settled.lines[0].startswith("devtest-router: nothing to do: "), settled.err
    assert router.reloads() == reloads + 1
    assert {entry.name for entry in router.nginx.conf_dir.iterdir()} == {
        OUTPUT,
        LOCK,
        TESTED,
        CHECKED,
    }


def test_a_failed_test_after_an_interrupted_apply_puts_back_the_last_tested_file(
    router: Router, two: tuple[Snapshot, Snapshot], tmp_path: Path
) -> None:
    master, both = two
    router.applied(master)
    tested = router.output.read_text()
    marker = tmp_path / "marker"
    killed_apply(router, both, marker, "--test-command", slow(marker, "true"))
    assert router.output.read_text() == router.render(both)

    refused = router.apply(both, "--test-command", "false")
    assert refused.code == 123, refused.err
    assert router.output.read_text() == tested  # the last tested file, not the untested one
    assert router.reloads() == 1

    # whether nginx had taken the untested file is unknown: the next apply tests and reloads
    back = router.applied(master)
    assert back.lines[0].startswith(applied_line(router)), back.err
    assert router.reloads() == 2
    assert router.apply(master).lines[0].startswith("devtest-router: nothing to do: ")
    router.routes_to(f"master-web.{DOMAIN}", "master-web")
    router.unknown(f"feature-login-web.{DOMAIN}")


def test_staged_files_of_a_killed_apply_are_removed_by_the_next_one(
    router: Router, two: tuple[Snapshot, Snapshot], tmp_path: Path
) -> None:
    master, both = two
    router.applied(master)
    folder = router.nginx.conf_dir
    marker = tmp_path / "marker"
    script = f'touch {shlex.quote(str(marker))} && sleep 60 && exec {find_binary("nginx")} "$@"'
    nginx = shlex.join(["sh", "-c", script, "nginx"])
    killed_apply(router, both, marker, "--nginx", nginx)
    left = sorted(entry.name for entry in folder.glob(f".{OUTPUT}.*.staged"))
    assert len(left) == 1, left
    assert router.output.read_text() != router.render(both)
    # not ours, or not older than the apply that finds them: kept
    others = [
        ".other.conf.abcd1234.staged",
        f"{OUTPUT}.abcd1234.staged",
        f".{OUTPUT}.abcd1234.staged.keep",
        f".{OUTPUT}.notours.staged",
    ]
    for name in others:
        (folder / name).write_text("someone else's\n")
    future = folder / f".{OUTPUT}.zzzz9999.staged"
    future.write_text("newer than the apply\n")
    later = time.time() + 3600
    os.utime(future, (later, later))

    result = router.apply(both)
    assert result.code == 0, result.err
    assert not (folder / left[0]).exists()
    for name in [*others, future.name]:
        assert (folder / name).exists(), name
    router.routes_to(f"feature-login-web.{DOMAIN}", "feature-login-web")


def test_a_watcher_started_after_a_killed_apply_tests_and_reloads(
    router: Router,
    two: tuple[Snapshot, Snapshot],
    tmp_path: Path,
    frontend: Callable[..., Frontend],
) -> None:
    master, both = two
    router.applied(master)
    marker = tmp_path / "marker"
    killed_apply(router, both, marker, "--test-command", slow(marker, "true"))
    assert router.output.read_text() == router.render(both)
    router.unknown(f"feature-login-web.{DOMAIN}")
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(both))

    watcher = frontend(f"file:{registry}", "--config", str(router.config))
    watcher.wait_route(f"feature-login-web.{DOMAIN}", "feature-login-web", 60)
    wait_for(
        lambda: "had not been tested and reloaded" in watcher.log.read_text(),
        60,
        what=f"the watcher to say so; its log:\n{watcher.log_tail()}",
    )
    assert router.reloads() == 2


def test_dry_run_says_an_untested_file_in_place_would_be_tested_and_reloaded(
    router: Router, two: tuple[Snapshot, Snapshot], tmp_path: Path
) -> None:
    master, both = two
    router.applied(master)
    marker = tmp_path / "marker"
    killed_apply(router, both, marker, "--test-command", slow(marker, "true"))
    dry = router.apply(both, "--dry-run")
    assert dry.code == 1, dry.err
    assert "had not been tested and reloaded" in dry.err
