"""Helpers for tests/test_deploy.py: the deploy/ scripts run outside Docker, on loopback.

The frontend image's entrypoint, health check and nginx.conf, and the example service's
entrypoint, are run here as they are in the image, with every path and binary pointed by
environment variables at a temporary folder, a real nginx (not root's port 80) and a real etcd.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import subprocess
import sys
from pathlib import Path

from harness import (
    LOOPBACK,
    Etcd,
    _tail,
    child_pids,
    find_binary,
    free_port,
    http_request,
    pid_alive,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
FRONTEND = DEPLOY / "frontend"
SERVICE = DEPLOY / "service"

# What the image's nginx.conf names, and where the tests put it instead (under the prefix).
IMAGE_PATHS = {
    "/run/devtest-router": "run",
    "/var/cache/devtest-router": "cache",
    "/etc/nginx/conf.d": "conf.d",
}
# Environment variables of the image that name the image's own paths or ports: the tests point
# them at the temporary folder and loopback ports instead; every other ENV applies as it is.
MOVED_ENV = {
    "DEVTEST_ROUTER_OUTPUT",
    "DEVTEST_ROUTER_LISTEN",
    "DEVTEST_ROUTER_METRICS_LISTEN",
    "PATH",
}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction of a Dockerfile, continuation lines joined
    and comments left out."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        found.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return found


def image_env(path: Path = FRONTEND / "Dockerfile") -> dict[str, str]:
    """The ENV settings of a Dockerfile (NAME=VALUE form, values without spaces)."""
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            for item in rest.split():
                name, _, value = item.partition("=")
                env[name] = value
    return env


def router_bin() -> str:
    """The devtest-router command of the Python running the tests (the project's venv)."""
    beside = Path(sys.executable).parent / "devtest-router"
    return str(beside) if beside.exists() else find_binary("devtest-router")


def reachable_by_others(path: Path) -> bool:
    """Whether any user can run `path`: every folder above it searchable by others."""
    real = path.resolve()
    return all(os.stat(folder).st_mode & 0o001 for folder in real.parents) and bool(
        os.stat(real).st_mode & 0o001
    )


def router_bin_for_others(folder: Path) -> str:
    """A devtest-router command another user can run: router_bin() if it can, else a launcher
    in `folder` that runs this project's code (and the test environment's packages) on the
    system's Python 3 (e.g. when the test venv's Python lives under root's 0700 home)."""
    if reachable_by_others(Path(sys.executable)):
        return router_bin()
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or not reachable_by_others(Path(python)):
        raise AssertionError("no python3 in /usr/bin or /bin that another user can run")
    launcher = folder / "devtest-router"
    launcher.write_text(
        f"#!{python} -IS\n"
        "import site, sys\n"
        + "".join(f"site.addsitedir({p!r})\n" for p in site.getsitepackages())
        + "from generator.cli.main import run\n"
        "sys.exit(run())\n",
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    return str(launcher)


def localized_nginx_conf(prefix: Path, as_root: bool) -> Path:
    """deploy/frontend/nginx.conf with its absolute paths moved under `prefix`; every path
    replaced must be in the file, so a change to the image's config cannot make this a no-op.
    Nothing else changes (its log destinations included), except `as_root`: nginx started by
    root outside a container switches its workers to `nobody`, who cannot reach the test's
    folder, so they run as root (`user root root`); in the image nginx never starts as root."""
    text = (FRONTEND / "nginx.conf").read_text(encoding="utf-8")
    for old, sub in IMAGE_PATHS.items():
        if old not in text:
            raise AssertionError(f"deploy/frontend/nginx.conf no longer mentions {old}")
        text = text.replace(old, str(prefix / sub))
    if as_root:
        text = "user root root;\n" + text
    for sub in IMAGE_PATHS.values():
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class Frontend:
    """deploy/frontend/entrypoint.sh run outside Docker: nginx (the image's nginx.conf, moved
    under `base`) on a free loopback port and `devtest-router watch` on `etcd`, with the image's
    ENV but for its paths and ports (MOVED_ENV).

    `run_as` (user, group): the entrypoint, and so nginx and the watcher, start as that user
    through setpriv (with `setpriv`'s extra options), as the image's USER starts them; `base`
    must then be reachable by it.
    `nginx_bin` and `port` replace the system's nginx and a free unprivileged port.
    stdout and stderr go to two files, as `docker logs` keeps them apart."""

    def __init__(
        self,
        base: Path,
        etcd: Etcd,
        domain: str = "dev.test",
        *,
        port: int | None = None,
        nginx_bin: str | None = None,
        run_as: tuple[str, str] | None = None,
        setpriv: tuple[str, ...] = (),
    ) -> None:
        self.base = base.resolve()
        self.prefix = self.base / "nginx"
        self.run_dir = self.base / "run"
        self.log = self.base / "entrypoint.log"  # stderr
        self.out = self.base / "stdout.log"
        self.port = port if port is not None else free_port()
        self.domain = domain
        self.run_as = run_as
        self.setpriv = setpriv
        self.nginx_conf = localized_nginx_conf(
            self.prefix, as_root=os.geteuid() == 0 and run_as is None
        )
        image = {k: v for k, v in image_env().items() if k not in MOVED_ENV}
        self.env = {
            **os.environ,
            **image,
            "NGINX_BIN": nginx_bin or find_binary("nginx"),
            "NGINX_CONF": str(self.nginx_conf),
            "NGINX_PREFIX": f"{self.prefix}/",
            "NGINX_PID_FILE": str(self.prefix / "run" / "nginx.pid"),
            "ROUTER_BIN": router_bin(),
            "FRONTEND_RUN_DIR": str(self.run_dir),
            "REGISTRY_URL": etcd.url,
            "DEVTEST_ROUTER_DOMAIN": domain,
            "DEVTEST_ROUTER_LISTEN": f"{LOOPBACK}:{self.port}",
            "DEVTEST_ROUTER_OUTPUT": str(self.prefix / "conf.d" / "devtest-router.conf"),
            "DEVTEST_ROUTER_SITE_DIR": str(self.prefix / "site"),  # not the image's /var/lib
            "DEVTEST_ROUTER_METRICS_LISTEN": "",  # the image's 0.0.0.0:9180 is not loopback
            "DEVTEST_ROUTER_ALLOW_LOOPBACK": "true",
            # the tests start the frontend on a fresh etcd, before anything registered
            "DEVTEST_ROUTER_ALLOW_EMPTY": "true",
        }
        if run_as is not None:
            self.env["HOME"] = str(self.base)
            self.env["ROUTER_BIN"] = router_bin_for_others(self.base)
            for path in [self.base, *self.base.rglob("*")]:
                shutil.chown(path, *run_as)
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_user(self, argv: list[str]) -> list[str]:
        if self.run_as is None:
            return argv
        user, group = self.run_as
        setpriv = find_binary("setpriv")
        return [
            setpriv,
            f"--reuid={user}",
            f"--regid={group}",
            "--clear-groups",
            *self.setpriv,
            *argv,
        ]

    def start(self) -> None:
        for path in (self.log, self.out):
            path.touch()
            if self.run_as is not None:
                # runc gives a container's stdio to its user (nginx opens /dev/stdout anew for
                # the access log, which takes write permission on what stdout is)
                shutil.chown(path, *self.run_as)
        with self.log.open("ab") as err, self.out.open("ab") as out:
            self.proc = subprocess.Popen(
                self._as_user([str(FRONTEND / "entrypoint.sh")]),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        wait_for(self._serving, 60, what=f"the frontend's first apply\n{self.tail()}")

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the entrypoint exited ({self.proc.returncode}):\n{self.tail()}")
        try:
            answer = http_request(self.port, f"nobody.{self.domain}", timeout=1)
        except OSError:
            return False
        return answer.headers.get("x-devtest-router") == "unknown-host"

    def tail(self) -> str:
        return f"--- {self.log}:\n{_tail(self.log)}\n--- {self.out}:\n{_tail(self.out)}"

    @property
    def nginx_pid(self) -> int:
        return int((self.prefix / "run" / "nginx.pid").read_text().strip())

    @property
    def watcher_pid(self) -> int:
        return int((self.run_dir / "watcher.pid").read_text().strip())

    def pids(self) -> set[int]:
        """The entrypoint, nginx's master and workers and the watcher, while they live."""
        found = {self.nginx_pid, *child_pids(self.nginx_pid), self.watcher_pid}
        if self.proc is not None:
            found.add(self.proc.pid)
        return {pid for pid in found if pid_alive(pid)}

    def health(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_user([str(FRONTEND / "healthcheck.sh")]),
            env={
                **os.environ,
                "HEALTHCHECK_URL": f"http://{LOOPBACK}:{self.port}/",
                "CURL_BIN": find_binary("curl"),
                "FRONTEND_RUN_DIR": str(self.run_dir),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=30,
        )

    def route(self, host: str, path: str = "/") -> tuple[int, bytes]:
        answer = http_request(self.port, host, path, timeout=2)
        return answer.status, answer.body

    def stop(self) -> None:
        """What a test left running is killed by pid (the test itself checks clean stops)."""
        pids: set[int] = set()
        for pid_file in (self.run_dir / "watcher.pid", self.prefix / "run" / "nginx.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int(pid_file.read_text().strip()))
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                _kill(self.proc.pid)
                self.proc.wait()
        for pid in pids:
            if pid_alive(pid):
                _kill(pid)


class Service:
    """deploy/service/entrypoint.sh running deploy/service/app.py, registering in `etcd`."""

    def __init__(self, base: Path, etcd: Etcd, name: str, service: str) -> None:
        self.log = base.resolve() / f"service-{service}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **os.environ,
            "ROUTER_BIN": router_bin(),
            "REGISTRY_URL": etcd.url,
            "NAME": name,
            "SERVICE": service,
            "PORT": str(self.port),
            "IP": LOOPBACK,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(SERVICE / "entrypoint.sh"), sys.executable, str(SERVICE / "app.py")],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self) -> str:
        return f"--- {self.log}:\n{_tail(self.log)}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def v2_keys(etcd: Etcd, key: str) -> dict[str, str]:
    """Every leaf under `key` in etcd's v2 keyspace, as {key: value}; {} when there is none."""
    answer = http_request(
        etcd.client_port, f"{LOOPBACK}:{etcd.client_port}", f"/v2/keys{key}?recursive=true"
    )
    if answer.status == 404:
        return {}
    leaves: dict[str, str] = {}

    def walk(node: dict[str, object]) -> None:
        for child in node.get("nodes", []) or []:  # type: ignore[attr-defined]
            walk(child)
        if not node.get("dir"):
            leaves[str(node["key"])] = str(node.get("value"))

    walk(answer.json()["node"])
    return leaves
