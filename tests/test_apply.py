"""`devtest-router apply` against a real nginx on loopback, with real HTTP backends.

Most tests call generator.cli.main.main() in-process (fast); the stdin test and the lock test
run the installed command in real subprocesses, as etcdwatch does. The reload command is wrapped in
`sh -c '<nginx -s reload> && echo x >> reloads'` so a test can count the reloads that ran.
"""

from __future__ import annotations

import collections
import fcntl
import http.client
import io
import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Result, run_main
from harness import Backend, Nginx, Response, find_binary, http_request, wait_for
from template_harness import override

from generator.cli.main import main
from generator.core.snapshot import snapshot_id

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("devtest-router")
DOMAIN = "dev.test"
OUTPUT = "devtest-router.conf"
LOCK = f".{OUTPUT}.lock"  # apply's lock file
TESTED = f".{OUTPUT}.tested"  # the digest of the file last tested and reloaded
CHECKED = f".{OUTPUT}.checked"  # the trust file: digests of the parts that passed the check

BackendFactory = Callable[..., dict[str, Backend]]
Snapshot = dict[str, Any]


# --------------------------------------------------------------------------
# helpers


def snapshot(deployments: Mapping[str, Mapping[str, int]]) -> Snapshot:
    """{"branch": {"service": port}} as etcdwatch hands it over; created in the given order."""
    return {
        "deployment": {
            branch: {
                "created": f"2026-01-{day:02d}T09:00:00Z",
                "service": {
                    name: {"ip": "127.0.0.1", "port": str(port)} for name, port in services.items()
                },
            }
            for day, (branch, services) in enumerate(deployments.items(), start=1)
        }
    }


def ports(found: Mapping[str, Backend], branch: str, *services: str) -> dict[str, int]:
    return {service: found[f"{branch}-{service}"].port for service in services}


@dataclass(frozen=True)
class FileState:
    data: bytes
    mode: int
    uid: int
    gid: int
    ino: int
    mtime_ns: int


def state(path: Path) -> FileState:
    status = path.stat()
    return FileState(
        path.read_bytes(),
        stat.S_IMODE(status.st_mode),
        status.st_uid,
        status.st_gid,
        status.st_ino,
        status.st_mtime_ns,
    )


def listing(folder: Path) -> dict[str, FileState]:
    return {entry.name: state(entry) for entry in sorted(folder.iterdir())}


def get(port: int, host: str, **kwargs: Any) -> Response | None:
    """One request, or None while nginx does not answer yet (reload in progress)."""
    try:
        return http_request(port, host, **kwargs)
    except (OSError, http.client.HTTPException):
        return None


