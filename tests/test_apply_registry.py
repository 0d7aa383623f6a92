"""`apply --registry URL` (and REGISTRY_URL): one process from etcd to the checked file, with the
same result as `snapshot --registry URL | apply`, byte for byte: the config and the site."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_harness import run_main
from harness import Etcd, Nginx, free_ports

from generator.cli.exit_codes import CHANGES, REGISTRY, USAGE

BIN = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "devtest-router"
if not BIN.exists():
    import sys

    BIN = Path(sys.executable).with_name("devtest-router")
DOMAIN = "dev.test"

# Two layouts (the seed's service keys and register's instances), one deployment with a problem
# (no port: reported and skipped) and a name that needs its slug.
KEYS = {
    "/deployment/alpha/created": "2026-11-01T10:00:00Z",
    "/deployment/alpha/service/web/ip": "127.0.0.1",
    "/deployment/alpha/service/web/port": "8001",
    "/deployment/alpha/service/api/ip": "127.0.0.1",
    "/deployment/alpha/service/api/port": "8002",
    "/deployment/beta/created": "2026-11-02T10:00:00Z",
    "/deployment/beta/service/web/instance/0123abcd/ip": "127.0.0.1",
    "/deployment/beta/service/web/instance/0123abcd/port": "8003",
    "/deployment/beta/service/web/instance/4567ef01/ip": "127.0.0.1",
    "/deployment/beta/service/web/instance/4567ef01/port": "8004",
    "/deployment/broken/created": "2026-11-03T10:00:00Z",
    "/deployment/broken/service/web/ip": "127.0.0.1",
}


def url_of(etcd: Etcd, kind: str) -> str:
    return f"{'etcd' if kind == 'etcd2' else 'etcd3'}://127.0.0.1:{etcd.client_port}"


def environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DEVTEST_ROUTER_") and k != "REGISTRY_URL"
    }
    return {**env, **extra}


def settings(nginx: Nginx, site: Path) -> list[str]:
    return [
        "--domain", DOMAIN, "--allow-loopback", "--listen", f"127.0.0.1:{nginx.port}",
        "--output", str(nginx.conf_dir / "devtest-router.conf"), "--site-dir", str(site),
        "--test-command", nginx.test_command, "--reload-command", nginx.reload_command,
    ]  # fmt: skip


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def emptied(nginx: Nginx, site: Path) -> None:
    """The output, its side files and the site folder gone: a cold one-shot."""
    for path in nginx.conf_dir.iterdir():
        path.unlink()
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()


def applied(nginx: Nginx, site: Path) -> tuple[bytes, dict[str, bytes]]:
    return (nginx.conf_dir / "devtest-router.conf").read_bytes(), files(site)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["etcd3", "etcd2"])
def test_apply_from_the_registry_equals_snapshot_piped_into_apply(
    kind: str, etcd: Etcd, nginx: Nginx, tmp_path: Path
) -> None:
    for key, value in KEYS.items():
        etcd.put(kind, key, value)
    url = url_of(etcd, kind)
    site = tmp_path / "site"
    env = environment()

    emptied(nginx, site)
    snapshot = subprocess.run(
        [str(BIN), "snapshot", "--registry", url],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    piped = subprocess.run(
        [str(BIN), "apply", *settings(nginx, site)],
        input=snapshot, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    expected = applied(nginx, site)
    assert b"alpha-api." in expected[0]

    emptied(nginx, site)
    direct = subprocess.run(
        [str(BIN), "apply", "--registry", url, *settings(nginx, site)],
        stdin=subprocess.DEVNULL, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert applied(nginx, site) == expected
    assert direct.stderr == piped.stderr  # the same problem line and summary

    # REGISTRY_URL, no input (a cron job, a unit): the registry too
    emptied(nginx, site)
    from_env = subprocess.run(
        [str(BIN), "apply", *settings(nginx, site)],
        stdin=subprocess.DEVNULL, env=environment(REGISTRY_URL=url), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert from_env.returncode == 0, from_env.stderr
    assert applied(nginx, site) == expected


@pytest.mark.integration
def test_a_snapshot_piped_in_is_read_even_with_registry_url_set(
    etcd: Etcd, nginx: Nginx, tmp_path: Path
) -> None:
    """`snapshot | apply` with REGISTRY_URL exported (as in deploy/systemd's env file) keeps
    reading its pipe: here the pipe holds a deployment the registry has not."""
    for key, value in KEYS.items():
        etcd.put("etcd3", key, value)
    site = tmp_path / "site"
    emptied(nginx, site)
    piped = {
        "deployment": {
            "gamma": {
                "created": "2026-11-04T10:00:00Z",
                "service": {"web": {"ip": "127.0.0.1", "port": "8005"}},
            }
        }
    }
    done = subprocess.run(
        [str(BIN), "apply", *settings(nginx, site)],
        input=json.dumps(piped), env=environment(REGISTRY_URL=url_of(etcd, "etcd3")),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = (nginx.conf_dir / "devtest-router.conf").read_text()
    assert "gamma." in text
    assert "alpha" not in text


@pytest.mark.integration
def test_an_absent_prefix_is_a_registry_error_unless_allowed(etcd: Etcd, tmp_path: Path) -> None:
    url = url_of(etcd, "etcd3")
    argv = ["apply", "--registry", url, "--dry-run", "--output", str(tmp_path / "out.conf")]
    refused = run_main(argv, environ={})
    assert refused.code == REGISTRY
    [line] = refused.lines
    assert "/deployment is absent" in line and "--allow-empty" in line
    allowed = run_main([*argv, "--allow-empty"], environ={})
    assert allowed.code == CHANGES, allowed.err  # a dry run: it would write a file of no routes
    assert "; 0 routes, 0 problems;" in allowed.lines[0]
    assert not (tmp_path / "out.conf").exists()


def test_an_unreachable_registry_exits_4_in_one_line(tmp_path: Path) -> None:
    [dead] = free_ports(1)
    output = tmp_path / "out.conf"
    output.write_text("# in place\n")
    done = run_main(
        ["apply", "--registry", f"etcd3://127.0.0.1:{dead}", "--domain", DOMAIN,
         "--output", str(output)],
        environ={},
    )  # fmt: skip
    assert done.code == REGISTRY
    [line] = done.lines
    assert f"127.0.0.1:{dead}" in line
    assert output.read_text() == "# in place\n"


def test_a_snapshot_and_registry_together_are_a_usage_error(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text('{"deployment": {}}')
    done = run_main(
        ["apply", str(snapshot), "--registry", "etcd3://127.0.0.1:2379", "--domain", DOMAIN],
        environ={},
    )
    assert done.code == USAGE
    assert done.lines == [
        f"devtest-router: apply: give a SNAPSHOT ({snapshot}) or --registry, not both; nothing "
        "was changed"
    ]
