"""`register`'s settings: flags, else environment variables, validated (pure)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from generator.core.errors import UsageError
from generator.core.names import label

DEFAULT_TTL = 30
# With CMD, seconds between deleting the instance's keys and passing SIGTERM on: the watcher
# applies the removal (its quiet period and an apply, well under a second) while CMD still
# serves, so no request is sent to a server that is going away. Platforms allow 10-30 s.
DEFAULT_DRAIN = 3.0
MAX_DRAIN = 600.0
MAX_TTL = 9_000_000_000  # seconds: etcd's own largest lease TTL
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Settings:
    branch: str  # NAME as given: the developer's branch name, before slugging
    service_given: str  # SERVICE as given, before slugging
    # The names it registers under (the key segments in /deployment/<deployment>/service/
    # <service>/), which are already labels: label(branch) and label(service_given).
    deployment: str
    service: str
    port: int | None  # PORT; None: from the ECS metadata
    ip: str | None  # IP; None: discovered
    ttl: int  # seconds; 0: no TTL and no keepalive
    check_port: int | None  # the port CMD must answer on before we register (None: port)
    once: bool
    command: tuple[str, ...]
    instance: str | None = None  # --instance or INSTANCE; None: discovered (see instance_id)
    instance_source: str = "INSTANCE"  # where `instance` came from, for log lines
    drain: float = DEFAULT_DRAIN  # with CMD: seconds between deregistering and passing SIGTERM on


def setting(
    args: argparse.Namespace, environ: Mapping[str, str], attribute: str, variable: str
) -> tuple[str | None, str]:
    """(value, where it came from) of a flag or its environment variable; empty means unset."""
    flag = getattr(args, attribute, None)
    if flag:
        return str(flag), "--" + attribute.replace("_", "-")
    value = environ.get(variable)
    if value:
        return value, variable
    return None, variable


def _shown(text: str) -> str:
    """A setting's text for an error line: quoted, and cut when long (a 5,000-digit PORT)."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_port(text: str, what: str, source: str) -> int:
    value = text.strip()
    # at most 5 digits: int() of a text past 4,300 digits raises (Python's own guard)
    if value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536:
        return int(value)
    raise UsageError(f"{what} {_shown(text)} is not a port number 1-65535 (from {source})")


def parse_drain(text: str, source: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = -1.0
    if 0 <= value <= MAX_DRAIN:  # nan fails both comparisons
        return value
    raise UsageError(
        f"drain {text!r} is not a number of seconds from 0 to {MAX_DRAIN} (from {source})"
    )


def parse_ttl(text: str, source: str) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise UsageError(
            f"TTL {_shown(text)} is not a whole number of seconds, 0 (no TTL) or more "
            f"(from {source})"
        )
    if int(value.lstrip("0")[:12] or "0") > MAX_TTL:  # int() of 4,300 digits would raise
        raise UsageError(f"TTL {_shown(text)} is more than {MAX_TTL} seconds (from {source})")
    return int(value.lstrip("0") or "0")


def parse_ip(text: str, source: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise UsageError(f"IP {text!r} is not an IP address (from {source})") from None


def parse_instance(text: str, source: str) -> str:
    if INSTANCE_ID.fullmatch(text):
        return text
    raise UsageError(
        f"INSTANCE {text!r} is not an instance id: 1-128 letters, digits, '.', '_' or '-', "
        f"starting with a letter or digit (from {source})"
    )


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str], need_address: bool = True
) -> Settings:
    """The settings from flags, else the environment; UsageError names the variable at fault.

    Without need_address (deregister) only NAME, SERVICE and INSTANCE are looked at, not PORT,
    IP or the TTL.
    """
    branch, _ = setting(args, environ, "name", "NAME")
    if branch is None:
        raise UsageError("NAME is not set: pass --name or set NAME (the branch name)")
    service_given, _ = setting(args, environ, "service", "SERVICE")
    if service_given is None:
        raise UsageError(
            "SERVICE is not set: pass --service or set SERVICE (the service name, e.g. web)"
        )
    port: int | None = None
    ip: str | None = None
    ttl = DEFAULT_TTL
    instance: str | None = None
    text, instance_source = setting(args, environ, "instance", "INSTANCE")
    if text is not None:
        instance = parse_instance(text, instance_source)
    check_port: int | None = None
    drain = DEFAULT_DRAIN
    if need_address:
        text, source = setting(args, environ, "port", "PORT")
        if text is not None:
            port = parse_port(text, "PORT", source)
        elif not environ.get("ECS_CONTAINER_METADATA_URI_V4"):
            raise UsageError(
                "PORT is not set: pass --port or set PORT (the port the service listens on)"
            )
        text, source = setting(args, environ, "ip", "IP")
        if text is not None:
            ip = parse_ip(text, source)
        text, source = setting(args, environ, "ttl", "DEVTEST_ROUTER_TTL")
        if text is not None:
            ttl = parse_ttl(text, source)
        text, source = setting(args, environ, "check_port", "DEVTEST_ROUTER_CHECK_PORT")
        if text is not None:
            check_port = parse_port(text, "the check port", source)
        text, source = setting(args, environ, "drain", "DEVTEST_ROUTER_DRAIN")
        if text is not None:
            drain = parse_drain(text, source)
    return Settings(
        branch=branch,
        service_given=service_given,
        deployment=str(label(branch)),
        service=str(label(service_given)),
        port=port,
        ip=ip,
        ttl=ttl,
        check_port=check_port,
        once=bool(getattr(args, "once", False)),
        command=tuple(getattr(args, "command", None) or ()),
        instance=instance,
        instance_source=instance_source,
        drain=drain,
    )


# Each setting's flag attribute, its environment variable and its field in Settings, as resolve
# reads them (deregister reads the first three).
_SOURCES = (
    ("name", "NAME", "branch"),
    ("service", "SERVICE", "service_given"),
    ("instance", "INSTANCE", "instance"),
    ("port", "PORT", "port"),
    ("ip", "IP", "ip"),
    ("ttl", "DEVTEST_ROUTER_TTL", "ttl"),
    ("check_port", "DEVTEST_ROUTER_CHECK_PORT", "check_port"),
    ("drain", "DEVTEST_ROUTER_DRAIN", "drain"),
)
_UNSET = {
    "instance": "not set: the ECS task id, else the hostname, else a random id",
    "port": "not set: from the ECS task metadata",
    "ip": "not set: discovered",
    "check_port": "not set: PORT",
}


def origins(
    settings: Settings,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    need_address: bool = True,
) -> list[str]:
    """-v's lines: each setting as resolve took it, and the flag or variable it came from."""
    lines = []
    for attribute, variable, field in _SOURCES[: None if need_address else 3]:
        text, source = setting(args, environ, attribute, variable)
        value = getattr(settings, field)
        if text is not None:
            lines.append(f"setting {variable} = {value!r} from {source}")
        else:
            unset = _UNSET.get(attribute, f"not set: {value!r}, the default")
            lines.append(f"setting {variable} {unset}")
    return lines


def slug_note(settings: Settings, verb: str = "registering") -> str | None:
    """One line when a name is not already the label it is registered under, else None."""
    changes = []
    if settings.deployment != settings.branch:
        changes.append(f"{settings.branch} as {settings.deployment}")
    if settings.service != settings.service_given:
        changes.append(f"service {settings.service_given} as {settings.service}")
    return f"{verb} {', '.join(changes)}" if changes else None
