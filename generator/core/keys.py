"""The registry's key layout, in one place (pure: strings in, strings out).

Every key is under /deployment:

    /deployment/<branch>/created                                  RFC 3339, UTC
    /deployment/<branch>/service/<service>/ip                     the seed's layout (curl wrote
    /deployment/<branch>/service/<service>/port                   it): the service's own address
    /deployment/<branch>/service/<service>/instance/<id>/ip       one instance of the service,
    /deployment/<branch>/service/<service>/instance/<id>/port     each container under its own id

A snapshot mirrors the keys below /deployment as nested mappings, under the same names
({"deployment": {<branch>: {"created": ..., "service": {<service>: {...}}}}}).

The functions build a key from its parts and parse one back; they take names as they are (the
registering side writes slugs, the reading side takes whatever is there).
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "deployment"  # the name of the prefix, and the top mapping of a snapshot
PREFIX = "/" + ROOT
UNDER = PREFIX + "/"  # every key is under it, and begins with it
CREATED = "created"
SERVICE = "service"
INSTANCE = "instance"
IP = "ip"
PORT = "port"
ADDRESS = (IP, PORT)  # the names of the two keys of an address, in that order


def deployment_key(deployment: str) -> str:
    """/deployment/<deployment>: the directory of a branch's keys."""
    return f"{PREFIX}/{deployment}"


def created_key(deployment: str) -> str:
    """/deployment/<deployment>/created."""
    return f"{PREFIX}/{deployment}/{CREATED}"


def services_key(deployment: str) -> str:
    """/deployment/<deployment>/service: the directory of a branch's services."""
    return f"{PREFIX}/{deployment}/{SERVICE}"


def service_key(deployment: str, service: str) -> str:
    """/deployment/<deployment>/service/<service>: a service's directory, which holds its own
    ip and port keys (the seed's layout) and its instances."""
    return f"{PREFIX}/{deployment}/{SERVICE}/{service}"


def instances_key(deployment: str, service: str) -> str:
    """/deployment/<deployment>/service/<service>/instance: the directory of its instances."""
    return f"{PREFIX}/{deployment}/{SERVICE}/{service}/{INSTANCE}"


def instance_path(service: str, instance: str | None) -> tuple[str, ...]:
    """The segments below a branch's directory to the directory of an instance's ip and port
    keys: ("service", <service>, "instance", <id>), or with instance None the service's own
    ("service", <service>). A snapshot holds the ip and port mapping at the same path."""
    if instance is None:
        return (SERVICE, service)
    return (SERVICE, service, INSTANCE, instance)


def instance_key(deployment: str, service: str, instance: str | None) -> str:
    """The directory of an instance's ip and port keys:
    /deployment/<deployment>/service/<service>/instance/<id>, or with instance None the
    service's own /deployment/<deployment>/service/<service>."""
    directory = service_key(deployment, service)
    return directory if instance is None else f"{directory}/{INSTANCE}/{instance}"


def ip_key(directory: str) -> str:
    """<directory>/ip, for the directory of an instance (see instance_key)."""
    return f"{directory}/{IP}"


def port_key(directory: str) -> str:
    """<directory>/port, for the directory of an instance (see instance_key)."""
    return f"{directory}/{PORT}"


def segments(key: str) -> list[str]:
    """The segments of a key under /deployment (the deployment's name first), split on '/'
    with the slashes at either end ignored; for a key not under /deployment, []."""
    if not key.startswith(UNDER):
        return []
    return key[len(PREFIX) :].strip("/").split("/")


def deployment_of(key: str) -> str | None:
    """The deployment a key belongs to (its first segment under /deployment), None if none."""
    if not key.startswith(UNDER):
        return None
    name = key[len(PREFIX) :].strip("/").split("/", 1)[0]
    return name or None


@dataclass(frozen=True, slots=True)
class Key:
    """What a key of the layout names. `name` is the last segment: created, ip or port for a
    key with a value, or None for a directory (deployment, service, instance)."""

    deployment: str
    service: str | None = None
    instance: str | None = None
    name: str | None = None


def parse(key: str) -> Key | None:
    """The parts of a key of the layout, or None for any other key (not under /deployment,
    with an empty segment or with segments the layout does not have). The directories of a
    branch's services and of a service's instances, which hold only names, parse to None too.

    >>> parse("/deployment/feat-x/service/web/instance/a1/port")
    Key(deployment='feat-x', service='web', instance='a1', name='port')
    >>> parse("/deployment/feat-x/created")
    Key(deployment='feat-x', service=None, instance=None, name='created')
    """
    parts = segments(key)
    if not parts or not all(parts):
        return None
    deployment, rest = parts[0], parts[1:]
    match rest:
        case []:
            return Key(deployment)
        case [name] if name == CREATED:
            return Key(deployment, name=name)
        case [directory, service] if directory == SERVICE:
            return Key(deployment, service)
        case [directory, service, name] if directory == SERVICE and name in ADDRESS:
            return Key(deployment, service, name=name)
        case [directory, service, instances, instance] if (directory, instances) == (
            SERVICE,
            INSTANCE,
        ):
            return Key(deployment, service, instance)
        case [directory, service, instances, instance, name] if (directory, instances) == (
            SERVICE,
            INSTANCE,
        ) and name in ADDRESS:
            return Key(deployment, service, instance, name)
    return None
