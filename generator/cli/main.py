"""devtest-router's command line: read the snapshot and settings, call the pipeline, report."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

import jinja2
import yaml

from generator import __version__
from generator.cli.probe import wait_until_routed
from generator.core.config import ENV_PREFIX, Config, resolve
from generator.core.errors import Error, UsageError
from generator.core.model import RoutingTable
from generator.core.names import hostname, label
from generator.core.pipeline import Plan, Rendered, build
from generator.core.render import environment
from generator.core.snapshot import loads, yaml_problem
from generator.memory import keep_large_blocks_apart, release_free_memory
from generator.nginx.apply import apply, checked_text, plan
from generator.register import command as register
from generator.registry.base import present
from generator.registry.open import DEFAULT_REGISTRY, add_registry_arguments, registry_from_args
from generator.resources import data_dir, schema
from generator.site import pages as site
from generator.site.writer import SitePlan, SiteWriter
from generator.streams import LOG_FORMATS, Streams
from generator.watch.engine import Engine
from generator.watch.observe import Outcome, problem_fields
from generator.watch.watcher import Timing, Watcher, stop_on_signals

EXIT_CODES = {
    0: "applied, or nothing to do",
    1: "apply --dry-run: changes found; wait: the route did not answer in time",
    2: "usage or configuration error",
    3: "internal error: a bug in devtest-router (please report it)",
    4: "the registry (etcd, or the registry file) cannot be reached or read",
    5: "the config was applied (or was up to date), but the site's pages could not be "
    "written into site_dir",
    123: "unusable snapshot, or a check, nginx test, reload or safety threshold refused: "
    "nothing was changed",
    130: "interrupted",
}

_EXIT_TABLE = "exit codes:\n" + "\n".join(
    f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()
)
_EPILOG = (
    "The routing and applying flags can also be set as environment variables "
    "DEVTEST_ROUTER_<FLAG> (e.g. DEVTEST_ROUTER_DOMAIN) or in the --config file; a flag beats "
    "the environment, which beats the file, which beats the default. The registry comes from "
    "--registry, else REGISTRY_URL.\n\n" + _EXIT_TABLE
)


def _parser() -> argparse.ArgumentParser:
    snapshot = argparse.ArgumentParser(add_help=False)
    snapshot.add_argument(
        "snapshot",
        nargs="?",
        default="-",
        help="registry snapshot, JSON or YAML, as etcdwatch writes it "
        "(default: - for standard input)",
    )

    settings = argparse.ArgumentParser(add_help=False)
    group = settings.add_argument_group("routing")
    group.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings file (schema/config.schema.json lists every setting)",
    )
    group.add_argument(
        "--domain",
        help="routes are <branch>-<service>.DOMAIN and <branch>.DOMAIN (default: localhost)",
    )
    group.add_argument(
        "--default-service",
        metavar="NAME",
        help="the service <branch>.DOMAIN goes to (default: web)",
    )
    group.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="PORT, IP:PORT or [IPV6]:PORT to listen on; repeatable (default: 80)",
    )
    group.add_argument(
        "--tls-certificate",
        metavar="FILE",
        help="certificate (PEM, with its chain) for *.DOMAIN and DOMAIN; with "
        "--tls-certificate-key, serves HTTPS and redirects plain HTTP to it (docs/tls.md)",
    )
    group.add_argument(
        "--tls-certificate-key", metavar="FILE", help="the private key of --tls-certificate"
    )
    group.add_argument(
        "--tls-listen",
        action="append",
        metavar="ADDRESS",
        help="PORT, IP:PORT or [IPV6]:PORT for HTTPS when TLS is on; repeatable (default: 443)",
    )
    group.add_argument(
        "--template-dir",
        metavar="DIR",
        help="templates here override the bundled ones of the same name",
    )
    group.add_argument(
        "--site-dir",
        metavar="DIR",
        help="the folder apply writes the index of deployments and the 404 pages into, "
        "which nginx serves "
        "(default: /var/lib/devtest-router/site)",
    )
    group.add_argument(
        "--allow-loopback",
        action="store_const",
        const=True,
        help="accept loopback upstreams (local use and tests)",
    )

    applying = argparse.ArgumentParser(add_help=False)
    group = applying.add_argument_group("applying")
    group.add_argument(
        "--output",
        metavar="FILE",
        help="the config file to write (default: /etc/nginx/conf.d/devtest-router.conf)",
    )
    group.add_argument(
        "--nginx",
        metavar="COMMAND",
        help="nginx binary that tests the staged file (default: nginx)",
    )
    group.add_argument(
        "--test-command",
        metavar="COMMAND",
        help="tests the installed config (default: nginx -t -q)",
    )
    group.add_argument(
        "--reload-command", metavar="COMMAND", help="reloads nginx (default: nginx -s reload)"
    )
    group.add_argument(
        "--dry-run",
        action="store_const",
        const=True,
        help="run every check, print the diff and a summary, change nothing",
    )
    group.add_argument(
        "--force",
        action="store_const",
        const=True,
        help="apply even if more than max_removed_fraction of the routes would go",
    )

    parser = argparse.ArgumentParser(
        prog="devtest-router",
        description="Route <branch>-<service>.<domain> to the containers of per-branch "
        "deployments registered in etcd, through a checked nginx config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        parents: list[argparse.ArgumentParser],
        summary: str,
        run: Callable[[argparse.Namespace, Streams, Mapping[str, str]], int],
        epilog: str = _EPILOG,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=parents,
            help=summary,
            description=summary,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run)
        return sub

    command(
        "render",
        [snapshot, settings],
        "print the nginx config for a snapshot (checked by crossplane, not by nginx)",
        _render,
    )
    check = command(
        "check",
        [snapshot, settings],
        "print the routing table and the problems found in a snapshot",
        _check,
    )
    check.add_argument(
        "--strict", action="store_true", help="exit 123 when the snapshot has any problem"
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    command(
        "apply",
        [snapshot, settings, applying],
        "check, test, install and reload the config (or show the diff with --dry-run)",
        _apply,
    )

    watch = command(
        "watch",
        [settings, applying],
        "read the registry, apply, and apply again after every settled change (replaces etcdwatch)",
        _watch,
    )
    add_registry_arguments(watch, default=DEFAULT_REGISTRY)
    group = watch.add_argument_group("watching")
    group.add_argument(
        "--quiet-period",
        type=float,
        metavar="SECONDS",
        help="apply once the registry has been quiet this long (default: 0.05)",
    )
    group.add_argument(
        "--max-wait",
        type=float,
        metavar="SECONDS",
        help="apply at the latest this long after the first change of a burst (default: 2)",
    )
    group.add_argument(
        "--removal-grace",
        type=float,
        metavar="SECONDS",
        help="after the registry was unreachable, hold removals back this long once it is "
        "read again; 0: off (default: 30, the default registration TTL)",
    )
    group.add_argument(
        "--removal-window",
        type=float,
        metavar="SECONDS",
        help="the routes removed within this long count together against "
        "max_removed_fraction of the most routes in place in it; 0: each apply alone "
        "(default: 60)",
    )
    group.add_argument(
        "--allow-empty",
        action="store_const",
        const=True,
        help="take an absent /deployment prefix for no services (a fresh registry before "
        "the first register); without it, it is a registry error: wrong API version or registry?",
    )
    group.add_argument(
        "--metrics-listen",
        metavar="ADDRESS",
        help="serve /healthz and /metrics on PORT (127.0.0.1), IP:PORT or [IPV6]:PORT "
        "(default: off); see docs/observability.md",
    )

    dump = command(
        "snapshot",
        [],
        "print the registry as etcdwatch-shaped JSON",
        _snapshot,
        "The registry comes from --registry, else REGISTRY_URL, else the default file.\n\n"
        + _EXIT_TABLE,
    )
    add_registry_arguments(dump, default=DEFAULT_REGISTRY)
    dump.add_argument(
        "--allow-empty",
        action="store_true",
        help="print an absent /deployment prefix as no services instead of failing "
        "(env DEVTEST_ROUTER_ALLOW_EMPTY)",
    )

    wait = command(
        "wait",
        [],
        "block until an instance answers for <NAME>-<SERVICE>.<domain> through the frontend",
        _wait,
        "The hostname is made as the generator makes it from what `register` writes. The route "
        "is up when an instance of its service answers, with any status but 503 (a service's "
        "own 502 or 504 counts). Not up yet: the frontend's own 404 page (not routed yet), a "
        "502 or 504 that nginx made because no instance accepted the connection or answered "
        "in time (header X-Devtest-Router: no-instance, or nginx's own error page), and a "
        "503.\n\n" + _EXIT_TABLE,
    )
    group = wait.add_argument_group("waiting")
    group.add_argument("--name", help="branch name (default: $NAME)")
    group.add_argument(
        "--service",
        help="service name; omit for the default entry point <NAME>.<domain> (default: $SERVICE)",
    )
    group.add_argument(
        "--domain", help="the frontend's domain (default: $DEVTEST_ROUTER_DOMAIN, else localhost)"
    )
    group.add_argument(
        "--frontend",
        metavar="URL",
        help="where the frontend answers, e.g. http://dev.example.com (default: "
        "$DEVTEST_ROUTER_FRONTEND, else http://127.0.0.1)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long (default: 300)",
    )
    register.add_commands(commands)
    for sub in commands.choices.values():  # every command's log lines, register's included
        sub.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            help="log lines on stderr: plain text, or one JSON object per line (default: plain)",
        )
    return parser


def _settings(args: argparse.Namespace, environ: Mapping[str, str], streams: Streams) -> Config:
    config_name = args.config or environ.get(ENV_PREFIX + "CONFIG")
    file_data = None
    if config_name:
        try:
            file_data = yaml.load(Path(config_name).read_text(encoding="utf-8"), _ConfigLoader)
        except OSError as error:
            raise UsageError(f"config file {config_name}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise UsageError(
                f"config file {config_name}: not UTF-8 text (byte {error.start + 1} is not); "
                "save it as UTF-8"
            ) from None
        except yaml.YAMLError as error:
            raise UsageError(
                f"config file {config_name}: not valid YAML ({yaml_problem(error)})"
            ) from None
    properties = schema("config")["properties"]
    flags = {key: value for key, value in vars(args).items() if key in properties}
    config = resolve(schema("config"), flags, environ, file_data, config_name)
    streams.log_format = config.log_format  # the config file may set it too
    return config


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, but an integer of more digits than Python converts (4,300) stays the
    text it was, which the settings then refuse as not an integer, naming the setting."""


