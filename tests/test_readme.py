"""The README's commands, run as a new user runs them: every command of its fenced `sh` blocks, in
the README's order, on a fresh clone: the install (pipx, a venv, `make dist` and its wheel), the
two commands (`make run`, `make test`), the demo and a service of one's own, then Ctrl-C on both.

How the README marks its blocks: an HTML comment right before each `sh` block says how this test
runs it (docs/development.md, "The README's commands, tested"):
- `<!-- readme-test: run -->`: each command runs in bash in the clone, and must exit 0; CHECKS
  adds what some of them must print;
- `<!-- readme-test: until Ctrl-C -->`: each command starts in a process group of its own; the
  test waits until it serves (READY says how, per command) and, when the README's section ends,
  sends SIGINT to the group as a terminal's Ctrl-C does, the last one started first, and checks
  by pid that nothing it started is left;
- `<!-- readme-test: not run: REASON -->`: not run (a command for your own etcd or container).
An `sh` block without a comment, a command served until Ctrl-C that READY does not know, and a
placeholder (`<...>`) the test cannot fill all fail it: a command added to the README is run,
or the README says why not. The fast tests here check that much without running anything.

The fresh clone is `git clone` of this checkout at its HEAD: the test runs what is committed, not
changes in the working tree that are not.

Loopback only. Every pip the commands run (pipx's, the venv's, make's .venv, python -m build's
isolated environments) gets PIP_NO_INDEX=1, PIP_FIND_LINKS=<the wheelhouse `make deps` fills:
scripts/install-deps> and no pip configuration file; HOME is in tmp_path, so `~`, pipx's folders
and pip's cache are too; TOOLS names the folder where `make deps` unpacked promtool, so the
clone's install-deps downloads nothing. A missing wheelhouse, promtool or pipx fails the test,
as a missing nginx does: run `make deps`.

What differs from a user's shell, each as the README allows:
- `make test` would run this test again, and the whole suite: it runs with PYTEST_ADDOPTS naming
  one small test file, which pytest then runs alone (checked), so the command itself (ruff, mypy,
  deps, pytest under the ci profile) is what is exercised, without recursion;
- the demo runs on a free DEMO_PORT (the variable does what `make demo DEMO_PORT=...` does), and
  the service of one's own on a free port instead of 8000 (the README: "if 8000 is taken, change
  both numbers"); the README's demo URLs are asked on the demo's port.

It takes about two minutes (the installs from the wheelhouse are most of it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from demo_harness import (
    REPO,
    DemoRun,
    demo_pids,
    listening_ports,
    own_service_command,
    process_tree,
    start,
    stop_all,
    wait_for_line,
)
from harness import (
    find_binary,
    find_promtool,
    free_port,
    http_request,
    pid_alive,
    port_open,
    tools_dir,
    wait_for,
)

README = REPO / "README.md"
WHEELHOUSE = Path(
    os.environ.get("WHEELHOUSE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "devtest-router"
    / "wheelhouse"
)
SMALL_TEST_FILE = "tests/test_names.py"  # what `make test` runs here: fast, starts no server
COMMAND_TIMEOUT = 600.0
# Commands the README must keep: the "from install to the demo to the two commands".
REQUIRED = ("pipx install .", "make dist", "make run", "make test", "make demo")

MARK = re.compile(r"<!-- readme-test: (run|until Ctrl-C|not run: [^>]+) -->")
FENCE = re.compile(r"```(\S*)\s*")
SHELL = {"sh", "bash", "shell", "console"}
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")


# --------------------------------------------------------------------------
# the README's blocks


@dataclass(frozen=True)
class Block:
    """One marked `sh` block: its section, how it is run, its commands, its first line."""

    section: str
    kind: str  # "run", "until Ctrl-C" or "not run"
    commands: tuple[str, ...]
    line: int


def commands(body: list[str]) -> tuple[str, ...]:
    """A block's commands: a line ending in a backslash goes on in the next; blank lines and
    lines that are only a comment are no command."""
    found: list[str] = []
    current = ""
    for raw in body:
        line = raw.strip()
        current = f"{current} {line}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current and not current.startswith("#"):
            found.append(current)
        current = ""
    if current:
        raise ValueError(f"a command ends in a backslash with nothing after it: {current}")
    return tuple(found)


def blocks(text: str, name: str = "README.md") -> list[Block]:
    """The marked `sh` blocks in order; ValueError (where, what to do) for a shell block with
    no mark, a mark with no shell block right after it, or a mark of a kind not known."""
    lines = text.splitlines()
    found: list[Block] = []
    section = ""
    mark: tuple[str, int] | None = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        fence = FENCE.fullmatch(line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"{name}:{i + 1}: a fenced block that never ends")
            if fence[1] in SHELL:
                if mark is None:
                    raise ValueError(
                        f"{name}:{i + 1}: a ```{fence[1]} block without a readme-test comment "
                        "before it: add `<!-- readme-test: run -->`, `<!-- readme-test: until "
                        "Ctrl-C -->` or `<!-- readme-test: not run: REASON -->`"
                    )
                kind = "not run" if mark[0].startswith("not run") else mark[0]
                found.append(Block(section, kind, commands(lines[i + 1 : end]), i + 2))
            elif mark is not None:
                raise ValueError(
                    f"{name}:{mark[1]}: a readme-test comment before a ```{fence[1]} block"
                )
            mark = None
            i = end + 1
            continue
        if line.startswith("<!-- readme-test"):
            matched = MARK.fullmatch(line)
            if matched is None:
                raise ValueError(f"{name}:{i + 1}: a readme-test comment of no known kind: {line}")
            if mark is not None:
                raise ValueError(f"{name}:{mark[1]}: a readme-test comment with no block after it")
            mark = (matched[1], i + 1)
        elif line and mark is not None:
            raise ValueError(f"{name}:{mark[1]}: a readme-test comment not right before its block")
        elif line.startswith("#"):
            section = line.lstrip("#").strip()
        i += 1
    if mark is not None:
        raise ValueError(f"{name}:{mark[1]}: a readme-test comment with no block after it")
    return found


# --------------------------------------------------------------------------
# running them


@dataclass
class Session:
    """The clone, the environment every command gets, and what has been run."""

    clone: Path
    env: dict[str, str]
    bin_dir: Path
    version: str
    demo: DemoRun | None = None
    ran: list[str] = field(default_factory=list)
    background: list[Background] = field(default_factory=list)


@dataclass
class Background:
    """A command that serves until Ctrl-C, and what to check once it has stopped."""

    command: str
    run: DemoRun
    pids: set[int]  # every process it started
    ports: set[int]  # every port they listen on
    stopped: Callable[[Session, Background], None]


def user_env(home: Path, bin_dir: Path) -> dict[str, str]:
    """A user's environment: none of the test run's settings, pip's configuration, make's
    flags or virtualenv; HOME and pipx's folders in home; offline pip."""
    dropped = ("DEVTEST_ROUTER_", "PIP_", "PIPX_", "PYTEST_", "HYPOTHESIS_", "DEMO_", "PYTHON")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(dropped)
        and key not in {"REGISTRY_URL", "NAME", "SERVICE", "PORT", "IP", "INSTANCE", "VIRTUAL_ENV"}
        and key not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "XDG_CACHE_HOME"}
        and key != "WHEELHOUSE"
    }
    test_bin = str(Path(sys.prefix) / "bin")  # the test run's venv: no devtest-router from it
    path = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry != test_bin]
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(bin_dir), *path]),
        PIPX_HOME=str(home / ".local" / "pipx"),
        PIPX_BIN_DIR=str(bin_dir),
        PIP_CONFIG_FILE=os.devnull,  # no index or find-links of this machine's configuration
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(WHEELHOUSE),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        WHEELHOUSE=str(WHEELHOUSE),  # the clone's install-deps finds it filled
        TOOLS=str(tools_dir()),  # and its promtool unpacked: no download from Debian
    )
    return env


