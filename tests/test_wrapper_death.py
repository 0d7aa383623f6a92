"""A `register -- CMD` wrapper killed with SIGKILL takes CMD with it (issue 10, Low 12).

Nothing of a SIGKILLed wrapper runs any more: it cannot pass a signal on nor deregister. CMD gets
SIGTERM from the kernel (PR_SET_PDEATHSIG, set in the child before exec), the instance's keys
expire after their TTL, and the empty etcd v2 directories they leave behind are removed by the
next registration in the deployment. Real wrapper, real CMD, real etcd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Etcd, free_port, pid_alive, wait_for

CLI = Path(sys.executable).with_name("devtest-router")
PYTHON = sys.executable

pytestmark = pytest.mark.integration

# CMD: notes the signal it gets, then exits (as a server does on SIGTERM).
_SERVER = """\
import os, signal, socket, sys
port, folder = int(sys.argv[1]), sys.argv[2]

def on_signal(signum, frame):
    open(os.path.join(folder, "got-" + signal.Signals(signum).name), "w").close()
    sys.exit(0)

signal.signal(signal.SIGTERM, on_signal)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)
while True:
    server.accept()[0].close()
"""


def environment() -> dict[str, str]:
    drop = {"NAME", "SERVICE", "PORT", "IP", "INSTANCE", "REGISTRY_URL"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in drop and not key.startswith(("DEVTEST_ROUTER_", "ECS_"))
    }
    return {**env, "DEVTEST_ROUTER_IMDS_URL": "http://127.0.0.1:9"}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def keys(etcd: Etcd, path: str = "/deployment") -> Any:
    url = f"{etcd.url}/v2/keys{path}?recursive=true"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)["node"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def paths(node: Any) -> set[str]:
    """Every key and directory under a v2 node (directories end in '/')."""
    found: set[str] = set()
    pending = [node] if node else []
    while pending:
        current = pending.pop()
        if current.get("dir"):
            found.add(current["key"] + "/")
            pending.extend(current.get("nodes", ()))
        else:
            found.add(current["key"])
    return found


def wrap(
    processes: list[subprocess.Popen[bytes]],
    etcd: Etcd,
    folder: Path,
    name: str,
    instance: str,
    ttl: int,
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A real wrapper around a real CMD, registered in etcd v2; (wrapper, CMD's pid, its log)."""
    folder.mkdir()
    port, script, log = free_port(), folder / "server.py", folder / "wrapper.log"
    script.write_text(_SERVER)
    argv = [
        str(CLI), "register", "--registry", etcd.url.replace("http://", "etcd://"),
        "--name", name, "--service", "web", "--port", str(port), "--ip", "127.0.0.1",
        "--instance", instance, "--ttl", str(ttl), "--drain", "0",
        "--", PYTHON, str(script), str(port), str(folder),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=environment())
    processes.append(proc)
    wait_for(lambda: "registered /deployment/" in log.read_text(), what=f"{name} to register")
    started = log.read_text().split("(pid ", 1)[1]
    return proc, int(started.split(")", 1)[0]), log


def test_sigkill_of_the_wrapper_takes_cmd_with_it_and_the_next_registration_sweeps(
    etcd: Etcd, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    wrapper, child, _ = wrap(processes, etcd, tmp_path / "killed", "feature/x", "c1", ttl=2)
    assert pid_alive(child)
    wrapper.send_signal(signal.SIGKILL)
    wrapper.wait(30)

    # CMD got SIGTERM and exited: nothing serves unregistered.
    wait_for(lambda: not pid_alive(child), timeout=60, what="CMD to end with its wrapper")
    assert (tmp_path / "killed" / "got-SIGTERM").exists()

    # The keys expire (TTL 2 s); etcd v2 keeps their directories, empty.
    left = "/deployment/feature-x/"
    wait_for(
        lambda: not {p for p in paths(keys(etcd)) if not p.endswith("/")},
        timeout=60,
        what="the keys to expire",
    )
    empty = paths(keys(etcd))
    assert f"{left}service/web/instance/c1/" in empty, empty

    # devtest-router shows none of it: the snapshot has no deployment.
    done = subprocess.run(
        [str(CLI), "snapshot", "--registry", etcd.url.replace("http://", "etcd://")],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"deployment": {}}

    # The next registration in the deployment removes the empty directories it finds there.
    wrapper, child, log = wrap(processes, etcd, tmp_path / "next", "feature/x", "c2", ttl=30)
    now = paths(keys(etcd))
    assert not any(p.startswith(f"{left}service/web/instance/c1") for p in now), now
    assert f"{left}service/web/instance/c2/ip" in now, now
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(60) == 0, log.read_text()
    assert not pid_alive(child)
    assert keys(etcd) is None or paths(keys(etcd)) <= {"/deployment/"}


def test_a_wrapper_that_exits_normally_still_passes_sigterm_once(
    etcd: Etcd, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The death signal does not fire while the wrapper lives, nor change how it stops CMD."""
    wrapper, child, log = wrap(processes, etcd, tmp_path / "one", "feature/y", "c1", ttl=30)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(60) == 0, log.read_text()
    assert (tmp_path / "one" / "got-SIGTERM").exists()
    assert not pid_alive(child)
