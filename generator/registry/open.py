"""Which registry a URL names, and the command-line options that name one.

etcd://, etcds:// and http(s):// are etcd's v2 API (etcd2.py), etcd3:// and etcd3s:// its v3 API
(etcd3.py), file:PATH a YAML or JSON file (file.py). There is no default: a command that reads
the registry is told where it is (--registry or REGISTRY_URL), or refuses to start.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from generator.core.errors import UsageError
from generator.core.keys import PREFIX
from generator.registry.base import Endpoint, Registry, Tls
from generator.registry.file import FileRegistry
from generator.secret import redact

_HOST_PORT = re.compile(
    r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})", re.ASCII
)


def parse_url(url: str) -> tuple[str, tuple[Endpoint, ...], bool, str]:
    """(kind, endpoints, tls, path) of a registry URL; kind is etcd2, etcd3 or file.

    etcd://host:port[,host:port...] and http(s)://host:port (REGISTRY_URL as the original
    registration script uses it) mean etcd's v2 API; etcd3://... its v3 API; etcds:// and
    etcd3s:// the same over TLS; file:PATH a YAML or JSON file.
    """
    if url.startswith("file:"):
        path = url[len("file:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise UsageError(f"registry {url}: file: needs a path, e.g. file:registry.yaml")
        return "file", (), False, path
    schemes = {
        "http": ("etcd2", False),
        "https": ("etcd2", True),
        "etcd": ("etcd2", False),
        "etcds": ("etcd2", True),
        "etcd3": ("etcd3", False),
        "etcd3s": ("etcd3", True),
    }
    shown = redact(url)
    if shown != url:  # an '@': user:password@, which must not be in the URL (nor in a message)
        raise UsageError(
            f"registry {shown!r}: credentials do not go in the URL; give the user in "
            "--etcd-user (or DEVTEST_ROUTER_ETCD_USER) and the password in "
            "DEVTEST_ROUTER_ETCD_PASSWORD"
        )
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed [ of an IPv6 address
        raise UsageError(f"registry {shown!r}: {error}; use etcd://HOST:PORT") from None
    if parts.scheme not in schemes:
        raise UsageError(
            f"registry {shown!r}: unknown scheme; use etcd://HOST:PORT[,HOST:PORT] (v2 API), "
            "etcd3://HOST:PORT[,...] (v3 API), http://HOST:PORT (v2, as REGISTRY_URL) or "
            "file:PATH"
        )
    kind, tls = schemes[parts.scheme]
    endpoints = []
    for item in parts.netloc.split(","):
        found = _HOST_PORT.fullmatch(item)
        if not found or not 0 < int(found.group("port")) < 65536:
            raise UsageError(f"registry {shown!r}: {item!r} is not HOST:PORT with a port 1-65535")
        endpoints.append(Endpoint(found.group("host").strip("[]"), int(found.group("port"))))
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        # a path was silently ignored before: say so rather than read another prefix
        raise UsageError(
            f"registry {url!r}: a path, query or fragment is not taken (the prefix is fixed at "
            f"{PREFIX}); give only the scheme and HOST:PORT, e.g. http://etcd:2379"
        )
    return kind, tuple(endpoints), tls, parts.path


_NO_TLS = Tls()  # no TLS options and no user


def open_registry(url: str, tls: Tls = _NO_TLS, timeout: float = 5.0) -> Registry:
    """The backend for `url` (see parse_url). Connects lazily: a down etcd fails on first use."""
    kind, endpoints, secure, path = parse_url(url)
    if kind == "file":
        return FileRegistry(Path(path))
    if kind == "etcd2":
        from generator.registry.etcd2 import (
            EtcdV2Registry,  # imported on use: cold `apply` runs never pay for it
        )

        return EtcdV2Registry(endpoints, secure, tls, timeout)
    from generator.registry.etcd3 import EtcdV3Registry

    return EtcdV3Registry(endpoints, secure, tls, timeout)


def add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    """--registry and etcd's TLS and authentication options, shared by every registry command."""
    group = parser.add_argument_group("registry")
    group.add_argument(
        "--registry",
        metavar="URL",
        help="etcd://HOST:PORT[,HOST:PORT...] (v2 API), etcd3://... (v3 API), etcds:// and "
        "etcd3s:// (TLS), http://HOST:PORT (v2, as the original REGISTRY_URL) or file:PATH "
        "(default: $REGISTRY_URL; one of the two is needed)",
    )
    group.add_argument(
        "--etcd-ca", metavar="FILE", help="CA bundle for etcd's TLS (env DEVTEST_ROUTER_ETCD_CA)"
    )
    group.add_argument(
        "--etcd-cert", metavar="FILE", help="client certificate (env DEVTEST_ROUTER_ETCD_CERT)"
    )
    group.add_argument(
        "--etcd-key", metavar="FILE", help="client certificate's key (env DEVTEST_ROUTER_ETCD_KEY)"
    )
    group.add_argument(
        "--etcd-user",
        metavar="NAME",
        help="etcd user (env DEVTEST_ROUTER_ETCD_USER); the password only from the environment: "
        "DEVTEST_ROUTER_ETCD_PASSWORD",
    )


def registry_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Registry:
    """The registry named by --registry or REGISTRY_URL (the password only from the environment:
    DEVTEST_ROUTER_ETCD_PASSWORD, never on a command line where `ps` shows it)."""
    url = args.registry or environ.get("REGISTRY_URL")
    if not url:
        # no default: a watcher started without its registry would otherwise look like one
        # waiting for changes (a default file that is not there, retried forever)
        raise UsageError(
            "no registry set: give --registry or REGISTRY_URL (etcd://HOST:PORT for etcd's v2 "
            "API, etcd3://HOST:PORT for v3, file:PATH for a snapshot file); there is no default"
        )

    def option(name: str) -> str | None:
        value: str | None = getattr(args, f"etcd_{name}", None)
        return value or environ.get(f"DEVTEST_ROUTER_ETCD_{name.upper()}") or None

    tls = Tls(
        ca=option("ca"),
        cert=option("cert"),
        key=option("key"),
        user=option("user"),
        password=environ.get("DEVTEST_ROUTER_ETCD_PASSWORD") or None,
    )
    return open_registry(url, tls)