def run_command(session: Session, command: str, **env: str) -> str:
    """command in bash in the clone; exit 0 or fail with its output; its output."""
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=session.clone,
        env={**session.env, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-6000:]}"
    return output


def check_version(session: Session, command: str, output: str) -> None:
    assert output == f"devtest-router {session.version}\n", output
    if command.startswith("devtest-router "):  # the one pipx put on the PATH
        found = shutil.which("devtest-router", path=session.env["PATH"])
        assert found == str(session.bin_dir / "devtest-router"), found


def check_dist(session: Session, command: str, output: str) -> None:
    dist = session.clone / "dist"
    assert len(list(dist.glob("devtest_router-*-py3-none-any.whl"))) == 1, output
    assert len(list(dist.glob("devtest_router-*.tar.gz"))) == 1, output
    assert output.count("PASSED") == 2, output  # twine check on both


def check_run(session: Session, command: str, output: str) -> None:
    """The routing table of the demo registry, and the dry run's summary."""
    table = subprocess.run(
        [
            str(session.clone / ".venv/bin/devtest-router"),
            *("check", "--json", "--config", "fixtures/demo/config.yaml"),
            "fixtures/demo/snapshot.json",
        ],
        cwd=session.clone,
        env=session.env,
        capture_output=True,
        text=True,
        check=True,
    )
    hosts = re.findall(r'"host": "([^"]+)"', table.stdout)
    assert len(hosts) >= 6, table.stdout
    for host in hosts:
        assert f"  {host} " in output, f"make run does not name the demo's route {host}:\n{output}"
    assert re.search(rf"would change \S+: {len(hosts)} routes added", output), output


