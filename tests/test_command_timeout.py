"""command_timeout: a hung nginx -t, test_command or reload_command (issue 10, Low 13).

Each gets command_timeout seconds (default 120). One still running then is killed with every
process it started (its process group), the apply fails as that command failing would, and the
lock is released: an apply waiting for it goes on. Real processes throughout; the apply tests use
a real nginx.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Nginx, interruptible, pid_alive, wait_for
from test_apply import DOMAIN, LOCK, Router, finish, waiting_on

from generator.cli.main import main
from generator.nginx.wrapper import run_command

CLI = Path(sys.executable).with_name("devtest-router")


def hung(folder: Path) -> str:
    """A command line that starts a grandchild holding its output open and waits for it
    forever; it writes the pids of both to folder/pids, then folder/started."""
    script = (
        f"echo $$ > {folder}/pids; sleep 600 & echo $! >> {folder}/pids; "
        f"touch {folder}/started; wait"
    )
    return f"sh -c '{script}'"


def pids(folder: Path) -> list[int]:
    return [int(line) for line in (folder / "pids").read_text().split()]


def test_a_hung_command_and_what_it_started_are_killed_at_the_timeout(tmp_path: Path) -> None:
    passed, said = run_command(hung(tmp_path), timeout=1)
    assert not passed
    assert said.endswith(
        "no answer within 1 s (command_timeout); killed it and every process it started"
    ), said
    for pid in pids(tmp_path):  # SIGKILLed: gone (or a zombie until init reaps it)
        wait_for(lambda pid=pid: not pid_alive(pid), what=f"pid {pid} to be gone")


def test_an_interrupted_run_takes_the_hung_command_along(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while a command hangs: the command and what it started end too."""
    code = (
        "import sys\n"
        "from generator.nginx.wrapper import run_command\n"
        "run_command(sys.argv[1], timeout=600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, hung(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=interruptible,
    )
    try:
        wait_for((tmp_path / "started").exists, what="the hung command to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids(tmp_path):
        wait_for(lambda pid=pid: not pid_alive(pid), what=f"pid {pid} to be gone")


def test_a_command_that_finishes_in_time_is_not_touched(tmp_path: Path) -> None:
    assert run_command("sh -c 'echo out; echo err >&2; exit 0'", timeout=60) == (True, "out\nerr")
    assert run_command("sh -c 'exit 3'", timeout=60) == (False, "")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "3601", "soon"])
def test_command_timeout_is_a_positive_finite_number_of_seconds(value: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["render", "--domain", DOMAIN],
        stdin=io.StringIO('{"deployment": {}}'),
        stdout=out,
        stderr=err,
        environ={"DEVTEST_ROUTER_COMMAND_TIMEOUT": value},
    )
    assert code == 2, err.getvalue()
    lines = err.getvalue().splitlines()
    assert len(lines) == 1, err.getvalue()
    assert lines[0].startswith("devtest-router: setting command_timeout = "), lines[0]
    assert "environment variable DEVTEST_ROUTER_COMMAND_TIMEOUT" in lines[0]


def snapshot(*names: str) -> str:
    return json.dumps(
        {
            "deployment": {
                name: {"service": {"web": {"ip": "127.0.0.1", "port": 8080 + number}}}
                for number, name in enumerate(names)
            }
        }
    )


@pytest.mark.integration
def test_a_hung_test_command_is_killed_and_the_lock_goes_to_the_next_apply(
    nginx: Nginx, tmp_path: Path
) -> None:
    router = Router(nginx, tmp_path)
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith("DEVTEST_ROUTER_")
    }
    first = subprocess.run(
        [str(CLI), *router.argv()],
        input=snapshot("main"),
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    lock = router.nginx.conf_dir / LOCK

    # A: its test_command hangs (with a child of its own); the timeout is 3 s.
    folder = tmp_path / "hung"
    folder.mkdir()
    (tmp_path / "second.json").write_text(snapshot("main", "second"))
    (tmp_path / "third.json").write_text(snapshot("main", "third"))
    with (tmp_path / "second.json").open() as stdin:
        hanging = subprocess.Popen(
            [str(CLI), *router.argv("--test-command", hung(folder))],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**environ, "DEVTEST_ROUTER_COMMAND_TIMEOUT": "3"},
        )
    try:
        wait_for((folder / "started").exists, what="the hung test_command to start")
        # B: a good apply, started while A holds the lock: it waits for it.
        with (tmp_path / "third.json").open() as stdin:
            waiting = subprocess.Popen(
                [str(CLI), *router.argv()],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environ,
            )
        wait_for(
            lambda: waiting.pid in waiting_on(lock) or waiting.poll() is not None,
            what="the second apply to wait for the lock",
        )
    finally:
        _, err = finish(hanging)
    assert hanging.returncode == 123, err
    assert "Traceback" not in err
    assert err.startswith('devtest-router: "sh -c '), err
    assert "no answer within 3 s (command_timeout); killed it and every process it started" in err
    assert "the previous file is back in place and nginx was not reloaded" in err
    for pid in pids(folder):
        wait_for(lambda pid=pid: not pid_alive(pid), what=f"the hung command's pid {pid} to end")

    _, err = finish(waiting)
    assert waiting.returncode == 0, err
    assert err.startswith(f"devtest-router: applied {router.output}: "), err
    assert router.output.read_text() == router.render(json.loads(snapshot("main", "third")))
