"""devtest-router's command-line parser: the commands, their flags and their help, and `parse`,
which names the closest valid flag or command for a typo."""

from __future__ import annotations

import argparse
import difflib
import textwrap
from collections.abc import Sequence

from generator import __version__
from generator.cli.exit_codes import CHANGES, OK, REFUSED, REGISTRY, SITE, USAGE, epilog, summary
from generator.core.config import DEFAULT_CONFIG_FILE
from generator.register import command as register
from generator.registry.open import add_registry_arguments
from generator.streams import LOG_FORMATS

PROG = "devtest-router"
SHELLS = ("bash", "zsh")  # what `completion` writes a script for

_SETTINGS = textwrap.fill(
    "The routing and applying flags can also be set as environment variables "
    "DEVTEST_ROUTER_<FLAG> (e.g. DEVTEST_ROUTER_DOMAIN) or in the --config file; a flag beats "
    "the environment, which beats the file, which beats the default (docs/configuration.md). "
    "The registry comes from --registry, else REGISTRY_URL.",
    79,
)
_EPILOG = (
    _SETTINGS
    + "\n\n"
    + textwrap.fill(
        "Every command takes -q (only warnings and errors on stderr) and -v (debug lines too), "
        "or DEVTEST_ROUTER_LOG_LEVEL; `devtest-router completion bash` prints a completion "
        "script.",
        79,
    )
    + "\n\n"
    + epilog()
)


_APPLY_SOURCE = textwrap.fill(
    "apply reads the snapshot from SNAPSHOT, or from the registry itself with --registry URL "
    "(one process instead of `snapshot | apply`, the same result). Without either, it reads "
    "standard input when a pipe or a file is there, else the registry in REGISTRY_URL when it "
    "is set (a cron job or a unit with no input).",
    79,
)