def _config_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    if isinstance(text, str) and len(text) > 4300:
        return text
    return loader.construct_yaml_int(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _config_int)


def _template_folders(config: Config) -> list[Path]:
    """The bundled templates, overridden by those in config.template_dir."""
    folders = [data_dir("templates")]
    if config.template_dir:
        if not Path(config.template_dir).is_dir():
            raise UsageError(f"template_dir {config.template_dir}: no such folder")
        folders.insert(0, Path(config.template_dir))
    return folders


def templates(config: Config) -> jinja2.Environment:
    """The nginx templates (only Tokens and ints printed)."""
    return environment(_template_folders(config))


def site_writer(config: Config) -> SiteWriter:
    """Writes the site's pages (templates/site/, HTML-escaped) into config.site_dir."""
    return SiteWriter(config, site.environment(_template_folders(config)))


def _build(args: argparse.Namespace, config: Config, streams: Streams) -> Rendered:
    if args.snapshot == "-":
        text, source = streams.stdin.read(), "standard input"
    else:
        try:
            text = Path(args.snapshot).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise UsageError(f"snapshot {args.snapshot}: {reason}") from None
        source = args.snapshot
    return build(loads(text, source), config, schema("snapshot"), templates(config))


def _report_problems(rendered: Rendered, streams: Streams) -> None:
    for problem in rendered.table.problems:
        streams.say(
            f"problem: {problem}",
            "warning",
            snapshot=rendered.snapshot_id,
            **problem_fields(problem),
        )


