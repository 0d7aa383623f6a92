"""deploy/ as operators expect it, held to what the tests run: the frontend image's nginx is the
Debian package the suite tests, its logs go to stdout and stderr, it exposes 80, 443 and the
metrics port, both images run as a non-root user, compose publishes on 127.0.0.1 with no
capability but NET_BIND_SERVICE, and the systemd units are hardened, pass `systemd-analyze
verify`, and have the `systemd-analyze security` scores docs/security.md records.

The files are parsed (the Dockerfiles by instruction, nginx.conf by crossplane, compose by YAML,
the units by a small INI reader); the real runs of the same arrangement (nginx as an
unprivileged user on a port below 1024, the logs on stdout and stderr) are in test_deploy.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import crossplane
import pytest
import yaml
from deploy_harness import dockerfile_instructions, image_env, router_bin
from harness import find_binary

from generator.core.config import listen_address
from generator.resources import schema

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
FRONTEND_DOCKERFILE = DEPLOY / "frontend/Dockerfile"
SERVICE_DOCKERFILE = DEPLOY / "service/Dockerfile"
SYSTEMD = DEPLOY / "systemd"
SECURITY_DOC = REPO / "docs/security.md"


def instructions(path: Path, word: str) -> list[str]:
    return [rest for found, rest in dockerfile_instructions(path) if found == word]


def run_commands(path: Path) -> list[list[str]]:
    """Every RUN of a Dockerfile as the commands its `&&` chain runs, each split like a shell."""
    return [
        shlex.split(command) for rest in instructions(path, "RUN") for command in rest.split(" && ")
    ]


def image_user(path: Path) -> tuple[int, int]:
    """(uid, gid) of the Dockerfile's last USER, which must be numeric (runAsNonRoot checks it)."""
    users = instructions(path, "USER")
    assert users, f"{path.relative_to(REPO)} has no USER: its container runs as root"
    user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"{path.name}: USER {user} is not numeric uid:gid"
    return int(uid), int(gid)


def nginx_conf() -> dict[str, list[list[str]]]:
    """The image's nginx.conf: directive -> the args of each occurrence (main and http)."""
    payload = crossplane.parse(str(DEPLOY / "frontend/nginx.conf"), single=True, comments=False)
    assert payload["status"] == "ok", payload["errors"]
    found: dict[str, list[list[str]]] = {}

    def walk(block: list[dict[str, Any]]) -> None:
        for item in block:
            found.setdefault(item["directive"], []).append(item["args"])
            walk(item.get("block", []))

    walk(payload["config"][0]["parsed"])
    return found


def owned_folders() -> set[str]:
    """The folders the frontend Dockerfile gives to the image's user (`install -d -o UID`)."""
    uid, _ = image_user(FRONTEND_DOCKERFILE)
    for argv in run_commands(FRONTEND_DOCKERFILE):
        if argv[:2] == ["install", "-d"] and argv[argv.index("-o") + 1] == str(uid):
            return {arg for arg in argv[2:] if arg.startswith("/")}
    raise AssertionError("the frontend Dockerfile gives no folder to its user (install -d -o)")


# --------------------------------------------------------------------------
# the frontend image: the nginx the suite tests


