"""Secrets never reach a child process, a log line or an error (issue 10, Medium 6).

The etcd password (DEVTEST_ROUTER_ETCD_PASSWORD) is what devtest-router itself needs; nginx,
test_command, reload_command and the wrapped CMD of `register -- CMD` never do. A registry URL
with user:password@ is refused, and the line that says so shows neither. Every run here is the
installed `devtest-router` binary, and every line it writes (stdout and stderr, plain and JSON
logs) is searched for the secret.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Etcd, Nginx, find_binary, free_port, port_open, wait_for

from generator.core.errors import UsageError
from generator.registry.open import parse_url
from generator.secret import SECRET_VARIABLES, child_environment, redact

CLI = Path(sys.executable).with_name("devtest-router")
PYTHON = sys.executable
SECRET = "Hunter2-s3cr3t-9f4e"  # the password in every test; never in any output
CANARY = "DEVTEST_SECRETS_CANARY"  # an ordinary variable: children keep it


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without registration settings, with the secret set."""
    drop = {"NAME", "SERVICE", "PORT", "IP", "INSTANCE", "REGISTRY_URL"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in drop and not key.startswith(("DEVTEST_ROUTER_", "ECS_"))
    }
    return {
        **env,
        "DEVTEST_ROUTER_ETCD_PASSWORD": SECRET,
        "DEVTEST_ROUTER_IMDS_URL": "http://127.0.0.1:9",
        CANARY: "seen",
        **extra,
    }


