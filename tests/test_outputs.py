"""What apply writes to: a regular file (or a symlink to one, written through) and a site folder.

Anything else given as the output (a FIFO, a device, a folder) or as site_dir (a file) is refused
in one line, exit 2, before a lock file is made. A site folder that cannot be written after the
config was installed is its own outcome (exit 5), not "nothing was changed".
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import Backend, Nginx
from test_apply import CLI, DOMAIN, OUTPUT, BackendFactory, Router, Snapshot, ports, snapshot

SNAPSHOT = {
    "deployment": {
        "main": {
            "created": "2026-01-01T09:00:00Z",
            "service": {"web": {"ip": "127.0.0.1", "port": "8080"}},
        }
    }
}


def run(
    output: str, *extra: str, site: Path | None = None, limit: bool = False
) -> subprocess.CompletedProcess[str]:
    """The installed `apply` with `output`; nginx is never reached (`false` everywhere)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}

    def bounded() -> None:  # a regression that reads a device to the end fails, not the host
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [
            str(CLI),
            "apply",
            "--domain",
            "dev.test",
            "--allow-loopback",
            "--output",
            output,
            "--site-dir",
            str(site or Path(output).parent / "site"),
            "--nginx",
            "false",
            "--test-command",
            "false",
            "--reload-command",
            "false",
            *extra,
        ],
        input=json.dumps(SNAPSHOT),
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
        preexec_fn=bounded if limit else None,
    )


def refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_fifo_is_refused_without_hanging_or_a_lock(tmp_path: Path, dry_run: bool) -> None:
    fifo = tmp_path / "routes.conf"
    os.mkfifo(fifo)
    done = run(str(fifo), *(["--dry-run"] if dry_run else []))
    refused(done, str(fifo), "FIFO", "not a regular file")
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["routes.conf"]


def test_a_symlink_to_a_device_is_refused_and_kept(tmp_path: Path) -> None:
    link = tmp_path / "routes.conf"
    link.symlink_to("/dev/null")
    refused(run(str(link)), str(link), "character device")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["routes.conf"]
    assert not Path("/dev/.null.lock").exists()


def test_dev_full_is_refused_without_reading_it_or_a_lock_in_dev() -> None:
    had_lock = Path("/dev/.full.lock").exists()
    refused(run("/dev/full", site=Path("/nonexistent-site"), limit=True), "/dev/full")
    assert Path("/dev/.full.lock").exists() == had_lock


def test_a_folder_and_a_symlink_loop_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "routes.conf"
    folder.mkdir()
    refused(run(str(folder)), "directory")
    loop = tmp_path / "loop.conf"
    loop.symlink_to(loop)
    refused(run(str(loop)), str(loop))
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["loop.conf", "routes.conf"]


def test_a_site_dir_that_is_not_a_folder_is_refused_before_anything(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.write_text("a file\n")
    done = run(str(tmp_path / "routes.conf"), site=site)
    refused(done, str(site), "site_dir", "not a folder")
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["site"]


# --------------------------------------------------------------------------
# with nginx


@pytest.fixture
def served(backends: BackendFactory) -> tuple[dict[str, Backend], Snapshot, Snapshot]:
    found = backends("main-web", "main-api", "other-web")
    one = snapshot({"main": ports(found, "main", "web", "api")})
    two = snapshot(
        {"main": ports(found, "main", "web", "api"), "other": ports(found, "other", "web")}
    )
    return found, one, two


@pytest.mark.integration
def test_a_symlinked_output_is_written_through_and_stays_a_symlink(
    nginx: Nginx, tmp_path: Path, served: tuple[dict[str, Backend], Snapshot, Snapshot]
) -> None:
    _, one, two = served
    router = Router(nginx, tmp_path)
    real = tmp_path / "shared" / "routes.conf"
    real.parent.mkdir()
    router.output.symlink_to(real)  # dangling: the first apply makes the file it points to

    first = router.applied(one)
    assert first.lines[0].startswith(f"devtest-router: applied {router.output}: ")
    assert router.output.is_symlink() and router.output.resolve() == real
    assert real.read_text() == router.render(one)
    router.routes_to(f"main-api.{DOMAIN}", "main-api")

    before = real.stat().st_ino
    second = router.applied(two)
    assert "2 routes added, 0 removed" in second.err  # other-web and other
    assert router.output.is_symlink() and router.output.resolve() == real
    assert real.stat().st_ino != before  # replaced by a rename, beside the real file
    router.routes_to(f"other-web.{DOMAIN}", "other-web")
    # the lock and the record live beside the file written, never beside the link
    assert sorted(entry.name for entry in real.parent.iterdir()) == [
        ".routes.conf.checked",
        ".routes.conf.lock",
        ".routes.conf.tested",
        "routes.conf",
    ]
    assert sorted(entry.name for entry in nginx.conf_dir.iterdir()) == [OUTPUT]
    assert router.apply(two).lines[0].startswith("devtest-router: nothing to do: ")


@pytest.mark.integration
def test_a_site_that_cannot_be_written_after_the_config_was_applied_is_exit_5(
    nginx: Nginx, tmp_path: Path, served: tuple[dict[str, Backend], Snapshot, Snapshot]
) -> None:
    _, one, two = served
    router = Router(nginx, tmp_path)
    router.applied(one)
    blocker = tmp_path / "site" / "index.html"
    blocker.unlink()
    blocker.mkdir()  # the index cannot be replaced, even by root

    result = router.apply(two)
    assert result.code == 5, result.err
    assert len(result.lines) == 1, result.err
    line = result.lines[0]
    assert "cannot write the site" in line and "nginx config is applied" in line, line
    router.routes_to(f"other-web.{DOMAIN}", "other-web")  # the config was installed and reloaded
    assert router.reloads() == 2

    shutil.rmtree(blocker)
    again = router.apply(two)
    assert again.code == 0, again.err
    assert again.lines[0].startswith("devtest-router: nothing to do: ")
    assert "site files written" in again.lines[0]
    assert (tmp_path / "site" / "index.html").is_file()
