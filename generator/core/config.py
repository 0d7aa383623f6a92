"""Settings: a flag beats the environment, which beats the config file, which beats the default.

schema/config.schema.json is the single list of settings, their types and defaults; this module
only merges the layers, converts environment strings by the schema's types and validates the
result, naming the layer a bad value came from.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from generator.core.errors import UsageError
from generator.core.model import Token
from generator.core.names import show

ENV_PREFIX = "DEVTEST_ROUTER_"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Config:
    domain: Token
    default_service: str
    listen: tuple[Token, ...]
    tls_certificate: Token | None  # TLS is on when both are set (resolve() allows no other mix)
    tls_certificate_key: Token | None
    tls_listen: tuple[Token, ...]
    output: str
    site_dir: Token
    nginx: str
    test_command: str
    reload_command: str
    command_timeout: float  # seconds each of nginx -t, test_command and reload_command gets
    dry_run: bool
    force: bool
    allowed_networks: tuple[Network, ...]
    allow_loopback: bool
    reserved_names: frozenset[str]
    template_dir: str | None
    allowed_directives: frozenset[str]
    access_log: Token
    client_max_body_size: Token
    proxy_connect_timeout: Token
    proxy_read_timeout: Token
    max_removed_fraction: float
    removal_guard_min_routes: int
    removal_window: float  # seconds over which the safety threshold counts removals (0: one apply)
    quiet_period: float
    max_wait: float
    resync_interval: float
    removal_grace: float  # watch: seconds removals are held back after a reconnect (0: off)
    allow_empty: bool  # watch: an absent /deployment prefix is no services, not a registry error
    log_format: str  # plain or json: how log lines on stderr look
    log_level: str  # debug, info, warning or error: the least serious log line written
    metrics_listen: tuple[str, int] | None  # (IP address, port) of /healthz and /metrics
    max_value_bytes: int  # a registry value longer than this is a problem (validate.Oversized)

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None and self.tls_certificate_key is not None

    @property
    def tls_port(self) -> int:
        """The port plain HTTP redirects to: the first tls_listen entry's."""
        return int(self.tls_listen[0].rsplit(":", 1)[-1])


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _from_env(key: str, text: str, spec: Mapping[str, Any]) -> Any:
    """An environment string as the schema's type; left as text when it does not convert, so
    validation names the variable."""
    kind = spec.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "array" in kinds:
        return [item for item in text.replace(",", " ").split() if item]
    if "boolean" in kinds and text.strip().lower() in _TRUE | _FALSE:
        return text.strip().lower() in _TRUE
    if "integer" in kinds and text.strip().isascii() and text.strip().isdigit():
        return _integer(text.strip())
    if "number" in kinds:
        try:
            return float(text)
        except ValueError:
            return text
    if "null" in kinds and text == "":
        return None
    return text


# Python refuses to convert a text of more digits to an int (a denial-of-service guard); no
# setting is near it, so such a number is left as text and refused as not an integer.
_MAX_DIGITS = 4300


def _integer(text: str) -> int | str:
    return int(text) if len(text) <= _MAX_DIGITS else text


def resolve(
    schema: Mapping[str, Any],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file_data: Any = None,
    file_name: str | None = None,
) -> Config:
    """Merge the layers into a Config, or raise UsageError naming the setting and its source."""
    properties: Mapping[str, Any] = schema["properties"]
    if file_data is None:
        file_data = {}
    if not isinstance(file_data, dict):
        raise UsageError(
            f"config file {file_name}: must be a mapping of settings, not {show(file_data)}"
        )
    values: dict[str, Any] = {key: spec["default"] for key, spec in properties.items()}
    source: dict[str, str] = {key: "the default" for key in properties}
    for key, value in file_data.items():
        values[key] = value
        source[key] = f"config file {file_name}"
    for key, spec in properties.items():
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            values[key] = _from_env(key, environ[env_name], spec)
            source[key] = f"environment variable {env_name}"
    for key, value in flags.items():
        if value is not None:
            values[key] = value
            source[key] = "--" + key.replace("_", "-")

    for key, value in values.items():
        # jsonschema's patterns use Python's re, whose $ also matches before a final newline
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and not text.isprintable() for text in texts):
            raise UsageError(
                f"setting {key} = {show(value)} from {source[key]} holds a control character "
                "(a newline?)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            # nan passes every minimum and maximum (a comparison with nan is false)
            raise UsageError(
                f"setting {key} = {value} from {source[key]} is not valid: it must be a "
                "finite number"
            )
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(values), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        if error.validator == "additionalProperties":
            given: Any = error.instance
            unknown = sorted(set(given) - set(properties), key=str)
            raise UsageError(
                f"config file {file_name}: unknown setting {show(unknown[0])}; the settings "
                f"are {', '.join(sorted(properties))}"
            )
        key = str(error.absolute_path[0])
        description = properties[key].get("description", "").split(". ")[0].rstrip(".")
        raise UsageError(
            f"setting {key} = {show(values[key])} from {source[key]} is not valid: "
            f"{_short(error)}. {description}"
        )
    _check_listen(values, source)
    _check_domain(values["domain"], source["domain"])
    _check_tls(values, source)
    try:
        networks = tuple(
            ipaddress.ip_network(network, strict=False) for network in values["allowed_networks"]
        )
    except ValueError as error:
        raise UsageError(
            f"setting allowed_networks from {source['allowed_networks']}: {error}"
        ) from None
    try:
        return _config(values, networks)
    except ValueError as error:  # a Token refused a value the schema's pattern let through
        raise UsageError(f"a setting is not valid: {error}") from None


_LISTEN_RULE = "a listen address is PORT, IPV4:PORT or [IPV6]:PORT with a port 1-65535"


def listen_problem(text: str) -> str | None:
    """Why `text` is not a listen address nginx takes (PORT, IPV4:PORT or [IPV6]:PORT with a
    port 1-65535, written without leading zeros), or None."""
    host, colon, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()) or port.startswith("0") or int(port) > 65535:
        return f"the port {port!r} is not 1-65535 (no leading zeros)"
    if not colon:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host[1:-1]!r} is not an IPv6 address"
        return None
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return f"{host!r} is not an IPv4 address (an IPv6 address goes in brackets)"
    return None


