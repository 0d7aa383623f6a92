"""Real-process test helpers: nginx, etcd and HTTP backends on loopback.

Nothing here is mocked.  Every process is started by us, tracked by pid and
stopped by pid; an atexit hook kills whatever a crashed test left behind.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import http.server
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin")

# Every process started by this module, so that nothing outlives the test run.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _LIVE.clear()


# --------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all sockets are held open together, so no repeats)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def find_binary(name: str) -> str:
    """Absolute path of an executable found in PATH or the sbin dirs; fails the test if absent."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + list(EXTRA_BIN_DIRS)
    found = shutil.which(name, path=os.pathsep.join(d for d in dirs if d))
    if found is None:
        pytest.fail(
            f"{name} not found: run `make deps` (installs Debian's nginx-light and etcd-server)",
            pytrace=False,
        )
    return found


def tools_dir() -> Path:
    """Where scripts/install-deps unpacks the tools Debian ships only inside a server's package
    (promtool, from prometheus): TOOLS, as for install-deps, else ~/.cache/devtest-router/tools."""
    if os.environ.get("TOOLS"):
        return Path(os.environ["TOOLS"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "devtest-router" / "tools"


def find_promtool() -> str:
    """promtool from the PATH, else the one `make deps` unpacked; fails the test if absent."""
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), str(tools_dir())]
    found = shutil.which("promtool", path=os.pathsep.join(d for d in dirs if d))
    if found is None:
        pytest.fail(
            f"promtool not found on the PATH or in {tools_dir()}: run `make deps` (it unpacks "
            "the promtool of Debian's prometheus package there)",
            pytrace=False,
        )
    return found


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 60.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll predicate until it returns something truthy; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def interruptible() -> None:
    """preexec_fn for a child a test ends with SIGINT, as a terminal's Ctrl-C would: SIGINT back
    to its default action. A test run started as a background job of a non-interactive shell
    inherits SIGINT ignored, and Python and make keep it ignored in their children."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return _stat_fields(stat)[0] != "Z"


def child_pids(pid: int) -> set[int]:
    """Live (non-zombie) direct children of pid, found via /proc."""
    children: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields((entry / "stat").read_text())
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(entry.name))
    return children


def _stat_fields(stat: str) -> list[str]:
    # /proc/PID/stat is "pid (comm) state ppid ..."; comm may contain spaces or ')'.
    return stat[stat.rindex(")") + 2 :].split()


def _start(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    _LIVE[proc.pid] = proc
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send sig (waking the process if SIGSTOPped), wait, SIGKILL after timeout."""
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _LIVE.pop(proc.pid, None)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# HTTP client


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def http_request(
    port: int,
    host: str,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5,
    source: str | None = None,
) -> Response:
    """One request to 127.0.0.1:port with the given Host header (no redirects, no proxy);
    `source`: the loopback address the client sends from (127.0.0.2: another client)."""
    bind = None if source is None else (source, 0)
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout, source_address=bind)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Response(resp.status, merged, data)
    finally:
        conn.close()


# --------------------------------------------------------------------------
# HTTP backends


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    server: _EchoServer
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        info = {
            "name": self.server.backend_name,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "x-forwarded-for": self.headers.get("X-Forwarded-For"),
            "x-forwarded-proto": self.headers.get("X-Forwarded-Proto"),
            "x-forwarded-host": self.headers.get("X-Forwarded-Host"),
            "x-real-ip": self.headers.get("X-Real-IP"),
        }
        self.server.requests.append(info)
        payload = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    backend_name: str
    requests: list[dict[str, str | None]]


