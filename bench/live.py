"""The frontend end to end: a real etcd, a real nginx, a real HTTP backend and the real
`devtest-router watch` process, all on 127.0.0.1.

    python bench/live.py --routes 1000 [--events 50] [--burst] [--under-load]   # JSON on stdout

For one registry size: etcd is preloaded with N services, 10 a branch (issue 14's shape;
--shape routes: N routes as deployments of 3 services, the earlier one) through v3 transactions
of 128 puts (v2: one PUT a key), the watcher is started and applies them, then:
- event to live, at most --events times (and at most --budget seconds): one new service's keys
  are written (`register`, one transaction) and its hostname is asked through nginx every 5 ms
  until the backend answers 200; the time from the write to that answer. Event to file, from
  the same start: when the output file first holds the new hostname (FileWatch).
- the watcher's memory (VmRSS, VmHWM from /proc) after its first apply, after MEMORY_AFTER (40)
  events, and after the last.
- the naive baseline of one event, in this process: read the registry, pipeline.build and
  apply.checked_text from scratch, nginx -t on the staged file, crossplane reading back the
  file in place (to learn what is removed), and the test command on the whole config; no
  caching anywhere. The same steps the watcher takes, so the ratio of the event's latency to
  it says what the quiet period and the caching add or save.
- --burst: 1,000 registrations spread evenly over 10 s (333 new deployments of 3 services):
  reloads caused (lines the reload command appends to a counter file) and the time from the
  last write until all 1,000 hostnames answer.
- --under-load: the watcher is stopped; wrk (2 threads, 20 connections, bounded; half of them
  kept alive, half a new connection per request) asks one routed hostname while 50 applies
  alternate two snapshots (each a real reload); wrk's socket errors and non-2xx answers, and
  the same for a 5 s control run without reloads. Then 50 more applies while RetryingClient
  asks (keep-alive, retrying a GET once as browsers do): the requests that still fail.

Every request goes to 127.0.0.1. Every upstream in the registry is the backend on 127.0.0.1,
so even a stray request reaches nothing else. Every process is started here, stopped by pid,
and killed at exit if something went wrong.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common
import synthetic
from harness import Etcd, Nginx

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent / "devtest-router"
POLL = 0.005  # seconds between two requests for a hostname that does not answer yet
EVENT_TIMEOUT = 180.0  # an event not live by then counts as failed (and ends the series)
MAX_WAIT = 2.0  # the watcher's default --max-wait
FILE_POLL = 0.001  # seconds between two looks at the output file (a stat; read when changed)
MEMORY_AFTER = 40  # the watcher's memory is also read after this many events (issue 14's)
# The registry's shape: "wide" is issue 14's comparison with confd, N services 10 a branch
# (synthetic.wide_registry); "routes" the earlier one, N routes as deployments of 3 services.
SHAPES = ("wide", "routes")
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_STARTED.values()):
        if process.poll() is None:
            process.kill()
            process.wait()


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    _STARTED[process.pid] = process
    return process


def _end(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _STARTED.pop(process.pid, None)


# ------------------------------------------------------------------------------------------------
# the backend: answers 200 to everything; a deep accept queue, so that wrk's 20 connections
# (each request a new upstream connection through nginx) are never refused by the backend


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    BODY = b'{"name": "bench-backend"}\n'

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # nginx hung up (its client, wrk, went away): nothing to report


class Backend:
    def __init__(self) -> None:
        self.server = _Server((LOOPBACK, 0), _Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------


def status(port: int, host: str, timeout: float = 5.0) -> int | None:
    """The status nginx answers for `host` (None: refused or reset, e.g. during a reload)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", "/", headers={"Host": host, "Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_live(port: int, host: str, timeout: float) -> float | None:
    """Ask for `host` every POLL seconds until it answers 200; the perf_counter time it did."""
    deadline = time.perf_counter() + timeout
    while True:
        if status(port, host) == 200:
            return time.perf_counter()
        if time.perf_counter() >= deadline:
            return None
        time.sleep(POLL)