def _render(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    config = _settings(args, environ, streams)
    rendered = _build(args, config, streams)
    _report_problems(rendered, streams)
    streams.stdout.write(checked_text(rendered, config))
    return 0


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
    if args.strict and table.problems:
        streams.say(f"{len(table.problems)} problems (--strict)", "error")
        return 123
    return 0


def format_table(table: RoutingTable) -> str:
    """The routing table and the problems as text for a person."""
    lines = [f"{len(table.routes)} routes under {table.domain}"]
    width = max((len(route.host) for route in table.routes), default=0)
    for route in table.routes:
        what = "default entry point" if route.kind.value == "default" else "service"
        lines.append(
            f"  {route.host:<{width}}  ->  {route.pool}  "
            f"({route.deployment_label} {route.service_label}, {what})"
        )
    lines.append(f"{len(table.problems)} problems")
    lines.extend(f"  {problem}" for problem in table.problems)
    return "\n".join(lines) + "\n"


def _apply(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    config = _settings(args, environ, streams)
    rendered = _build(args, config, streams)
    _report_problems(rendered, streams)
    writer = site_writer(config)
    if config.dry_run:
        result = plan(rendered, config)
        pages = writer.plan(rendered.table)
        streams.stdout.write(result.diff(config.output))
        if result.changes:
            streams.say(
                f"would change {config.output}: {result.summary()}; "
                f"{len(rendered.table.routes)} routes, "
                f"{len(rendered.table.problems)} problems; {_site_summary(pages, True)}",
                **_facts(rendered, "changed"),
            )
            return 1
        streams.say(
            f"{config.output} is up to date ({len(rendered.table.routes)} routes); "
            f"{_site_summary(pages, True)}",
            **_facts(rendered, "unchanged"),
        )
        return 0
    written: list[SitePlan] = []
    result = apply(
        rendered,
        config,
        after=lambda: written.append(writer.apply(rendered.table, rendered.deployments)),
    )
    streams.say(
        _describe(result, rendered, config, written[0]),
        **_facts(rendered, "changed" if result.changes else "unchanged"),
    )
    return 0


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
            f"would write {len(pages.written)} site files and remove {len(pages.removed)} "
            "(nothing written: dry run)"
        )
    return pages.summary()


def _describe(result: Plan, rendered: Rendered, config: Config, pages: SitePlan) -> str:
    routes = f"{len(rendered.table.routes)} routes, snapshot {rendered.snapshot_id}"
    if result.changes:
        return (
            f"applied {config.output}: {result.summary()}; {routes}; nginx reloaded; "
            f"{_site_summary(pages)}"
        )
    return f"nothing to do: {config.output} is up to date ({routes}); {_site_summary(pages)}"


def _watch(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    config = _settings(args, environ, streams)
    keep_large_blocks_apart()  # a long-running process: see memory.keep_large_blocks_apart
    registry = registry_from_args(args, environ)
    engine = Engine(config, schema("snapshot"), templates(config))
    writer = site_writer(config)  # kept: it remembers the pages it wrote

    def apply_snapshot(snapshot: Mapping[str, Any]) -> Outcome:
        rendered = engine.build(snapshot)
        if config.dry_run:
            result = engine.plan(rendered)
            streams.stdout.write(result.diff(config.output))
            streams.stdout.flush()
            pages = _site_summary(writer.plan(rendered.table), True)
            return Outcome(rendered, f"dry run: {result.summary()}; {pages}", result.changes, False)
        written: list[SitePlan] = []
        result = engine.apply(
            rendered,
            after=lambda: written.append(writer.apply(rendered.table, rendered.deployments)),
        )
        message = _describe(result, rendered, config, written[0])
        release_free_memory()  # what this apply's checks and writes needed is free again
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

            status = Status()
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
    return 0


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
    if wait_until_routed(frontend, host, args.timeout, streams.say):
        return 0
    streams.say(f"gave up on {host} after {args.timeout:g} s")
    return 1


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    streams = Streams(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)
    parser = _parser()
    try:
        with redirect_stdout(streams.stdout), redirect_stderr(streams.stderr):
            args = parser.parse_args(argv)
    except SystemExit as leaving:  # argparse has printed usage or help
        return int(leaving.code or 0)
    command: Callable[[argparse.Namespace, Streams, Mapping[str, str]], int] = args.run
    environ = os.environ if environ is None else environ
    # The flag, else the environment; a command that reads the config file may change it (a
    # bad value in the environment is reported by the settings, in plain text).
    streams.log_format = args.log_format or environ.get(ENV_PREFIX + "LOG_FORMAT", "plain")
    try:
        return command(args, streams, environ)
    except Error as error:
        streams.say(str(error), "error", exit_code=error.exit_code)
        return error.exit_code
    except KeyboardInterrupt:
        streams.say("interrupted", "error", exit_code=130)
        return 130
    except Exception as error:
        streams.say(
            f"internal error: {type(error).__name__}: {error}. This is a bug in "
            "devtest-router; please report it with the command and snapshot",
            "error",
            exit_code=3,
        )
        return 3


def run() -> None:
    raise SystemExit(main())