class Backend:
    """A real HTTP server on 127.0.0.1 that answers every request with JSON describing it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server = _EchoServer((LOOPBACK, 0), _EchoHandler)
        self._server.backend_name = name
        self._server.requests = []
        self.port: int = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def requests(self) -> list[dict[str, str | None]]:
        """The JSON bodies this backend has answered, oldest first."""
        return self._server.requests

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_backends(names: Iterable[str]) -> dict[str, Backend]:
    return {name: Backend(name) for name in names}


# --------------------------------------------------------------------------
# nginx


class Nginx:
    """A real nginx master in its own prefix directory, listening (via conf.d) on loopback ports.

    `ports` are free ports reserved for the servers that tests write into conf.d;
    with an empty conf.d nothing listens.
    """

    def __init__(self, prefix: Path, nports: int = 2) -> None:
        self.binary = find_binary("nginx")
        self.prefix = Path(prefix).resolve()
        self.conf_dir = self.prefix / "conf.d"
        self.main_conf = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        self.pid_file = self.prefix / "nginx.pid"
        self.ports = free_ports(nports)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def _base_argv(self) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.main_conf),
            "-e",
            str(self.error_log),
        ]

    @property
    def test_command(self) -> str:
        """Shell-splittable `nginx -t -q` for this instance's config."""
        return shlex.join([*self._base_argv, "-t", "-q"])

    @property
    def reload_command(self) -> str:
        """Shell-splittable `nginx -s reload` for this instance (sends SIGHUP via the pid file)."""
        return shlex.join([*self._base_argv, "-s", "reload"])

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("nginx is not started")
        return self._proc.pid

    def write_main_conf(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        temp = self.prefix / "temp"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / sub).mkdir(parents=True, exist_ok=True)
        # As root, workers would otherwise run as `nobody` and be unable to use the temp dirs.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        self.main_conf.write_text(
            f"{user}"
            "worker_processes 1;\n"
            f"pid {self.pid_file};\n"
            f"error_log {self.error_log} notice;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {self.access_log};\n"
            f"    client_body_temp_path {temp}/client_body;\n"
            f"    proxy_temp_path {temp}/proxy;\n"
            f"    fastcgi_temp_path {temp}/fastcgi;\n"
            f"    uwsgi_temp_path {temp}/uwsgi;\n"
            f"    scgi_temp_path {temp}/scgi;\n"
            f"    include {self.conf_dir}/*.conf;\n"
            "}\n"
        )

    def start(self, timeout: float = 60.0) -> None:
        """Write nginx.conf if missing, start the master (daemon off) and wait until it serves."""
        if not self.main_conf.exists():
            self.write_main_conf()
        self.pid_file.unlink(missing_ok=True)
        self._proc = _start(
            [*self._base_argv, "-g", "daemon off;"], self.prefix / "nginx.stdout.log"
        )
        try:
            wait_for(self._started, timeout, what=f"nginx master {self.pid} to start")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- {self.error_log}:\n{_tail(self.error_log)}") from None

    def _started(self) -> bool:
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited with status {proc.returncode}")
        try:
            written = int(self.pid_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return False
        return written == proc.pid and bool(self.worker_pids())

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def worker_pids(self) -> set[int]:
        """Pids of the master's live children; a reload replaces all of them."""
        return child_pids(self.pid) if self.running() else set()

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """Run `nginx -t` on the current files (does not raise)."""
        return subprocess.run(shlex.split(self.test_command), capture_output=True, text=True)

    def reload(self, timeout: float = 60.0) -> None:
        """Run reload_command and wait until every old worker is replaced by a new one.

        Raises AssertionError (with nginx's message) if the config is rejected.
        """
        old = self.worker_pids()
        done = subprocess.run(shlex.split(self.reload_command), capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"nginx reload failed ({done.returncode}):\n{done.stderr}")

        def replaced() -> bool:
            current = self.worker_pids()
            return bool(current) and not (current & old)

        try:
            wait_for(replaced, timeout, what="nginx workers to be replaced after reload")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.error_log}:\n{_tail(self.error_log)}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT) by pid, SIGKILL after timeout. Idempotent."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGQUIT, timeout)

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------
# etcd