def check_test(session: Session, command: str, output: str) -> None:
    """Lint, types and pytest ran; pytest ran the one file PYTEST_ADDOPTS names, and no other."""
    assert "ruff check generator tests" in output, output
    assert "Success: no issues found" in output, output  # mypy
    passed = re.findall(r"^(\S+?)::\S+ PASSED", output, re.MULTILINE)
    assert passed, output[-6000:]
    assert set(passed) == {SMALL_TEST_FILE}, sorted(set(passed))
    summary = re.search(r"^=+ (\d+) passed in ", output, re.MULTILINE)
    assert summary is not None and int(summary[1]) == len(passed), output[-3000:]


def check_completion(session: Session, command: str, output: str) -> None:
    """eval of an empty script passes too: the function is there afterwards."""
    shown = run_command(session, f"{command}\ncomplete -p devtest-router")
    assert "devtest-router" in shown, shown


# A `run` command matching a pattern: the environment it runs with, and what it must print.
CHECKS: tuple[tuple[str, dict[str, str], Callable[[Session, str, str], None] | None], ...] = (
    (r"devtest-router --version$", {}, check_version),
    (r"make dist$", {}, check_dist),
    (r"make run\b", {}, check_run),
    (r"make test\b", {"PYTEST_ADDOPTS": f"-n 0 -v {SMALL_TEST_FILE}"}, check_test),
    (r"completion bash", {}, check_completion),
)


def run_one(session: Session, command: str) -> None:
    if PLACEHOLDER.search(command):
        pytest.fail(f"README.md: `{command}` has a placeholder the test cannot fill")
    env: dict[str, str] = {}
    checks = []
    for pattern, extra, check in CHECKS:
        if re.search(pattern, command):
            env.update(extra)
            if check is not None:
                checks.append(check)
    output = run_command(session, command, **env)
    for check in checks:
        check(session, command, output)


# --------------------------------------------------------------------------
# the commands that serve until Ctrl-C