def test_frontend_image_is_the_debian_release_and_nginx_package_the_suite_runs() -> None:
    (base,) = instructions(FRONTEND_DOCKERFILE, "FROM")
    release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )["VERSION_CODENAME"].strip('"')
    assert base == f"debian:{release}-slim", f"the image is {base}; the tests run on {release}"
    installs = [
        argv for argv in run_commands(FRONTEND_DOCKERFILE) if argv[:2] == ["apt-get", "install"]
    ]
    packages = {
        word.split("$")[0] for argv in installs for word in argv if not word.startswith("-")
    }
    assert "nginx-light" in packages, installs
    assert any(
        rest.startswith("NGINX_LIGHT_VERSION") for rest in instructions(FRONTEND_DOCKERFILE, "ARG")
    )

    # the suite's nginx is that package's: its binary's package is the one nginx-light pins
    nginx = os.path.realpath(find_binary("nginx"))
    dpkg = find_binary("dpkg-query")
    owner = subprocess.run(
        [find_binary("dpkg"), "-S", nginx], capture_output=True, text=True, check=True
    ).stdout.split(":")[0]
    light = subprocess.run(
        [dpkg, "-W", "-f", "${Version}\n${Depends}", "nginx-light"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    version, depends = light.split("\n", 1)
    assert f"{owner} (>= {version})" in depends, f"nginx-light {version} does not pin {owner}"
    said = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=True).stderr
    assert said.strip() == f"nginx version: nginx/{version.split('-')[0]}", (said, version)


def test_frontend_image_binds_low_ports_through_a_capability_set_at_build() -> None:
    steps = [argv for argv in run_commands(FRONTEND_DOCKERFILE) if argv[:1] == ["setcap"]]
    assert steps == [["setcap", "cap_net_bind_service=+ep", "/usr/sbin/nginx"]]
    # setcap comes and goes in the RUN that uses it: no layer keeps it
    (run,) = [rest for rest in instructions(FRONTEND_DOCKERFILE, "RUN") if "setcap " in rest]
    assert "apt-get purge -y --auto-remove libcap2-bin" in run


def test_frontend_image_logs_to_stdout_and_stderr() -> None:
    conf = nginx_conf()
    assert conf["error_log"] == [["stderr", "notice"]]
    # nothing is logged outside the generated server, which logs where the image says
    assert conf["access_log"] == [["off"]]
    assert image_env()["DEVTEST_ROUTER_ACCESS_LOG"] == "/dev/stdout"
    entrypoint = (DEPLOY / "frontend/entrypoint.sh").read_text(encoding="utf-8")
    assert "NGINX_ERROR_LOG=${NGINX_ERROR_LOG-stderr}" in entrypoint  # `nginx -e stderr`


def test_frontend_image_exposes_http_https_and_metrics() -> None:
    env = image_env()
    exposed = {
        int(port) for rest in instructions(FRONTEND_DOCKERFILE, "EXPOSE") for port in rest.split()
    }
    metrics = listen_address(env["DEVTEST_ROUTER_METRICS_LISTEN"])
    assert metrics is not None and metrics[0] == "0.0.0.0"  # the container's own namespace
    tls = [int(port) for port in schema("config")["properties"]["tls_listen"]["default"]]
    assert exposed == {int(env["DEVTEST_ROUTER_LISTEN"]), *tls, metrics[1]} == {80, 443, 9180}
    assert instructions(FRONTEND_DOCKERFILE, "HEALTHCHECK")


def test_frontend_nginx_runs_as_the_images_user_in_folders_it_owns() -> None:
    conf = nginx_conf()
    assert "user" not in conf  # it only warns when nginx does not start as root
    owned = owned_folders()
    (pid,) = conf["pid"]
    temp = [
        args[0] for name, found in conf.items() if name.endswith("_temp_path") for args in found
    ]
    assert len(temp) == 5
    output = PurePosixPath(image_env()["DEVTEST_ROUTER_OUTPUT"])
    site = PurePosixPath(schema("config")["properties"]["site_dir"]["default"])
    for path in [PurePosixPath(pid[0]), *map(PurePosixPath, temp), output, site]:
        assert str(path.parent) in owned, f"{path}: its folder is not the image user's"


@pytest.mark.parametrize(
    "path", [FRONTEND_DOCKERFILE, SERVICE_DOCKERFILE], ids=lambda p: p.parent.name
)
def test_images_run_as_a_fixed_non_root_user(path: Path) -> None:
    uid, gid = image_user(path)
    assert uid >= 1000 and gid >= 1000
    (useradd,) = [argv for argv in run_commands(path) if argv[:1] == ["useradd"]]
    assert useradd[useradd.index("--uid") + 1] == str(uid)
    assert useradd[useradd.index("--gid") + 1] == str(gid)


# --------------------------------------------------------------------------
# compose

COMPOSE_PORT = re.compile(
    r"^(?:\$\{(?P<variable>\w+):-(?P<default>[^}]+)\}|(?P<address>[^:]+)):(?P<host>\d+):(?P<container>\d+)$"
)


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    )
    return document["services"]


