"""`register` and `deregister`: a service container's registration, replacing the curl snippet.

The original registration PUT /deployment/$NAME/service/$SERVICE/{ip,port} and
/deployment/$NAME/created into etcd once, with no TTL, and DELETEd them on a clean shutdown: a
killed container left its route behind, and a container stopping during a redeploy deleted its
successor's keys. `register` writes one *instance* of the service, each container under its
own id: /deployment/<branch>/service/<service>/instance/<id>/{ip,port} (and created), under the
slugs the generator uses for hostnames, with a TTL. It keeps them alive (without waking the
watcher) while the service runs, so a killed container's instance goes away within the TTL, and
it owns what it wrote: it refreshes and deletes its keys only while they are still its own.

Three modes: a wrapper (`register -- CMD ARGS`: start CMD, register once its port answers,
deregister when it exits), a sidecar loop (no CMD: register until signalled) and `--once`.

The pure parts (settings.py; the instance id and the ECS metadata decision in discovery.py)
are plain functions over plain values; the IO is kept apart: HTTP to the metadata endpoints
(discovery.py), signals and the child process (process.py), the registration kept alive
(session.py). This module holds the two commands: their options and their run functions.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping
from typing import Any

from generator.cli.exit_codes import ADDRESS, CHANGES, OK, REGISTRY, USAGE, summary
from generator.core.errors import UsageError
from generator.core.keys import created_key, instance_key, service_key
from generator.register.settings import (
    DEFAULT_DRAIN,
    DEFAULT_TTL,
    origins,
    parse_ip,
    parse_port,
    resolve,
    setting,
    slug_note,
)
from generator.registry.base import Entry, Removal
from generator.registry.open import add_registry_arguments, registry_from_args
from generator.streams import Streams


def _run_register(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    # imported on use: the parser (every command) imports this module
    from generator.register.discovery import discover, discover_instance
    from generator.register.session import Session, now, sidecar, wrap

    settings = resolve(args, environ)
    for line in origins(settings, args, environ):
        streams.say(line, "debug")
    if settings.once and settings.command:
        raise UsageError("--once writes the keys and exits: it takes no command after --")
    note = slug_note(settings)
    if note:
        streams.say(note)
    address = discover(settings, environ, streams.say)
    found = discover_instance(settings, environ, streams)
    assert found is not None  # a random id when nothing else applies
    instance, instance_from = found
    registry = registry_from_args(args, environ)
    entry = Entry(settings.deployment, settings.service, address.ip, address.port, now(), instance)
    how = f"address from {address.how}, instance id from {instance_from}"
    session = Session(registry, entry, settings.ttl, streams, how)
    try:
        if settings.once:
            session.register(how, refreshed=False)
            return 0
        if settings.command:
            return wrap(session, settings, address, streams)
        return sidecar(session, streams)
    finally:
        registry.close()


def _run_deregister(args: argparse.Namespace, streams: Streams, environ: Mapping[str, str]) -> int:
    from generator.register.discovery import discover_instance
    from generator.register.session import now

    settings = resolve(args, environ, need_address=False)
    for line in origins(settings, args, environ, need_address=False):
        streams.say(line, "debug")
    force = bool(getattr(args, "force_removal", False))
    ip: str | None = None
    port: int | None = None
    text, source = setting(args, environ, "ip", "IP")
    if text is not None:
        ip = parse_ip(text, source)
    text, source = setting(args, environ, "port", "PORT")
    if text is not None:
        port = parse_port(text, "PORT", source)
    service = service_key(settings.deployment, settings.service)
    if not force and (ip is None or port is None):
        raise UsageError(
            f"deregister removes an instance of {service} only while it holds the address it "
            "registered: pass --ip and --port (or set IP and PORT) as registered, or --force to "
            "remove whatever is there"
        )
    note = slug_note(settings, "deregistering")
    if note:
        streams.say(note)
    instance, instance_from = settings.instance, settings.instance_source
    if not force:  # the instance `register` in this container would have used
        found = discover_instance(settings, environ, streams, random=False)
        if found is None:
            raise UsageError(
                f"no instance id for {service}: the hostname {socket.gethostname()!r} is not "
                "one; pass --instance or set INSTANCE"
            )
        instance, instance_from = found
    entry = Entry(settings.deployment, settings.service, ip or "", port or 0, now(), instance)
    registry = registry_from_args(args, environ)
    try:
        removal = registry.deregister(entry, force=force)
    finally:
        registry.close()
    return _said(removal, entry, force, instance_from, registry.description, streams)


def _said(
    removal: Removal, entry: Entry, force: bool, source: str, where: str, streams: Streams
) -> int:
    """The deregister command's one line about what it did, and its exit status."""
    what = entry.key if entry.instance is None else f"{entry.key} (instance id from {source})"
    if force and entry.instance is None:
        what = f"{entry.key} (the service: its own ip/port keys and every instance)"
    if removal.other is not None:
        streams.say(
            f"left {what} as it is: it holds {removal.other}, not {entry.address} (a newer "
            "registration's); --force removes it anyway"
        )
        return 1
    if not removal.deleted:
        streams.say(f"nothing to deregister: {what} holds no keys in {where}")
        return 0
    streams.say(f"deregistered {what} from {where}")
    return 0


