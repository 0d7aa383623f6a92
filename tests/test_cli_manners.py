"""The command line's manners (issue 12): a typo gets the closest flag or command, each command's
help is short and names only its own exit codes, -q and -v change what is written on stderr,
and `completion` prints a shell script made from the parser.

main() runs in-process with StringIO streams and an explicit environ, except where the installed
binary or a shell is the point. No server is started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Result, run_main

from generator.cli.exit_codes import EXIT_CODES, TABLE
from generator.cli.parser import build_parser, commands
from generator.core.config import resolve
from generator.core.errors import UsageError
from generator.resources import schema

CLI = Path(sys.executable).with_name("devtest-router")

# Routes with no settings (upstreams in the default allowed networks), and one branch that is
# half-registered: render says one problem, a warning.
SNAPSHOT = {
    "deployment": {
        "master": {
            "created": "2026-01-01T09:00:00Z",
            "service": {"web": {"ip": "10.0.0.5", "port": "8080"}},
        },
        "feature-x": {"service": {"web": {"ip": "10.0.0.7"}}},
    }
}


def cli(*argv: str, environ: Mapping[str, str] | None = None, stdin: Any = SNAPSHOT) -> Result:
    return run_main(list(argv), stdin, environ)


def usage_error(result: Result, command: str) -> str:
    """A usage error: exit 2, the command's usage, then one line; that line."""
    assert result.code == 2, result
    assert result.out == "" and "Traceback" not in result.err
    usage, line = result.lines
    prog = f"devtest-router {command}".strip()
    assert usage.startswith(f"usage: {prog} "), usage
    assert line.startswith(f"{prog}: error: "), line
    return line.removeprefix(f"{prog}: error: ")


# --------------------------------------------------------------------------
# a typo gets a suggestion


@pytest.mark.parametrize(
    ("argv", "command", "said"),
    [
        # the issue's own: only the flag is named, not the file after it
        (
            ["apply", "--domian", "x", "snap.json"],
            "apply",
            "unknown flag --domian; did you mean --domain?",
        ),
        (["apply", "--domian=x"], "apply", "unknown flag --domian; did you mean --domain?"),
        (["check", "--stirct"], "check", "unknown flag --stirct; did you mean --strict?"),
        (
            ["watch", "--quiet-perod", "1"],
            "watch",
            "unknown flag --quiet-perod; did you mean --quiet-period?",
        ),
        (["register", "--nmae", "x"], "register", "unknown flag --nmae; did you mean --name?"),
        (["wait", "--tiemout", "5"], "wait", "unknown flag --tiemout; did you mean --timeout?"),
        (["render", "--zzz"], "render", "unknown flag --zzz"),  # nothing close: no guess
        (["check", "--dry-run"], "check", "--dry-run is a flag of apply and watch, not of check"),
        (["aply"], "", "unknown command 'aply'; did you mean apply?"),
        (["deregistr", "--force"], "", "unknown command 'deregistr'; did you mean deregister?"),
        (["snapshots"], "", "unknown command 'snapshots'; did you mean snapshot?"),
        (["frobnicate"], "", "unknown command 'frobnicate'"),
        (
            ["--domain", "x", "apply"],
            "",
            "unknown flag --domain: flags go after the command (e.g. devtest-router render "
            "--domain)",
        ),
    ],
)
def test_a_typo_names_the_closest_flag_or_command(argv: list[str], command: str, said: str) -> None:
    assert usage_error(cli(*argv), command) == said


def test_a_stray_argument_is_still_argparses_error() -> None:
    assert usage_error(cli("check", "a.json", "b.json"), "check") == (
        "unrecognized arguments: b.json"
    )


def test_the_programs_own_options_still_answer() -> None:
    assert cli("--version").code == 0
    assert cli("-h", "aply").code == 0  # help first, as argparse does
    assert usage_error(cli(), "") == "the following arguments are required: COMMAND"