def test_compose_publishes_every_port_on_loopback_by_default() -> None:
    published = 0
    for name, service in compose().items():
        for port in service.get("ports", []):
            match = COMPOSE_PORT.match(port)
            assert match, f"{name}: {port!r} does not name the host address it publishes on"
            assert (match["default"] or match["address"]) == "127.0.0.1", f"{name}: {port}"
            published += 1
    assert published == 3
    frontend = {int(COMPOSE_PORT.match(p)["container"]) for p in compose()["frontend"]["ports"]}  # type: ignore[index]
    exposed = {
        int(port) for rest in instructions(FRONTEND_DOCKERFILE, "EXPOSE") for port in rest.split()
    }
    assert frontend == exposed


def test_compose_drops_capabilities_and_writes_only_to_tmpfs() -> None:
    services = compose()
    for name, service in services.items():
        if "build" not in service:
            continue  # etcd: the upstream image as its documentation runs it
        assert service["cap_drop"] == ["ALL"], name
        assert service.get("cap_add", []) == (["NET_BIND_SERVICE"] if name == "frontend" else [])
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["read_only"] is True, name
    uid, gid = image_user(FRONTEND_DOCKERFILE)
    tmpfs = dict(entry.partition(":")[::2] for entry in services["frontend"]["tmpfs"])
    assert set(tmpfs) == owned_folders() | {"/tmp"}
    for folder in owned_folders():
        options = dict(option.partition("=")[::2] for option in tmpfs[folder].split(","))
        assert (options["uid"], options["gid"]) == (str(uid), str(gid)), folder