def start_demo(session: Session, command: str) -> Background:
    """`make demo`: up once it says so and the README's demo URLs answer on its port."""
    port = int(session.env["DEMO_PORT"])
    base = (session.clone / "build" / "local-demo").resolve()
    run = start(["bash", "-c", command], session.clone, session.env, base, port)
    session.demo = run
    wait_for_line(run, r"^Registry: ")
    pid = int(wait_for_line(run, r"^devtest-router demo: up on .*\(pid (\d+);").group(1))
    section = README.read_text(encoding="utf-8").split("## On your own machine")[1]
    section = section.split("\n## ")[0]
    urls = set(re.findall(r"http://([a-z0-9.-]*localhost):8080/", section))
    assert {"localhost", "main-api.localhost", "main-nope.localhost"} <= urls, urls
    for host in sorted(urls):
        if host.startswith("my-branch"):
            continue  # the service of one's own: the next block
        answer = http_request(port, host)
        expected = 404 if "nope" in host else 200
        assert answer.status == expected, (host, answer.status, answer.text)
    pids = demo_pids(base, pid) | {pid}
    ports = listening_ports(pids)
    assert port in ports, ports
    return Background(command, run, pids, ports, stopped_demo)


def stopped_demo(session: Session, started: Background) -> None:
    assert started.run.stdout[-1] == (
        "devtest-router demo: stopped; everything it started is gone"
    ), started.run.output()
    assert not [p for p in started.pids if pid_alive(p)], started.run.output()
    assert not demo_pids(started.run.base)
    assert not [p for p in started.ports if port_open(p)], started.ports
    session.demo = None


def start_own_service(session: Session, command: str) -> Background:
    """The README's `register` command, as the demo prints it, with the demo's registry; on a
    free port instead of 8000. Up once both of its URLs list the folder."""
    demo = session.demo
    assert demo is not None, "the README registers a service of one's own before `make demo`"
    printed = own_service_command(demo.stdout)
    registry = re.search(r"REGISTRY_URL=http://127\.0\.0\.1:(\d+) ", printed)
    assert registry is not None, printed
    filled = command.replace("<etcd port>", registry[1])
    assert filled == printed, f"README:\n  {filled}\nthe demo prints:\n  {printed}"
    assert len(re.findall(r"\b8000\b", filled)) == 2, filled  # PORT=8000 and the server's
    own_port = free_port()
    run = start(
        ["bash", "-c", re.sub(r"\b8000\b", str(own_port), filled)],
        session.clone,
        session.env,
        demo.base,
        own_port,
    )

    def answers() -> bool:  # both in one pass: a reload's old worker may still answer
        return all(
            "Directory listing" in http_request(demo.port, host).text
            for host in ("my-branch-web.localhost", "my-branch.localhost")
        )

    wait_for(answers, 60, interval=0.1, what="my-branch(-web).localhost to answer")
    pids = process_tree(run.proc.pid) | {run.proc.pid}
    return Background(command, run, pids, {own_port}, stopped_own)


def stopped_own(session: Session, started: Background) -> None:
    """Deregistered: its URL is the frontend's 404 again; its server is gone."""
    assert session.demo is not None
    port = session.demo.port
    wait_for(
        lambda: http_request(port, "my-branch-web.localhost").status == 404,
        30,
        interval=0.1,
        what="my-branch-web.localhost to go after its Ctrl-C",
    )
    assert not [p for p in started.pids if pid_alive(p)], started.run.output()
    assert not [p for p in started.ports if port_open(p)], started.ports


# An `until Ctrl-C` command matching a pattern: how to start it and tell it is up.
READY: tuple[tuple[str, Callable[[Session, str], Background]], ...] = (
    (r"^make demo\b", start_demo),
    (r"\bdevtest-router register -- ", start_own_service),
)


def start_one(session: Session, command: str) -> None:
    for pattern, starter in READY:
        if re.search(pattern, command):
            session.background.append(starter(session, command))
            return
    pytest.fail(f"README.md: the test does not know how to tell `{command}` is up: add it to READY")