class FileWatch:
    """When the output file first holds `host`: a thread that stats the file every
    FILE_POLL seconds (the apply replaces it: a new inode) and reads it only when it changed.
    Started before the event's write, so its time is against the same start."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.needle = host.encode()
        self.found: float | None = None
        self._stop = threading.Event()
        self._seen = self._signature()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _poll(self) -> None:
        while not self._stop.is_set():
            seen = self._signature()
            if seen is not None and seen != self._seen:
                at = time.perf_counter()
                self._seen = seen
                try:
                    if self.needle in self.path.read_bytes():
                        self.found = at
                        return
                except OSError:
                    pass
            time.sleep(FILE_POLL)

    def wait(self, timeout: float) -> float | None:
        """The perf_counter time the file was seen holding the host, or None."""
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()
        return self.found


class Stage:
    """etcd preloaded with `routes` routes, nginx, a backend and the watcher feeding nginx."""

    def __init__(
        self,
        routes: int,
        api: str,
        folder: Path,
        shape: str = "wide",
        watch_args: tuple[str, ...] = (),
    ) -> None:
        self.routes = routes
        self.watch_args = watch_args  # more arguments for the watcher (--quiet-period 0.01)
        self.api = api  # "v3" or "v2"
        self.folder = folder
        self.shape = shape  # SHAPES
        self.facts: dict[str, Any] = {"routes": routes, "registry": f"etcd {api}", "shape": shape}
        if watch_args:
            self.facts["watch_args"] = list(watch_args)
        self.etcd: Etcd | None = None
        self.nginx: Nginx | None = None
        self.backend: Backend | None = None
        self.watcher: subprocess.Popen[bytes] | None = None
        self._registry: Any = None
        self._events = 0

    # -- setup ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.etcd is not None
        scheme = "etcd3" if self.api == "v3" else "etcd"
        return f"{scheme}://{LOOPBACK}:{self.etcd.client_port}"

    @property
    def counter(self) -> Path:
        return self.folder / "reloads"

    @property
    def log(self) -> Path:
        return self.folder / "watch.log"

    @property
    def output(self) -> Path:
        assert self.nginx is not None
        return self.nginx.conf_dir / "devtest-router.conf"

    @property
    def reload_command(self) -> str:
        assert self.nginx is not None
        return f"sh -c {shlex.quote(f'{self.nginx.reload_command} && echo x >> {self.counter}')}"

    def reloads(self) -> int:
        return len(self.counter.read_text().split()) if self.counter.exists() else 0

    def start(self, deadline: float) -> None:
        self.etcd = Etcd(self.folder / "etcd")
        self.etcd.start()
        self.backend = Backend()
        self.nginx = Nginx(self.folder / "nginx", nports=1)
        self.nginx.start()
        upstream = synthetic.Upstream(LOOPBACK, self.backend.port)
        if self.shape == "wide":
            snapshot = synthetic.wide_registry(self.routes, upstream=upstream)
            last = synthetic.wide_deployment(len(snapshot["deployment"]) - 1, 0, upstream)
            self.facts["routes_in_file"] = self.routes + len(snapshot["deployment"])
        else:
            snapshot = synthetic.registry(self.routes, upstream=upstream)
            last = synthetic.deployment(len(snapshot["deployment"]) - 1, 0, upstream)
        writer = synthetic.EtcdWriter(self.etcd.client_port, self.api)
        try:
            keys, self.facts["preload_seconds"] = common.measure(lambda: writer.load(snapshot))
        finally:
            writer.close()
        self.facts["preload_keys"] = keys
        self.facts["deployments"] = len(snapshot["deployment"])
        self.last_preloaded = last[0]
        self.start_watcher(deadline)

    def start_watcher(self, deadline: float) -> None:
        assert self.nginx is not None
        argv = [
            str(BIN), "watch", "--registry", self.url, "--domain", common.DOMAIN,
            "--allow-loopback", "--listen", f"{LOOPBACK}:{self.nginx.port}",
            "--output", str(self.output), "--site-dir", str(self.folder / "site"),
            "--nginx", common.NGINX,
            "--test-command", self.nginx.test_command, "--reload-command", self.reload_command,
            *self.watch_args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
        env.pop("REGISTRY_URL", None)
        start = time.perf_counter()
        self.watcher = _spawn(argv, self.log, env)
        while self.reloads() < 1:
            if self.watcher.poll() is not None:
                raise RuntimeError(f"the watcher exited:\n{self.log_tail()}")
            if "apply failed" in self.log.read_text(errors="replace"):
                raise RuntimeError(f"the watcher's first apply failed:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                waited = time.perf_counter() - start
                raise RuntimeError(f"no first apply within {waited:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.facts["first_apply_seconds"] = time.perf_counter() - start
        from generator.core.names import hostname

        host = hostname(self.last_preloaded, "web", common.DOMAIN)
        if wait_live(self.nginx.port, host, 30) is None:
            raise RuntimeError(f"{host} (preloaded) does not answer:\n{self.log_tail()}")
        self.facts["watcher_after_first_apply"] = self.idle_memory()

    def idle_memory(self, timeout: float = 120.0) -> dict[str, float]:
        """The watcher's VmRSS and VmHWM once every apply that reloaded nginx has ended.

        A hostname answers as soon as nginx reloads; the watcher then still writes the site's
        pages and hands free memory back before it logs the apply. Read in that window, VmRSS
        holds the pages being written (up to 160 MB more at 100,000 routes)."""
        assert self.watcher is not None
        deadline = time.monotonic() + timeout
        while self._applies_logged() < self.reloads():
            if time.monotonic() > deadline:
                raise RuntimeError(f"an apply not logged within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return common.proc_status(self.watcher.pid)

    def _applies_logged(self) -> int:
        """Applies the watcher logged as done with a reload (see cli._describe)."""
        return self.log.read_text(errors="replace").count("; nginx reloaded; ")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def registry(self) -> Any:
        from generator.registry.open import open_registry

        if self._registry is None:
            self._registry = open_registry(self.url, timeout=30.0)
        return self._registry

    def stop(self) -> None:
        if self.watcher is not None:
            _end(self.watcher)
        if self._registry is not None:
            self._registry.close()
        for part in (self.nginx, self.etcd):
            if part is not None:
                part.stop()
        if self.backend is not None:
            self.backend.stop()

    # -- measurements ---------------------------------------------------------------------------

    def _entry(self, index: int, service: str) -> tuple[Any, str]:
        from generator.core.names import hostname
        from generator.registry.base import Entry

        assert self.backend is not None
        name = synthetic.slug(synthetic.branch_name(index))
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = Entry(name, service, LOOPBACK, self.backend.port, created)
        return entry, hostname(name, service, common.DOMAIN)

    def events(self, count: int, budget: float) -> dict[str, Any]:
        """Event to live and event to file, one event at a time, until `count` or `budget`
        seconds are used; the watcher's memory after MEMORY_AFTER events and after the last."""
        assert self.nginx is not None
        latencies: list[float] = []
        to_file: list[float] = []
        started = time.perf_counter()
        reloads = self.reloads()
        failed = None
        memory_after: dict[str, Any] | None = None
        while len(latencies) < count:
            spent = time.perf_counter() - started
            if latencies and (spent >= budget or spent + max(latencies) > budget):
                break  # the next event would likely end after the deadline
            self._events += 1
            entry, host = self._entry(10_000_000 + self._events, "web")
            watch = FileWatch(self.output, host)
            start = time.perf_counter()
            self.registry().register(entry, ttl=0)
            timeout = min(EVENT_TIMEOUT, max(30.0, budget - spent))
            live = wait_live(self.nginx.port, host, timeout)
            written = watch.wait(30.0 if live is not None else 0.0)
            if live is None:
                failed = f"{host} not live after {timeout:g} s:\n{self.log_tail()}"
                break
            latencies.append(live - start)
            if written is not None:
                to_file.append(written - start)
            if len(latencies) == MEMORY_AFTER:
                memory_after = {"events": MEMORY_AFTER, **self.idle_memory()}
        assert self.watcher is not None
        result: dict[str, Any] = {
            "latencies": latencies,
            "to_file": to_file,
            "count": len(latencies),
            "asked": count,
            "seconds": time.perf_counter() - started,
            "reloads": self.reloads() - reloads,
            "watcher_after_events": self.idle_memory(),
        }
        result["watcher_after_events"]["events"] = len(latencies)
        if memory_after is not None:
            result["watcher_after_n_events"] = memory_after
        if latencies:
            result["p50"] = common.percentile(latencies, 0.50)
            result["p95"] = common.percentile(latencies, 0.95)
            result["max"] = max(latencies)
        if to_file:
            result["file_p50"] = common.percentile(to_file, 0.50)
            result["file_p95"] = common.percentile(to_file, 0.95)
            result["file_count"] = len(to_file)
        if failed:
            result["error"] = failed
        return result

    def naive_event(self) -> dict[str, Any]:
        """One event's work done here from scratch, step by step (see the module's doc)."""
        from generator.nginx import apply as applying
        from generator.nginx.wrapper import Wrapper, run_command

        assert self.nginx is not None
        cfg = self.settings()
        env = common.templates()
        steps: dict[str, float] = {}
        read, steps["read registry"] = common.measure(lambda: self.registry().read())
        rendered, steps["build"] = common.measure(
            lambda: common.naive_build(read.snapshot, cfg, env)
        )
        _, steps["crossplane gate"] = common.measure(lambda: common.checked_text(rendered, cfg))
        with tempfile.TemporaryDirectory(prefix="devtest-bench-") as name:
            folder = Path(name)
            staged = folder / "staged.conf"
            staged.write_text(rendered.text, encoding="utf-8")
            (folder / "nginx").mkdir()
            wrapper = Wrapper(folder / "nginx", staged)
            wrapper.write()
            (passed, said), steps["nginx -t (staged)"] = common.measure(
                lambda: wrapper.test(common.NGINX)
            )
            if not passed:
                return {"error": said}
            current = self.output.read_text(encoding="utf-8")
            _, steps["read back file in place"] = common.measure(
                lambda: applying.current_routes(self.output, current, folder / "current")
            )
        _, steps["test command"] = common.measure(lambda: run_command(self.nginx.test_command))
        return {
            "steps": steps,
            "seconds": sum(steps.values()),
            "routes": len(rendered.table.routes),
        }

    def settings(self) -> Any:
        assert self.nginx is not None
        return common.config(
            listen=[f"{LOOPBACK}:{self.nginx.port}"],
            allow_loopback=True,
            output=str(self.output),
            test_command=self.nginx.test_command,
            reload_command=self.reload_command,
        )

    def burst(self, count: int = 1000, seconds: float = 10.0) -> dict[str, Any]:
        """`count` registrations evenly over `seconds`: reloads, and time until all answer."""
        assert self.nginx is not None
        entries = []
        for number in range(count):
            deployment, service = divmod(number, 3)
            entries.append(self._entry(20_000_000 + deployment, ("web", "api", "worker")[service]))
        registry = self.registry()
        before = self.reloads()
        start = time.perf_counter()
        for number, (entry, _) in enumerate(entries):
            pause = start + number * seconds / count - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            registry.register(entry, ttl=0)
        last_write = time.perf_counter()
        live = wait_live(self.nginx.port, entries[-1][1], EVENT_TIMEOUT)
        result: dict[str, Any] = {
            "registrations": count,
            "write_seconds": last_write - start,
        }
        if live is None:
            result["error"] = f"the last registration is not live after {EVENT_TIMEOUT:g} s"
            return result
        # Every apply reads the whole registry, so once the last write answers, all should.
        pending = [host for _, host in entries]
        sweep_deadline = time.perf_counter() + 60
        while pending and time.perf_counter() < sweep_deadline:
            pending = [host for host in pending if status(self.nginx.port, host) != 200]
        all_live = time.perf_counter() if pending == [] else None
        if pending:
            result["not_live_hosts"] = pending[:20]
        time.sleep(MAX_WAIT + 0.5)  # a trailing apply would reload within this
        result.update(
            {
                "last_live_after_last_write": live - last_write,
                "not_live": len(pending),
                "all_confirmed_after_last_write": (all_live - last_write) if all_live else None,
                "reloads": self.reloads() - before,
            }
        )
        return result

    def under_load(self, applies: int = 50, control_seconds: float = 5.0) -> dict[str, Any]:
        """wrk against one routed hostname while `applies` applies reload nginx."""
        from generator.nginx import apply as applying

        assert self.nginx is not None and self.watcher is not None
        _end(self.watcher)  # from here on the applies below are the only writer
        entry, host = self._entry(30_000_000, "web")
        self.registry().register(entry, ttl=0)
        cfg = self.settings()
        env = common.templates()
        first = common.naive_build(self.registry().read().snapshot, cfg, env)
        second = common.naive_build(
            synthetic.changed_one(self.registry().read().snapshot), cfg, env
        )
        applying.apply(first, cfg)
        if wait_live(self.nginx.port, host, 30) is None:
            return {"error": f"{host} does not answer before the load"}
        time.sleep(0.5)
        result: dict[str, Any] = {"host": host, "control": self._wrk(host, control_seconds)}
        failures: list[str] = []

        def reload_all() -> float:
            """`applies` applies, the two configs in turn (each reloads nginx): seconds taken."""
            start = time.perf_counter()
            for number in range(applies):
                try:
                    applying.apply(second if number % 2 == 0 else first, cfg)
                except Exception as error:
                    failures.append(f"{type(error).__name__}: {error}")
            return time.perf_counter() - start

        before = self.reloads()
        running = self._start_wrk(host, 300)
        time.sleep(1.0)
        try:
            seconds = reload_all()
            time.sleep(1.0)
        finally:
            result["under_reloads"] = self._stop_wrk(running)
        result.update(
            {
                "applies": applies,
                "apply_errors": failures,
                "reloads": self.reloads() - before,
                "applies_seconds": seconds,
            }
        )
        # The same reloads again, asked by a client that retries as browsers and urllib3 do.
        before = self.reloads()
        client = RetryingClient(self.nginx.port, host)
        time.sleep(1.0)
        try:
            reload_all()
            time.sleep(1.0)
        finally:
            result["retrying"] = client.stop()
        result["retrying"]["reloads"] = self.reloads() - before
        return result

    # Two wrk processes share the load (2 threads, 20 connections in all): one keeps its
    # connections alive, as browsers do; one opens a new connection for every request, so that a
    # failure there is not the keep-alive race (a connection that nginx's old worker closes as
    # idle at the moment a new request is sent on it, which clients retry).
    WRK = (("keepalive", ()), ("close", ("-H", "Connection: close")))

    def _start_wrk(
        self, host: str, seconds: float
    ) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
        assert self.nginx is not None
        started = {}
        for name, extra in self.WRK:
            out = self.folder / f"wrk-{name}-{time.monotonic_ns()}.txt"
            argv = [
                shutil.which("wrk") or "wrk", "-t1", "-c10", f"-d{int(seconds)}s",
                "-H", f"Host: {host}", *extra, f"http://{LOOPBACK}:{self.nginx.port}/",
            ]  # fmt: skip
            started[name] = (_spawn(argv, out), out)
        return started

    def _stop_wrk(
        self, started: dict[str, tuple[subprocess.Popen[bytes], Path]]
    ) -> dict[str, dict[str, Any]]:
        found = {}
        for name, (process, out) in started.items():
            _end(process, signal.SIGINT)  # wrk prints its summary on SIGINT
            found[name] = parse_wrk(out.read_text(errors="replace"))
        return found

    def _wrk(self, host: str, seconds: float) -> dict[str, dict[str, Any]]:
        started = self._start_wrk(host, seconds)
        for process, _ in started.values():
            process.wait(seconds + 30)
        return self._stop_wrk(started)