# --------------------------------------------------------------------------
# the systemd units


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> every value given (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


UNITS = {path.name: unit(path) for path in sorted(SYSTEMD.glob("*.service"))}
HARDENED = {
    "NoNewPrivileges": ["true"],
    "ProtectSystem": ["strict"],
    "ProtectHome": ["true"],
    "PrivateTmp": ["true"],
}


def test_systemd_units_are_hardened() -> None:
    assert set(UNITS) == {
        "devtest-router-nginx.service",
        "devtest-router-watch.service",
        "devtest-router-register@.service",
    }
    for name, sections in UNITS.items():
        service = sections["Service"]
        for key, value in HARDENED.items():
            assert service.get(key) == value, f"{name}: {key}={service.get(key)}"
    watch = UNITS["devtest-router-watch.service"]["Service"]
    nginx = UNITS["devtest-router-nginx.service"]["Service"]
    register = UNITS["devtest-router-register@.service"]["Service"]
    # the watcher and nginx: one unprivileged user, so that `nginx -s reload` is its own signal
    assert watch["User"] == nginx["User"] == ["devtest-router"]
    assert watch["Group"] == nginx["Group"] == ["devtest-router"]
    # nginx and the watcher's `nginx -t` bind 80 and 443: that capability and no other
    for service in (watch, nginx):
        assert (
            service["AmbientCapabilities"]
            == service["CapabilityBoundingSet"]
            == ["CAP_NET_BIND_SERVICE"]
        )
    # the registration writes nothing and needs nothing: a user of its own, no capability
    assert register["DynamicUser"] == ["true"] and register["CapabilityBoundingSet"] == [""]


def test_systemd_units_write_only_where_the_settings_point() -> None:
    watch = UNITS["devtest-router-watch.service"]["Service"]
    nginx = UNITS["devtest-router-nginx.service"]["Service"]
    settings = env_file(SYSTEMD / "devtest-router.env")
    conf = nginx_conf()
    # the watcher: the output's folder (ReadWritePaths) and site_dir (StateDirectory)
    assert watch["ReadWritePaths"] == [str(PurePosixPath(settings["DEVTEST_ROUTER_OUTPUT"]).parent)]
    site = PurePosixPath(schema("config")["properties"]["site_dir"]["default"])
    assert watch["StateDirectory"] == [site.parent.name] and str(site.parent.parent) == "/var/lib"
    # nginx: the pid file, the temp files and the access log in folders systemd makes for it
    (pid,) = conf["pid"]
    assert nginx["RuntimeDirectory"] == [PurePosixPath(pid[0]).parent.name]
    temp = {
        str(PurePosixPath(args[0]).parent)
        for key, found in conf.items()
        if key.endswith("_temp_path")
        for args in found
    }
    assert temp == {f"/var/cache/{nginx['CacheDirectory'][0]}"}
    log = PurePosixPath(settings["DEVTEST_ROUTER_ACCESS_LOG"])
    assert str(log.parent) == f"/var/log/{nginx['LogsDirectory'][0]}"
    # the watcher's `nginx -t` opens that log and makes those folders, as nginx does
    assert (
        watch["LogsDirectory"] == nginx["LogsDirectory"]
        and watch["CacheDirectory"] == nginx["CacheDirectory"]
    )
    # the watcher tests and reloads the nginx of devtest-router-nginx.service, with its config
    (start,) = nginx["ExecStart"]
    config = shlex.split(start)[shlex.split(start).index("-c") + 1]
    for key, action in (
        ("DEVTEST_ROUTER_TEST_COMMAND", "-t"),
        ("DEVTEST_ROUTER_RELOAD_COMMAND", "-s"),
    ):
        argv = shlex.split(settings[key])
        assert argv[argv.index("-c") + 1] == config and action in argv, key


def analyzable_units(folder: Path) -> list[Path]:
    """The units with their ExecStart binaries pointed at files that exist here (verify checks
    that they do), and register@ instantiated as register@web."""
    nginx = find_binary("nginx")
    for path in sorted(SYSTEMD.glob("*.service")):
        text = path.read_text(encoding="utf-8")
        text = text.replace("/usr/local/bin/devtest-router", router_bin()).replace(
            "/usr/sbin/nginx", nginx
        )
        (folder / path.name.replace("@.", "@web.")).write_text(text, encoding="utf-8")
    return sorted(folder.glob("*.service"))


def systemd_analyze() -> str | None:
    found = shutil.which("systemd-analyze")
    if found is None:  # checked where systemd is installed; under CI=true it must be
        assert os.environ.get("CI") != "true", "systemd-analyze is missing (Debian: systemd)"
    return found


def test_systemd_units_pass_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    if analyze is None:
        return
    done = subprocess.run(
        [analyze, "verify", *map(str, analyzable_units(tmp_path))], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "devtest-router" not in done.stdout + done.stderr


def recorded_scores() -> dict[str, float]:
    """The exposure scores docs/security.md records: rows `| `unit` | score | ... |`."""
    text = SECURITY_DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(devtest-router-[\w@.-]+\.service)` \| (\d+\.\d) \|", text, re.M)
    return {name: float(score) for name, score in rows}


def test_systemd_security_scores_are_the_ones_the_docs_record(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    if analyze is None:
        return
    measured = {}
    for path in analyzable_units(tmp_path):
        done = subprocess.run(
            [analyze, "security", "--offline=true", "--no-pager", str(path)],
            capture_output=True,
            text=True,
        )
        last = (done.stdout.strip().splitlines() or [done.stderr])[-1]
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", last)
        assert score, done.stdout + done.stderr
        measured[path.name.replace("@web.", "@.")] = float(score.group(1))
    assert measured == recorded_scores()
    assert max(measured.values()) <= 2.0  # "OK" in systemd's words (the old units: 8.4 and 9.0)