def stop_background(session: Session) -> None:
    """Ctrl-C on each, the last one started first; what each left is checked."""
    while session.background:
        started = session.background.pop()
        os.killpg(started.run.proc.pid, signal.SIGINT)
        code = started.run.wait()
        assert code in (0, 130, -signal.SIGINT), (started.command, code, started.run.output())
        started.stopped(session, started)


# --------------------------------------------------------------------------
# the tests


def test_every_shell_block_is_marked_and_the_test_knows_how_to_run_it() -> None:
    found = blocks(README.read_text(encoding="utf-8"))
    marked = [command for block in found if block.kind != "not run" for command in block.commands]
    for required in REQUIRED:
        assert any(c == required or c.startswith(required + " ") for c in marked), required
    sections = [block.section for block in found if block.kind != "not run"]
    assert sections.index("Install") < sections.index("Two commands"), sections
    for block in found:
        assert block.commands, f"README.md:{block.line}: an empty block"
        for command in block.commands:
            if block.kind == "until Ctrl-C":
                assert any(re.search(p, command) for p, _ in READY), command
            elif block.kind == "run":
                assert not PLACEHOLDER.search(command), command


def test_a_block_without_a_mark_or_a_mark_without_a_block_is_refused() -> None:
    with pytest.raises(ValueError, match=r"README.md:2: a ```sh block without a readme-test"):
        blocks("# x\n```sh\nmake run\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: a readme-test comment with no block"):
        blocks("<!-- readme-test: run -->\n")
    with pytest.raises(ValueError, match=r"README.md:1: a readme-test comment not right before"):
        blocks("<!-- readme-test: run -->\ntext\n```sh\nmake run\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: a readme-test comment of no known kind"):
        blocks("<!-- readme-test: maybe -->\n```sh\nmake run\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: a readme-test comment before a ```py"):
        blocks("<!-- readme-test: run -->\n```py\nx\n```\n")
    # a block of output (no language) needs no mark; a heading inside a block is no section
    text = (
        "## A\n```\n# not a heading\n```\n"
        "<!-- readme-test: not run: your etcd -->\n```sh\nwatch\n```\n"
    )
    assert blocks(text) == [Block("A", "not run", ("watch",), 7)]


def test_commands_go_on_after_a_backslash_and_comments_are_none() -> None:
    body = ["make run    # one", "            # its comment goes on", "", "A=1 \\", "  b c  # x"]
    assert commands(body) == ("make run    # one", "A=1 b c  # x")


@pytest.fixture
def leftovers() -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    yield runs
    stop_all(runs)


@pytest.mark.integration  # the demo starts etcd, nginx and servers; the installs take minutes
def test_the_readmes_commands_run_in_order_on_a_fresh_clone(
    tmp_path: Path, leftovers: list[DemoRun]
) -> None:
    find_binary("etcd")
    find_binary("nginx")
    find_binary("pipx")
    find_promtool()
    if not (WHEELHOUSE / "requirements.txt").is_file():
        pytest.fail(
            f"no wheelhouse at {WHEELHOUSE}: run `make deps` (scripts/install-deps fills it)",
            pytrace=False,
        )
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True)
    found = blocks((clone / "README.md").read_text(encoding="utf-8"))
    version = re.search(
        r'^__version__ = "([^"]+)"$', (clone / "generator/__init__.py").read_text(), re.MULTILINE
    )
    assert version is not None
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = home / ".local" / "bin"
    env = user_env(home, bin_dir)
    env.update(DEMO_PORT=str(free_port()), DEMO_START_TIMEOUT="90")
    session = Session(clone, env, bin_dir, version[1])

    section = None
    for block in found:
        if block.section != section:
            stop_background(session)  # Ctrl-C on what the section before left serving
            section = block.section
        if block.kind == "not run":
            continue
        for command in block.commands:
            if block.kind == "run":
                run_one(session, command)
            else:
                start_one(session, command)
                leftovers.append(session.background[-1].run)
            session.ran.append(command)
    stop_background(session)

    expected = [c for block in found if block.kind != "not run" for c in block.commands]
    assert session.ran == expected