def _etcd_env() -> dict[str, str]:
    # ETCD_* variables in the caller's environment would clash with our flags.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def pause(proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP to `proc`, and return once every thread of it has stopped: kill() only starts a
    stop, and each thread stops when it is next scheduled."""
    proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: _stopped(proc.pid), 30, what=f"pid {proc.pid} to stop")


def _stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped by a signal (state T in /proc)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        states.append(stat.rpartition(")")[2].split()[0])
    return bool(states) and all(state in "Tt" for state in states)


class Etcd:
    """A real etcd member on loopback with v2 enabled and its own data dir under `base_dir`.

    Raft timings are shortened (heartbeat 50 ms, election 500 ms) so elections and
    restarts are quick; pass other values for slower, more tolerant members.
    """

    def __init__(
        self,
        base_dir: Path,
        name: str = "etcd0",
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
    ) -> None:
        self.binary = find_binary("etcd")
        self.name = name
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / f"{name}.data"
        self.log_path = self.base_dir / f"{name}.log"
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("etcd is not started")
        return self._proc.pid

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--enable-v2=true",
            "--logger=zap",
            "--log-outputs=stderr",
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"devtest-{self.base_dir.name}",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
        ]  # fmt: skip

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._proc = _start(self.argv(), self.log_path, env=_etcd_env())
        if wait:
            try:
                self.wait_healthy(timeout)
            except BaseException:
                self.stop()
                raise

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def check() -> bool:
            if not self.running():
                raise AssertionError(f"etcd {self.name} exited")
            return self.healthy()

        try:
            wait_for(
                check, timeout, interval=0.05, what=f"etcd {self.name} at {self.url} to be healthy"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.log_path}:\n{_tail(self.log_path)}") from None

    def healthy(self) -> bool:
        """GET /health answers {"health": "true"} (needs a leader)."""
        try:
            r = http_request(
                self.client_port, f"{LOOPBACK}:{self.client_port}", "/health", timeout=1
            )
            return r.status == 200 and r.json().get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def put(self, api: str, key: str, value: str, timeout: float = 30) -> None:
        """A plain write (no TTL, no lease), as any client makes it through etcd's HTTP API:
        api "etcd2" (v2 keys) or "etcd3" (the v3 JSON gateway)."""
        if api == "etcd3":
            encoded = {
                k: base64.b64encode(v.encode()).decode()
                for k, v in (("key", key), ("value", value))
            }
            self.v3("kv/put", encoded, timeout=timeout)
            return
        r = http_request(
            self.client_port,
            f"{LOOPBACK}:{self.client_port}",
            f"/v2/keys{urllib.parse.quote(key)}",
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urllib.parse.urlencode({"value": value}).encode(),
            timeout=timeout,
        )
        if r.status not in (200, 201):
            raise AssertionError(f"etcd v2 PUT {key} -> {r.status}: {r.text}")

    def v3(self, endpoint: str, body: dict[str, Any], timeout: float = 5) -> Any:
        """POST to the v3 JSON gateway, e.g. v3("kv/put", {"key": b64("k"), "value": b64("v")})."""
        r = http_request(
            self.client_port,
            f"{LOOPBACK}:{self.client_port}",
            f"/v3/{endpoint}",
            method="POST",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
            timeout=timeout,
        )
        if r.status != 200:
            raise AssertionError(f"etcd v3 {endpoint} -> {r.status}: {r.text}")
        return r.json()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid (SIGCONT too, in case it is paused), SIGKILL after timeout. Idempotent."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, no cleanup by etcd (simulates a crash)."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGKILL, 5)

    def pause(self) -> None:
        """SIGSTOP: the member stops answering but keeps its sockets (simulates a hang).

        Returns once every thread has stopped: kill() only starts a stop, and each thread
        stops when it is next scheduled, so on a busy machine a member went on answering a
        request sent right after it (a test's read succeeded 2 times in 15)."""
        if not self.running():
            raise RuntimeError(f"etcd {self.name} is not running")
        assert self._proc is not None
        pause(self._proc)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if not self.running():
            raise RuntimeError(f"etcd {self.name} is not running")
        assert self._proc is not None
        self._proc.send_signal(sig)

    def restart(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Stop, then start again on the same data dir and ports."""
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def __enter__(self) -> Etcd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_cluster(base_dir: Path, n: int = 3, timeout: float = 90.0) -> list[Etcd]:
    """n members on loopback, started together; returns once every member is healthy."""
    ports = free_ports(2 * n)
    names = [f"etcd{i}" for i in range(n)]
    initial = ",".join(f"{nm}=http://{LOOPBACK}:{ports[2 * i + 1]}" for i, nm in enumerate(names))
    members = [
        Etcd(base_dir, nm, ports[2 * i], ports[2 * i + 1], initial) for i, nm in enumerate(names)
    ]
    try:
        for m in members:
            m.start(wait=False)
        for m in members:
            m.wait_healthy(timeout)
    except BaseException:
        for m in members:
            m.stop()
        raise
    return members


def b64(text: str) -> str:
    """Base64 for the v3 JSON gateway's key/value fields."""
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()
