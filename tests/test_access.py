"""Access control for the previews (basic_auth_file, basic_auth_realm, client_networks,
access_satisfy) and the per-deployment opt-out /deployment/<branch>/public: the settings and the
registry key refused in one line, the htpasswd file judged before every apply without ever being
shown, the crossplane check refusing the access directives anywhere but where the template puts
them, and a real nginx on loopback (127.0.0.2 as the client outside client_networks).
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Result, run_main
from harness import Backend, Nginx, Response, find_binary, free_port, http_request, wait_for
from template_harness import override

from generator import resources
from generator.core import site_layout
from generator.core.config import resolve
from generator.core.model import Quoted

DOMAIN = "dev.test"
OUTPUT = "devtest-router.conf"
LOCK = f".{OUTPUT}.lock"
OUTSIDE = "127.0.0.2"  # another loopback address: a client outside 127.0.0.1/32
PASSWORD = "correct horse"
BASE = ["--domain", DOMAIN, "--allow-loopback"]
ACCESS = ["--basic-auth-file", "/etc/devtest-router/htpasswd", "--client-networks", "10.0.0.0/8"]

BackendFactory = Callable[..., dict[str, Backend]]


def snapshot(**deployments: tuple[int, str | None]) -> dict[str, Any]:
    """{branch: (port, public)}: one web service each on 127.0.0.1, created in that order; a
    public of None writes no public key."""
    found: dict[str, Any] = {}
    for day, (branch, (port, public)) in enumerate(deployments.items(), start=1):
        entry: dict[str, Any] = {
            "created": f"2026-01-{day:02d}T09:00:00Z",
            "service": {"web": {"ip": "127.0.0.1", "port": str(port)}},
        }
        if public is not None:
            entry["public"] = public
        found[branch] = entry
    return {"deployment": found}


CLEAN = snapshot(main=(8080, None), demo=(8081, "true"))


def cli(argv: list[str], stdin: Any = "", environ: dict[str, str] | None = None) -> Result:
    return run_main(argv, stdin, environ)


def htpasswd(path: Path, user: str = "alice", password: str = PASSWORD) -> str:
    """An htpasswd file of one user, hashed as the docs say (openssl passwd -apr1); its line."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    line = f"{user}:{hashed}"
    path.write_text(f"# made by a test\n\n{line}\n", encoding="utf-8")
    return line


# --------------------------------------------------------------------------
# settings


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--client-networks", "10.0.0.1/8"],
            'setting client_networks = "10.0.0.1/8" from --client-networks is not valid: it '
            "has host bits set; write the network 10.0.0.0/8, or 10.0.0.1/32 for that one address",
        ),
        (
            ["--client-networks", "10.0.0.0/8", "--client-networks", "10.0.0.0/33"],
            'setting client_networks = "10.0.0.0/33" from --client-networks is not valid: '
            "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network; it must be a network "
            "in CIDR notation, like 10.0.0.0/8 or fc00::/7",
        ),
        (
            ["--client-networks", "office"],
            "setting client_networks = office from --client-networks is not valid: it must "
            "be a network in CIDR notation, like 10.0.0.0/8 or fc00::/7. Networks (CIDR) of the "
            "clients that may reach the routes, the index, /deployments.json and the 404 pages; "
            "every other client gets 403, except on the deployments that opted out "
            "(/deployment/<branch>/public = true)",
        ),
        (
            ["--basic-auth-realm", 'x" ; include /etc/passwd; "'],
            'setting basic_auth_realm = "x\\" ; include /etc/passwd; \\"" from '
            "--basic-auth-realm is not valid: it must be letters, digits, spaces, '.', '_' and "
            "'-', not starting or ending with a space. The realm basic auth names (browsers show "
            "it in the password prompt): letters, digits, spaces, '.', '_' and '-'",
        ),
        (
            ["--basic-auth-file", "/etc/my htpasswd"],
            'setting basic_auth_file = "/etc/my htpasswd" from --basic-auth-file is not valid: '
            "it must be a path of letters, digits, '.', '_', '/' and '-' only, since nginx's "
            "config gets it as written. An htpasswd file (user:hash lines, as `htpasswd` or "
            "`openssl passwd -apr1` make them): when set, every route, the index, "
            "/deployments.json and the 404 pages ask for a user and password from it (HTTP "
            "basic auth), except the deployments that opted out (/deployment/<branch>/public = "
            "true)",
        ),
    ],
    ids=["host-bits", "prefix-too-long", "not-cidr", "realm-quote", "file-space"],
)
def test_a_bad_access_setting_is_one_line(flags: list[str], line: str) -> None:
    result = cli(["render", *BASE, *flags], CLEAN)
    assert (result.code, result.out) == (2, "")
    assert result.lines == [f"devtest-router: {line}"]