def test_a_typo_through_the_installed_binary() -> None:
    done = subprocess.run(
        [str(CLI), "apply", "--domian", "x", "snap.json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "usage: devtest-router apply [options] [SNAPSHOT | --registry URL]\n"
        "devtest-router apply: error: unknown flag --domian; did you mean --domain?\n"
    )


# --------------------------------------------------------------------------
# short help: the table once, each command its own codes in one line

# What each command can end with, besides 3 (a bug) and 130 (interrupted), which any may.
CODES = {
    "render": {0, 2, 123},
    "check": {0, 2, 123},
    "apply": {0, 1, 2, 4, 5, 123},  # 4: --registry unreachable,
    "watch": {0, 2},
    "snapshot": {0, 2, 4},
    "wait": {0, 1, 2},
    "register": {0, 2, 4, 6},
    "deregister": {0, 1, 2, 4},
    "completion": {0, 2},
}


def help_text(*argv: str) -> str:
    result = cli(*argv, "--help")
    assert result.code == 0 and result.err == ""
    return result.out


def test_every_command_is_in_the_list_of_codes() -> None:
    assert set(commands(build_parser())) == set(CODES)


@pytest.mark.parametrize("command", list(CODES))
def test_a_commands_help_names_only_its_own_codes_in_one_short_line(command: str) -> None:
    text = help_text(command)
    assert text.startswith(f"usage: devtest-router {command} ")
    assert text.index("\n") < 80, "the usage is one line"
    paragraph = text.split("\n\nexit codes: ")[1]
    assert len(paragraph.splitlines()) <= 3
    words = " ".join(paragraph.split())
    said = {int(code) for code in re.findall(r"(?:^|; )(\d+) ", words)}
    assert said == CODES[command]
    assert words.endswith(". Every code: devtest-router --help")
    for entry in TABLE:  # no line of the full table
        assert entry.meaning not in text
        assert not re.search(rf"^ +{entry.code} +\S", text, re.MULTILINE)


def test_the_top_level_help_has_the_whole_table_and_says_where_help_went() -> None:
    text = help_text()
    for code, meaning in EXIT_CODES.items():
        assert f"\n  {code:>3}  {meaning}" in text
    for word in ("-q", "-v", "DEVTEST_ROUTER_LOG_LEVEL", "completion bash"):
        assert word in text


# --------------------------------------------------------------------------
# -q and -v


def test_quiet_leaves_warnings_and_errors(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    flags = ["--registry", f"file:{registry}", "--once", "--ip", "10.0.0.5", "--port", "80"]
    environ = {"NAME": "feature/x", "SERVICE": "web", "INSTANCE": "c1"}
    loud = cli("register", *flags, environ=environ)
    assert loud.code == 0 and len(loud.lines) == 2, loud.err  # the slug note, the registration
    assert "registered /deployment/feature-x/service/web/instance/c1" in loud.lines[1]
    quiet = cli("register", "-q", *flags, environ=environ)
    assert (quiet.code, quiet.err) == (0, "")
    by_env = cli("register", *flags, environ={**environ, "DEVTEST_ROUTER_LOG_LEVEL": "warning"})
    assert (by_env.code, by_env.err) == (0, "")
    # a warning stays (render's problem lines), and so does an error and its exit code
    given = ["--domain", "dev.test"]  # no "the default domain" line, which is info
    assert cli("render", "-q", *given).lines == cli("render", *given).lines != []
    failed = cli("register", "-q", "--once", environ={"SERVICE": "web"})
    assert failed.code == 2 and failed.lines == [
        "devtest-router: NAME is not set: pass --name or set NAME (the branch name)"
    ]


def test_quiet_leaves_stdout_alone() -> None:
    assert cli("render", "-q").out == cli("render").out != ""


def test_verbose_says_each_setting_and_where_it_came_from(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("listen: ['8080']\nlog_format: plain\n", encoding="utf-8")
    environ = {"DEVTEST_ROUTER_DEFAULT_SERVICE": "api"}
    result = cli("check", "-v", "--domain", "dev.test", "--config", str(config), environ=environ)
    assert result.code == 0, result.err
    lines = result.lines
    properties = schema("config")["properties"]
    said = [line for line in lines if line.startswith("devtest-router: setting ")]
    assert len(said) == len(properties)  # every setting, once, in the schema's order
    assert [line.split()[2] for line in said] == list(properties)
    assert 'devtest-router: setting domain = "dev.test" from --domain' in lines
    assert (
        'devtest-router: setting default_service = "api" from environment variable '
        "DEVTEST_ROUTER_DEFAULT_SERVICE" in lines
    )
    assert f'devtest-router: setting listen = ["8080"] from config file {config}' in lines
    assert 'devtest-router: setting log_level = "debug" from -v' in lines
    assert "devtest-router: setting force = false from the default" in lines
    assert not any("setting" in line for line in cli("check", "--domain", "dev.test").lines)


def test_verbose_lines_are_debug_lines_in_json() -> None:
    result = cli("check", "-v", "--log-format", "json")
    records = [json.loads(line) for line in result.lines]
    domain = next(record for record in records if record.get("setting") == "domain")
    assert domain["level"] == "debug" and domain["source"] == "the default"
    # besides the debug lines, only the notice that the domain is the default (info)
    others = [record for record in records if record["level"] != "debug"]
    assert [(r["level"], r["message"].split(":")[0]) for r in others] == [
        ("info", "domain localhost")
    ], others


def test_the_log_level_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("log_level: debug\n", encoding="utf-8")
    lines = cli("check", "--config", str(config)).lines
    assert f'devtest-router: setting log_level = "debug" from config file {config}' in lines
    assert cli("check", "-q", "--config", str(config)).err == ""  # the flag beats the file


def test_q_and_v_together_are_a_usage_error() -> None:
    line = usage_error(cli("check", "-q", "-v"), "check")
    assert line == "argument -v/--verbose: not allowed with argument -q/--quiet"


@pytest.mark.parametrize("command", ["check", "snapshot", "wait"])
def test_a_bad_log_level_in_the_environment_is_one_line(command: str) -> None:
    result = cli(command, environ={"DEVTEST_ROUTER_LOG_LEVEL": "loud"})
    assert result.code == 2
    assert result.lines == [
        "devtest-router: environment variable DEVTEST_ROUTER_LOG_LEVEL = 'loud' is not a log "
        "level: use one of debug, info, warning, error"
    ]


def test_register_verbose_names_its_settings_and_the_endpoint_it_asks(tmp_path: Path) -> None:
    environ = {
        "NAME": "x",
        "SERVICE": "web",
        "PORT": "8080",
        "DEVTEST_ROUTER_IMDS_URL": "http://127.0.0.1:9",  # the discard port: refused at once
    }
    result = cli(
        "register", "-v", "--once", "--registry", f"file:{tmp_path / 'r.json'}", environ=environ
    )
    assert result.code == 6, result.err
    assert "devtest-router: setting PORT = 8080 from PORT" in result.lines
    assert "devtest-router: setting DEVTEST_ROUTER_TTL not set: 30, the default" in result.lines
    assert result.lines[-2] == (
        "devtest-router: asking EC2 instance metadata at http://127.0.0.1:9 for the address"
    )


@pytest.mark.parametrize(
    ("layer", "source"),
    [
        ("flag", "--domain"),
        ("environment", "environment variable DEVTEST_ROUTER_DOMAIN"),
        ("file", "config file router.yaml"),
    ],
)
def test_sources_name_the_layer_resolve_takes(layer: str, source: str) -> None:
    """The source resolve records for -v is the layer it takes: a good value there is recorded
    with that source, and a bad one makes resolve name the same source in its error."""
    bad = "no spaces allowed"
    layers: dict[str, Any] = {"flag": "flag.test", "environment": "env.test", "file": "file.test"}
    layers[layer] = bad
    order = ["flag", "environment", "file"]
    for above in order[: order.index(layer)]:
        layers[above] = None  # the layers above the winning one are not set
    flags = {"domain": layers["flag"]}
    environ = (
        {} if layers["environment"] is None else {"DEVTEST_ROUTER_DOMAIN": layers["environment"]}
    )
    file_data = {"domain": layers["file"]}
    with pytest.raises(UsageError, match=f"from {re.escape(source)} "):
        resolve(schema("config"), flags, environ, file_data, "router.yaml")
    good = {key: "ok.test" if value == bad else value for key, value in layers.items()}
    config = resolve(
        schema("config"),
        {"domain": good["flag"]},
        {} if good["environment"] is None else {"DEVTEST_ROUTER_DOMAIN": good["environment"]},
        {"domain": good["file"]},
        "router.yaml",
    )
    assert (config.domain, dict(config.sources)["domain"]) == ("ok.test", source)


# --------------------------------------------------------------------------
# shell completion


def completion(shell: str) -> str:
    result = cli("completion", shell)
    assert result.code == 0 and result.err == ""
    return result.out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_script_names_every_command_and_flag(shell: str) -> None:
    script = completion(shell)
    parser = build_parser()
    for name, sub in commands(parser).items():
        assert name in script
        for action in sub._actions:
            for option in action.option_strings:
                assert option in script, (name, option)
    if shell == "zsh":
        assert script.startswith("#compdef devtest-router\n")


def test_an_unknown_shell_is_a_usage_error() -> None:
    line = usage_error(cli("completion", "fish"), "completion")
    assert line.startswith("argument shell: invalid choice: 'fish'")


BASH = shutil.which("bash")


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_bash_reads_the_script_and_completes_commands_flags_and_files(tmp_path: Path) -> None:
    script = tmp_path / "devtest-router.bash"
    script.write_text(completion("bash"), encoding="utf-8")
    assert BASH is not None
    checked = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    (tmp_path / "snap.json").write_text("{}", encoding="utf-8")

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        program = (
            f"source {script}\n"
            f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
            f"COMP_LINE='{line}'; COMP_POINT={len(line)}\n"
            "_shtab_devtest_router\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        done = subprocess.run(
            [BASH, "--norc", "--noprofile", "-c", program],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("devtest-router", "ap") == ["apply"]
    assert complete("devtest-router", "apply", "--dr") == ["--dry-run"]
    assert complete("devtest-router", "register", "--na") == ["--name"]
    assert complete("devtest-router", "check", "sn") == ["snap.json"]  # SNAPSHOT: a file


def test_zsh_reads_the_script(tmp_path: Path) -> None:
    script = tmp_path / "_devtest-router"
    script.write_text(completion("zsh"), encoding="utf-8")
    zsh = shutil.which("zsh")
    assert zsh is not None, "no zsh: `make deps` (scripts/install-deps) installs it"
    checked = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
