"""`make demo` run as a subprocess, for tests/test_demo.py and tests/test_readme.py: started in
its own process group with its output collected line by line, and every process it started
found again by pid, so a test can check that nothing is left after a signal.

Every process the demo starts carries DEVTEST_ROUTER_DEMO=<DEMO_DIR> in its environment
(children inherit it), which is how these helpers find all of them, nginx workers and the
servers under `register -- CMD` included; make and the demo itself carry the tests' own
RUN_MARKER=<DEMO_DIR>, so a demo that outlived make is found too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness import child_pids, find_binary, interruptible, pid_alive, wait_for

REPO = Path(__file__).resolve().parent.parent
MARKER = "DEVTEST_ROUTER_DEMO"
RUN_MARKER = "DEVTEST_ROUTER_DEMO_TEST"  # set by start: make, the demo and all below
START_TIMEOUT = 120.0  # the whole start, generous: the machine is shared
STOP_TIMEOUT = 60.0


@dataclass
class DemoRun:
    """A command running in its own process group, its output collected line by line; base is
    the DEMO_DIR of the demo it runs (if it runs one)."""

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
            # waits for the read in progress, so for that process; stop_all kills it first.
            return
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _collect(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line.rstrip("\n"))


def start(argv: list[str], cwd: Path, env: Mapping[str, str], base: Path, port: int) -> DemoRun:
    """argv in a process group of its own (Ctrl-C: SIGINT to the group), no standard input."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**{k: v for k, v in env.items() if k != RUN_MARKER}, RUN_MARKER: str(base)},
        start_new_session=True,
        preexec_fn=interruptible,
    )
    run = DemoRun(proc, base, port)
    for stream, lines in ((proc.stdout, run.stdout), (proc.stderr, run.stderr)):
        thread = threading.Thread(target=_collect, args=(stream, lines), daemon=True)
        thread.start()
        run.threads.append(thread)
    return run


def start_demo(tmp_path: Path, port: int, **env: str) -> DemoRun:
    """`make demo` of this checkout on port, with its DEMO_DIR in tmp_path."""
    find_binary("etcd")  # under CI a missing binary fails here, never skips
    find_binary("nginx")
    base = tmp_path / "demo"
    return start(
        ["make", "--no-print-directory", "-s", "-C", str(REPO), "demo"],
        REPO,
        {
            **{k: v for k, v in os.environ.items() if k not in (MARKER, RUN_MARKER)},
            "DEMO_PORT": str(port),
            "DEMO_DIR": str(base),
            "DEMO_START_TIMEOUT": "90",
            **env,
        },
        base,
        port,
    )


def stop_all(runs: Iterable[DemoRun]) -> None:
    """Whatever a failed test left is killed by process group and marker, and then the pipes
    are closed (once nothing holds them)."""
    for run in runs:
        if run.proc.poll() is None:
            signal_group(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        for pid in demo_pids(run.base):
            signal_group(pid, signal.SIGKILL)
            send(pid, signal.SIGKILL)
        run.close()


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signum)


def send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def process_tree(root: int) -> set[int]:
    """root's live descendants."""
    tree: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {child for p in frontier for child in child_pids(p)} - tree
        tree |= frontier
    return {p for p in tree if pid_alive(p)}


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
    tree = process_tree(root) if root is not None else set()
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
            raise AssertionError(
                f"{run.proc.args!r} exited ({run.proc.returncode}):\n{run.output()}"
            )
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