def test_client_networks_are_rendered_normalized_and_from_the_environment() -> None:
    config = resolve(
        resources.schema("config"),
        {},
        {
            "DEVTEST_ROUTER_CLIENT_NETWORKS": "10.0.0.0/8, FD00::/8",
            "DEVTEST_ROUTER_ACCESS_SATISFY": "any",
        },
    )
    assert [str(network) for network in config.client_networks] == ["10.0.0.0/8", "fd00::/8"]
    assert config.access_control and config.access_satisfy == "any"
    result = cli(["render", *BASE, "--client-networks", "FD00::/8"], CLEAN)
    assert result.code == 0, result.err
    assert "    allow fd00::/8;\n    deny all;\n" in result.out
    assert "auth_basic" not in result.out.replace("auth_basic off", "")  # no file: no password


def test_the_realm_reaches_the_config_only_in_quotes_of_inert_characters() -> None:
    assert Quoted("Preview deployments") == '"Preview deployments"'
    for hostile in ('a"b', "a;b", "a$b", "a\\b", "a\nb", "a{b", ""):
        with pytest.raises(ValueError):
            Quoted(hostile)
    result = cli(["render", *BASE, *ACCESS, "--basic-auth-realm", "Dev previews"], CLEAN)
    assert '    auth_basic "Dev previews";\n' in result.out


def test_without_access_control_nothing_of_it_is_rendered() -> None:
    """The public key alone changes nothing: the bytes are those of the same registry without
    it (every golden case without access control pins the rest)."""
    with_key = cli(["render", *BASE], CLEAN)
    without = cli(["render", *BASE], snapshot(main=(8080, None), demo=(8081, None)))
    assert with_key.code == 0 and with_key.out == without.out
    for word in ("satisfy", "auth_basic", "allow", "deny", "devtest_public", "418"):
        assert word not in with_key.out


# --------------------------------------------------------------------------
# the registry key


def test_a_public_key_other_than_true_or_false_is_one_problem_and_keeps_the_deployment_behind() -> (
    None
):
    data = snapshot(main=(8080, None), typo=(8081, "yes"), demo=(8082, "true"))
    result = cli(["render", *BASE, *ACCESS], data)
    assert result.code == 0
    assert result.lines == [
        "devtest-router: problem: /deployment/typo/public: is yes, not true or false: the key "
        "is ignored; use true or false (the deployment stays behind the access control until "
        "then) [bad-public]"
    ]
    public_map = result.out.split("$devtest_public {\n", 1)[1].split("}", 1)[0]
    assert public_map == "    default 0;\n    demo/ 1;\n"
    table = json.loads(cli(["check", "--json", *BASE, *ACCESS], data).out)
    public = {route["deployment"] for route in table["routes"] if route.get("public")}
    assert public == {"demo"}


def test_a_label_two_branches_share_is_public_only_when_both_are() -> None:
    """Feature/x and feature-x share the label feature-x; one behind access control keeps the
    label's routes behind it (the map is keyed by label)."""
    data = snapshot(
        **{"Feature/x": (8080, "true"), "feature-x": (8081, None), "demo": (8082, "true")}
    )
    data["deployment"]["feature-x"]["service"]["api"] = {"ip": "127.0.0.1", "port": "8083"}
    result = cli(["render", *BASE, *ACCESS], data)
    public_map = result.out.split("$devtest_public {\n", 1)[1].split("}", 1)[0]
    assert public_map == "    default 0;\n    demo/ 1;\n"
    data["deployment"]["feature-x"]["public"] = "true"
    result = cli(["render", *BASE, *ACCESS], data)
    public_map = result.out.split("$devtest_public {\n", 1)[1].split("}", 1)[0]
    assert public_map == "    default 0;\n    demo/ 1;\n    feature-x/ 1;\n"


