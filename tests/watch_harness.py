"""The watcher as the tests run it: `devtest-router watch` feeding a real nginx from a registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import Etcd, Nginx, find_binary, http_request, wait_for

DOMAIN = "dev.test"
BIN = Path(sys.executable).parent / "devtest-router"
SCHEMES = {"etcd2": "etcd", "etcd3": "etcd3"}
KINDS = pytest.mark.parametrize("kind", ["etcd2", "etcd3"])


def registry_url(kind: str, *members: Etcd) -> str:
    return f"{SCHEMES[kind]}://" + ",".join(f"127.0.0.1:{m.client_port}" for m in members)


@dataclass
class Frontend:
    """nginx plus `devtest-router watch` feeding it from the registry at `url`."""

    nginx: Nginx
    url: str
    folder: Path
    extra: list[str] = field(default_factory=list)
    # most tests start the watcher before anything registered: a fresh etcd, no /deployment yet
    allow_empty: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def counter(self) -> Path:
        return self.folder / "reloads"

    @property
    def log(self) -> Path:
        return self.folder / "watch.log"

    def start(self) -> None:
        reload = f"sh -c '{self.nginx.reload_command} && echo x >> {self.counter}'"
        argv = [
            str(BIN), "watch", "--registry", self.url, "--domain", DOMAIN, "--allow-loopback",
            "--listen", f"127.0.0.1:{self.nginx.port}",
            "--output", str(self.nginx.conf_dir / "devtest-router.conf"),
            "--site-dir", str(self.folder / "site"),
            "--nginx", find_binary("nginx"),
            "--test-command", self.nginx.test_command, "--reload-command", reload,
            *(["--allow-empty"] if self.allow_empty else []), *self.extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
        env.pop("REGISTRY_URL", None)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=env)

    def reloads(self) -> int:
        return len(self.counter.read_text().split()) if self.counter.exists() else 0

    def answers(self, host: str) -> str | None:
        """The name of the backend that answers `host`, or None for the 404 page."""
        try:
            response = http_request(self.nginx.port, host)
        except ConnectionRefusedError:  # before the first apply nothing listens
            return "(nginx not listening yet)"
        except ConnectionResetError:  # an old worker quitting after a reload
            return "(connection reset)"
        if response.status == 404 and response.headers.get("x-devtest-router"):
            return None
        assert response.status == 200, (response.status, response.text)
        name: str = response.json()["name"]
        return name

    def wait_route(self, host: str, backend: str | None, timeout: float = 60.0) -> None:
        """Wait until `host` answers from `backend`, and until the workers of any earlier
        config have quit (worker_processes is 1): until then they may still take a request."""
        wait_for(
            lambda: self.answers(host) == backend,
            timeout,
            what=f"{host} -> {backend}; watcher log:\n{self.log_tail()}",
        )
        self.wait_old_workers_gone(timeout)

    def wait_old_workers_gone(self, timeout: float = 60.0) -> None:
        """Wait until only the worker of the newest config is left (worker_processes is 1).
        A reload is not over when the new worker answers: nginx's master gives it 100 ms to
        start before it tells the old ones to quit, and until then the old ones go on taking
        connections with the old config."""
        wait_for(lambda: len(self.nginx.worker_pids()) == 1, timeout, what="old workers to quit")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
