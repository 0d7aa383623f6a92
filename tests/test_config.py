"""Issue 12, a new user's first hour with the settings: safe defaults (apply and watch never
guess the domain or the registry; the default config file), a terminal on standard input, and
validation messages that echo the value they refused with the rule it breaks, one rule for
relative paths.

Most of it runs generator.cli.main.main() in-process (as test_cli does) or calls the pure
config.resolve; a real process where a terminal or a running watcher is the point. No server
is started: `--nginx true` stands in for nginx's test of the staged file where a dry run needs
one.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from test_cli import CLEAN, CLI, DEFAULT_DOMAIN, Result, clean_env, cli, one_error_line, write

from generator.cli.exit_codes import USAGE
from generator.core.config import DEFAULT_CONFIG_FILE, DEFAULT_CONFIG_VARIABLE, resolve
from generator.core.errors import UsageError
from generator.resources import schema

PROPERTIES: dict[str, Any] = schema("config")["properties"]
PATHS = [key for key, spec in PROPERTIES.items() if "x-path" in spec]
NO_DOMAIN = (
    "devtest-router: no domain set: give --domain or DEVTEST_ROUTER_DOMAIN (or domain: in the "
    "config file); apply and watch do not guess one (render, check and --dry-run use localhost)"
)


def process(*argv: str) -> Result:
    """The real command, for a watcher: one that does not stop (a regression) fails the test at
    the timeout instead of blocking the test run, as an in-process watcher would."""
    done = subprocess.run(
        [str(CLI), *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**clean_env(), DEFAULT_CONFIG_VARIABLE: "", "REGISTRY_URL": ""},
        timeout=60,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def applying(tmp_path: Path, *extra: str) -> list[str]:
    """apply's arguments into tmp_path/out; `--nginx true` passes nginx's test of the staged
    file, and nothing is reloaded (nor reached: every apply below stops before, or dry-runs)."""
    (tmp_path / "out").mkdir(exist_ok=True)
    return [
        "apply",
        *("--output", str(tmp_path / "out" / "router.conf")),
        *("--site-dir", str(tmp_path / "out" / "site")),
        *("--nginx", "true", "--test-command", "false", "--reload-command", "false"),
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# the domain: apply and watch refuse to guess it; render, check and dry runs say they use it


def test_apply_refuses_to_run_without_a_domain(tmp_path: Path) -> None:
    result = cli(*applying(tmp_path), stdin=CLEAN)
    assert one_error_line(result, USAGE) == NO_DOMAIN
    assert list((tmp_path / "out").iterdir()) == []  # nothing written


def test_watch_refuses_to_run_without_a_domain(tmp_path: Path) -> None:
    registry = write(tmp_path / "registry.json", json.dumps(CLEAN))
    result = process("watch", "--registry", f"file:{registry}", *applying(tmp_path)[1:])
    assert one_error_line(result, USAGE) == NO_DOMAIN
    assert list((tmp_path / "out").iterdir()) == []


def test_a_domain_from_any_layer_lets_apply_go_on(tmp_path: Path) -> None:
    """The flag, the variable or the config file: each sets the domain, localhost too when it is
    written out. The apply then goes on to its test command, which fails on purpose (123)."""
    config = write(tmp_path / "router.yaml", "domain: localhost\n")
    for extra, environ in (
        (["--domain", "dev.test"], {}),
        ([], {"DEVTEST_ROUTER_DOMAIN": "dev.test"}),
        (["--config", str(config)], {}),
    ):
        result = cli(*applying(tmp_path, *extra), stdin=CLEAN, environ=environ)
        assert result.code == 123, result
        assert "no domain set" not in result.err
        assert "the default" not in result.err


@pytest.mark.parametrize(
    "argv",
    [["render"], ["check"], ["check", "--json"], ["apply", "--dry-run"]],
    ids=["render", "check", "check-json", "apply-dry-run"],
)
def test_render_check_and_dry_runs_say_they_use_the_default_domain(
    argv: list[str], tmp_path: Path
) -> None:
    full = applying(tmp_path, *argv[1:]) if argv[0] == "apply" else argv
    result = cli(*full, stdin=CLEAN)
    assert result.code in (0, 1), result  # 1: the dry run would change the file
    assert DEFAULT_DOMAIN in result.err
    assert "master-web.localhost" in result.out
    given = cli(*full, "--domain", "localhost", stdin=CLEAN)
    assert given.code == result.code
    assert "the default" not in given.err  # written out: nothing to say


def test_watch_dry_run_says_it_uses_the_default_domain(tmp_path: Path) -> None:
    """A real watcher (a file registry: no server) in a dry run: it starts, says the domain is
    the default, and would change the file; SIGTERM stops it."""
    registry = write(tmp_path / "registry.json", json.dumps(CLEAN))
    argv = ["watch", "--dry-run", "--registry", f"file:{registry}", *applying(tmp_path)[1:]]
    watcher = subprocess.Popen(
        [str(CLI), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean_env(), DEFAULT_CONFIG_VARIABLE: ""},
    )
    stderr = watcher.stderr
    assert stderr is not None
    said: list[str] = []

    def dry_run_done() -> bool:
        if select.select([stderr], [], [], 0.1)[0]:
            said.append(stderr.readline())
        assert watcher.poll() is None, "".join(said) + stderr.read()  # it must not stop
        return any("dry run:" in line for line in said)

    try:
        wait_for(dry_run_done, 60, what="the watcher's dry run")
    finally:
        watcher.terminate()
        watcher.wait(timeout=60)
        stderr.close()
    assert DEFAULT_DOMAIN in said
    assert list((tmp_path / "out").iterdir()) == []  # a dry run writes nothing


# --------------------------------------------------------------------------------------------
# the registry: no default file; watch and snapshot say which flag and variable to set


@pytest.mark.parametrize(
    "argv", [["snapshot"], ["watch", "--domain", "dev.test"], ["watch", "--dry-run"]]
)
def test_no_registry_names_the_flag_and_the_variable(argv: list[str]) -> None:
    line = one_error_line(process(*argv), USAGE, "no registry set", "--registry", "REGISTRY_URL")
    assert "etcd://HOST:PORT" in line and "file:PATH" in line


def test_help_says_there_is_no_default_registry() -> None:
    for command in ("watch", "snapshot"):
        helped = cli(command, "--help")
        assert helped.code == 0
        text = helped.out
        assert "registry.json" not in text, command
        assert "$REGISTRY_URL" in " ".join(text.split()), command


# --------------------------------------------------------------------------------------------
# the default config file


def test_the_default_config_file_location_is_conventional() -> None:
    assert DEFAULT_CONFIG_FILE == "/etc/devtest-router/config.yaml"
    assert DEFAULT_CONFIG_VARIABLE == "DEVTEST_ROUTER_CONFIG_DEFAULT"


@pytest.mark.parametrize("command", ["render", "check", "apply", "watch"])
def test_help_names_the_default_config_file(command: str) -> None:
    helped = cli(command, "--help")
    assert helped.code == 0
    assert DEFAULT_CONFIG_FILE in helped.out


def domain_of(result: Any) -> str:
    assert result.code == 0, result.err
    domain: str = json.loads(result.out)["domain"]
    return domain


def test_the_default_config_file_is_read_when_present(tmp_path: Path) -> None:
    default = tmp_path / "etc" / "config.yaml"
    at_default = {DEFAULT_CONFIG_VARIABLE: str(default)}
    # missing: fine, the defaults
    assert domain_of(cli("check", "--json", stdin=CLEAN, environ=at_default)) == "localhost"
    default.parent.mkdir()
    write(default, "domain: from-default.test\n")
    assert domain_of(cli("check", "--json", stdin=CLEAN, environ=at_default)) == (
        "from-default.test"
    )
    # a domain from the default file is a domain set: apply goes on (to its failing test)
    applied = cli(*applying(tmp_path), stdin=CLEAN, environ=at_default)
    assert applied.code == 123 and "no domain set" not in applied.err, applied
    # --config and DEVTEST_ROUTER_CONFIG name the file instead: the default one is not read
    other = write(tmp_path / "other.yaml", "domain: other.test\n")
    by_flag = cli("check", "--json", "--config", str(other), stdin=CLEAN, environ=at_default)
    assert domain_of(by_flag) == "other.test"
    by_variable = {**at_default, "DEVTEST_ROUTER_CONFIG": str(other)}
    assert domain_of(cli("check", "--json", stdin=CLEAN, environ=by_variable)) == "other.test"
    # an empty DEVTEST_ROUTER_CONFIG_DEFAULT reads no default file
    none = {DEFAULT_CONFIG_VARIABLE: ""}
    assert domain_of(cli("check", "--json", stdin=CLEAN, environ=none)) == "localhost"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("domain: [unclosed\n", "not valid YAML"),
        ("domain: Not_A_Domain\n", "setting domain = Not_A_Domain from config file"),
        ("colour: blue\n", "unknown setting colour"),
        ("- a list\n", "must be a mapping of settings"),
        (b"domain: \xff\n", "not UTF-8 text"),
    ],
    ids=["yaml", "value", "unknown-key", "not-a-mapping", "not-utf8"],
)
def test_a_broken_default_config_file_is_an_error_naming_it(
    tmp_path: Path, text: str | bytes, says: str
) -> None:
    default = tmp_path / "config.yaml"
    if isinstance(text, bytes):
        default.write_bytes(text)
    else:
        write(default, text)
    result = cli("check", stdin=CLEAN, environ={DEFAULT_CONFIG_VARIABLE: str(default)})
    line = one_error_line(result, USAGE, says)
    assert f"{default} (the default config file)" in line


def test_a_default_config_file_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    """Present but not a readable file (a folder, a dangling symlink): an error, not absent."""
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    for default, says in ((folder, "Is a directory"), (dangling, "No such file")):
        result = cli("check", stdin=CLEAN, environ={DEFAULT_CONFIG_VARIABLE: str(default)})
        one_error_line(result, USAGE, f"config file {default} (the default config file)", says)


# --------------------------------------------------------------------------------------------
# a terminal on standard input: one line, exit 2, instead of waiting silently


def on_a_terminal(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The real command with a pseudo-terminal as its standard input."""
    leader, follower = os.openpty()
    try:
        return subprocess.run(
            [str(CLI), *argv],
            stdin=follower,
            capture_output=True,
            text=True,
            env={**clean_env(), DEFAULT_CONFIG_VARIABLE: ""},
            timeout=60,
        )
    finally:
        os.close(follower)
        os.close(leader)


