"""devtest-router's command line: read the snapshot and settings, call the pipeline, report."""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from generator.cli.exit_codes import CHANGES, OK, REFUSED, code_of
from generator.cli.parser import build_parser, parse
from generator.cli.sources import setting_lines
from generator.core.config import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_CONFIG_VARIABLE,
    ENV_PREFIX,
    Config,
    resolve,
)
from generator.core.errors import Error, UsageError
from generator.core.model import RoutingTable
from generator.core.names import hostname, label
from generator.core.snapshot import loads, yaml_problem
from generator.core.words import counted
from generator.registry.base import present
from generator.registry.open import registry_from_args
from generator.resources import schema, template_loader
from generator.streams import LEVELS, Streams

if TYPE_CHECKING:  # Each imported where it is used, so a command pays only for its own imports.
    import jinja2
    import yaml

    from generator.core.pipeline import Plan, Rendered
    from generator.site.writer import SitePlan, SiteWriter
    from generator.watch.engine import Engine
    from generator.watch.observe import Outcome

Command = Callable[[argparse.Namespace, Streams, Mapping[str, str]], int]


def _settings(
    args: argparse.Namespace, environ: Mapping[str, str], streams: Streams, live: bool = False
) -> Config:
    """The settings of render, check, apply and watch (`live`: apply and watch, which refuse to
    guess the domain unless they only dry-run)."""
    config_name, file_name = _config_file(args, environ)
    file_data = None
    if config_name:
        import yaml

        try:
            file_data = yaml.load(Path(config_name).read_text(encoding="utf-8"), _config_loader())
        except OSError as error:
            raise UsageError(f"config file {file_name}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise UsageError(
                f"config file {file_name}: not UTF-8 text (byte {error.start + 1} is not); "
                "save it as UTF-8"
            ) from None
        except yaml.YAMLError as error:
            raise UsageError(
                f"config file {file_name}: not valid YAML ({yaml_problem(error)})"
            ) from None
    properties = schema("config")["properties"]
    flags = {key: value for key, value in vars(args).items() if key in properties}
    config = resolve(schema("config"), flags, environ, file_data, file_name, cwd=_cwd())
    streams.log_format = config.log_format  # the config file may set it too
    streams.log_level = config.log_level
    if streams.verbose:
        for line, key, source in setting_lines(config):
            streams.say(line, "debug", setting=key, source=source)
    if live and not config.dry_run and "domain" in config.defaulted:
        raise UsageError(
            f"no domain set: give --domain or {ENV_PREFIX}DOMAIN (or domain: in the config "
            f"file); apply and watch do not guess one (render, check and --dry-run use "
            f"{config.domain})"
        )
    return config