class RetryingClient:
    """Keep-alive GETs from THREADS threads, each on its own connection, retried as browsers
    and urllib3 retry an idempotent request: once, on a new connection, when a kept-alive
    connection was closed before any byte of the answer arrived (the server closed it as idle
    while the request was on its way: RemoteDisconnected, a reset or a broken pipe on a
    connection that had already served a request). Anything else, and a retry that fails too,
    counts as failed; so does an answer other than 200."""

    THREADS = 4
    RETRIED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)  # RemoteDisconnected

    def __init__(self, port: int, host: str) -> None:
        self.port = port
        self.host = host
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "failed": 0, "retried": 0, "failed_without_retry": 0}
        self.errors: dict[str, int] = {}
        self.retried_errors: dict[str, int] = {}  # what the first attempt of a retry met
        self._threads = [threading.Thread(target=self._loop, daemon=True)
                         for _ in range(self.THREADS)]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def _get(self, connection: http.client.HTTPConnection) -> tuple[int | None, str, bool]:
        """(status or None, the error's name, whether to retry): a retry only when the
        connection had served a request and nothing of the answer arrived."""
        reused = connection.sock is not None
        try:
            connection.request("GET", "/", headers={"Host": self.host})
            response = connection.getresponse()  # the status line: the first bytes
        except self.RETRIED as error:  # http.client.RemoteDisconnected is a reset too
            connection.close()
            return None, type(error).__name__, reused
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return None, type(error).__name__, False
        try:
            response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return None, type(error).__name__ + " (in the answer)", False
        if response.will_close:
            connection.close()
        return response.status, "", False

    def _loop(self) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        while not self._stop.is_set():
            status, error, retry = self._get(connection)
            first_failed = status != 200
            if retry:  # once, on a new connection (the closed one reconnects on its own)
                with self._lock:
                    self.retried_errors[error] = self.retried_errors.get(error, 0) + 1
                status, again, _ = self._get(connection)
                if again:
                    error = f"{error}, then {again}"
            with self._lock:
                self.counts["requests"] += 1
                self.counts["retried"] += retry
                self.counts["failed_without_retry"] += first_failed
                if status != 200:
                    self.counts["failed"] += 1
                    name = error or f"HTTP {status}"
                    self.errors[name] = self.errors.get(name, 0) + 1
        connection.close()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return {
            **self.counts,
            "errors": self.errors,
            "retried_errors": self.retried_errors,
            "threads": self.THREADS,
        }


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests, socket errors and non-2xx/3xx answers from wrk's summary."""
    found: dict[str, Any] = {"output": text.strip().splitlines()[-8:]}
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if match is None:
        found["error"] = "no summary from wrk"
        return found
    found["requests"] = int(match.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {}
    )
    found["socket_errors"] = socket_errors
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    found["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    found["failed"] = found["non_2xx"] + sum(socket_errors.values())
    return found


def run(
    routes: int,
    api: str = "v3",
    events: int = 50,
    events_deadline: float | None = None,
    burst: bool = False,
    under_load: bool = False,
    start_deadline: float | None = None,
    keep: bool = False,
    shape: str = "wide",
    watch_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One size: setup, the naive event, the events (until `events_deadline`, a time.monotonic()
    value), and the burst and the load if asked. Errors are reported in the result."""
    folder = Path(tempfile.mkdtemp(prefix=f"devtest-bench-live-{routes}-"))
    stage = Stage(routes, api, folder, shape, watch_args)
    result: dict[str, Any] = {}
    try:
        stage.start(start_deadline or time.monotonic() + 900)
        result["naive_event"] = stage.naive_event()
        budget = (events_deadline or time.monotonic() + 600) - time.monotonic()
        result["events"] = stage.events(events, budget)
        if burst:
            result["burst"] = stage.burst()
        if under_load:
            result["under_load"] = stage.under_load()
    except Exception as error:  # reported in the results; the other stages still run
        result["error"] = f"{type(error).__name__}: {error}"
        common.say(f"live {routes}: {result['error']}")
    finally:
        result["stage"] = stage.facts
        stage.stop()
        if keep or "error" in result or result.get("burst", {}).get("not_live"):
            result["folder"] = str(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--routes",
        type=int,
        required=True,
        help="the registry's size: services, 10 a branch (--shape wide, issue 14's), or routes "
        "as deployments of 3 services (--shape routes)",
    )
    parser.add_argument("--shape", choices=SHAPES, default="wide")
    parser.add_argument("--registry", choices=("etcd3", "etcd2"), default="etcd3")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for the events")
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--under-load", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument(
        "--watch-args",
        default="",
        help="more arguments for the watcher, split like a shell (--watch-args '--quiet-period "
        "0.01'): what a setting adds or saves",
    )
    args = parser.parse_args()
    api = "v3" if args.registry == "etcd3" else "v2"
    result = run(
        args.routes,
        api,
        args.events,
        time.monotonic() + args.budget,
        args.burst,
        args.under_load,
        keep=args.keep,
        shape=args.shape,
        watch_args=tuple(shlex.split(args.watch_args)),
    )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
