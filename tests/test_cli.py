"""The command line: settings and their sources, output formats, and one clear line per error.

Everything runs generator.cli.main.main() in-process with StringIO streams and an explicit environ,
except where a real process is the point (no traceback on a terminal, `python -m generator`).
No nginx here: `render` and `check` need none, and every apply below stops before it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Result, run_main

from generator import __version__
from generator.cli import exit_codes
from generator.cli.exit_codes import EXIT_CODES, code_of, epilog, summary
from generator.cli.main import COMMANDS, main
from generator.cli.parser import build_parser
from generator.core.config import resolve
from generator.core.errors import (
    ApplyError,
    Error,
    InternalError,
    RefusedError,
    SiteError,
    SnapshotError,
    TemplateProblem,
    UsageError,
)
from generator.core.pipeline import build
from generator.core.render import environment
from generator.core.snapshot import loads
from generator.register.discovery import MetadataUnavailable
from generator.registry.base import RegistryUnavailable
from generator.resources import schema, template_loader
from generator.site import pages as site
from generator.site.writer import SiteWriter

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("devtest-router")
DEMO = REPO / "fixtures" / "demo" / "snapshot.json"

# A registry whose upstreams lie in the default allowed networks: it routes with no settings.
CLEAN = {
    "deployment": {
        "master": {
            "created": "2026-01-01T09:00:00Z",
            "service": {
                "web": {"ip": "10.0.0.5", "port": "8080"},
                "api": {"ip": "10.0.0.6", "port": "9000"},
            },
        }
    }
}
# The same plus a branch whose only service is half-registered: two problems.
HALF = {
    "deployment": {
        **CLEAN["deployment"],
        "feature-x": {"service": {"web": {"ip": "10.0.0.7"}}},
    }
}


def cli(
    *argv: str, stdin: str | Mapping[str, Any] = "", environ: Mapping[str, str] | None = None
) -> Result:
    return run_main(list(argv), stdin, environ)


# what render, check and dry runs say when no flag, variable or file set the domain
DEFAULT_DOMAIN = (
    "devtest-router: domain localhost: the default (no --domain, DEVTEST_ROUTER_DOMAIN or "
    "domain: in the config file)\n"
)


def one_error_line(result: Result, code: int, *fragments: str) -> str:
    """The result failed with `code` and said so in exactly one line; return that line."""
    assert result.code == code, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    line = lines[0]
    assert line.startswith("devtest-router: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def clean_env() -> dict[str, str]:
    return {
        key: value for key, value in os.environ.items() if not key.startswith("DEVTEST_ROUTER_")
    }


# --------------------------------------------------------------------------
# unusable snapshots: 123, one line, nothing else


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"deployment": {"master": ', "not valid JSON"),
        ("[1, 2", "not valid JSON"),
        ("deployment: [unclosed\n", "neither JSON nor YAML"),
        ("\tdeployment: {}\n", "neither JSON nor YAML"),
        ("hello, registry", "the snapshot is a str"),
        ("", "the snapshot is empty"),
        ("[]", "the snapshot is a list"),
        ('[{"deployment": {}}]', "the snapshot is a list"),
        ("42", "the snapshot is a"),  # "a int": wording not pinned
        ("{}", "no 'deployment' key"),
        ('{"deploymnet": {}}', "no 'deployment' key"),
        ('{"deployment": null}', "/deployment is "),
        ('{"deployment": []}', "/deployment is "),
        ('{"deployment": "master"}', "/deployment is "),
    ],
)
@pytest.mark.parametrize("command", ["render", "check", "apply"])
def test_unusable_snapshot_is_one_line_and_exit_123(
    command: str, text: str, fragment: str, tmp_path: Path
) -> None:
    output = ["--domain", "dev.test", "--output", str(tmp_path / "out.conf")]
    argv = [command] if command != "apply" else [command, *output]
    result = cli(*argv, stdin=text)
    line = one_error_line(result, 123, fragment)
    assert line.startswith("devtest-router: standard input: ")
    assert "nothing was changed" in line
    assert result.out == ""
    assert list(tmp_path.iterdir()) == []


def test_snapshot_file_is_named_in_the_message(tmp_path: Path) -> None:
    bad = write(tmp_path / "snapshot.json", '{"deployment": ')
    one_error_line(cli("check", str(bad)), 123, f"{bad}: not valid JSON")


@pytest.mark.parametrize("text", ["[" * 100_000, '{"deployment": ' + "[" * 100_000])
def test_deeply_nested_snapshot_is_unusable_not_an_internal_error(text: str) -> None:
    one_error_line(cli("check", stdin=text), 123)


# --------------------------------------------------------------------------
# usage and configuration errors: 2, one line naming the setting and where it came from


def test_missing_snapshot_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    one_error_line(cli("check", str(missing)), 2, f"snapshot {missing}: No such file or directory")


def test_snapshot_that_is_a_folder(tmp_path: Path) -> None:
    one_error_line(cli("render", str(tmp_path)), 2, f"snapshot {tmp_path}: Is a directory")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "router.yaml"
    one_error_line(
        cli("check", "--config", str(missing), stdin=CLEAN),
        2,
        f"config file {missing}: No such file or directory",
    )
    # the same when DEVTEST_ROUTER_CONFIG names it
    one_error_line(
        cli("check", stdin=CLEAN, environ={"DEVTEST_ROUTER_CONFIG": str(missing)}),
        2,
        f"config file {missing}",
    )


def test_config_file_that_is_not_yaml(tmp_path: Path) -> None:
    config = write(tmp_path / "router.yaml", "domain: [unclosed\n")
    one_error_line(
        cli("check", "--config", str(config), stdin=CLEAN),
        2,
        f"config file {config}: not valid YAML",
    )


def test_config_file_that_is_not_yaml_still_exits_2_without_traceback(tmp_path: Path) -> None:
    """The half of the bug above that works: right code, our prefix, no traceback."""
    config = write(tmp_path / "router.yaml", "domain: [unclosed\n")
    result = cli("check", "--config", str(config), stdin=CLEAN)
    assert result.code == 2
    assert result.err.startswith(f"devtest-router: config file {config}: not valid YAML")
    assert "Traceback" not in result.err


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    config = write(tmp_path / "router.yaml", "- domain\n- dev.test\n")
    one_error_line(
        cli("check", "--config", str(config), stdin=CLEAN),
        2,
        f"config file {config}: must be a mapping of settings, not a list",
    )


def test_unknown_config_key(tmp_path: Path) -> None:
    config = write(tmp_path / "router.yaml", "domain: dev.test\ncolour: blue\n")
    line = one_error_line(
        cli("check", "--config", str(config), stdin=CLEAN),
        2,
        f"config file {config}: unknown setting colour; the settings are ",
    )
    assert "allowed_directives" in line and "domain" in line


def test_unknown_config_keys_of_mixed_types(tmp_path: Path) -> None:
    config = write(tmp_path / "router.yaml", "1: one\nfoo: bar\n")
    one_error_line(cli("check", "--config", str(config), stdin=CLEAN), 2, "unknown setting")


def test_bad_domain_flag_names_the_setting_and_the_flag() -> None:
    line = one_error_line(
        cli("check", "--domain", "Foo_Bar", stdin=CLEAN),
        2,
        "setting domain = Foo_Bar from --domain is not valid",
    )
    assert "The domain under which every route gets one label" in line


def test_bad_domain_in_the_environment_names_the_variable() -> None:
    one_error_line(
        cli("check", stdin=CLEAN, environ={"DEVTEST_ROUTER_DOMAIN": "-dev.test"}),
        2,
        "setting domain = -dev.test from environment variable DEVTEST_ROUTER_DOMAIN is not valid",
    )


def test_bad_domain_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "router.yaml", "domain: dev..test\n")
    one_error_line(
        cli("check", "--config", str(config), stdin=CLEAN),
        2,
        f"setting domain = dev..test from config file {config} is not valid",
    )


@pytest.mark.parametrize(
    ("argv", "environ", "fragments"),
    [
        (["--listen", "80x"], {}, ["setting listen", "from --listen"]),
        (["--listen", "80", "--listen", "80"], {}, ["setting listen", "given twice (80)"]),
        ([], {"DEVTEST_ROUTER_LISTEN": ""}, ["DEVTEST_ROUTER_LISTEN"]),
        (
            [],
            {"DEVTEST_ROUTER_ALLOW_LOOPBACK": "maybe"},
            ["allow_loopback = maybe", "must be true or false"],
        ),
        ([], {"DEVTEST_ROUTER_MAX_REMOVED_FRACTION": "2"}, ["max_removed_fraction"]),
        ([], {"DEVTEST_ROUTER_REMOVAL_GUARD_MIN_ROUTES": "-1"}, ["= -1", "a whole number"]),
        ([], {"DEVTEST_ROUTER_ALLOWED_NETWORKS": "10.0.0.0/33"}, ["allowed_networks"]),
        (
            [],
            {"DEVTEST_ROUTER_ALLOWED_DIRECTIVES": "add_header,load_module"},
            ["allowed_directives", "can never be allowed"],
        ),
        ([], {"DEVTEST_ROUTER_ACCESS_LOG": "/var/log/my log"}, ["access_log", "my log"]),
        (["--template-dir", "/nonexistent/templates"], {}, ["template_dir", "no such folder"]),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    argv: list[str], environ: dict[str, str], fragments: list[str]
) -> None:
    one_error_line(cli("render", *argv, stdin=CLEAN, environ=environ), 2, *fragments)


def test_apply_into_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    output = tmp_path / "conf.d" / "devtest-router.conf"
    one_error_line(
        cli("apply", "--domain", "dev.test", "--output", str(output), stdin=CLEAN),
        2,
        f"the folder {output.parent} does not exist",
    )


def test_error_through_a_real_process_shows_no_traceback(tmp_path: Path) -> None:
    for argv, stdin, code in [
        (["check"], "[1, 2", 123),
        (["check", str(tmp_path / "nowhere.json")], "", 2),
        (["render", "--domain", "Foo_Bar"], json.dumps(CLEAN), 2),
    ]:
        done = subprocess.run(
            [str(CLI), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )
        assert done.returncode == code, done.stderr
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("devtest-router: ")


def test_argparse_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["apply", "--no-such-flag"], ["frobnicate"], [], ["check", "--strict=yes"]):
        assert main(argv, environ={}) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "Traceback" not in captured.err
        assert captured.err.strip().splitlines()[-1].startswith("devtest-router")
        assert ": error: " in captured.err


# --------------------------------------------------------------------------
# settings: a flag beats the environment, which beats the file, which beats the default


def domain_and_hosts(result: Result) -> tuple[str, list[str]]:
    assert result.code == 0, result.err
    document = json.loads(result.out)
    return document["domain"], [route["host"] for route in document["routes"]]


def test_precedence_flag_environment_file_default(tmp_path: Path) -> None:
    config = write(tmp_path / "router.yaml", "domain: file.test\n")
    flag = ["--domain", "flag.test"]
    from_file = ["--config", str(config)]
    env = {"DEVTEST_ROUTER_DOMAIN": "env.test"}

    everything = cli("check", "--json", *flag, *from_file, stdin=CLEAN, environ=env)
    assert domain_and_hosts(everything) == (
        "flag.test",
        ["master-api.flag.test", "master-web.flag.test", "master.flag.test"],
    )
    no_flag = cli("check", "--json", *from_file, stdin=CLEAN, environ=env)
    assert domain_and_hosts(no_flag)[0] == "env.test"
    assert domain_and_hosts(cli("check", "--json", *from_file, stdin=CLEAN))[0] == "file.test"
    assert domain_and_hosts(cli("check", "--json", stdin=CLEAN))[0] == "localhost"
    # the config file can come from the environment too
    by_env = cli("check", "--json", stdin=CLEAN, environ={"DEVTEST_ROUTER_CONFIG": str(config)})
    assert domain_and_hosts(by_env)[0] == "file.test"
    # --config beats DEVTEST_ROUTER_CONFIG
    other = write(tmp_path / "other.yaml", "domain: other.test\n")
    both = cli(
        "check",
        "--json",
        "--config",
        str(other),
        stdin=CLEAN,
        environ={"DEVTEST_ROUTER_CONFIG": str(config)},
    )
    assert domain_and_hosts(both)[0] == "other.test"


def test_precedence_of_a_boolean(tmp_path: Path) -> None:
    # `other` always routes, so the hosts show which way allow_loopback went
    loopback = {
        "deployment": {
            "master": {"service": {"web": {"ip": "127.0.0.1", "port": "1"}}},
            "other": {
                "created": "2026-01-01T09:00:00Z",
                "service": {"web": {"ip": "10.0.0.9", "port": "80"}},
            },
        }
    }
    refused = ["other-web.localhost", "other.localhost"]
    config = write(tmp_path / "router.yaml", "allow_loopback: true\n")
    assert domain_and_hosts(cli("check", "--json", stdin=loopback))[1] == refused
    for source in (
        cli("check", "--json", "--allow-loopback", stdin=loopback),
        cli("check", "--json", stdin=loopback, environ={"DEVTEST_ROUTER_ALLOW_LOOPBACK": "yes"}),
        cli("check", "--json", "--config", str(config), stdin=loopback),
    ):
        assert domain_and_hosts(source)[1] == ["master-web.localhost", "master.localhost", *refused]
    # the environment's "false" beats the file's true
    denied = cli(
        "check",
        "--json",
        "--config",
        str(config),
        stdin=loopback,
        environ={"DEVTEST_ROUTER_ALLOW_LOOPBACK": "false"},
    )
    assert domain_and_hosts(denied)[1] == refused


@pytest.mark.parametrize(
    "data",
    [
        {"deployment": {}},
        {"deployment": {"master": {"service": {"web": {"ip": "10.0.0.5", "port": "80"}}}}},
        {
            "deployment": {
                "master": {
                    "created": "last tuesday",
                    "service": {"web": {"ip": "10.0.0.5", "port": "80"}},
                }
            }
        },
    ],
    ids=["empty-registry", "no-created", "unreadable-created"],
)
def test_snapshot_without_any_created_time_renders(data: dict[str, Any]) -> None:
    """Regression: the template printed the str literal "unknown" when no routed deployment had
    a readable created, which render refuses: an emptied registry could not be applied (exit 2)."""
    for command in ("render", "check"):
        result = cli(command, stdin=data)
        assert result.code == 0, result.err
    assert "newest registration unknown." in cli("render", stdin=data).out


def listens(text: str) -> list[str]:
    """The main server's listen addresses (the bare domain's server repeats them)."""
    return [
        line.split()[1]
        for line in text.splitlines()
        if line.strip().startswith("listen ") and "default_server" in line
    ]


def test_listen_is_repeatable() -> None:
    rendered = cli(
        "render",
        "--listen",
        "127.0.0.1:8080",
        "--listen",
        "8081",
        "--listen",
        "[::1]:8082",
        stdin=CLEAN,
    )
    assert rendered.code == 0, rendered.err
    assert listens(rendered.out) == ["127.0.0.1:8080", "8081", "[::1]:8082"]
    assert listens(cli("render", stdin=CLEAN).out) == ["80"]
    from_env = cli("render", stdin=CLEAN, environ={"DEVTEST_ROUTER_LISTEN": "8080, 8081"})
    assert listens(from_env.out) == ["8080", "8081"]
    both = cli(
        "render", "--listen", "9090", stdin=CLEAN, environ={"DEVTEST_ROUTER_LISTEN": "8080,8081"}
    )
    assert listens(both.out) == ["9090"]  # the flag replaces the environment's list


# --------------------------------------------------------------------------
# check and render


def test_check_strict_exits_123_only_when_there_are_problems() -> None:
    clean = cli("check", "--strict", "--domain", "localhost", stdin=CLEAN)
    assert (clean.code, clean.err) == (0, "")
    assert "0 problems" in clean.out

    half = cli("check", "--strict", "--domain", "localhost", stdin=HALF)
    assert one_error_line(half, 123) == "devtest-router: 2 problems (--strict)"
    assert (
        "/deployment/feature-x/service/web: has no port yet" in half.out
    )  # the table still prints

    assert cli("check", stdin=HALF).code == 0  # without --strict problems are not failures
    as_json = cli("check", "--strict", "--json", stdin=HALF)
    assert as_json.code == 123
    assert [
        (problem["key"], problem["code"]) for problem in json.loads(as_json.out)["problems"]
    ] == [
        ("/deployment/feature-x", "no-services"),
        ("/deployment/feature-x/service/web", "incomplete-service"),
    ]


def test_check_prints_a_readable_table() -> None:
    result = cli("check", stdin=HALF)
    assert result.code == 0 and result.err == DEFAULT_DOMAIN
    lines = result.out.splitlines()
    assert lines[0] == "3 routes under localhost"
    assert lines[1:4] == [
        "  master-api.localhost  ->  10.0.0.6:9000  (master api, service)",
        "  master-web.localhost  ->  10.0.0.5:8080  (master web, service)",
        "  master.localhost      ->  10.0.0.5:8080  (master web, default entry point)",
    ]
    problems = json.loads(cli("check", "--json", stdin=HALF).out)["problems"]
    assert lines[4] == f"{len(problems)} problems"
    assert len(lines) == 5 + len(problems)
    assert all(line.startswith("  /deployment/feature-x") for line in lines[5:])


def test_check_json_is_the_routing_table() -> None:
    document = json.loads(cli("check", "--json", stdin=CLEAN).out)
    assert document["snapshot"].startswith("sha256:")
    assert document["problems"] == []
    assert document["routes"][0] == {
        "host": "master-api.localhost",
        "kind": "service",
        "deployment": "master",
        "service": "api",
        "upstream": "10.0.0.6:9000",
        "instances": [{"instance": None, "upstream": "10.0.0.6:9000"}],
        "created": "2026-01-01T09:00:00Z",
    }


def test_render_prints_the_config_and_problems_go_to_stderr() -> None:
    result = cli("render", "--allow-loopback", "--domain", "dev.test", str(DEMO))
    assert result.code == 0
    assert result.out.startswith("# Generated by devtest-router")
    assert "map $host $devtest_route {" in result.out
    assert "    master-web.dev.test master/web/127.0.0.1:9101;" in result.out
    assert "feature-login-api.dev.test feature-login/api/127.0.0.1:9104;" in result.out
    assert "devtest-router: problem" not in result.out
    problems = result.err.strip().splitlines()
    assert problems, "the demo snapshot has problems"
    assert all(line.startswith("devtest-router: problem: /deployment/") for line in problems)
    said = result.err
    assert "169.254.169.254" in said and "link-local" in said  # the demo's metadata address
    assert "has no port yet" in said  # feature/login's half-registered worker
    check = json.loads(cli("check", "--json", "--allow-loopback", str(DEMO)).out)
    assert len(problems) == len(check["problems"])


def test_render_is_deterministic_and_ignores_key_order() -> None:
    reordered = {
        "deployment": {
            "master": {
                "service": {
                    "api": CLEAN["deployment"]["master"]["service"]["api"],
                    "web": CLEAN["deployment"]["master"]["service"]["web"],
                },
                "created": "2026-01-01T09:00:00Z",
            }
        }
    }
    assert json.dumps(reordered) != json.dumps(CLEAN)
    assert cli("render", stdin=reordered).out == cli("render", stdin=CLEAN).out
    yaml_text = (
        "deployment:\n  master:\n    created: '2026-01-01T09:00:00Z'\n    service:\n"
        "      web: {ip: 10.0.0.5, port: '8080'}\n      api: {ip: 10.0.0.6, port: '9000'}\n"
    )
    assert cli("render", stdin=yaml_text).out == cli("render", stdin=CLEAN).out


# --------------------------------------------------------------------------
# help, version, python -m


def test_help_lists_the_exit_codes_and_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], environ={}) == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for code, meaning in EXIT_CODES.items():  # the whole table: here only (test_cli_manners.py)
        assert f"\n  {code:>3}  {meaning}\n" in text
    for argv in (["--help"], ["apply", "--help"], ["check", "--help"], ["render", "--help"]):
        assert main(argv, environ={}) == 0
        text = capsys.readouterr().out
        assert "exit codes:" in text
        assert "DEVTEST_ROUTER_<FLAG>" in text
        assert "DEVTEST_ROUTER_DOMAIN" in text
    assert main(["apply", "--help"], environ={}) == 0
    apply_help = capsys.readouterr().out
    for flag in ("--dry-run", "--force", "--output", "--test-command", "--reload-command"):
        assert flag in apply_help


def test_every_command_is_dispatched() -> None:
    """The table in cli/main.py runs each command; register's commands name their own."""
    (commands,) = (
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for name, sub in commands.choices.items():
        assert (name in COMMANDS) != (sub.get_default("run") is not None), name
    assert set(COMMANDS) < set(commands.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"], environ={}) == 0
    assert capsys.readouterr().out == f"devtest-router {__version__}\n"


def test_help_goes_to_the_stream_given_to_main(capsys: pytest.CaptureFixture[str]) -> None:
    result = cli("--help")
    capsys.readouterr()
    assert result.code == 0
    assert "exit codes:" in result.out


def test_python_dash_m_generator() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "generator", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: devtest-router ")
    assert "exit codes:" in done.stdout and "DEVTEST_ROUTER_DOMAIN" in done.stdout
    version = subprocess.run(
        [sys.executable, "-m", "generator", "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert (version.returncode, version.stdout) == (0, f"devtest-router {__version__}\n")


# --------------------------------------------------------------------------
# exit codes: one table (generator/cli/exit_codes.py)


class _RegistryTrouble(RegistryUnavailable):
    """A subclass takes its nearest class's code."""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("x"), 2),
        (TemplateProblem("x"), 2),
        (InternalError("x"), 3),
        (RegistryUnavailable("x"), 4),
        (_RegistryTrouble("x"), 4),
        (MetadataUnavailable("x"), 6),  # its own address, not the registry
        (SiteError("x"), 5),
        (SnapshotError("x"), 123),
        (RefusedError("x"), 123),
        (ApplyError("x"), 123),
        (Error("x"), 123),
        (KeyboardInterrupt(), 130),
        (ValueError("x"), 3),  # not one of ours: a bug
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_each_error_ends_with_its_code_from_the_table(error: BaseException, code: int) -> None:
    assert code_of(error) == code
    assert code in EXIT_CODES


def test_a_commands_line_of_codes_in_its_own_words() -> None:
    assert summary([0, 2]) == "exit codes: 0 ok; 2 usage. Every code: devtest-router --help"
    text = summary([0, 4], {0: "registered"}, "with -- CMD: CMD's status")
    assert text == (
        "exit codes: 0 registered; 4 registry unreachable; with -- CMD: CMD's status.\n"
        "  Every code: devtest-router --help"
    )
    assert epilog() == "exit codes:\n" + "\n".join(
        f"  {entry.code:>3}  {entry.meaning}" for entry in exit_codes.TABLE
    )


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{% if %}", "template routes.conf.j2 line 1: "),
        ('{% include "absent.j2" %}', "template absent.j2 not found in the template folders"),
        ("no routes here", "template routes.conf.j2 must print {{ routes }} exactly once"),
    ],
)
def test_a_broken_template_is_a_usage_error(tmp_path: Path, template: str, says: str) -> None:
    (tmp_path / "routes.conf.j2").write_text(template, encoding="utf-8")
    result = cli("render", "--template-dir", str(tmp_path), stdin=CLEAN, environ={})
    assert says in one_error_line(result, 2)
    assert result.out == ""


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{% if %}", "template site/index.html.j2 line 1: "),
        ('{% include "site/absent.j2" %}', "template site/absent.j2 not found"),
    ],
)
def test_a_broken_site_template_is_a_template_problem(
    tmp_path: Path, template: str, says: str
) -> None:
    templates = tmp_path / "templates"
    (templates / "site").mkdir(parents=True)
    (templates / "site" / "index.html.j2").write_text(template, encoding="utf-8")
    config = resolve(schema("config"), {"site_dir": str(tmp_path / "site")}, {})
    table = build(
        loads(json.dumps(CLEAN), "clean"),
        config,
        schema("snapshot"),
        environment(template_loader()),
    ).table
    writer = SiteWriter(config, site.environment(template_loader([templates])))
    with pytest.raises(TemplateProblem, match=says) as caught:
        writer.plan(table)
    assert code_of(caught.value) == 2