def run(
    *argv: str,
    env: dict[str, str],
    log_format: str = "plain",
    stdin: str = "",
    timeout: float = 120,
) -> str:
    """Everything the command wrote (stdout, then stderr), asserted free of the secret."""
    env = {**env, "DEVTEST_ROUTER_LOG_FORMAT": log_format}
    done = subprocess.run(
        [str(CLI), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    said = done.stdout + done.stderr
    assert SECRET not in said, said
    assert "Traceback" not in said, said
    return said


# --------------------------------------------------------------------------------------------
# one redaction function


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("etcd://root:pw@etcd:2379", "etcd://***@etcd:2379"),
        ("http://root:pw@127.0.0.1:2379/v2", "http://***@127.0.0.1:2379/v2"),
        ("etcd://a:1,root:pw@b:2", "etcd://***@b:2"),  # blunt: nothing of the list before '@'
        ("etcd://root:p/w,x@h:1", "etcd://***@h:1"),  # '/' and ',' in the password
        ("etcd://root:p@w@h:1", "etcd://***@h:1"),  # '@' in the password
        ("root:pw@h:1", "root:***@h:1"),  # no scheme at all: never the part after ':'
        ("etcd://etcd:2379", "etcd://etcd:2379"),
        ("file:/srv/a@b.yaml", "file:/srv/a@b.yaml"),  # a path, never a secret
    ],
)
def test_redact_hides_everything_before_the_last_at(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"etcd://root:{SECRET}@127.0.0.1:2379",
        f"http://root:{SECRET}@127.0.0.1:2379",
        f"etcd3s://root:{SECRET}@[::1]:2379,127.0.0.1:2379",
        f"etcd://127.0.0.1:2379,root:{SECRET}@127.0.0.2:2379",
        f"etcd://root:{SECRET}/x@127.0.0.1:2379",
        f"etcd3://root:{SECRET}@[::1",
        f"ftp://root:{SECRET}@h:1",
        f"etcd:root:{SECRET}@127.0.0.1:2379",
    ],
)
def test_a_url_with_credentials_is_refused_in_one_line_without_them(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_url(url)
    message = str(caught.value)
    assert SECRET not in message and "\n" not in message, message
    assert "credentials do not go in the URL" in message
    assert "DEVTEST_ROUTER_ETCD_PASSWORD" in message


def test_child_environment_drops_exactly_the_secret_variables() -> None:
    given = {
        "PATH": "/bin",
        "DEVTEST_ROUTER_ETCD_PASSWORD": SECRET,
        "DEVTEST_ROUTER_ETCD_USER": "u",
    }
    assert child_environment(given) == {"PATH": "/bin", "DEVTEST_ROUTER_ETCD_USER": "u"}
    assert "DEVTEST_ROUTER_ETCD_PASSWORD" in SECRET_VARIABLES


# --------------------------------------------------------------------------------------------
# every command, both log formats: the password is never in a line


URL_WITH_SECRET = f"etcd://root:{SECRET}@127.0.0.1:2379"


@pytest.mark.parametrize("log_format", ["plain", "json"])
@pytest.mark.parametrize(
    "argv",
    [
        ("snapshot", "--registry", URL_WITH_SECRET),
        ("watch", "--domain", "dev.test", "--registry", URL_WITH_SECRET),
        ("register", "--registry", URL_WITH_SECRET, "--name", "b", "--service", "web",
         "--port", "80", "--ip", "127.0.0.1", "--once"),
        ("deregister", "--registry", URL_WITH_SECRET, "--name", "b", "--service", "web", "--force"),
        ("snapshot",),  # REGISTRY_URL
        ("register", "--name", "b", "--service", "web", "--port", "80", "--ip", "127.0.0.1",
         "--once"),
    ],
)  # fmt: skip
def test_a_refused_url_with_credentials_never_shows_them(
    argv: tuple[str, ...], log_format: str
) -> None:
    env = environment(REGISTRY_URL=URL_WITH_SECRET)
    said = run(*argv, env=env, log_format=log_format, timeout=60)
    lines = said.strip().splitlines()
    assert len(lines) == 1, said
    message = json.loads(lines[0])["message"] if log_format == "json" else lines[0]
    assert "credentials do not go in the URL" in message, said
    assert "***@127.0.0.1:2379" in message, said


@pytest.mark.parametrize(
    "argv",
    [
        ("watch", "-v", "--registry", URL_WITH_SECRET),
        ("check", "-v"),
        ("register", "-v", "--name", "b", "--service", "web", "--port", "80", "--ip",
         "127.0.0.1", "--once"),
        ("deregister", "-v", "--name", "b", "--service", "web", "--force"),
    ],
)  # fmt: skip
def test_debug_lines_never_show_the_password(argv: tuple[str, ...]) -> None:
    env = environment(REGISTRY_URL=URL_WITH_SECRET)
    said = run(*argv, env=env, log_format="json", stdin="{}", timeout=60)
    assert '"level": "debug"' in said, said  # -v said something, and not the password


@pytest.mark.integration
@pytest.mark.parametrize("api", ["etcd", "etcd3"])
@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_a_wrong_password_against_a_real_etcd_never_shows_it(
    etcd: Etcd, api: str, log_format: str, tmp_path: Path
) -> None:
    """etcd with authentication on refuses the password: the lines name the variable only."""
    if api == "etcd":
        for step in (
            ["-XPUT", f"{etcd.url}/v2/auth/users/root", "-d", '{"user":"root","password":"pw"}'],
            ["-XPUT", f"{etcd.url}/v2/auth/enable"],
        ):
            subprocess.run(["curl", "-sf", *step], check=True, capture_output=True, timeout=30)
    else:
        etcd.v3("auth/user/add", {"name": "root", "password": "pw"})
        etcd.v3("auth/user/grant", {"user": "root", "role": "root"})
        etcd.v3("auth/enable", {})
    url = etcd.url.replace("http://", f"{api}://")
    env = environment(DEVTEST_ROUTER_ETCD_USER="root")
    said = run("snapshot", "--registry", url, env=env, log_format=log_format, timeout=60)
    assert "DEVTEST_ROUTER_ETCD_PASSWORD" in said, said
    register = (
        "register", "--registry", url, "--name", "b", "--service", "web", "--port", "80",
        "--ip", "127.0.0.1", "--once",
    )  # fmt: skip
    said = run(*register, env=env, log_format=log_format, timeout=60)
    assert said.strip(), said


@pytest.mark.parametrize("log_format", ["plain", "json"])
@pytest.mark.parametrize("password", [f"{SECRET}\u20ac", f"s\u00e9cret\u20ac{SECRET}"])
def test_a_password_v2_cannot_carry_is_refused_without_showing_any_of_it(
    password: str, log_format: str
) -> None:
    """HTTP basic auth (the v2 API) carries Latin-1 only: urllib3's error named the character
    at fault and its position, as an internal error."""
    env = environment(DEVTEST_ROUTER_ETCD_USER="root", DEVTEST_ROUTER_ETCD_PASSWORD=password)
    said = run("snapshot", "--registry", "etcd://127.0.0.1:9", env=env, log_format=log_format)
    assert "\u20ac" not in said and "\\u20ac" not in said and "position" not in said, said
    assert "outside Latin-1" in said and "internal error" not in said, said
    assert len(said.strip().splitlines()) == 1, said


# --------------------------------------------------------------------------------------------
# children: nginx, test_command, reload_command, and the wrapped CMD


def recorder(folder: Path, name: str, then: str | None = None) -> str:
    """A command line that writes its environment to folder/<name>.env, then runs `then`."""
    record = shlex.quote(str(folder / f"{name}.env"))
    script = f"env >> {record}" + (f" && exec {then} " + '"$@"' if then else "")
    return shlex.join(["sh", "-c", script, name])


@pytest.mark.integration
def test_nginx_test_command_and_reload_command_never_see_the_password(
    nginx: Nginx, tmp_path: Path
) -> None:
    snapshot = {"deployment": {"main": {"service": {"web": {"ip": "127.0.0.1", "port": 8080}}}}}
    config = tmp_path / "router.json"
    config.write_text(
        json.dumps({"access_log": str(tmp_path / "access.log"), "site_dir": str(tmp_path / "site")})
    )
    argv = [
        "apply", "--config", str(config), "--listen", f"127.0.0.1:{nginx.port}",
        "--allow-loopback", "--domain", "test.example",
        "--output", str(nginx.conf_dir / "routes.conf"),
        "--nginx", recorder(tmp_path, "nginx", find_binary("nginx")),
        "--test-command", recorder(tmp_path, "test", nginx.test_command),
        "--reload-command", recorder(tmp_path, "reload", nginx.reload_command),
    ]  # fmt: skip
    for log_format in ("plain", "json"):
        run(*argv, env=environment(), log_format=log_format, stdin=json.dumps(snapshot))
        snapshot["deployment"]["second"] = snapshot["deployment"]["main"]  # a change: reload
    for name in ("nginx", "test", "reload"):
        seen = (tmp_path / f"{name}.env").read_text()
        assert f"{CANARY}=seen" in seen, f"{name} did not run, or without our environment"
        assert "DEVTEST_ROUTER_ETCD_PASSWORD" not in seen and SECRET not in seen, name


_SERVER = """\
import os, socket, sys
port, record = int(sys.argv[1]), sys.argv[2]
with open(record, "w") as file:
    file.write("\\n".join(f"{k}={v}" for k, v in os.environ.items()))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)
while True:
    server.accept()[0].close()
"""


@pytest.fixture
def wrapper(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_the_wrapped_command_never_sees_the_password(
    tmp_path: Path, wrapper: list[subprocess.Popen[bytes]]
) -> None:
    port, script, record = free_port(), tmp_path / "server.py", tmp_path / "cmd.env"
    script.write_text(_SERVER)
    registry = tmp_path / "registry.json"
    log = tmp_path / "wrapper.log"
    argv = [
        str(CLI), "register", "--registry", f"file:{registry}",
        "--name", "feature/x", "--service", "web", "--port", str(port), "--ip", "127.0.0.1",
        "--instance", "c1", "--drain", "0", "--", PYTHON, str(script), str(port), str(record),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=out, env=environment(DEVTEST_ROUTER_LOG_FORMAT="json")
        )
    wrapper.append(proc)
    wait_for(lambda: "registered /deployment/" in log.read_text(), what="the registration")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    seen = record.read_text()
    assert f"{CANARY}=seen" in seen
    assert "DEVTEST_ROUTER_ETCD_PASSWORD" not in seen and SECRET not in seen
    assert SECRET not in log.read_text()
    assert not port_open(port)


@pytest.mark.integration
@pytest.mark.parametrize("api", ["etcd", "etcd3"])
def test_a_watcher_with_the_right_password_never_shows_it_nor_hands_it_on(
    etcd: Etcd, nginx: Nginx, tmp_path: Path, api: str
) -> None:
    """A whole run on an etcd with authentication on: register, watch, apply, reload, stop;
    every line (JSON) is searched, and every child's environment."""
    if api == "etcd":
        for step in (
            ["-XPUT", f"{etcd.url}/v2/auth/users/root", "-d", json.dumps({"user": "root",
             "password": SECRET})],
            ["-XPUT", f"{etcd.url}/v2/auth/enable"],
        ):  # fmt: skip
            subprocess.run(["curl", "-sf", *step], check=True, capture_output=True, timeout=30)
    else:
        etcd.v3("auth/user/add", {"name": "root", "password": SECRET})
        etcd.v3("auth/user/grant", {"user": "root", "role": "root"})
        etcd.v3("auth/enable", {})
    url = etcd.url.replace("http://", f"{api}://")
    env = environment(DEVTEST_ROUTER_ETCD_USER="root", DEVTEST_ROUTER_LOG_FORMAT="json")
    run(
        "register", "--registry", url, "--name", "feature/s", "--service", "web",
        "--port", "8089", "--ip", "127.0.0.1", "--instance", "c1", "--ttl", "0", "--once",
        env=env, log_format="json",
    )  # fmt: skip
    output = nginx.conf_dir / "routes.conf"
    argv = [
        str(CLI), "watch", "--registry", url, "--domain", "test.example", "--allow-loopback",
        "--listen", f"127.0.0.1:{nginx.port}", "--output", str(output),
        "--site-dir", str(tmp_path / "site"),
        "--nginx", recorder(tmp_path, "nginx", find_binary("nginx")),
        "--test-command", recorder(tmp_path, "test", nginx.test_command),
        "--reload-command", recorder(tmp_path, "reload", nginx.reload_command),
    ]  # fmt: skip
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        watcher = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
    try:
        wait_for(
            lambda: output.exists() and "127.0.0.1:8089" in output.read_text(),
            timeout=60,
            what="the watcher to apply the registration",
        )
        wait_for((tmp_path / "reload.env").exists, what="the reload")
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            watcher.wait(60)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
    said = log.read_text()
    assert said.strip() and SECRET not in said, said
    for line in said.splitlines():
        json.loads(line)  # every line is a JSON log line
    for name in ("nginx", "test", "reload"):
        seen = (tmp_path / f"{name}.env").read_text()
        assert f"{CANARY}=seen" in seen and SECRET not in seen, name