def _config_file(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(path, name for messages) of the config file to read: --config, else
    DEVTEST_ROUTER_CONFIG (either must exist), else the default location when something is
    there (DEVTEST_ROUTER_CONFIG_DEFAULT moves it; empty: none). A broken file there is an
    error, as any other config file's."""
    given = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if given:
        return given, given
    default = environ.get(DEFAULT_CONFIG_VARIABLE, DEFAULT_CONFIG_FILE)
    if default and os.path.lexists(default):  # a dangling symlink there is broken, not absent
        return default, f"{default} (the default config file)"
    return None, ""


def _cwd() -> str | None:
    """The current directory, which relative path settings are taken from; None when it was
    deleted (the settings then refuse a relative path, and take absolute ones)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _say_default_domain(config: Config, streams: Streams) -> None:
    """render, check and dry runs use the default domain, but say so (after their output, so
    that a failure before it stays one line): a frontend built from it would answer only under
    that domain."""
    if "domain" in config.defaulted:
        streams.say(
            f"domain {config.domain}: the default (no --domain, {ENV_PREFIX}DOMAIN or domain: in "
            "the config file)",
            domain=str(config.domain),
        )


@cache
def _config_loader() -> type[yaml.SafeLoader]:
    """YAML's safe loader, but an integer of more digits than Python converts (4,300) stays the
    text it was, which the settings then refuse as not an integer, naming the setting."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        pass

    ConfigLoader.add_constructor("tag:yaml.org,2002:int", _config_int)
    return ConfigLoader


def _config_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    if isinstance(text, str) and len(text) > 4300:
        return text
    return loader.construct_yaml_int(node)


def _template_overrides(config: Config) -> list[Path]:
    """The folder whose templates override the bundled ones: config.template_dir, if set."""
    if not config.template_dir:
        return []
    if not Path(config.template_dir).is_dir():
        raise UsageError(
            f"setting template_dir = {config.template_dir} is not valid: no such folder; it "
            "must be a folder of templates (a relative path is taken from the current directory)"
        )
    return [Path(config.template_dir)]


def templates(config: Config) -> jinja2.Environment:
    """The nginx templates (only Tokens and ints printed)."""
    from generator.core.render import environment

    return environment(template_loader(_template_overrides(config)))


def site_writer(config: Config) -> SiteWriter:
    """Writes the site's pages (templates/site/, HTML-escaped) into config.site_dir."""
    from generator.site import pages as site
    from generator.site.writer import SiteWriter

    return SiteWriter(config, site.environment(template_loader(_template_overrides(config))))


def _build(
    args: argparse.Namespace,
    config: Config,
    streams: Streams,
    environ: Mapping[str, str] | None = None,
) -> Rendered:
    """The snapshot built and rendered: from SNAPSHOT or standard input, or (apply, given
    `environ`) from the registry itself when _reads_registry says so."""
    from generator.watch.engine import build

    if environ is not None and _reads_registry(args, streams, environ):
        snapshot = _read_registry(args, environ, config.allow_empty)
        return build(snapshot, config, schema("snapshot"), templates(config))
    if args.snapshot in (None, "-"):
        if _is_terminal(streams.stdin):
            command = f"devtest-router {args.subcommand}"
            ways = [
                f"give a snapshot file ({command} SNAPSHOT)",
                f"pipe one in (devtest-router snapshot --registry URL | {command})",
            ]
            if environ is not None:  # apply
                ways.append(f"read the registry ({command} --registry URL)")
            raise UsageError(
                "standard input is a terminal, not a snapshot: "
                + ", ".join(ways[:-1])
                + f", or {ways[-1]}"
            )
        text, source = streams.stdin.read(), "standard input"
    else:
        try:
            text = Path(args.snapshot).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise UsageError(f"snapshot {args.snapshot}: {reason}") from None
        source = args.snapshot
    return build(loads(text, source), config, schema("snapshot"), templates(config))


def _reads_registry(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> bool:
    """apply: read the registry itself (as `snapshot` and `watch` do) rather than a snapshot?
    With --registry, yes (a SNAPSHOT beside it is a usage error). With neither, when
    REGISTRY_URL is set and no snapshot is piped or redirected into standard input: an
    existing `snapshot | apply` keeps reading its pipe."""
    if args.registry:
        if args.snapshot is not None:
            raise UsageError(
                f"apply: give a SNAPSHOT ({args.snapshot}) or --registry, not both; nothing was "
                "changed"
            )
        return True
    if args.snapshot is not None or not environ.get("REGISTRY_URL"):
        return False
    return not _is_piped(streams.stdin)


def _is_piped(stream: TextIO) -> bool:
    """Is `stream` a pipe, a socket or a regular file (something that holds a snapshot), rather
    than a terminal, /dev/null or nothing?"""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, ValueError, OSError):  # no descriptor: a stream handed in (tests)
        return True
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _read_registry(
    args: argparse.Namespace, environ: Mapping[str, str], allow_empty: bool
) -> dict[str, Any]:
    """The registry's snapshot, read as `snapshot` reads it (RegistryUnavailable: exit 4)."""
    registry = registry_from_args(args, environ)
    try:
        return present(registry.read(), registry.description, allow_empty).snapshot
    finally:
        registry.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no such method, or a closed stream
        return False


def _report_problems(rendered: Rendered, streams: Streams) -> None:
    from generator.watch.observe import problem_fields

    for problem in rendered.table.problems:
        streams.say(
            f"problem: {problem}",
            "warning",
            snapshot=rendered.snapshot_id,
            **problem_fields(problem),
        )


def _render(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    config = _settings(args, environ, streams)
    from generator.nginx.apply import checked_text

    rendered = _build(args, config, streams)
    _report_problems(rendered, streams)
    streams.stdout.write(checked_text(rendered, config))
    _say_default_domain(config, streams)
    return OK


def _check(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    config = _settings(args, environ, streams)
    rendered = _build(args, config, streams)
    table = rendered.table
    if args.json:
        document: dict[str, Any] = {
            "snapshot": rendered.snapshot_id,
            **table.as_json(),
            "problems": [problem.as_json() for problem in table.problems],
        }
        # ASCII escapes: a name with a lone surrogate (JSON "\ud800") still prints
        streams.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        streams.stdout.write(format_table(table))
    _say_default_domain(config, streams)
    if args.strict and table.problems:
        streams.say(f"{counted(len(table.problems), 'problem')} (--strict)", "error")
        return REFUSED
    return OK


def format_table(table: RoutingTable) -> str:
    """The routing table and the problems as text for a person."""
    lines = [f"{counted(len(table.routes), 'route')} under {table.domain}"]
    width = max((len(route.host) for route in table.routes), default=0)
    for route in table.routes:
        what = "default entry point" if route.kind.value == "default" else "service"
        lines.append(
            f"  {route.host:<{width}}  ->  {route.pool}  "
            f"({route.deployment_label} {route.service_label}, {what})"
        )
    lines.append(counted(len(table.problems), "problem"))
    lines.extend(f"  {problem}" for problem in table.problems)
    return "\n".join(lines) + "\n"


def _apply(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    config = _settings(args, environ, streams, live=True)
    rendered = _build(args, config, streams, environ)
    _report_problems(rendered, streams)
    result, pages = _apply_or_plan(rendered, config, site_writer(config), streams)
    if config.dry_run:
        if result.changes:
            streams.say(
                f"would change {config.output}: {result.summary()}; "
                f"{counted(len(rendered.table.routes), 'route')}, "
                f"{counted(len(rendered.table.problems), 'problem')}; "
                f"{_site_summary(pages, True)}",
                **_facts(rendered, "changed"),
            )
        else:
            streams.say(
                f"{config.output} is up to date "
                f"({counted(len(rendered.table.routes), 'route')}); "
                f"{_site_summary(pages, True)}",
                **_facts(rendered, "unchanged"),
            )
        _say_default_domain(config, streams)
        return CHANGES if result.changes else OK
    streams.say(
        _describe(result, rendered, config, pages),
        **_facts(rendered, "changed" if result.changes else "unchanged"),
    )
    return OK


def _apply_or_plan(
    rendered: Rendered,
    config: Config,
    writer: SiteWriter,
    streams: Streams,
    engine: Engine | None = None,
) -> tuple[Plan, SitePlan]:
    """apply and watch: the nginx config's plan and the site's.

    A dry run plans both as an apply would (the config's gate and safety threshold included),
    then prints the diff; nothing is written. Otherwise the config is installed and nginx
    reloaded (or the config was in place already), then the site is written, under the apply's
    lock; a site that cannot be written raises SiteError with the config applied. `engine`: the
    watcher's, which keeps its work between applies; without one, a cold apply.
    """
    from generator.nginx.apply import apply_then, plan

    if config.dry_run:
        result = engine.plan(rendered) if engine is not None else plan(rendered, config)
        pages = writer.plan(rendered.table)
        streams.stdout.write(result.diff(config.output))
        streams.stdout.flush()
        return result, pages

    def write_site() -> SitePlan:
        return writer.apply(rendered.table, rendered.deployments)

    if engine is not None:
        return engine.apply_then(rendered, write_site)
    return apply_then(rendered, config, write_site)


def _facts(rendered: Rendered, result: str) -> dict[str, object]:
    """The fields of an apply's JSON log line."""
    return {
        "snapshot": rendered.snapshot_id,
        "result": result,
        "routes": len(rendered.table.routes),
        "problems": len(rendered.table.problems),
    }


def _site_summary(pages: SitePlan, dry_run: bool = False) -> str:
    if not pages.changes:
        return "site up to date"
    if dry_run:
        return (
            f"would write {counted(len(pages.written), 'site file')} and remove "
            f"{len(pages.removed)} (nothing written: dry run)"
        )
    return pages.summary()


def _describe(result: Plan, rendered: Rendered, config: Config, pages: SitePlan) -> str:
    routes = f"{counted(len(rendered.table.routes), 'route')}, snapshot {rendered.snapshot_id}"
    if result.changes:
        return (
            f"applied {config.output}: {result.summary()}; {routes}; nginx reloaded; "
            f"{_site_summary(pages)}"
        )
    return f"nothing to do: {config.output} is up to date ({routes}); {_site_summary(pages)}"


def _watch(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    from generator.memory import keep_large_blocks_apart, release_free_memory
    from generator.watch.engine import Engine
    from generator.watch.observe import Outcome
    from generator.watch.watcher import Timing, Watcher, stop_on_signals

    config = _settings(args, environ, streams, live=True)
    keep_large_blocks_apart()  # a long-running process: see memory.keep_large_blocks_apart
    registry = registry_from_args(args, environ)
    _say_default_domain(config, streams)  # a dry run's: a real watch refused it
    engine = Engine(config, schema("snapshot"), templates(config))
    writer = site_writer(config)  # kept: it remembers the pages it wrote

    def apply_snapshot(snapshot: Mapping[str, Any]) -> Outcome:
        rendered = engine.build(snapshot)
        result, pages = _apply_or_plan(rendered, config, writer, streams, engine)
        if config.dry_run:
            message = f"dry run: {result.summary()}; {_site_summary(pages, True)}"
            return Outcome(rendered, message, result.changes, False)
        message = _describe(result, rendered, config, pages)
        release_free_memory()  # what this apply's check and writes needed is free again
        return Outcome(rendered, message, result.changes, result.changes)

    timing = Timing(
        config.quiet_period, config.max_wait, config.resync_interval, config.removal_grace
    )
    status = server = None
    try:
        if config.metrics_listen:
            from generator.watch.metrics import (  # on use: other commands never pay
                Server,
                Status,
                exposure,
            )

            status = Status(dry_run=config.dry_run)
            server = Server(config.metrics_listen, status)  # a port in use fails here, at once
            warning = exposure(config.metrics_listen[0])
            streams.say(
                f"serving /healthz and /metrics on http://{server.shown}"
                + (f"; {warning}" if warning else ""),
                "warning" if warning else "info",
                metrics_listen=server.shown,
            )
        watcher = Watcher(
            registry, apply_snapshot, streams.say, timing, status, allow_empty=config.allow_empty
        )
        stop_on_signals(watcher)
        return watcher.run()
    finally:
        if server is not None:
            server.close()
        registry.close()


_YES = frozenset({"1", "true", "yes", "on"})  # a boolean setting's true, as config.py takes it


def _snapshot(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    registry = registry_from_args(args, environ)
    # as the setting (watch): the flag, else DEVTEST_ROUTER_ALLOW_EMPTY (1, true, yes, on)
    allowed = environ.get(ENV_PREFIX + "ALLOW_EMPTY", "").strip().lower() in _YES
    allow_empty = args.allow_empty or allowed
    try:
        read = present(registry.read(), registry.description, allow_empty)
    finally:
        registry.close()
    streams.stdout.write(json.dumps(read.snapshot, indent=2, sort_keys=True) + "\n")
    return OK


def _wait(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    name = args.name or environ.get("NAME")
    if not name:
        raise UsageError("NAME is not set: pass --name or set NAME (the branch name)")
    service = args.service or environ.get("SERVICE")
    domain = args.domain or environ.get(ENV_PREFIX + "DOMAIN") or "localhost"
    frontend = args.frontend or environ.get(ENV_PREFIX + "FRONTEND") or "http://127.0.0.1"
    # A registration writes its keys under label(NAME) and label(SERVICE) (see register.py),
    # and the generator makes the hostname from those keys.
    try:
        host = hostname(label(name), label(service) if service else None, domain)
    except ValueError:
        raise UsageError(f"domain {domain!r} is not a DNS name like dev.example.com") from None
    if not (math.isfinite(args.timeout) and args.timeout >= 0):  # nan passes no comparison
        raise UsageError(
            f"--timeout {args.timeout}: not a number of seconds; give a finite number, 0 (one "
            "try) or more"
        )
    from generator.cli.probe import wait_until_routed

    if wait_until_routed(frontend, host, args.timeout, streams.say):
        return OK
    streams.say(f"gave up on {host} after {args.timeout:g} s")
    return CHANGES


def _completion(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    from generator.cli.completion import script  # on use: other commands never import shtab

    streams.stdout.write(script(build_parser(), args.shell))
    return OK


COMMANDS: Mapping[str, Command] = {
    "render": _render,
    "check": _check,
    "apply": _apply,
    "watch": _watch,
    "snapshot": _snapshot,
    "wait": _wait,
    "completion": _completion,
}


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    streams = Streams(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)
    parser = build_parser()
    try:
        with redirect_stdout(streams.stdout), redirect_stderr(streams.stderr):
            args = parse(parser, sys.argv[1:] if argv is None else argv)
    except SystemExit as leaving:  # argparse has printed usage or help
        return int(leaving.code or 0)
    # register and deregister: the function their parsers name (register.add_commands)
    command: Command = COMMANDS.get(args.subcommand) or args.run
    environ = os.environ if environ is None else environ
    # The flag, else the environment; a command that reads the config file may change it (a
    # bad value in the environment is reported by the settings, in plain text).
    streams.log_format = args.log_format or environ.get(ENV_PREFIX + "LOG_FORMAT", "plain")
    streams.log_level = args.log_level or environ.get(ENV_PREFIX + "LOG_LEVEL", "info")
    try:
        if streams.log_level not in LEVELS:  # the settings would say it too, but not every
            raise UsageError(  # command reads them
                f"environment variable {ENV_PREFIX}LOG_LEVEL = {streams.log_level!r} is not a "
                f"log level: use one of {', '.join(LEVELS)}"
            )
        return command(args, streams, environ)
    except Error as error:
        code = code_of(error)
        streams.say(str(error), "error", exit_code=code)
        return code
    except KeyboardInterrupt as error:
        code = code_of(error)
        streams.say("interrupted", "error", exit_code=code)
        return code
    except Exception as error:
        code = code_of(error)  # not one of ours: a bug
        streams.say(
            f"internal error: {type(error).__name__}: {error}. This is a bug in "
            "devtest-router; please report it with the command and snapshot",
            "error",
            exit_code=code,
        )
        return code


def run() -> None:
    raise SystemExit(main())