class Router:
    """devtest-router apply settings for one test's nginx, and the calls that use them."""

    def __init__(self, nginx: Nginx, tmp: Path) -> None:
        self.nginx = nginx
        self.tmp = tmp
        self.output = nginx.conf_dir / OUTPUT
        self.reload_counter = tmp / "reloads"
        self.config = tmp / "router.yaml"
        self.write_config()

    def write_config(self, **extra: Any) -> None:
        settings = {
            "access_log": str(self.tmp / "router.access.log"),
            "site_dir": str(self.tmp / "site"),
            **extra,
        }
        self.config.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML

    @property
    def reload_command(self) -> str:
        counted = (
            f"{self.nginx.reload_command} && echo x >> {shlex.quote(str(self.reload_counter))}"
        )
        return shlex.join(["sh", "-c", counted])

    def settings(self) -> list[str]:
        """The settings render, check and apply share."""
        return [
            "--listen", f"127.0.0.1:{self.nginx.port}",
            "--allow-loopback",
            "--domain", DOMAIN,
            "--config", str(self.config),
        ]  # fmt: skip

    def argv(self, *extra: str) -> list[str]:
        """apply's arguments; `extra` comes last, so a repeated flag there wins (argparse)."""
        return [
            "apply",
            *self.settings(),
            "--output", str(self.output),
            "--nginx", find_binary("nginx"),
            "--test-command", self.nginx.test_command,
            "--reload-command", self.reload_command,
            *extra,
        ]  # fmt: skip

    def apply(
        self, data: Snapshot | str, *extra: str, environ: Mapping[str, str] | None = None
    ) -> Result:
        return run_main(self.argv(*extra), data, environ)

    def render(self, data: Snapshot) -> str:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["render", *self.settings()],
            stdin=io.StringIO(json.dumps(data)),
            stdout=out,
            stderr=err,
            environ={},
        )
        assert code == 0, err.getvalue()
        return out.getvalue()

    def reloads(self) -> int:
        try:
            return len(self.reload_counter.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def applied(self, data: Snapshot, *extra: str) -> Result:
        """Apply, assert it worked and wait until nginx runs only the new workers."""
        old_workers = self.nginx.worker_pids()
        result = self.apply(data, *extra)
        assert result.code == 0, result.err
        assert len(result.lines) == 1 and result.lines[0].startswith("devtest-router: applied "), (
            result.err
        )
        leftovers = [
            entry.name
            for entry in self.nginx.conf_dir.iterdir()
            if entry.name.endswith((".staged", ".previous"))
        ]
        assert leftovers == []
        self.settled(old_workers)
        return result

    def settled(self, old_workers: set[int]) -> None:
        """Wait until a reload has replaced `old_workers` and they have all exited."""

        def replaced() -> bool:
            current = self.nginx.worker_pids()
            return len(current) == 1 and not current & old_workers

        wait_for(replaced, what="nginx to reload and its old workers to exit")

    def routes_to(self, host: str, backend: str) -> None:
        """Wait until `host` reaches `backend` (a reload is asynchronous)."""
        port = self.nginx.port

        def answered() -> bool:
            response = get(port, host)
            return (
                response is not None
                and response.status == 200
                and response.json()["name"] == backend
            )

        wait_for(answered, what=f"{host} to reach backend {backend}")

    def unknown(self, host: str) -> Response:
        """Wait until `host` gets the unknown-host page; return it."""
        port = self.nginx.port
        seen: list[Response] = []

        def refused() -> bool:
            response = get(port, host)
            if response is None or response.status != 404:
                return False
            seen.append(response)
            return True

        wait_for(refused, what=f"{host} to get the unknown-host 404")
        return seen[-1]


@pytest.fixture
def router(nginx: Nginx, tmp_path: Path) -> Router:
    return Router(nginx, tmp_path)


def nginx_probe(counter: Path) -> str:
    """--nginx value: the real nginx binary, after appending a line to `counter` per run."""
    script = f'echo x >> {shlex.quote(str(counter))} && exec {find_binary("nginx")} "$@"'
    return shlex.join(["sh", "-c", script, "nginx"])


# Two branches with two services each; the branch name has a '/' as GitLab branches do.
BACKENDS = ("master-web", "master-api", "feature-login-web", "feature-login-api")


@pytest.fixture
def two_branches(backends: BackendFactory) -> tuple[dict[str, Backend], Snapshot]:
    found = backends(*BACKENDS)
    return found, snapshot(
        {
            "master": ports(found, "master", "web", "api"),
            "feature/login": ports(found, "feature-login", "web", "api"),
        }
    )


# --------------------------------------------------------------------------
# routing through nginx


def test_routes_reach_the_right_backend_with_forwarding_headers(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    found, data = two_branches
    result = router.applied(data)
    assert result.out == ""
    assert result.lines == [
        f"devtest-router: applied {router.output}: 6 routes added, 0 removed, 0 changed; "
        f"6 routes, snapshot {snapshot_id(data)}; nginx reloaded; 5 site files written, 0 removed"
    ]
    assert router.reloads() == 1

    for name in BACKENDS:
        router.routes_to(f"{name}.{DOMAIN}", name)
    # <branch>.<domain> is the default entry point: the service named web
    router.routes_to(f"master.{DOMAIN}", "master-web")
    router.routes_to(f"feature-login.{DOMAIN}", "feature-login-web")
    # nginx lowercases $host before the map: hostnames are case-insensitive
    router.routes_to("Feature-Login-API.DEV.test", "feature-login-api")

    port = router.nginx.port
    seen = http_request(port, f"master-api.{DOMAIN}", "/x?y=1", method="POST", body=b"hello")
    assert seen.status == 200
    assert seen.json() == {
        "name": "master-api",
        "method": "POST",
        "path": "/x?y=1",
        "host": f"master-api.{DOMAIN}",
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": f"master-api.{DOMAIN}",
        "x-real-ip": "127.0.0.1",
    }
    # Host goes through as the client sent it (with its port); X-Forwarded-Host is the bare
    # hostname; a client's X-Forwarded-For is kept and the client's address appended.
    relayed = http_request(
        port, f"feature-login.{DOMAIN}:8080", headers={"X-Forwarded-For": "10.1.2.3"}
    ).json()
    assert relayed["name"] == "feature-login-web"
    assert relayed["host"] == f"feature-login.{DOMAIN}:8080"
    assert relayed["x-forwarded-host"] == f"feature-login.{DOMAIN}"
    assert relayed["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"

    answered = sum(len(backend.requests) for backend in found.values())
    for host in (f"nobody-web.{DOMAIN}", f"master-web.{DOMAIN}.example", "other.test"):
        page = http_request(port, host)
        assert page.status == 404, host
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["x-devtest-router"] == "unknown-host"
        assert f'No service answers to <code id="asked">{host}</code>' in page.text
    # the bare domain is the frontend's own: the index of deployments, never a branch
    index = http_request(port, DOMAIN)
    assert index.status == 200 and f"//master-web.{DOMAIN}/" in index.text
    # an unknown host never reaches some branch's backend
    assert sum(len(backend.requests) for backend in found.values()) == answered


def test_apply_through_the_installed_command_with_the_snapshot_on_stdin(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    """As etcdwatch runs it: a child process reading the snapshot on standard input."""
    _, data = two_branches
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith("DEVTEST_ROUTER_")
    }
    done = subprocess.run(
        [str(CLI), *router.argv()],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"devtest-router: applied {router.output}: 6 routes added")
    assert len(done.stderr.strip().splitlines()) == 1
    router.routes_to(f"feature-login-api.{DOMAIN}", "feature-login-api")
    router.routes_to(f"master.{DOMAIN}", "master-web")
    installed = state(router.output)

    # A truncated snapshot (etcdwatch killed mid-write): 123, one line, the file untouched.
    broken = subprocess.run(
        [str(CLI), *router.argv()],
        input=json.dumps(data)[:40],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    assert broken.returncode == 123
    assert broken.stdout == ""
    assert "Traceback" not in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1
    assert broken.stderr.startswith("devtest-router: standard input: not valid JSON")
    assert state(router.output) == installed
    assert router.reloads() == 1


# --------------------------------------------------------------------------
# no-op and removal


def test_same_snapshot_again_changes_and_reloads_nothing(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    _, data = two_branches
    router.applied(data)
    router.routes_to(f"master-web.{DOMAIN}", "master-web")
    before = listing(router.nginx.conf_dir)
    workers = router.nginx.worker_pids()
    assert router.reloads() == 1

    again = router.apply(data)
    assert again.code == 0
    assert again.out == ""
    assert again.lines == [
        f"devtest-router: nothing to do: {router.output} is up to date "
        f"(6 routes, snapshot {snapshot_id(data)}); site up to date"
    ]
    # The same registry in another key order is the same snapshot: still nothing to do.
    reordered = {"deployment": dict(reversed(list(data["deployment"].items())))}
    assert json.dumps(reordered) != json.dumps(data)
    assert router.apply(reordered).lines == again.lines

    assert listing(router.nginx.conf_dir) == before  # bytes, mode, inode and mtime
    assert router.reloads() == 1
    assert router.nginx.worker_pids() == workers
    router.routes_to(f"master-web.{DOMAIN}", "master-web")


def test_removed_deployment_loses_its_routes_and_the_other_keeps_routing(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    _, data = two_branches
    router.applied(data)
    router.routes_to(f"feature-login-web.{DOMAIN}", "feature-login-web")

    del data["deployment"]["feature/login"]
    result = router.applied(data)
    assert result.lines == [
        f"devtest-router: applied {router.output}: 0 routes added, 3 removed, 0 changed; "
        f"3 routes, snapshot {snapshot_id(data)}; nginx reloaded; 2 site files written, 1 removed"
    ]
    for host in ("feature-login-web", "feature-login-api", "feature-login"):
        router.unknown(f"{host}.{DOMAIN}")
    router.routes_to(f"master-api.{DOMAIN}", "master-api")
    router.routes_to(f"master.{DOMAIN}", "master-web")
    assert "feature-login" not in router.output.read_text()
    assert router.reloads() == 2


def test_removing_the_last_deployment_removes_its_routes(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    """Regression: an emptied registry used to fail to render (exit 2), so the last branch's
    routes stayed forever."""
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    router.applied(master_only)
    router.routes_to(f"master-web.{DOMAIN}", "master-web")

    workers = router.nginx.worker_pids()
    emptied = router.apply({"deployment": {}})  # 3 routes: under the safety threshold's minimum
    assert emptied.code == 0, emptied.err
    assert "0 routes added, 3 removed" in emptied.err
    router.settled(workers)
    router.unknown(f"master-web.{DOMAIN}")
    router.unknown(f"master.{DOMAIN}")


# --------------------------------------------------------------------------
# refusals: nothing changes, nginx keeps the routes it has


def test_config_nginx_rejects_is_never_installed(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot], tmp_path: Path
) -> None:
    found, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    router.applied(master_only)
    router.routes_to(f"master-web.{DOMAIN}", "master-web")
    os.chmod(router.output, 0o640)
    before = listing(router.nginx.conf_dir)
    assert set(before) == {OUTPUT, LOCK, TESTED, CHECKED}

    # crossplane takes any one-argument proxy_read_timeout; nginx wants a time
    templates = override(
        tmp_path, "proxy_read_timeout {{ proxy_read_timeout }};", "proxy_read_timeout 5x;"
    )
    result = router.apply(data, "--template-dir", str(templates))
    assert result.code == 123, result.err
    assert result.out == ""
    assert result.err.startswith(
        "devtest-router: nginx rejects the rendered config; nothing was changed\n"
    )
    assert 'nginx: [emerg] "proxy_read_timeout" directive invalid value' in result.err
    assert "Traceback" not in result.err

    assert listing(router.nginx.conf_dir) == before  # no *.staged, no .previous, same bytes
    assert router.reloads() == 1
    assert router.nginx.check_config().returncode == 0
    router.routes_to(f"master-api.{DOMAIN}", "master-api")
    router.unknown(f"feature-login-web.{DOMAIN}")
    assert found["feature-login-web"].requests == []


def test_directive_outside_the_allowlist_is_refused_before_nginx_runs(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot], tmp_path: Path
) -> None:
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    router.applied(master_only)
    before = listing(router.nginx.conf_dir)
    templates = override(tmp_path, "    server_name _;\n", "    server_name _;\n    expires 1h;\n")
    nginx_runs = tmp_path / "nginx-runs"

    refused = router.apply(
        data, "--template-dir", str(templates), "--nginx", nginx_probe(nginx_runs)
    )
    assert refused.code == 123, refused.err
    assert len(refused.lines) == 1
    assert refused.lines[0].startswith("devtest-router: the rendered config fails the check: ")
    assert "directive 'expires' is not allowed (in " in refused.err
    assert "add it to allowed_directives" in refused.err
    assert str(templates) in refused.err
    assert not nginx_runs.exists(), "nginx -t ran on a config the check refuses"
    assert listing(router.nginx.conf_dir) == before
    assert router.reloads() == 1

    router.write_config(allowed_directives=["expires"])
    accepted = router.applied(
        data, "--template-dir", str(templates), "--nginx", nginx_probe(nginx_runs)
    )
    assert "3 routes added" in accepted.err
    assert nginx_runs.read_text() == "x\n"  # the staged file was tested by nginx, once
    router.routes_to(f"feature-login-api.{DOMAIN}", "feature-login-api")
    response = http_request(router.nginx.port, f"feature-login-api.{DOMAIN}")
    assert response.headers["cache-control"] == "max-age=3600"


def test_failed_test_after_the_swap_puts_the_previous_file_back_and_reloads_nothing(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    router.applied(master_only)
    before = listing(router.nginx.conf_dir)

    result = router.apply(data, "--test-command", "false")
    assert result.code == 123
    assert result.lines[0] == (
        f"devtest-router: 'false' failed after installing {router.output}; the previous file is "
        "back in place and nginx was not reloaded"
    )
    assert "Traceback" not in result.err
    assert listing(router.nginx.conf_dir) == before  # the very same inode, bytes and mtime
    assert router.reloads() == 1
    router.routes_to(f"master-web.{DOMAIN}", "master-web")
    router.unknown(f"feature-login-web.{DOMAIN}")


def test_whole_config_rejecting_the_new_file_puts_the_previous_file_back(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    """A real failing test: the file is fine alone (the wrapper test passes) but clashes with
    another server in the running nginx's config (a second default server on one address)."""
    _, data = two_branches
    other_port = router.nginx.ports[1]
    (router.nginx.conf_dir / "other.conf").write_text(
        f"server {{ listen 127.0.0.1:{other_port} default_server; return 204; }}\n"
    )
    router.applied(data)
    router.routes_to(f"master-web.{DOMAIN}", "master-web")
    before = listing(router.nginx.conf_dir)

    result = router.apply(data, "--listen", f"127.0.0.1:{other_port}")
    assert result.code == 123
    assert result.lines[0].startswith(
        f"devtest-router: '{router.nginx.test_command}' failed after installing"
    )
    assert f"a duplicate default server for 127.0.0.1:{other_port}" in result.err
    assert listing(router.nginx.conf_dir) == before
    assert router.reloads() == 1
    assert router.nginx.check_config().returncode == 0
    assert http_request(other_port, "anything").status == 204
    router.routes_to(f"feature-login.{DOMAIN}", "feature-login-web")


def test_failed_reload_puts_the_previous_file_back(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    router.applied(master_only)
    before = listing(router.nginx.conf_dir)
    workers = router.nginx.worker_pids()

    result = router.apply(data, "--reload-command", "false")
    assert result.code == 123
    assert result.lines[0] == (
        f"devtest-router: 'false' failed; the new {router.output} was taken back: the previous "
        "file is back in place"
    )
    assert listing(router.nginx.conf_dir) == before
    assert router.nginx.worker_pids() == workers
    router.routes_to(f"master-api.{DOMAIN}", "master-api")
    router.unknown(f"feature-login-api.{DOMAIN}")


def test_failed_first_apply_leaves_no_file_behind(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    _, data = two_branches
    result = router.apply(data, "--test-command", "false")
    assert result.code == 123
    assert "it was removed again and nginx was not reloaded" in result.err
    assert set(listing(router.nginx.conf_dir)) == {LOCK}
    assert router.reloads() == 0
    assert router.nginx.check_config().returncode == 0

    failed_reload = router.apply(data, "--reload-command", "false")
    assert failed_reload.code == 123
    assert set(listing(router.nginx.conf_dir)) == {LOCK}


def test_mode_and_owner_of_the_file_in_place_are_kept(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot]
) -> None:
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    old_umask = os.umask(0o077)
    try:
        router.applied(master_only)
    finally:
        os.umask(old_umask)
    assert state(router.output).mode == 0o644  # a new file is readable by nginx's workers

    os.chmod(router.output, 0o640)
    if os.geteuid() == 0:  # root can give the file away; apply must keep that owner too
        os.chown(router.output, 4321, 4321)
    before = state(router.output)

    router.applied(data)
    after = state(router.output)
    assert after.data != before.data
    assert after.ino != before.ino  # replaced by a rename, not rewritten in place
    assert (after.mode, after.uid, after.gid) == (0o640, before.uid, before.gid)
    router.routes_to(f"feature-login-web.{DOMAIN}", "feature-login-web")


def test_safety_threshold_refuses_to_drop_most_routes_unless_forced(router: Router) -> None:
    # 4 branches x (web, api, default entry point) = 12 routes; more than 10, so guarded
    full = snapshot({f"b{i}": {"web": 9100 + 2 * i, "api": 9101 + 2 * i} for i in range(4)})
    router.applied(full)
    installed = listing(router.nginx.conf_dir)

    # drop b2 and b3 (6 routes) and b1's api (1 route): 7 of 12 is more than half
    shrunk = snapshot({"b0": {"web": 9100, "api": 9101}, "b1": {"web": 9102}})
    refused = router.apply(shrunk)
    assert refused.code == 123
    assert refused.lines == [
        "devtest-router: refusing to remove 7 of 12 routes at once (more than 50%): an emptied "
        "or misread registry? Check it with `devtest-router check`; --force applies anyway; "
        "nothing was changed"
    ]
    assert listing(router.nginx.conf_dir) == installed
    assert router.reloads() == 1
    dry = router.apply(shrunk, "--dry-run")
    assert dry.code == 123 and "--force" in dry.err and dry.out == ""

    forced = router.applied(shrunk, "--force")
    assert "0 routes added, 7 removed" in forced.err
    router.unknown(f"b3.{DOMAIN}")

    router.applied(full)  # adding routes is never guarded
    by_environment = router.apply(shrunk, environ={"DEVTEST_ROUTER_FORCE": "1"})
    assert by_environment.code == 0, by_environment.err
    assert "7 removed" in by_environment.err
    assert router.reloads() == 4

    router.applied(full)
    half = snapshot({"b0": {"web": 9100, "api": 9101}, "b1": {"web": 9102, "api": 9103}})
    assert "6 removed" in router.applied(half).err  # exactly half may go without --force


# --------------------------------------------------------------------------
# --dry-run


def diff_lines(diff: str, sign: str) -> collections.Counter[str]:
    return collections.Counter(
        line[1:]
        for line in diff.splitlines(keepends=True)
        if line.startswith(sign) and not line.startswith(sign * 3 + " ")
    )


def test_dry_run_shows_the_diff_and_changes_nothing(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot], tmp_path: Path
) -> None:
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    folder = router.nginx.conf_dir
    assert listing(folder) == {}

    first = router.apply(master_only, "--dry-run")
    assert first.code == 1
    assert first.out.startswith(f"--- /dev/null\n+++ {router.output} (rendered)\n")
    assert first.lines == [
        f"devtest-router: would change {router.output}: 3 routes added, 0 removed, 0 changed; "
        "3 routes, 0 problems; would write 4 site files and remove 0 (nothing written: dry run)"
    ]
    assert listing(folder) == {}  # not even the lock file
    assert router.reloads() == 0

    router.applied(master_only)
    installed = listing(folder)
    workers = router.nginx.worker_pids()

    ahead = router.apply(data, "--dry-run")
    assert ahead.code == 1
    assert ahead.out.startswith(f"--- {router.output} (in place)\n+++ {router.output} (rendered)\n")
    old = router.output.read_text().splitlines(keepends=True)
    new = router.render(data).splitlines(keepends=True)
    # the diff turns the file in place into exactly what apply would write
    added, removed = diff_lines(ahead.out, "+"), diff_lines(ahead.out, "-")
    assert collections.Counter(old) - removed + added == collections.Counter(new)
    assert any(line.lstrip().startswith(f"feature-login-web.{DOMAIN} ") for line in added)
    assert ahead.lines == [
        f"devtest-router: would change {router.output}: 3 routes added, 0 removed, 0 changed; "
        "6 routes, 0 problems; would write 3 site files and remove 0 (nothing written: dry run)"
    ]

    current = router.apply(master_only, "--dry-run")
    assert (current.code, current.out) == (0, "")
    assert current.lines == [
        f"devtest-router: {router.output} is up to date (3 routes); site up to date"
    ]

    # dry runs test with nginx too
    templates = override(
        tmp_path, "proxy_read_timeout {{ proxy_read_timeout }};", "proxy_read_timeout 5x;"
    )
    rejected = router.apply(data, "--dry-run", "--template-dir", str(templates))
    assert rejected.code == 123
    assert rejected.out == ""
    assert '"proxy_read_timeout" directive invalid value' in rejected.err

    by_environment = router.apply(data, environ={"DEVTEST_ROUTER_DRY_RUN": "yes"})
    assert by_environment.code == 1 and by_environment.out == ahead.out

    assert listing(folder) == installed
    assert router.reloads() == 1
    assert router.nginx.worker_pids() == workers
    router.unknown(f"feature-login-web.{DOMAIN}")


# --------------------------------------------------------------------------
# the lock


def waiting_on(lock: Path) -> set[int]:
    """Pids blocked in flock() on `lock`, from /proc/locks ("1: -> FLOCK ... <pid> maj:min:ino")."""
    inode = lock.stat().st_ino
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{inode}"):
            waiting.add(int(fields[5]))
    return waiting


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The process's output once it exits; killed (by its pid) if it hangs."""
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def test_concurrent_applies_take_turns(
    router: Router, two_branches: tuple[dict[str, Backend], Snapshot], tmp_path: Path
) -> None:
    """Two real processes at once: each waits for the lock, and the file is one whole render."""
    _, data = two_branches
    master_only = {"deployment": {"master": data["deployment"]["master"]}}
    renders = {router.render(data), router.render(master_only)}
    folder = router.nginx.conf_dir
    lock = folder / LOCK
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith("DEVTEST_ROUTER_")
    }
    inputs = []
    for number, which in enumerate((data, master_only)):
        path = tmp_path / f"snapshot-{number}.json"
        path.write_text(json.dumps(which))
        inputs.append(path)

    # Hold the lock ourselves so that both are certainly inside apply, waiting, at once.
    processes: list[subprocess.Popen[str]] = []
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        try:
            for path in inputs:
                with path.open() as stdin:
                    processes.append(
                        subprocess.Popen(
                            [str(CLI), *router.argv()],
                            stdin=stdin,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                            env=environ,
                        )
                    )
            pids = {process.pid for process in processes}
            wait_for(lambda: waiting_on(lock) >= pids, what="both applies to wait for the lock")
        finally:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
            finished = [finish(process) for process in processes]

    for process, (out, err) in zip(processes, finished, strict=True):
        assert process.returncode == 0, err
        assert out == ""
        assert err.startswith(f"devtest-router: applied {router.output}: "), err
        assert len(err.strip().splitlines()) == 1
    final = router.output.read_text()
    assert final in renders
    assert set(listing(folder)) == {OUTPUT, LOCK, TESTED, CHECKED}
    assert router.reloads() == 2
    if final == router.render(data):
        router.routes_to(f"feature-login-web.{DOMAIN}", "feature-login-web")
    else:
        router.unknown(f"feature-login-web.{DOMAIN}")
    router.routes_to(f"master-web.{DOMAIN}", "master-web")


# --------------------------------------------------------------------------
# a service's instances (issue 9)


def test_a_service_s_instances_share_its_requests_and_their_changes_are_changed_routes(
    router: Router, backends: BackendFactory
) -> None:
    """Through the command, as etcdwatch runs it: the instance keys of the registry's layout."""
    found = backends("one", "two", "three")

    def registered(*names: str) -> Snapshot:
        return {
            "deployment": {
                "main": {
                    "created": "2026-01-01T09:00:00Z",
                    "service": {
                        "web": {
                            "instance": {
                                name: {"ip": "127.0.0.1", "port": str(found[name].port)}
                                for name in names
                            }
                        }
                    },
                }
            }
        }

    first = router.applied(registered("one", "two"))
    assert "2 routes added, 0 removed, 0 changed" in first.err
    router.routes_to(f"main-web.{DOMAIN}", "one")
    router.routes_to(f"main.{DOMAIN}", "two")  # round robin: each instance answers in turn

    # a third instance: the map lines stay, the group's servers change; two routes changed
    third = router.applied(registered("one", "two", "three"))
    assert "0 routes added, 0 removed, 2 changed" in third.err
    router.routes_to(f"main-web.{DOMAIN}", "three")
    again = router.apply(registered("three", "two", "one"))  # another order: the same file
    assert again.lines[0].startswith("devtest-router: nothing to do: ")
    # back to one instance: one map line each again, no group
    last = router.applied(registered("two"))
    assert "0 routes added, 0 removed, 2 changed" in last.err
    assert "\nupstream " not in router.output.read_text()
    seen = {http_request(router.nginx.port, f"main-web.{DOMAIN}").json()["name"] for _ in range(6)}
    assert seen == {"two"}