def _check_listen(values: Mapping[str, Any], source: Mapping[str, str]) -> None:
    """listen and tls_listen: what the schema's pattern lets through, checked for real."""
    for key in ("listen", "tls_listen"):
        for item in values[key]:
            why = listen_problem(item)
            if why is not None:
                raise UsageError(
                    f"setting {key} = {show(item)} from {source[key]} is not valid: {why}; "
                    f"{_LISTEN_RULE}"
                )


def domain_problem(domain: str) -> str | None:
    """Why `domain` cannot be the frontend's domain, or None: it must be a DNS name of at least
    two labels (dev.example.com), or localhost; never an IP address."""
    if domain == "localhost":
        return None
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        pass
    else:
        return "it is an IP address"
    if "." not in domain:
        return "it has no dot (a top-level domain alone)"
    if domain.rsplit(".", 1)[1].isdigit():
        return "its last label is all digits, as no top-level domain is"
    return None


def _check_domain(domain: str, source: str) -> None:
    why = domain_problem(domain)
    if why is not None:
        raise UsageError(
            f"setting domain = {show(domain)} from {source} is not valid: {why}; the domain is a "
            "DNS name with at least one dot, like dev.example.com (or localhost on a developer "
            "machine), never an IP address"
        )


def _check_tls(values: Mapping[str, Any], source: Mapping[str, str]) -> None:
    """TLS needs the certificate and its key together, on addresses plain HTTP does not use."""
    certificate, key = values["tls_certificate"], values["tls_certificate_key"]
    if (certificate is None) != (key is None):
        given, missing = (
            ("tls_certificate", "tls_certificate_key")
            if key is None
            else ("tls_certificate_key", "tls_certificate")
        )
        raise UsageError(
            f"setting {given} is set (from {source[given]}) but {missing} is not: TLS needs "
            "both the certificate and its key; set both, or neither for plain HTTP"
        )
    shared = sorted(set(values["listen"]) & set(values["tls_listen"]))
    if certificate is not None and shared:
        raise UsageError(
            f"setting tls_listen (from {source['tls_listen']}) shares {shared[0]} with listen "
            f"(from {source['listen']}): plain HTTP and HTTPS need addresses of their own"
        )


def _config(values: dict[str, Any], networks: tuple[Network, ...]) -> Config:
    return Config(
        domain=Token(values["domain"]),
        default_service=values["default_service"],
        listen=tuple(Token(item) for item in values["listen"]),
        tls_certificate=_token_or_none(values["tls_certificate"]),
        tls_certificate_key=_token_or_none(values["tls_certificate_key"]),
        tls_listen=tuple(Token(item) for item in values["tls_listen"]),
        output=values["output"],
        site_dir=Token(values["site_dir"]),
        nginx=values["nginx"],
        test_command=values["test_command"],
        reload_command=values["reload_command"],
        command_timeout=float(values["command_timeout"]),
        dry_run=values["dry_run"],
        force=values["force"],
        allowed_networks=networks,
        allow_loopback=values["allow_loopback"],
        reserved_names=frozenset(values["reserved_names"]),
        template_dir=values["template_dir"],
        allowed_directives=frozenset(values["allowed_directives"]),
        access_log=Token(values["access_log"]),
        client_max_body_size=Token(values["client_max_body_size"]),
        proxy_connect_timeout=Token(values["proxy_connect_timeout"]),
        proxy_read_timeout=Token(values["proxy_read_timeout"]),
        max_removed_fraction=float(values["max_removed_fraction"]),
        removal_guard_min_routes=values["removal_guard_min_routes"],
        removal_window=float(values["removal_window"]),
        quiet_period=float(values["quiet_period"]),
        max_wait=float(values["max_wait"]),
        resync_interval=float(values["resync_interval"]),
        removal_grace=float(values["removal_grace"]),
        allow_empty=values["allow_empty"],
        log_format=values["log_format"],
        log_level=values["log_level"],
        metrics_listen=listen_address(values["metrics_listen"]),
        max_value_bytes=values["max_value_bytes"],
    )


def _token_or_none(value: str | None) -> Token | None:
    return None if value is None else Token(value)


def listen_address(text: str | None) -> tuple[str, int] | None:
    """(IP address, port) of PORT, IPV4:PORT or [IPV6]:PORT; a bare PORT means 127.0.0.1.

    Only IP addresses: a host name could resolve to an address nobody meant to expose.
    """
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"metrics_listen {text!r}: {host!r} is not an IP address; use PORT, IPV4:PORT "
            "or [IPV6]:PORT"
        ) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics_listen {text!r}: the port must be 1-65535")
    return str(address), int(port)


def _short(error: jsonschema.ValidationError) -> str:
    """jsonschema's message without echoing the (possibly huge or hostile) value."""
    if error.validator == "pattern":
        return "it has characters or a shape this setting does not take"
    if error.validator == "type":
        return f"it must be {error.validator_value}"
    if error.validator == "not":
        return "this directive can never be allowed (it loads code or files)"
    return str(error.message).split("\n")[0][:120]