def test_a_branch_named_like_a_map_keyword_cannot_make_every_deployment_public() -> None:
    """`default 1;` in the public map would make every deployment public, `include 1;` would
    read a file: the keys are `<label>/`."""
    data = snapshot(default=(8080, "true"), include=(8081, "true"), main=(8082, None))
    result = cli(["render", *BASE, *ACCESS], data)
    assert result.code == 0, result.err
    public_map = result.out.split("$devtest_public {\n", 1)[1].split("}", 1)[0]
    assert public_map == "    default 0;\n    default/ 1;\n    include/ 1;\n"


# --------------------------------------------------------------------------
# the htpasswd file, before every apply


def apply_argv(output: Path, password_file: Path, *more: str) -> list[str]:
    return [
        "apply", "--domain", DOMAIN, "--allow-loopback",
        "--basic-auth-file", str(password_file), *more,
        "--output", str(output), "--nginx", find_binary("nginx"),
        "--test-command", "true", "--reload-command", "true",
    ]  # fmt: skip


@pytest.fixture
def applied(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """An output folder with a config applied from a good htpasswd file: (output, the file,
    the environment)."""
    output = tmp_path / "out" / OUTPUT
    output.parent.mkdir()
    password_file = tmp_path / "htpasswd"
    htpasswd(password_file)
    environ = {
        "DEVTEST_ROUTER_ACCESS_LOG": "off",
        "DEVTEST_ROUTER_SITE_DIR": str(tmp_path / "site"),
    }
    first = cli(apply_argv(output, password_file), CLEAN, environ)
    assert first.code == 0, first.err
    yield output, password_file, environ


@pytest.mark.parametrize(
    ("breaking", "says"),
    [
        ("missing", "cannot read {path} (No such file or directory); nginx's workers must read "
         "it too: fix the path or the file's permissions; nothing was changed"),
        ("folder", "cannot read {path} (Is a directory); nginx's workers must read it too: fix "
         "the path or the file's permissions; nothing was changed"),
        ("empty", "{path} holds no user:hash line; make it with `htpasswd -c FILE USER` "
         "(apache2-utils) or user:$(openssl passwd -apr1) lines, or fix basic_auth_file; "
         "nothing was changed"),
        ("malformed", "line 2 of {path} is not user:hash (not shown: it may hold a password); "
         "make it with `htpasswd -c FILE USER` (apache2-utils) or user:$(openssl passwd -apr1) "
         "lines, or fix basic_auth_file; nothing was changed"),
    ],
)  # fmt: skip
def test_an_htpasswd_file_nginx_could_not_use_is_one_line_and_nothing_is_applied(
    applied: tuple[Path, Path, dict[str, str]], breaking: str, says: str
) -> None:
    output, password_file, environ = applied
    line = password_file.read_text(encoding="utf-8").splitlines()[-1]
    before = output.read_bytes()
    if breaking == "missing":
        password_file.unlink()
    elif breaking == "folder":
        password_file.unlink()
        password_file.mkdir()
    elif breaking == "empty":
        password_file.write_text("# nobody yet\n\n", encoding="utf-8")
    else:  # a user and hash with a space for the colon, then a good line: neither is shown
        password_file.write_text(f"# users\n{line.replace(':', ' ')}\n{line}\n")
    changed = snapshot(main=(8080, None), demo=(8081, "true"), more=(8082, None))
    for argv in (apply_argv(output, password_file), apply_argv(output, password_file, "--dry-run")):
        result = cli(argv, changed, environ)
        assert result.code == 2
        assert result.lines == [
            f"devtest-router: setting basic_auth_file: {says.format(path=password_file)}"
        ]
        assert output.read_bytes() == before  # the running config stays
        hashed = line.split(":", 1)[1]
        assert hashed not in result.err + result.out and hashed[6:20] not in result.err
    assert sorted(entry.name for entry in output.parent.iterdir()) == sorted(
        [OUTPUT, LOCK, f".{OUTPUT}.tested", f".{OUTPUT}.checked"]
    )
    # the same bytes as in place are refused too: nginx reads the file at every request
    same = cli(apply_argv(output, password_file), CLEAN, environ)
    assert same.code == 2 and len(same.lines) == 1


def test_a_bad_client_network_or_public_value_leaves_the_running_config_as_it_is(
    applied: tuple[Path, Path, dict[str, str]],
) -> None:
    output, password_file, environ = applied
    before = output.read_bytes()
    bad = cli(apply_argv(output, password_file, "--client-networks", "127.0.0.1/8"), CLEAN, environ)
    assert bad.code == 2
    assert bad.lines == [
        'devtest-router: setting client_networks = "127.0.0.1/8" from --client-networks is not '
        "valid: it has host bits set; write the network 127.0.0.0/8, or 127.0.0.1/32 for that "
        "one address"
    ]
    assert output.read_bytes() == before
    # main was behind the access control; "yes" is no opt-out: it stays behind, nothing changes
    typo = snapshot(main=(8080, "yes"), demo=(8081, "true"))
    result = cli(apply_argv(output, password_file), typo, environ)
    assert result.code == 0, result.err
    assert result.lines[0] == (
        "devtest-router: problem: /deployment/main/public: is yes, not true or false: the key "
        "is ignored; use true or false (the deployment stays behind the access control until "
        "then) [bad-public]"
    )
    assert "nothing to do" in result.lines[1]
    assert output.read_bytes() == before


# --------------------------------------------------------------------------
# the check: the access directives only where the template puts them, as the settings say


@pytest.mark.parametrize(
    ("access", "old", "new", "refusal"),
    [
        (
            False,
            "    client_max_body_size {{ client_max_body_size }};",
            "    client_max_body_size {{ client_max_body_size }};\n    satisfy any;",
            "the access lines of a server",
        ),
        (
            False,
            "        ssi on;",
            "        ssi on;\n        allow all;",
            "location @devtest_unknown_host",
        ),
        (
            True,
            "    auth_basic_user_file {{ access.user_file }};",
            "    auth_basic_user_file /etc/shadow;",
            "not the [['satisfy', 'all'], ['auth_basic', 'devtest-router'], "
            "['auth_basic_user_file', '/etc/devtest-router/htpasswd']",
        ),
        (
            True,
            "    auth_basic {{ access.realm }};",
            '    auth_basic "other";',
            "['auth_basic', 'other']",
        ),
        (
            True,
            "    deny all;",
            "    allow 0.0.0.0/0;\n    deny all;",
            "['allow', '0.0.0.0/0']",
        ),
        (
            True,
            "{% if access.networks %}\n    deny all;\n{% endif %}",
            "",
            "the access lines of a server",
        ),
        (
            True,
            "{% call access_lines(lead=true) %}{% endcall %}",
            "",
            "the access lines of a server",
        ),
        (
            True,
            "        recursive_error_pages on;",
            "        recursive_error_pages on;\n        allow all;",
            "location / (in",
        ),
        (
            True,
            "        ssi on;",
            "        ssi on;\n        auth_basic off;",
            "location @devtest_unknown_host",
        ),
        (
            True,
            "    default 0;\n{% for key in public %}",
            "    default 0;\n    main/ 1;\n{% for key in public %}",
            "the public map",
        ),
        (
            True,
            "map $devtest_deployment/ $devtest_public {\n    default 0;",
            "map $devtest_deployment/ $devtest_public {\n    default 1;",
            "the public map",
        ),
        (
            True,
            "            return 418;",
            "            satisfy any;\n            return 418;",
            '"satisfy" directive is not allowed here',  # crossplane's own table says so
        ),
    ],
    ids=[
        "satisfy-while-off", "allow-while-off", "other-user-file", "other-realm", "other-allow",
        "no-deny", "index-unprotected", "allow-in-location", "auth-off-on-404", "extra-public",
        "public-by-default", "satisfy-in-if",
    ],
)  # fmt: skip
def test_the_check_refuses_access_directives_anywhere_else_or_with_other_arguments(
    tmp_path: Path, access: bool, old: str, new: str, refusal: str
) -> None:
    folder = override(tmp_path, old, new)
    settings = ACCESS if access else []
    data = snapshot(main=(8080, None), demo=(8081, "true"))
    assert cli(["render", *BASE, *settings], data).code == 0  # the bundled template passes
    result = cli(["render", *BASE, "--template-dir", str(folder), *settings], data)
    assert result.code == 123 and result.out == "", result.err
    assert len(result.lines) == 1
    assert refusal in result.lines[0], result.err


# --------------------------------------------------------------------------
# through a real nginx


class BodyEcho:
    """A backend on 127.0.0.1 that answers with the method, path and body it received."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8") if length else ""
                payload = json.dumps(
                    {"method": self.command, "path": self.path, "body": body}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def echo() -> Iterator[BodyEcho]:
    server = BodyEcho()
    try:
        yield server
    finally:
        server.stop()


class Frontend:
    """devtest-router apply for one test's nginx on 127.0.0.1:nginx.port, with access flags."""

    def __init__(self, nginx: Nginx, tmp: Path, *access: str) -> None:
        self.nginx = nginx
        self.output = nginx.conf_dir / OUTPUT
        self.access = list(access)
        self.environ = {
            "DEVTEST_ROUTER_ACCESS_LOG": str(tmp / "router.access.log"),
            "DEVTEST_ROUTER_SITE_DIR": str(tmp / "site"),
        }

    def apply(self, data: dict[str, Any], *more: str) -> None:
        argv = [
            "apply", "--domain", DOMAIN, "--allow-loopback",
            "--listen", f"127.0.0.1:{self.nginx.port}", *self.access, *more,
            "--output", str(self.output), "--nginx", find_binary("nginx"),
            "--test-command", self.nginx.test_command,
            "--reload-command", self.nginx.reload_command,
        ]  # fmt: skip
        old = self.nginx.worker_pids()
        result = cli(argv, data, self.environ)
        assert result.code == 0, result.err
        assert result.lines[-1].startswith("devtest-router: applied "), result.err

        def replaced() -> bool:
            current = self.nginx.worker_pids()
            return len(current) == 1 and not current & old

        wait_for(replaced, what="nginx to reload and its old workers to exit")

    def get(
        self,
        host: str,
        path: str = "/",
        *,
        user: str | None = None,
        source: str | None = None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> Response:
        headers = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return http_request(
            self.nginx.port, host, path, method=method, headers=headers, body=body, source=source
        )


def _statuses(frontend: Frontend, host: str, path: str = "/") -> tuple[int, int, int, int]:
    """(no password, password, no password from outside, password from outside)."""
    return (
        frontend.get(host, path).status,
        frontend.get(host, path, user="alice").status,
        frontend.get(host, path, source=OUTSIDE).status,
        frontend.get(host, path, user="alice", source=OUTSIDE).status,
    )


def guarded(nginx: Nginx, tmp_path: Path, *flags: str) -> Frontend:
    """A frontend behind basic auth (alice, from an htpasswd file) and client network
    127.0.0.1/32, with `flags` besides."""
    password_file = tmp_path / "htpasswd"
    htpasswd(password_file)
    return Frontend(
        nginx, tmp_path, "--basic-auth-file", str(password_file),
        "--client-networks", "127.0.0.1/32", *flags,
    )  # fmt: skip


@pytest.mark.integration
def test_basic_auth_and_client_networks_guard_every_route_the_index_and_the_404_pages(
    nginx: Nginx, tmp_path: Path, echo: BodyEcho
) -> None:
    frontend = guarded(nginx, tmp_path, "--basic-auth-realm", "Dev previews")
    down = free_port()  # a public deployment whose container is gone
    frontend.apply(snapshot(main=(echo.port, None), demo=(echo.port, "true"), gone=(down, "true")))

    # a protected route: 401 without a password, 200 with it, 403 from outside either way
    assert _statuses(frontend, f"main-web.{DOMAIN}") == (401, 200, 403, 403)
    challenge = frontend.get(f"main.{DOMAIN}")
    assert challenge.headers["www-authenticate"] == 'Basic realm="Dev previews"'
    wrong = http_request(
        nginx.port, f"main.{DOMAIN}", headers={"Authorization": "Basic YWxpY2U6d3Jvbmc="}
    )
    assert wrong.status == 401  # alice:wrong
    # the index, deployments.json and an unknown hostname's 404 page: the same rules
    assert _statuses(frontend, DOMAIN) == (401, 200, 403, 403)
    assert _statuses(frontend, DOMAIN, "/deployments.json") == (401, 200, 403, 403)
    assert _statuses(frontend, f"nobody-web.{DOMAIN}") == (401, 404, 403, 403)
    unknown = frontend.get(f"nobody-web.{DOMAIN}", user="alice")
    assert unknown.headers["x-devtest-router"] == "unknown-host"
    assert "x-devtest-router" not in frontend.get(f"nobody-web.{DOMAIN}").headers
    # the 404 page's data (its shard, read by its script on the same hostname): the same rules
    shard = f"{site_layout.DATA_PATH}/{site_layout.shard('main')}.json"
    assert _statuses(frontend, f"main-nope.{DOMAIN}", shard) == (401, 404, 403, 403)
    [main] = frontend.get(f"main-nope.{DOMAIN}", shard, user="alice").json()["deployments"]
    assert main["name"] == "main"

    # the opted-out deployment: open to every client, a POST's method and body intact
    assert _statuses(frontend, f"demo-web.{DOMAIN}", "/x?q=1") == (200, 200, 200, 200)
    body = json.dumps({"order": 7, "note": "é" * 3000}).encode()
    posted = frontend.get(f"demo.{DOMAIN}", "/orders?a=1", method="POST", body=body, source=OUTSIDE)
    assert posted.status == 200
    assert posted.json() == {"method": "POST", "path": "/orders?a=1", "body": body.decode()}
    # its 502 still says no instance answered (how `devtest-router wait` tells it apart)
    gone = frontend.get(f"gone.{DOMAIN}", source=OUTSIDE)
    assert gone.status == 502 and gone.headers["x-devtest-router"] == "no-instance"

    # the index and deployments.json say which deployments are public
    document = frontend.get(DOMAIN, "/deployments.json", user="alice").json()
    assert {d["name"]: d["public"] for d in document["deployments"]} == {
        "demo": True, "gone": True, "main": False,
    }  # fmt: skip
    rows = {
        row.split('"', 1)[0]: row
        for row in frontend.get(DOMAIN, user="alice").text.split('<tr data-deployment="')[1:]
    }
    assert {name: ">public</em>" in row for name, row in rows.items()} == {
        "demo": True, "gone": True, "main": False,
    }  # fmt: skip

    # public back to false: demo is behind the rules again
    frontend.apply(snapshot(main=(echo.port, None), demo=(echo.port, "false"), gone=(down, "true")))
    assert _statuses(frontend, f"demo-web.{DOMAIN}") == (401, 200, 403, 403)


@pytest.mark.integration
def test_satisfy_any_lets_the_client_network_in_without_a_password_and_asks_the_others(
    nginx: Nginx, tmp_path: Path, echo: BodyEcho
) -> None:
    frontend = guarded(nginx, tmp_path, "--access-satisfy", "any")
    frontend.apply(snapshot(main=(echo.port, None)))
    assert _statuses(frontend, f"main-web.{DOMAIN}") == (200, 200, 401, 200)
    assert _statuses(frontend, DOMAIN) == (200, 200, 401, 200)
    assert _statuses(frontend, f"nobody.{DOMAIN}") == (404, 404, 401, 404)


@pytest.mark.integration
def test_client_networks_alone_refuse_other_clients_without_asking_a_password(
    nginx: Nginx, tmp_path: Path, echo: BodyEcho
) -> None:
    frontend = Frontend(nginx, tmp_path, "--client-networks", "127.0.0.1/32")
    frontend.apply(snapshot(main=(echo.port, None)))
    assert _statuses(frontend, f"main-web.{DOMAIN}") == (200, 200, 403, 403)
    assert "www-authenticate" not in frontend.get(f"main.{DOMAIN}", source=OUTSIDE).headers
