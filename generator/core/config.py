"""Settings: a flag beats the environment, which beats the config file, which beats the default.

schema/config.schema.json is the single list of settings, their types, defaults and rules (in
words, `x-rule`, for the messages); this module only merges the layers, converts environment
strings by the schema's types, makes the path settings (`x-path`) absolute and validates the
result. A refused value is echoed with the rule it breaks and the layer it came from.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

from generator.core.errors import UsageError
from generator.core.model import Quoted, Token
from generator.core.names import show

ENV_PREFIX = "DEVTEST_ROUTER_"
# The config file read when neither --config nor DEVTEST_ROUTER_CONFIG names one, if it exists.
# DEVTEST_ROUTER_CONFIG_DEFAULT moves it (tests, a packager's own prefix); empty, none is read.
DEFAULT_CONFIG_FILE = "/etc/devtest-router/config.yaml"
DEFAULT_CONFIG_VARIABLE = ENV_PREFIX + "CONFIG_DEFAULT"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Config:
    domain: Token
    default_service: str
    listen: tuple[Token, ...]
    tls_certificate: Token | None  # TLS is on when both are set (resolve() allows no other mix)
    tls_certificate_key: Token | None
    tls_listen: tuple[Token, ...]
    # Access control is on when either of these is set (see access_control)
    basic_auth_file: Token | None
    basic_auth_realm: Quoted  # in its double quotes, as nginx's config gets it
    client_networks: tuple[Network, ...]  # normalized (no host bits), as given
    access_satisfy: Token  # all or any
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
    allow_empty: bool  # watch, apply --registry: an absent /deployment prefix is no services
    log_format: str  # plain or json: how log lines on stderr look
    log_level: str  # debug, info, warning or error: the least serious log line written
    metrics_listen: tuple[str, int] | None  # (IP address, port) of /healthz and /metrics
    max_value_bytes: int  # a registry value longer than this is a problem (validate.Oversized)
    # (setting, where its value came from: "--domain", "environment variable ...", "config file
    # ...", "the default"), in the schema's order: for -v, and apply and watch refuse a domain
    # that no layer set. Not compared: the same settings are the same config.
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def defaulted(self) -> frozenset[str]:
        """The settings no flag, variable or config file set."""
        return frozenset(key for key, where in self.sources if where == DEFAULT_SOURCE)

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None and self.tls_certificate_key is not None

    @property
    def access_control(self) -> bool:
        """Whether the routes, the index and the 404 pages are behind basic auth, client
        networks or both (public deployments excepted)."""
        return self.basic_auth_file is not None or bool(self.client_networks)

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


DEFAULT_SOURCE = "the default"
_ECHOED = 256  # characters of a refused value a message shows (a path is seldom longer)


@dataclass(frozen=True, slots=True)
class _Layers:
    """The merged values, the layer each came from, and the path settings as written where
    they were made absolute: what a message needs to echo a refused value."""

    values: dict[str, Any]
    source: dict[str, str]
    texts: dict[str, str]  # a setting's environment variable as written, before conversion
    written: dict[str, str]  # a relative path setting as given, before it was made absolute
    cwd: str | None  # None: the current directory could not be read (deleted?)

    def echo(self, key: str, value: Any = None) -> str:
        """`value` (default: the setting's) as a message shows it: as written in the environment
        (9999, not 9999.0), with the relative path it was made from."""
        value = self.values[key] if value is None else value
        if key in self.texts and value is self.values[key]:
            text = show(self.texts[key], _ECHOED)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            text = str(value)  # nan, not json's NaN
        elif isinstance(value, list):
            items = [show(item, _ECHOED) for item in value[:4]]
            text = "[" + ", ".join(items + ["..."] * (len(value) > 4)) + "]"
        else:
            text = show(value, _ECHOED)
        if key in self.written and value == self.values[key]:
            written, cwd = show(self.written[key], _ECHOED), show(self.cwd, _ECHOED)
            text += f" ({written} in the current directory {cwd})"
        return text

    def refuse(self, key: str, why: str, value: Any = None) -> UsageError:
        return UsageError(
            f"setting {key} = {self.echo(key, value)} from {self.source[key]} is not valid: {why}"
        )


def resolve(
    schema: Mapping[str, Any],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file_data: Any = None,
    file_name: str | None = None,
    *,
    cwd: str | None = "/",
) -> Config:
    """Merge the layers into a Config, or raise UsageError naming the setting, the value it
    refused, the rule and where the value came from.

    A relative path setting (`x-path` in the schema) is taken from `cwd`, whatever layer it came
    from: the shell passes the current directory at startup (None when it cannot be read: a
    relative path is then refused).
    """
    properties: Mapping[str, Any] = schema["properties"]
    if file_data is None:
        file_data = {}
    if not isinstance(file_data, dict):
        raise UsageError(
            f"config file {file_name}: must be a mapping of settings, not {show(file_data)}"
        )
    values: dict[str, Any] = {key: spec["default"] for key, spec in properties.items()}
    source: dict[str, str] = {key: DEFAULT_SOURCE for key in properties}
    texts: dict[str, str] = {}
    for key, value in file_data.items():
        values[key] = value
        source[key] = f"config file {file_name}"
    for key, spec in properties.items():
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            values[key] = _from_env(key, environ[env_name], spec)
            source[key] = f"environment variable {env_name}"
            texts[key] = environ[env_name]
    for key, value in flags.items():
        if value is not None:
            values[key] = value
            source[key] = "--" + key.replace("_", "-")
            texts.pop(key, None)
    layers = _Layers(values, source, texts, {}, cwd)
    _absolute_paths(properties, layers)

    for key, value in values.items():
        # jsonschema's patterns use Python's re, whose $ also matches before a final newline
        items = value if isinstance(value, list) else [value]
        for text in items:
            if isinstance(text, str) and not text.isprintable():
                raise layers.refuse(
                    key, "it holds a control character (a newline?); no setting takes one", text
                )
        if isinstance(value, float) and not math.isfinite(value):
            # nan passes every minimum and maximum (a comparison with nan is false)
            raise layers.refuse(key, "it must be a finite number")
    import jsonschema  # on use: commands that read no settings (snapshot) never pay for it

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
        # an item of a list is echoed alone: the one that broke the rule
        value = error.instance if len(error.absolute_path) > 1 else values[key]
        raise layers.refuse(key, f"{_rule(error)}. {description}", value)
    _check_listen(properties, layers)
    _check_domain(layers)
    _check_tls(values, source)
    networks = _networks(properties, layers)
    clients = _client_networks(properties, layers)
    sources = tuple((key, source[key]) for key in properties)
    try:
        return _config(values, networks, clients, sources)
    except ValueError as error:  # a Token refused a value the schema's pattern let through
        raise UsageError(f"a setting is not valid: {error}") from None


def _absolute_paths(properties: Mapping[str, Any], layers: _Layers) -> None:
    """The one rule of every path setting: a relative path is taken from the current directory
    at startup (as a shell, and not nginx, would take it: nginx reads some of them, from its own
    prefix); a leading ~ is refused, since no shell expands it here."""
    for key, spec in properties.items():
        rule = spec.get("x-path")
        value = layers.values[key]
        if rule is None or not isinstance(value, str) or value in rule.get("except", ()):
            continue
        if value.startswith("~"):
            raise layers.refuse(
                key, "a leading ~ is not expanded (no shell reads this setting); write the path out"
            )
        if value and not value.startswith("/"):
            layers.texts.pop(key, None)  # echoed as made absolute, with the path as written
            if layers.cwd is None:
                raise layers.refuse(
                    key,
                    "it is a relative path, and the current directory cannot be read (was it "
                    "deleted?); give an absolute path, or start from a folder that exists",
                )
            layers.written[key] = value
            layers.values[key] = posixpath.normpath(posixpath.join(layers.cwd, value))


# How a refused value breaks a JSON Schema keyword, in words (the value itself is echoed by
# the caller). A pattern's rule is the schema's own `x-rule` beside it.
_TYPE_WORDS = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "null": "null",
    "object": "a mapping",
}


def _rule(error: jsonschema.ValidationError) -> str:
    """The rule `error` found broken, in words, without echoing the (possibly huge or hostile)
    value."""
    limit: Any = error.validator_value
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    match error.validator:
        case "pattern":
            return f"it must be {schema.get('x-rule', f'matched by {limit}')}"
        case "not":
            refused = limit.get("x-rule") if isinstance(limit, Mapping) else None
            return refused or "the schema refuses it"
        case "type":
            kinds = [str(kind) for kind in (limit if isinstance(limit, list) else [limit])]
            return "it must be " + " or ".join(_TYPE_WORDS.get(kind, kind) for kind in kinds)
        case "enum":
            return "it must be one of " + ", ".join(str(choice) for choice in limit)
        case "minimum":
            return f"it must be at least {limit}"
        case "maximum":
            return f"it must be at most {limit}"
        case "exclusiveMinimum":
            return f"it must be more than {limit}"
        case "exclusiveMaximum":
            return f"it must be less than {limit}"
        case "minLength":
            return "it must not be empty" if limit == 1 else f"it needs {limit} characters or more"
        case "maxLength":
            return f"it must be {limit} characters or fewer"
        case "minItems":
            return "it needs at least one item" if limit == 1 else f"it needs {limit} items"
        case "uniqueItems":
            return f"an item is given twice ({_repeated(error.instance)}); give each once"
    return str(error.message).split("\n")[0][:120]


def _repeated(items: Any) -> str:
    seen: list[Any] = []
    for item in items if isinstance(items, list) else []:
        if item in seen:
            return show(item)
        seen.append(item)
    return "?"


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


def _check_listen(properties: Mapping[str, Any], layers: _Layers) -> None:
    """listen, tls_listen and metrics_listen: what the schema's pattern lets through (the
    port's range, the address), checked for real, with the schema's rule."""
    for key in ("listen", "tls_listen", "metrics_listen"):
        spec = properties[key]
        value = layers.values[key]
        items = value if isinstance(value, list) else [] if value is None else [value]
        rule = spec.get("items", spec)["x-rule"]
        for item in items:
            why = listen_problem(item)
            if why is not None:
                raise layers.refuse(key, f"{why}; it must be {rule}", item)


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


def _check_domain(layers: _Layers) -> None:
    why = domain_problem(layers.values["domain"])
    if why is not None:
        raise layers.refuse(
            "domain",
            f"{why}; the domain is a DNS name with at least one dot, like dev.example.com (or "
            "localhost on a developer machine), never an IP address",
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


def _networks(properties: Mapping[str, Any], layers: _Layers) -> tuple[Network, ...]:
    networks = []
    for item in layers.values["allowed_networks"]:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            rule = properties["allowed_networks"]["items"]["x-rule"]
            raise layers.refuse("allowed_networks", f"{error}; it must be {rule}", item) from None
    return tuple(networks)


def _client_networks(properties: Mapping[str, Any], layers: _Layers) -> tuple[Network, ...]:
    """client_networks, strictly: a network written with host bits set (10.0.0.1/8) is refused
    with the network it is probably meant to be, rather than silently widened or narrowed."""
    rule = properties["client_networks"]["items"]["x-rule"]
    networks: list[Network] = []
    for item in layers.values["client_networks"]:
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError as error:
            raise layers.refuse("client_networks", f"{error}; it must be {rule}", item) from None
        address = item.partition("/")[0]
        if loose.network_address != ipaddress.ip_address(address):
            raise layers.refuse(
                "client_networks",
                f"it has host bits set; write the network {loose}, or {address}/"
                f"{loose.max_prefixlen} for that one address",
                item,
            )
        networks.append(loose)
    return tuple(networks)


def _config(
    values: dict[str, Any],
    networks: tuple[Network, ...],
    clients: tuple[Network, ...],
    sources: tuple[tuple[str, str], ...],
) -> Config:
    return Config(
        domain=Token(values["domain"]),
        default_service=values["default_service"],
        listen=tuple(Token(item) for item in values["listen"]),
        tls_certificate=_token_or_none(values["tls_certificate"]),
        tls_certificate_key=_token_or_none(values["tls_certificate_key"]),
        tls_listen=tuple(Token(item) for item in values["tls_listen"]),
        basic_auth_file=_token_or_none(values["basic_auth_file"]),
        basic_auth_realm=Quoted(values["basic_auth_realm"]),
        client_networks=clients,
        access_satisfy=Token(values["access_satisfy"]),
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
        sources=sources,
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