# --------------------------------------------------------------------------
# the command line

_EPILOG = """\
environment (a flag beats its variable):
  NAME, SERVICE, PORT, IP       as the original registration snippet's Docker variables
  INSTANCE                      --instance
  REGISTRY_URL                  the registry (http://HOST:PORT is etcd's v2 API, as before)
  DEVTEST_ROUTER_TTL            --ttl
  DEVTEST_ROUTER_CHECK_PORT     --check-port
  DEVTEST_ROUTER_DRAIN          --drain
  ECS_CONTAINER_METADATA_URI_V4 set by ECS: the address (and PORT) and the instance id come
                                from task metadata
  DEVTEST_ROUTER_IMDS_URL       EC2 instance metadata (default: http://169.254.169.254)

keys: /deployment/<branch>/service/<service>/instance/<id>/{ip,port} and
/deployment/<branch>/created. Each container is one instance of its service; the watcher
routes to all of a service's instances.

instance id, first that applies: --instance/INSTANCE (1-128 of A-Z a-z 0-9 . _ -, starting
with a letter or digit); the ECS task id (the end of the TaskARN that
$ECS_CONTAINER_METADATA_URI_V4/task gives; if that cannot be read, said in one line, the
hostname instead); the hostname (in Docker and compose, the container id); a random id. Two
containers that register one instance id replace each other: the newest wins, and the older
one stops refreshing it (said once).

address discovery, first that applies: --ip/IP; ECS task metadata v4 (awsvpc: the task's
address and the container port; bridge: the host's address and the HostPort mapped to PORT;
it also gives PORT when unset); EC2 instance metadata (IMDSv2 local-ipv4).

A registration only refreshes and deletes keys that are still its own (etcd v2 and files:
that hold its address; etcd v3: that are on its lease); a newer registration's are left
alone. With -- CMD, a registry that does not answer is retried (said once) while CMD keeps
serving, and register exits with CMD's status (128+S when signal S killed it; 126/127: it
cannot run CMD).

""" + summary(
    (OK, USAGE, REGISTRY, ADDRESS),
    {OK: "registered, or stopped and deregistered"},
    "with -- CMD: CMD's status",
)

_DEREGISTER_EPILOG = """\
environment (a flag beats its variable): NAME, SERVICE, INSTANCE, IP, PORT, REGISTRY_URL, as for
register.

Without --force, the instance (--instance/INSTANCE, else found as register finds it: the ECS
task id, else the hostname) is removed only while it holds the address IP:PORT, as
registered; if a newer registration holds it, it is left. With --force, whatever is there is
removed: the instance given with --instance/INSTANCE, or without one the whole service (its
own ip/port keys and every instance). /deployment/<branch>/created goes once no service of
the branch is left.

""" + summary(
    (OK, CHANGES, USAGE, REGISTRY),
    {CHANGES: "left as it is (a newer registration's address)"},
)


# In the commands' descriptions: the keys of an instance, as the layout spells them.
_INSTANCE_KEYS = instance_key("<branch>", "<service>", "<id>") + "/{ip,port}"


