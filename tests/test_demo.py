"""`make demo`: the local stack starts, serves both demo branches through nginx, takes a service
registered the way it says, and stops everything it started on a stop signal, sent to make or
to the demo.

The real `make demo` runs as a subprocess in its own process group, on a free DEMO_PORT and
with its own DEMO_DIR. Every process the demo starts carries DEVTEST_ROUTER_DEMO=<DEMO_DIR> in
its environment (children inherit it), which is how these tests find all of them, nginx
workers and the servers under `register -- CMD` included; make and the demo itself carry the
tests' own RUN_MARKER=<DEMO_DIR>, so a demo that outlived make is found too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import (
    child_pids,
    find_binary,
    free_port,
    http_request,
    interruptible,
    pid_alive,
    port_open,
    wait_for,
)

pytestmark = pytest.mark.integration  # each test runs `make demo`: etcd, nginx, the watcher

REPO = Path(__file__).resolve().parent.parent
MARKER = "DEVTEST_ROUTER_DEMO"
RUN_MARKER = "DEVTEST_ROUTER_DEMO_TEST"  # set by start_demo: make, the demo and all below
START_TIMEOUT = 120.0  # the whole start, generous: the machine is shared
STOP_TIMEOUT = 60.0
# What the demo must serve: host label -> (branch, service) named in the answer.
EXPECTED = {
    "main-web": ("main", "web"),
    "main-api": ("main", "api"),
    "main": ("main", "web"),
    "feature-x-web": ("feature-x", "web"),
    "feature-x-api": ("feature-x", "api"),
    "feature-x": ("feature-x", "web"),
}


@dataclass
class DemoRun:
    """`make demo` running in its own process group, its output collected line by line."""

    proc: subprocess.Popen[str]
    base: Path
    port: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.stdout) + "\n--- stderr:\n" + "\n".join(self.stderr)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self.close()
        return code

    def close(self) -> None:
        for thread in self.threads:
            thread.join(5)
        if any(thread.is_alive() for thread in self.threads):
            # A process still holds the pipes (a demo that outlived make): closing a stream
            # waits for the read in progress, so for that process; the fixture kills it first.
            return
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _collect(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line.rstrip("\n"))


def start_demo(tmp_path: Path, port: int, **env: str) -> DemoRun:
    find_binary("etcd")  # under CI a missing binary fails here, never skips
    find_binary("nginx")
    base = tmp_path / "demo"
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-s", "-C", str(REPO), "demo"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k not in (MARKER, RUN_MARKER)},
            RUN_MARKER: str(base),
            "DEMO_PORT": str(port),
            "DEMO_DIR": str(base),
            "DEMO_START_TIMEOUT": "90",
            **env,
        },
        start_new_session=True,
        preexec_fn=interruptible,
    )
    run = DemoRun(proc, base, port)
    for stream, lines in ((proc.stdout, run.stdout), (proc.stderr, run.stderr)):
        thread = threading.Thread(target=_collect, args=(stream, lines), daemon=True)
        thread.start()
        run.threads.append(thread)
    return run


@pytest.fixture
def demos() -> Iterator[list[DemoRun]]:
    """Runs to clean up: whatever a failed test left is killed by process group and marker,
    and then the pipes are closed (once nothing holds them)."""
    runs: list[DemoRun] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            _signal_group(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        for pid in demo_pids(run.base):
            _signal_group(pid, signal.SIGKILL)
            _signal(pid, signal.SIGKILL)
        run.close()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signum)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def demo_pids(base: Path, root: int | None = None) -> set[int]:
    """Live processes of the demo in `base`: those whose environment carries a marker (the
    demo's or the tests'), or whose command line names `base` (nginx overwrites its
    environment with its process title, but its master's title keeps the -p path), and with
    `root` every descendant of root (nginx's workers)."""
    marks = {f"{MARKER}={base}".encode(), f"{RUN_MARKER}={base}".encode()}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        if marks & set(environ.split(b"\0")) or str(base).encode() in cmdline:
            found.add(int(entry.name))
    tree: set[int] = set()
    frontier = {root} if root is not None else set()
    while frontier:
        frontier = {child for p in frontier for child in child_pids(p)} - tree
        tree |= frontier
    return {p for p in found | tree if pid_alive(p)}


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports on which any of pids listens (via their socket inodes and /proc/net/tcp)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for_line(run: DemoRun, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
    found: list[re.Match[str]] = []

    def seen() -> bool:
        if run.proc.poll() is not None and not any(t.is_alive() for t in run.threads):
            raise AssertionError(f"make demo exited ({run.proc.returncode}):\n{run.output()}")
        for line in list(run.stdout):
            match = re.search(pattern, line)
            if match:
                found.append(match)
                return True
        return False

    try:
        wait_for(seen, timeout, interval=0.1, what=f"a line matching {pattern!r}")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{run.output()}") from None
    return found[0]


def own_service_command(lines: list[str]) -> str:
    """The shell command the demo prints for registering a service of one's own."""
    start = next(i for i, line in enumerate(lines) if line.startswith("Register a service"))
    first, second = lines[start + 1], lines[start + 2]
    assert first.endswith("\\"), first
    return first[:-1].strip() + " " + second.strip()


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
        _signal_group(own.pid, signal.SIGINT)  # Ctrl-C on it: deregisters and stops
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