def build_parser() -> argparse.ArgumentParser:
    """devtest-router's parser: every command with its flags (register's from
    generator/register); args.subcommand names the command to run."""
    snapshot = argparse.ArgumentParser(add_help=False)
    snapshot.add_argument(
        "snapshot",
        nargs="?",
        metavar="SNAPSHOT",
        help="registry snapshot, JSON or YAML, as etcdwatch writes it "
        "(default: - for standard input)",
    )

    settings = argparse.ArgumentParser(add_help=False)
    group = settings.add_argument_group("routing")
    group.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings file (schema/config.schema.json lists every setting; default: "
        f"$DEVTEST_ROUTER_CONFIG, else {DEFAULT_CONFIG_FILE} when it exists)",
    )
    group.add_argument(
        "--domain",
        help="routes are <branch>-<service>.DOMAIN and <branch>.DOMAIN (apply and watch need "
        "it; render, check and --dry-run default to localhost)",
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

    group = settings.add_argument_group("access control (docs/access-control.md)")
    group.add_argument(
        "--basic-auth-file",
        metavar="FILE",
        help="htpasswd file: every route, the index and the 404 pages ask for a user and "
        "password from it (deployments with /deployment/<branch>/public = true excepted)",
    )
    group.add_argument(
        "--basic-auth-realm",
        metavar="TEXT",
        help="the realm the password prompt names (default: devtest-router)",
    )
    group.add_argument(
        "--client-networks",
        action="append",
        metavar="CIDR",
        help="only clients in this network reach the routes, the index and the 404 pages "
        "(public deployments excepted); repeatable (default: every client)",
    )
    group.add_argument(
        "--access-satisfy",
        choices=("all", "any"),
        help="with both of the above: all (default) asks a client in --client-networks for a "
        "password too; any lets it in without one and asks every other client for one",
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
        prog=PROG,
        description="Route <branch>-<service>.<domain> to the containers of per-branch "
        "deployments registered in etcd, through a checked nginx config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # not "command": register has a positional of that name (its -- CMD ARGS)
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def command(
        name: str,
        parents: list[argparse.ArgumentParser],
        what: str,
        codes: str,
        text: str = _SETTINGS,
        usage: str = "%(prog)s [options]",
    ) -> argparse.ArgumentParser:
        """A command whose help is its flags, `text` and one line of exit codes (`codes`): the
        table of every code is in the top-level help only."""
        return commands.add_parser(
            name,
            parents=parents,
            help=what,
            description=what,
            usage=usage,
            epilog=f"{text}\n\n{codes}" if text else codes,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    with_snapshot = "%(prog)s [options] [SNAPSHOT]"
    command(
        "render",
        [snapshot, settings],
        "print the nginx config for a snapshot (checked by crossplane, not by nginx)",
        summary((OK, USAGE, REFUSED)),
        usage=with_snapshot,
    )
    check = command(
        "check",
        [snapshot, settings],
        "print the routing table and the problems found in a snapshot",
        summary((OK, USAGE, REFUSED), {REFUSED: "refused, or problems under --strict"}),
        usage=with_snapshot,
    )
    check.add_argument(
        "--strict", action="store_true", help=f"exit {REFUSED} when the snapshot has any problem"
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apply = command(
        "apply",
        [snapshot, settings, applying],
        "check, test, install and reload the config (or show the diff with --dry-run)",
        summary((OK, CHANGES, USAGE, REGISTRY, SITE, REFUSED), {CHANGES: "changes (--dry-run)"}),
        _SETTINGS + "\n\n" + _APPLY_SOURCE,
        usage="%(prog)s [options] [SNAPSHOT | --registry URL]",
    )
    add_registry_arguments(apply)
    apply.add_argument(
        "--allow-empty",
        action="store_const",
        const=True,
        help="with --registry: take an absent /deployment prefix for no services (a fresh "
        "registry before the first register); without it, a registry error",
    )

    watch = command(
        "watch",
        [settings, applying],
        "read the registry, apply, and apply again after each burst of changes",
        summary(
            (OK, USAGE),
            {OK: "stopped by SIGTERM/SIGINT", USAGE: "a bad setting at start"},
            "registry and apply failures are logged and retried, not an exit",
        ),
    )
    add_registry_arguments(watch)
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
        summary((OK, USAGE, REGISTRY)),
        "The registry comes from --registry, else REGISTRY_URL; there is no default.",
    )
    add_registry_arguments(dump)
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
        summary((OK, CHANGES, USAGE), {OK: "it answers", CHANGES: "gave up (--timeout)"}),
        textwrap.fill(
            "The hostname is made as the generator makes it from what `register` writes. The "
            "route is up when an instance of its service answers, with any status but 503 (a "
            "service's own 502 or 504 counts). Not up yet: the frontend's own 404 page (not "
            "routed yet), a 502 or 504 that nginx made because no instance accepted the "
            "connection or answered in time (header X-Devtest-Router: no-instance, or nginx's "
            "own error page), and a 503.",
            79,
        ),
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
    completion = command(
        "completion",
        [],
        "print a shell completion script for devtest-router (README: Shell completion)",
        summary((OK, USAGE)),
        'bash: add eval "$(devtest-router completion bash)" to ~/.bashrc\n'
        "zsh:  devtest-router completion zsh > DIR/_devtest-router, with DIR in your $fpath",
        usage="%(prog)s {bash,zsh}",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    for sub in commands.choices.values():  # every command's log lines, register's included
        group = sub.add_argument_group("log lines on stderr")
        group.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            metavar="FORMAT",
            help="plain (default), or json: one JSON object per line",
        )
        loudness = group.add_mutually_exclusive_group()
        loudness.add_argument(
            "-q",
            "--quiet",
            dest="log_level",
            action="store_const",
            const="warning",
            help="only warnings and errors",
        )
        loudness.add_argument(
            "-v",
            "--verbose",
            dest="log_level",
            action="store_const",
            const="debug",
            help="debug lines too: each setting and its source",
        )
    return parser


# ---------------------------------------------------------------------------------------------
# parsing, with a suggestion for a typo

_EXITING = ("-h", "--help", "--version")  # the program's own options: argparse answers them


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands by name, in the order `--help` lists them."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _closest(word: str, choices: Sequence[str]) -> str:
    """ "; did you mean X?" for the choice most like `word` (difflib), or nothing."""
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {found[0]}?" if found else ""


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings]


def _unknown_flag(flag: str, name: str, commands: dict[str, argparse.ArgumentParser]) -> str:
    """The error line for `flag`, which command `name` does not take."""
    others = [other for other, sub in commands.items() if other != name and flag in _flags(sub)]
    if others:
        takers = " and ".join([", ".join(others[:-1]), others[-1]] if others[:-1] else others)
        return f"{flag} is a flag of {takers}, not of {name}"
    return f"unknown flag {flag}{_closest(flag, _flags(commands[name]))}"


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)`, except that a mistyped command or flag is one line that names
    it and the closest valid one, after the usage of the command it was given to (the program's
    for a command); exit 2 through argparse's own `error`, as every usage error."""
    by_name = commands(parser)
    for word in argv:  # the program takes no option but _EXITING: the first word is the command
        if word in _EXITING or word == "--":
            break
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            owners = [name for name, sub in by_name.items() if option in _flags(sub)]
            after = f" (e.g. {PROG} {owners[0]} {option})" if owners else ""
            parser.error(f"unknown flag {option}: flags go after the command{after}")
        if word not in by_name:
            parser.error(f"unknown command {word!r}{_closest(word, list(by_name))}")
        break
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = by_name[args.subcommand]
        flags = [word.split("=", 1)[0] for word in extras if word.startswith("-") and word != "-"]
        if flags:
            sub.error(_unknown_flag(flags[0], args.subcommand, by_name))
        sub.error(f"unrecognized arguments: {' '.join(extras)}")
    return args