def _identity(parser: argparse.ArgumentParser, address: bool) -> None:
    group = parser.add_argument_group("registration")
    group.add_argument("--name", metavar="BRANCH", help="the branch (env NAME); slugged")
    group.add_argument(
        "--service", metavar="NAME", help="the service, e.g. web (env SERVICE); slugged"
    )
    if not address:
        group.add_argument(
            "--instance",
            metavar="ID",
            help="the instance to remove (env INSTANCE; default: as register finds it, or "
            "with --force the whole service)",
        )
        group.add_argument("--ip", metavar="ADDRESS", help="the address it registered (env IP)")
        group.add_argument("--port", metavar="PORT", help="the port it registered (env PORT)")
        group.add_argument(
            "--force",
            action="store_true",
            dest="force_removal",  # not the `force` setting of apply and watch
            help="remove whatever is there, without comparing the address",
        )
        group.add_argument("--ttl", help=argparse.SUPPRESS)  # accepted, so one setup serves both
        return
    group.add_argument(
        "--instance",
        metavar="ID",
        help="this container's instance id (env INSTANCE; default: the ECS task id, else the "
        "hostname, else a random id)",
    )
    group.add_argument(
        "--port",
        metavar="PORT",
        help="the port the service listens on (env PORT; under ECS, the task metadata gives "
        "it when unset)",
    )
    group.add_argument(
        "--ip", metavar="ADDRESS", help="the address to register (env IP; default: discovered)"
    )
    group.add_argument(
        "--ttl",
        metavar="SECONDS",
        help=f"the keys expire this long after the last refresh; 0: never (env "
        f"DEVTEST_ROUTER_TTL; default: {DEFAULT_TTL})",
    )


def add_commands(commands: Any) -> None:
    """Add `register` and `deregister` to the CLI's subparsers."""
    register = commands.add_parser(
        "register",
        help="register a service container (replaces the curl snippet); -- CMD wraps CMD",
        description=f"Write {_INSTANCE_KEYS} and {created_key('<branch>')} with a TTL and keep "
        "them alive; delete them on SIGTERM/SIGINT. With -- CMD ARGS: start CMD, register once "
        "its port answers on 127.0.0.1, on SIGTERM/SIGINT deregister first, pass "
        "SIGTERM/SIGINT/SIGHUP on, deregister when it exits and exit with its status. Without "
        "CMD: register and keep alive until signalled. With --once: write once.",
        usage="%(prog)s [options] [-- CMD [ARGS ...]]",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _identity(register, address=True)
    group = register.add_argument_group("mode")
    group.add_argument(
        "--once",
        action="store_true",
        help="write the keys once (with the TTL: --ttl 0 keeps them, like the snippet) and exit",
    )
    group.add_argument(
        "--check-port",
        metavar="PORT",
        help="with CMD: register once 127.0.0.1:PORT accepts connections (env "
        "DEVTEST_ROUTER_CHECK_PORT; default: PORT)",
    )
    group.add_argument(
        "--drain",
        metavar="SECONDS",
        help="with CMD: on SIGTERM/SIGINT, deregister, then wait this long before passing the "
        "signal on, so the frontend stops routing here while CMD still serves (env "
        f"DEVTEST_ROUTER_DRAIN; default: {DEFAULT_DRAIN:g}; a second signal goes on at once)",
    )
    register.add_argument(
        "command", nargs="*", metavar="-- CMD ARGS", help="run CMD and register while it runs"
    )
    add_registry_arguments(register)
    register.set_defaults(run=_run_register)

    deregister = commands.add_parser(
        "deregister",
        help="delete an instance's keys if it still holds IP:PORT, or with --force a service's "
        "(the branch's too when no service is left)",
        description=f"Delete {_INSTANCE_KEYS} while they hold IP:PORT, or with --force "
        "whatever is there (without --instance: the whole service), and the branch's keys "
        "when no other service is left. Takes the same settings as register.",
        usage="%(prog)s [options]",
        epilog=_DEREGISTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _identity(deregister, address=False)
    add_registry_arguments(deregister)
    deregister.set_defaults(run=_run_deregister)
