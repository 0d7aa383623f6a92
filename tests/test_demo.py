"""`make demo`: the local stack starts, serves both demo branches through nginx, takes a service
registered the way it says, and stops everything it started on a stop signal, sent to make or
to the demo.

The real `make demo` runs as a subprocess in its own process group, on a free DEMO_PORT and
with its own DEMO_DIR (tests/demo_harness.py, which also finds every process it started).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_harness import (
    REPO,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DemoRun,
    demo_pids,
    listening_ports,
    own_service_command,
    signal_group,
    start_demo,
    stop_all,
    wait_for_line,
)
from harness import (
    free_port,
    http_request,
    pid_alive,
    port_open,
    wait_for,
)

pytestmark = pytest.mark.integration  # each test runs `make demo`: etcd, nginx, the watcher

# What the demo must serve: host label -> (branch, service) named in the answer.
EXPECTED = {
    "main-web": ("main", "web"),
    "main-api": ("main", "api"),
    "main": ("main", "web"),
    "feature-x-web": ("feature-x", "web"),
    "feature-x-api": ("feature-x", "api"),
    "feature-x": ("feature-x", "web"),
}


@pytest.fixture
def demos() -> Iterator[list[DemoRun]]:
    """Runs to clean up: whatever a failed test left is killed by process group and marker."""
    runs: list[DemoRun] = []
    yield runs
    stop_all(runs)


def test_make_demo_serves_both_branches_takes_a_service_and_stops_on_sigint(
    tmp_path: Path, demos: list[DemoRun]
) -> None:
    port = free_port()
    run = start_demo(tmp_path, port)
    demos.append(run)
    wait_for_line(run, r"^Registry: ")
    pid = int(wait_for_line(run, r"^devtest-router demo: up on .*\(pid (\d+);").group(1))

    # the printed URLs: every demo route, the index, each answering through the demo nginx
    printed = {
        m.group(1): m.group(2)
        for line in run.stdout
        if (m := re.match(rf"^  http://([a-z0-9-]+)\.localhost:{port}/ +(.*)$", line))
    }
    assert set(printed) == set(EXPECTED), run.output()
    assert f"Index of deployments: http://localhost:{port}/" in run.stdout
    for label, (branch, service) in EXPECTED.items():
        answer = http_request(port, f"{label}.localhost")
        assert answer.status == 200, (label, answer.status, answer.text)
        assert f"branch {branch}, service {service}\n" in answer.text, (label, answer.text)
        assert printed[label] == f"branch {branch}, service {service}"
    unknown = http_request(port, "nobody-web.localhost")
    assert unknown.status == 404  # the frontend's own answer: nothing falls through

    # the processes the demo started, and the ports they listen on
    pids = demo_pids(run.base, pid) | {pid}
    commands = {p: Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in pids}
    names = sorted(Path(f"/proc/{p}/comm").read_text().strip() for p in pids)
    assert names.count("etcd") == 1 and names.count("nginx") >= 2, names  # master + worker
    serving = [c for c in commands.values() if c[2:3] == [b"serve"]]
    assert len(serving) == 4, names  # the four demo servers, each a child of `register`
    ports = listening_ports(pids)
    registry = re.search(r"REGISTRY_URL=http://127\.0\.0\.1:(\d+) ", "\n".join(run.stdout))
    assert registry is not None, run.output()
    assert {port, int(registry.group(1))} <= ports
    assert len(ports) >= 7, ports  # nginx, etcd client and peer, four demo servers

    # a service of one's own, registered exactly as printed (on a free port instead of 8000)
    command = own_service_command(run.stdout)
    assert len(re.findall(r"\b8000\b", command)) == 2, command  # PORT=8000 and the server's
    own_port = free_port()
    own = subprocess.Popen(
        ["bash", "-c", re.sub(r"\b8000\b", str(own_port), command)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def own_answers() -> bool:  # both in one pass: a reload's old worker may still answer
            return all(
                "Directory listing" in http_request(port, host).text
                for host in ("my-branch-web.localhost", "my-branch.localhost")
            )

        wait_for(own_answers, 60, interval=0.1, what="my-branch(-web).localhost to answer")
    finally:
        signal_group(own.pid, signal.SIGINT)  # Ctrl-C on it: deregisters and stops
        own.wait(30)
    wait_for(
        lambda: http_request(port, "my-branch-web.localhost").status == 404,
        30,
        interval=0.1,
        what="my-branch-web.localhost to go after its Ctrl-C",
    )

    # SIGINT to the demo (what Ctrl-C delivers to it): exit 0, nothing left
    os.kill(pid, signal.SIGINT)
    assert run.wait() == 0, run.output()
    assert run.stdout[-1] == "devtest-router demo: stopped; everything it started is gone"
    assert not [p for p in pids if pid_alive(p)], run.output()
    assert not demo_pids(run.base)
    assert not [p for p in ports if port_open(p)], ports


def test_port_in_use_is_one_line_and_starts_nothing(tmp_path: Path, demos: list[DemoRun]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        run = start_demo(tmp_path, port)
        demos.append(run)
        code = run.wait(START_TIMEOUT)
    assert code != 0
    lines = [line for line in run.stderr if line.startswith("devtest-router demo:")]
    assert lines == [
        f"devtest-router demo: port {port} on 127.0.0.1 is in use: stop what listens there, "
        f"or pick another port, e.g. `make demo DEMO_PORT={port + 1}`"
    ], run.output()
    assert "Traceback" not in run.output()
    assert not any("up on" in line for line in run.stdout)
    assert not demo_pids(run.base)


def test_a_part_failing_at_start_is_one_line_and_stops_what_was_started(
    tmp_path: Path, demos: list[DemoRun]
) -> None:
    # A setting in the environment that the watcher refuses: it exits after etcd and nginx
    # are up, so both have to be stopped again.
    port = free_port()
    run = start_demo(tmp_path, port, DEVTEST_ROUTER_CONFIG=str(tmp_path / "missing.yaml"))
    demos.append(run)
    code = run.wait(START_TIMEOUT)
    assert code != 0
    lines = [line for line in run.stderr if line.startswith("devtest-router demo:")]
    assert len(lines) == 1, run.output()
    assert lines[0].startswith("devtest-router demo: watcher exited with status 2: "), lines
    assert "missing.yaml" in lines[0]
    assert "Traceback" not in run.output()
    logs = run.base / "logs"
    assert (logs / "etcd.log").stat().st_size > 0  # etcd and nginx were started ...
    assert "start worker process" in (run.base / "nginx" / "error.log").read_text()
    assert not demo_pids(run.base)  # ... and are gone
    assert not port_open(port)


# How the demo is stopped -> (the signal and whom it goes to, make's exit status, what the
# demo says before it stops everything).
STOPS = {
    # kill's default, to the demo alone
    "sigterm-to-the-demo": (signal.SIGTERM, "demo", 0, "got SIGTERM"),
    # a terminal's Ctrl-C reaches make and the demo together; make then ends itself by
    # SIGINT once its recipe is done (GNU make's way), the demo still stops everything
    "ctrl-c-to-the-group": (signal.SIGINT, "group", -signal.SIGINT, "got SIGINT"),
    # a closed terminal
    "sighup-to-the-group": (signal.SIGHUP, "group", -signal.SIGHUP, "got SIGHUP"),
    # issue 12: make passes SIGTERM on to its recipe's process, which was a shell (it died
    # and left the demo running) until the recipe `exec`ed the demo
    "sigterm-to-make": (signal.SIGTERM, "make", -signal.SIGTERM, "SIGTERM"),
    # make passes SIGINT on to nobody and waits for its recipe: the demo sees make take it
    "sigint-to-make": (signal.SIGINT, "make", -signal.SIGINT, "got SIGINT and waits"),
    # nothing is passed on at all: the demo sees its parent go
    "make-killed": (signal.SIGKILL, "make", -signal.SIGKILL, "is gone"),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_demo_stops_everything_on_a_stop_signal_to_make_or_to_the_demo(
    tmp_path: Path, demos: list[DemoRun], how: str
) -> None:
    signum, whom, make_status, reason = STOPS[how]
    port = free_port()
    run = start_demo(tmp_path, port)
    demos.append(run)
    wait_for_line(run, r"^Registry: ")
    pid = int(wait_for_line(run, r"^devtest-router demo: up on .*\(pid (\d+);").group(1))
    pids = demo_pids(run.base, pid) | {pid}
    ports = listening_ports(pids)
    assert port in ports

    if how == "sigterm-to-the-demo":
        # A second demo on the same folder is refused in one line and leaves the first alone.
        second = start_demo(tmp_path, free_port())
        demos.append(second)
        assert second.wait(START_TIMEOUT) != 0
        assert [line for line in second.stderr if line.startswith("devtest-router demo:")] == [
            f"devtest-router demo: another demo is running in {run.base}: stop it first, or "
            "set DEMO_DIR to another folder"
        ], second.output()
        assert http_request(port, "main-web.localhost").status == 200
    if whom == "demo":
        os.kill(pid, signum)
    elif whom == "make":
        os.kill(run.proc.pid, signum)
    else:
        os.killpg(run.proc.pid, signum)
    assert run.proc.wait(STOP_TIMEOUT) == make_status, run.output()
    # make may end first (SIGKILL): the demo has its own deadline to stop everything
    wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT, interval=0.1, what="the demo to end")
    run.close()
    assert not [p for p in pids if pid_alive(p)], run.output()
    assert not demo_pids(run.base)
    assert not [p for p in ports if port_open(p)], ports
    assert run.stdout[-1] == "devtest-router demo: stopped; everything it started is gone"
    said = run.stdout[-2]
    assert said.startswith("devtest-router demo: "), run.output()
    assert said.endswith("; stopping everything it started"), run.output()
    assert reason in said, run.output()