@pytest.mark.parametrize("command", ["check", "render", "apply"])
def test_a_terminal_on_standard_input_is_refused_at_once(command: str, tmp_path: Path) -> None:
    """The real command with a pseudo-terminal as its standard input (no file given). Before,
    it waited for a snapshot nobody was typing: the timeout fails the test."""
    argv = applying(tmp_path, "--domain", "dev.test") if command == "apply" else [command]
    done = on_a_terminal(argv)  # it would wait on the terminal: subprocess's timeout ends it
    assert done.returncode == USAGE, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    registry = f", or read the registry (devtest-router {command} --registry URL)"
    assert line == (
        f"devtest-router: standard input is a terminal, not a snapshot: give a snapshot file "
        f"(devtest-router {command} SNAPSHOT), "
        + ("" if command == "apply" else "or ")
        + f"pipe one in (devtest-router snapshot --registry URL | devtest-router {command})"
        + (registry if command == "apply" else "")
    )


def test_a_snapshot_file_is_read_whatever_standard_input_is(tmp_path: Path) -> None:
    snapshot = write(tmp_path / "snapshot.json", json.dumps(CLEAN))
    done = on_a_terminal(["check", "--domain", "dev.test", str(snapshot)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 routes under dev.test")


# --------------------------------------------------------------------------------------------
# validation: every message echoes the refused value and says the rule


# (flag or variable, value, what the line must say besides the value: the rule)
REFUSED: list[tuple[str, str, str]] = [
    ("--listen", "foo", "PORT, IPV4:PORT or [IPV6]:PORT with a port 1-65535"),
    ("--listen", "99999", "not 1-65535"),
    ("--listen", "999.1.1.1:80", "not an IPv4 address"),
    ("--tls-listen", "0", "not 1-65535"),
    ("DEVTEST_ROUTER_METRICS_LISTEN", "70000", "not 1-65535"),
    ("DEVTEST_ROUTER_METRICS_LISTEN", "localhost:9180", "PORT (on 127.0.0.1), IPV4:PORT"),
    ("DEVTEST_ROUTER_METRICS_LISTEN", "999.1.1.1:80", "not an IPv4 address"),
    ("--domain", "Foo_Bar", "a DNS name in lower case"),
    ("--domain", "com", "at least one dot"),
    ("--default-service", "", "must not be empty"),
    ("--site-dir", "/srv/my site", "letters, digits, '.', '_', '/' and '-' only"),
    ("--site-dir", "~/site", "a leading ~ is not expanded"),
    ("DEVTEST_ROUTER_OUTPUT", "~/router.conf", "a leading ~ is not expanded"),
    ("--tls-certificate", "/etc/ssl/my cert.pem", "letters, digits, '.', '_', '/' and '-' only"),
    ("DEVTEST_ROUTER_ACCESS_LOG", "/var/log/a log", "off, or a path of letters"),
    ("DEVTEST_ROUTER_ALLOWED_NETWORKS", "10.0.0.0/33", "a network in CIDR notation"),
    ("DEVTEST_ROUTER_ALLOWED_NETWORKS", "10.0.0.0/8,ten/8", "a network in CIDR notation"),
    ("DEVTEST_ROUTER_RESERVED_NAMES", "ok,Bad_Label", "a DNS label"),
    ("DEVTEST_ROUTER_ALLOWED_DIRECTIVES", "add_header,Add-Header", "an nginx directive name"),
    ("DEVTEST_ROUTER_ALLOWED_DIRECTIVES", "add_header,load_module", "can never be allowed"),
    ("DEVTEST_ROUTER_CLIENT_MAX_BODY_SIZE", "1t", "an nginx size"),
    ("DEVTEST_ROUTER_PROXY_READ_TIMEOUT", "1d", "an nginx time"),
    ("DEVTEST_ROUTER_LOG_FORMAT", "xml", "one of plain, json"),
    ("DEVTEST_ROUTER_COMMAND_TIMEOUT", "9999", "at most 3600"),
    ("DEVTEST_ROUTER_MAX_REMOVED_FRACTION", "2", "at most 1"),
    ("DEVTEST_ROUTER_MAX_VALUE_BYTES", "12", "at least 256"),
    ("DEVTEST_ROUTER_REMOVAL_GUARD_MIN_ROUTES", "few", "a whole number"),
    ("DEVTEST_ROUTER_ALLOW_LOOPBACK", "maybe", "true or false"),
]


@pytest.mark.parametrize(("where", "value", "rule"), REFUSED)
def test_a_refused_setting_echoes_its_value_and_the_rule(where: str, value: str, rule: str) -> None:
    flag = where.startswith("--")
    argv, environ = ([where, value], {}) if flag else ([], {where: value})
    line = one_error_line(cli("check", *argv, stdin=CLEAN, environ=environ), USAGE, rule)
    refused = value.rsplit(",", 1)[-1]  # of a list, the item that breaks the rule
    assert f" = {refused} " in line or f' = "{refused}" ' in line, line
    assert f"from {where}" in line or f"from environment variable {where}" in line, line


@pytest.mark.parametrize("value", ["99999", "65536", "0", "foo"])
@pytest.mark.parametrize("command", ["check", "render", "apply"])
def test_a_listen_port_out_of_range_is_a_usage_error_in_every_command(
    command: str, value: str, tmp_path: Path
) -> None:
    """Issue 12: `check --listen 99999` passed, and apply failed inside nginx (exit 123)."""
    argv = applying(tmp_path, "--domain", "dev.test") if command == "apply" else [command]
    line = one_error_line(cli(*argv, "--listen", value, stdin=CLEAN), USAGE, "--listen")
    assert f"setting listen = {value} from --listen is not valid" in line


def test_every_pattern_of_the_settings_has_its_rule_in_words() -> None:
    """A message says the rule, not the regular expression: each pattern has an x-rule."""

    def specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
        found = [spec]
        for child in ("items", "not"):
            if isinstance(spec.get(child), dict):
                found += specs(spec[child])
        return found

    for key, top in PROPERTIES.items():
        for spec in specs(top):
            if "pattern" in spec:
                assert spec.get("x-rule"), f"{key}: a pattern without an x-rule"


# --------------------------------------------------------------------------------------------
# paths: one rule for every path setting, whichever layer gives it


def test_the_path_settings_are_the_expected_ones() -> None:
    assert PATHS == [
        "tls_certificate",
        "tls_certificate_key",
        "basic_auth_file",
        "output",
        "site_dir",
        "template_dir",
        "access_log",
    ]


@pytest.mark.parametrize("key", PATHS)
def test_the_path_rule_is_in_every_path_settings_description(key: str) -> None:
    description = PROPERTIES[key]["description"]
    assert "A relative path is taken from the current directory at startup" in description
    assert "a leading ~ is refused, not expanded" in description


def variable(key: str) -> str:
    return f"DEVTEST_ROUTER_{key.upper()}"


def settings_for(key: str, value: str) -> dict[str, str]:
    """`key` = `value` as variables, with its TLS partner where it needs one."""
    partner = {"tls_certificate": "tls_certificate_key", "tls_certificate_key": "tls_certificate"}
    values = {key: value}
    if key in partner:
        values[partner[key]] = "/etc/ssl/other.pem"
    return {variable(name): text for name, text in values.items()}


@pytest.mark.parametrize("key", PATHS)
def test_a_relative_path_is_taken_from_the_current_directory_in_every_layer(key: str) -> None:
    """The flag, the variable and the config file (whose own folder plays no part): the same
    rule, made absolute as os.path.abspath would."""
    partner = {k: v for k, v in settings_for(key, "x").items() if k != variable(key)}
    flag = resolve(schema("config"), {key: "state/thing"}, partner, cwd="/srv/router")
    environment = resolve(
        schema("config"), {}, settings_for(key, "./state/../state//thing/"), cwd="/srv/router"
    )
    config_file = resolve(
        schema("config"),
        {},
        partner,
        {key: "state/thing"},
        "/etc/elsewhere/config.yaml",
        cwd="/srv/router",
    )
    for layer, config in (("flag", flag), ("variable", environment), ("file", config_file)):
        assert getattr(config, key) == "/srv/router/state/thing", layer
    absolute = resolve(schema("config"), {}, settings_for(key, "/abs/./as/given"), cwd="/srv")
    assert getattr(absolute, key) == "/abs/./as/given"  # an absolute path is taken as given


def test_access_log_off_is_no_path() -> None:
    config = resolve(schema("config"), {}, {"DEVTEST_ROUTER_ACCESS_LOG": "off"}, cwd="/srv")
    assert config.access_log == "off"


@pytest.mark.parametrize("key", PATHS)
def test_a_leading_tilde_is_refused_for_every_path(key: str) -> None:
    says = f'setting {key} = "~/x" from environment variable {variable(key)} is not valid: a lead'
    with pytest.raises(UsageError, match=re.escape(says)):
        resolve(schema("config"), {}, settings_for(key, "~/x"), cwd="/srv")


def test_a_relative_path_that_cannot_be_made_absolute_is_refused() -> None:
    """The current directory was deleted: a relative path is refused, absolute ones work."""
    says = 'setting output = "build/router.conf" from --output is not valid: it is a relative path'
    with pytest.raises(UsageError, match=re.escape(says)):
        resolve(schema("config"), {"output": "build/router.conf"}, {}, cwd=None)
    assert resolve(schema("config"), {"output": "/x.conf"}, {}, cwd=None).output == "/x.conf"


def test_relative_output_and_site_dir_follow_the_same_rule_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: a relative --output was taken and a relative --site-dir refused. Both are now
    taken from the current directory, and the config nginx gets has the absolute path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    rendered = cli("render", "--domain", "dev.test", "--site-dir", "build/site", stdin=CLEAN)
    assert rendered.code == 0, rendered.err
    assert f"root {tmp_path}/build/site;" in rendered.out
    dry = cli(
        "apply",
        "--dry-run",
        *("--domain", "dev.test", "--nginx", "true"),
        *("--output", "build/router.conf", "--site-dir", "build/site"),
        stdin=CLEAN,
    )
    assert dry.code == 1, dry.err  # would change the file
    assert f"would change {tmp_path}/build/router.conf" in dry.err
    assert list((tmp_path / "build").iterdir()) == []  # a dry run writes nothing


def test_a_relative_path_refused_for_its_characters_shows_both_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "my projects"
    folder.mkdir()
    monkeypatch.chdir(folder)
    line = one_error_line(cli("check", "--site-dir", "build/site", stdin=CLEAN), USAGE)
    assert (
        f'setting site_dir = "{folder}/build/site" ("build/site" in the current directory' in line
    )
    assert "letters, digits, '.', '_', '/' and '-' only" in line
