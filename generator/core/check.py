"""The check: rendered text as nginx will read it, crossplane's parse of it against the
routing table.

The check runs before nginx's test (`nginx -t`), because `nginx -t` itself executes
`load_module` and `ssl_engine`: nothing but the directives below (and the config's
allowed_directives) may reach it, every route must stand in the hostname map exactly once, with
exactly its target, and every upstream group a route names must stand at http level exactly
once, with exactly its servers. crossplane's own directive table stops near nginx 1.19, so it
checks syntax, argument counts and contexts here, never which directives exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from generator.core.config import Config
from generator.core.site_layout import DATA_FILE, NOT_FOUND, data_map_pattern, shard_path, try_files

ROUTE_MAP = ("$host", "$devtest_route")
PROXY_PASS = ["http://$devtest_upstream"]
PROXY_NEXT_UPSTREAM = ["error", "timeout"]
# The parameters of every server of an upstream group, after its address.
SERVER_PARAMETERS = ["max_fails=1", "fail_timeout=10s"]

# Directive -> the blocks it may stand in ("" is the file's top, i.e. nginx's http block).
# This is the bundled template's vocabulary; config allowed_directives may add names (anywhere).
DIRECTIVES: Mapping[str, frozenset[str]] = {
    "map_hash_max_size": frozenset({""}),
    "map_hash_bucket_size": frozenset({""}),
    "log_format": frozenset({""}),
    "map": frozenset({""}),
    "server": frozenset({"", "upstream"}),  # a server block, or an upstream group's server
    "upstream": frozenset({""}),
    "listen": frozenset({"server"}),
    "server_name": frozenset({"server"}),
    "access_log": frozenset({"server", "location"}),
    "client_max_body_size": frozenset({"server", "location"}),
    "location": frozenset({"server"}),
    "if": frozenset({"location"}),
    "return": frozenset({"if", "location", "server"}),
    "error_page": frozenset({"server", "location"}),
    "default_type": frozenset({"server", "location"}),
    "add_header": frozenset({"server", "location"}),
    "proxy_pass": frozenset({"location"}),
    "proxy_next_upstream": frozenset({"location"}),
    "proxy_http_version": frozenset({"server", "location"}),
    "proxy_set_header": frozenset({"server", "location"}),
    "proxy_connect_timeout": frozenset({"server", "location"}),
    "proxy_read_timeout": frozenset({"server", "location"}),
    "proxy_send_timeout": frozenset({"server", "location"}),
    "ssl_certificate": frozenset({"server"}),
    "ssl_certificate_key": frozenset({"server"}),
    "ssl_protocols": frozenset({"server"}),
    # the site folder: the index at the bare domain, 404 pages for unknown hostnames
    "root": frozenset({"server", "location"}),
    "types": frozenset({"server", "location"}),
    "charset": frozenset({"server", "location"}),
    "ssi": frozenset({"location"}),
    "try_files": frozenset({"location"}),
    # access control (basic_auth_file, client_networks): _check_access says where and with what
    "satisfy": frozenset({"server"}),
    "auth_basic": frozenset({"server", "location"}),
    "auth_basic_user_file": frozenset({"server"}),
    "allow": frozenset({"server", "location"}),
    "deny": frozenset({"server"}),
    "recursive_error_pages": frozenset({"location"}),
}

# The access directives, which only access control (config.access_control) renders.
ACCESS = frozenset(
    {"satisfy", "auth_basic", "auth_basic_user_file", "allow", "deny", "recursive_error_pages"}
)
# The locations that serve without the access rules, and exactly how each says so: the public
# deployments' (@devtest_public) and the 502 and 504 pages that its requests may end in (the
# other requests that reach those passed the rules already).
OPEN_LOCATIONS = frozenset(
    {"@devtest_public", "@devtest_no_instance_502", "@devtest_no_instance_504"}
)
OPEN_LINES = [["allow", "all"], ["auth_basic", "off"]]
# The public deployments' map: `<label>/` -> 1 for each (render.public_keys).
PUBLIC_MAP = ("$devtest_deployment/", "$devtest_public")

# The certificate directives may name only the configured files (None: TLS is off, none at all).
TLS_FILES = {"ssl_certificate": "tls_certificate", "ssl_certificate_key": "tls_certificate_key"}
TLS_PROTOCOLS = frozenset({"TLSv1.2", "TLSv1.3"})

# The map that names the file an unknown hostname's request is served (try_files' first entry):
# a shard of the 404 page's data for its path, else the page. Exactly these lines.
DATA_MAP = ("$uri", DATA_FILE)
DATA_MAP_LINES = [
    [data_map_pattern(), "/" + shard_path("$1")],
    ["default", f"/{NOT_FOUND}"],
]
# A types block is empty (every file is default_type's), or names JSON only (the shards).
TYPES_BLOCKS: tuple[list[list[str]], ...] = ([], [["application/json", "json"]])

# Inside a map block every line is data (source value), except these, which nginx treats as
# directives; `include` would read a file, so it never passes.
MAP_KEYWORDS = frozenset({"hostnames", "default", "volatile"})


def _walk(
    statements: list[dict[str, Any]], parent: str = ""
) -> Iterator[tuple[dict[str, Any], str]]:
    for statement in statements:
        yield statement, parent
        if "block" in statement and statement["directive"] not in ("map", "types"):
            yield from _walk(statement["block"], statement["directive"])


def _parsed(payload: Mapping[str, Any], path: str) -> list[dict[str, Any]] | str:
    """crossplane's statements of `path`, or what went wrong."""
    if payload.get("status") != "ok":
        errors = [str(error["error"]) for error in payload.get("errors", [])]
        return "; ".join(errors) or "crossplane could not parse the rendered config"
    parsed = next((item["parsed"] for item in payload["config"] if item["file"] == path), None)
    return f"crossplane did not read {path}" if parsed is None else parsed


def check(
    payload: Mapping[str, Any],
    expected: Mapping[str, str],
    config: Config,
    path: str,
    pools: Mapping[str, Sequence[str]],
    public: Sequence[str] = (),
) -> list[str]:
    """What is wrong with the parsed file at `path` (crossplane's payload), as lines; [] if ok.

    `expected` is what the hostname map must hold exactly: hostname -> target; `pools` the
    upstream groups the file must hold exactly, at http level: name -> servers; `public` the
    labels the public map must hold exactly (when access control is on).
    """
    parsed = _parsed(payload, path)
    if isinstance(parsed, str):
        return [parsed]

    failures: list[str] = []
    route_maps: list[list[dict[str, Any]]] = []
    data_maps: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    for statement, parent in _walk(parsed):
        name = statement["directive"]
        where = f"{path}:{statement['line']}"
        if name in config.allowed_directives and name not in DIRECTIVES:
            continue  # an override's own directive (not in an upstream group: _compare_pools)
        if name not in DIRECTIVES:
            failures.append(
                f"directive {name!r} is not allowed (in {where}); add it to "
                "allowed_directives if an override template needs it"
            )
            continue
        if parent not in DIRECTIVES[name]:
            failures.append(
                f"directive {name!r} is not allowed inside {parent or 'http'!r} (in {where})"
            )
        if name == "map":
            failures.extend(_check_map_block(statement, where))
            if tuple(statement["args"]) == ROUTE_MAP:
                route_maps.append(statement["block"])
            elif DATA_FILE in statement["args"]:
                data_maps.append(statement)
        elif name == "upstream" and not parent:
            groups.append(statement)
        elif name == "proxy_pass" and statement["args"] != PROXY_PASS:
            failures.append(f"proxy_pass must be {PROXY_PASS[0]} (in {where})")
        elif name == "proxy_next_upstream" and statement["args"] != PROXY_NEXT_UPSTREAM:
            failures.append(
                f"proxy_next_upstream must be {' '.join(PROXY_NEXT_UPSTREAM)} (in {where})"
            )
        elif name in TLS_FILES:
            wanted = getattr(config, TLS_FILES[name])
            if wanted is None or statement["args"] != [wanted]:
                failures.append(
                    f"{name} must name the configured {TLS_FILES[name]} "
                    f"({wanted or 'not set: TLS is off'}) (in {where})"
                )
        elif name == "ssl_protocols" and not set(statement["args"]) <= TLS_PROTOCOLS:
            failures.append(f"ssl_protocols may name only {sorted(TLS_PROTOCOLS)} (in {where})")
        elif name == "root" and statement["args"] != [config.site_dir]:
            failures.append(f"root must be the site_dir {config.site_dir} (in {where})")
        elif name == "try_files" and statement["args"] != try_files():
            failures.append(f"try_files must be {' '.join(try_files())} (in {where})")
        elif name == "types" and _lines(statement["block"]) not in TYPES_BLOCKS:
            failures.append(
                f"a types block must be empty or hold only application/json json (in {where})"
            )

    failures.extend(_check_listens(parsed, config, path))
    failures.extend(_check_access(parsed, config, path))
    failures.extend(_check_public_map(parsed, config, path, public))
    failures.extend(_check_data_map(data_maps, path))
    if len(route_maps) != 1:
        failures.append(f"expected one 'map $host $devtest_route' block, found {len(route_maps)}")
    else:
        failures.extend(_compare_routes(route_maps[0], expected))
    failures.extend(_compare_pools(groups, pools, path))
    return failures


def access_lines(config: Config) -> list[list[str]]:
    """The access directives (name and arguments) every serving server must hold, in order, at
    its own level; [] when access control is off."""
    if not config.access_control:
        return []
    lines = [["satisfy", str(config.access_satisfy)]]
    if config.basic_auth_file is not None:
        lines.append(["auth_basic", config.basic_auth_realm[1:-1]])  # crossplane unquotes it
        lines.append(["auth_basic_user_file", str(config.basic_auth_file)])
    lines.extend(["allow", str(network)] for network in config.client_networks)
    if config.client_networks:
        lines.append(["deny", "all"])
    return lines


def _check_access(parsed: list[dict[str, Any]], config: Config, path: str) -> list[str]:
    """The access directives stand only where the template puts them, saying only what the
    settings say: at the level of every server that serves something (has a location), exactly
    access_lines(config); in OPEN_LOCATIONS exactly OPEN_LINES; recursive_error_pages on in
    `location /`. None at all when access control is off."""
    wanted = access_lines(config)
    failures: list[str] = []
    for server in parsed:
        if server["directive"] != "server":
            continue
        block = server.get("block", ())
        found = [
            [entry["directive"], *entry["args"]] for entry in block if entry["directive"] in ACCESS
        ]
        serving = any(entry["directive"] == "location" for entry in block)
        if found != (wanted if serving else []):
            failures.append(
                f"the access lines of a server (in {path}:{server['line']}) are {found}, not "
                f"the {wanted if serving else []} the settings make"
                + ("" if config.access_control else " (access control is off)")
            )
        for location in block:
            if location["directive"] != "location":
                continue
            where = f"{path}:{location['line']}"
            inside = location.get("block", ())
            lines = [[e["directive"], *e["args"]] for e in inside if e["directive"] in ACCESS]
            name = " ".join(location["args"])
            if config.access_control and name in OPEN_LOCATIONS:
                expected_lines = OPEN_LINES
            elif config.access_control and name == "/":
                expected_lines = [["recursive_error_pages", "on"]]
            else:
                expected_lines = []
            if lines != expected_lines:
                failures.append(
                    f"location {name} (in {where}) holds the access lines {lines}, not "
                    f"{expected_lines}"
                )
    return failures


def _check_public_map(
    parsed: list[dict[str, Any]], config: Config, path: str, public: Sequence[str]
) -> list[str]:
    """With access control on, one public map at http level holding exactly `default 0` and
    `<label>/ 1` for each public label; none with it off."""
    found = [
        statement
        for statement, _ in _walk(parsed)
        if statement["directive"] == "map" and "$devtest_public" in statement["args"]
    ]
    if not config.access_control:
        return [
            f"a public map (in {path}:{entry['line']}) with access control off" for entry in found
        ]
    if len(found) != 1 or tuple(found[0]["args"]) != PUBLIC_MAP:
        return [f"expected one 'map {' '.join(PUBLIC_MAP)}' block, found {len(found)}"]
    entries = sorted([entry["directive"], *entry["args"]] for entry in found[0]["block"])
    wanted = sorted([["default", "0"], *([f"{name}/", "1"] for name in public)])
    if entries != wanted:
        return [
            f"the public map (in {path}:{found[0]['line']}) holds {entries}, not the public "
            f"deployments' {wanted}"
        ]
    return []


def _check_listens(parsed: list[dict[str, Any]], config: Config, path: str) -> list[str]:
    """Every server listens exactly on the configured listen addresses, or (TLS on) exactly on
    tls_listen with ssl; with TLS on, some server does each. No listen parameter beyond those
    (and default_server) passes."""
    flags = {"default_server"} | ({"ssl", "http2"} if config.tls else set())
    wanted = {"plain": sorted(config.listen)}
    if config.tls:
        wanted["ssl"] = sorted(config.tls_listen)
    failures: list[str] = []
    found: set[str] = set()
    for server in parsed:
        if server["directive"] != "server":
            continue
        where = f"{path}:{server['line']}"
        listens = [
            entry["args"] for entry in server.get("block", ()) if entry["directive"] == "listen"
        ]
        for args in listens:
            extra = [flag for flag in args[1:] if flag not in flags]
            if extra:
                failures.append(
                    f"listen {' '.join(args)}: parameter {extra[0]!r} is not one the settings "
                    f"make (in {where})"
                )
        kinds = {"ssl" if "ssl" in args[1:] else "plain" for args in listens} or {"plain"}
        if len(kinds) > 1:
            failures.append(f"a server listens both with and without ssl (in {where})")
            continue
        kind = kinds.pop()
        found.add(kind)
        addresses = sorted(args[0] for args in listens)
        if addresses != wanted.get(kind):
            setting = "tls_listen" if kind == "ssl" else "listen"
            failures.append(
                f"listen addresses {addresses} of a server (in {where}) differ from the "
                f"configured {setting} {wanted.get(kind, '(TLS is off)')}"
            )
    for kind in sorted(wanted.keys() - found):
        setting = "tls_listen" if kind == "ssl" else "listen"
        failures.append(f"no server listens on the configured {setting} {wanted[kind]}")
    return failures


class Span(NamedTuple):
    """One deployment's text in the file check_fragments reads, and what it must hold exactly."""

    lines: range  # the line numbers of its hostname map entries
    routes: Mapping[str, str]  # hostname -> target
    blocks: range  # the line numbers of its upstream blocks
    pools: Mapping[str, Sequence[str]]  # upstream group -> servers


def check_fragments(payload: Mapping[str, Any], path: str, spans: Sequence[Span]) -> list[str]:
    """Check deployments' lines parsed together inside one `map $host $devtest_route` block,
    followed by their upstream blocks.

    `spans` gives each deployment's lines in the file and what they must hold exactly; nothing
    else may stand in the file.
    """
    parsed = _parsed(payload, path)
    if isinstance(parsed, str):
        return [parsed]
    if not parsed or parsed[0]["directive"] != "map" or tuple(parsed[0]["args"]) != ROUTE_MAP:
        return ["a deployment's lines reach outside the hostname map"]
    route_map, *groups = parsed
    outside = sorted({group["directive"] for group in groups if group["directive"] != "upstream"})
    if outside:
        return [
            f"a deployment's lines reach outside the hostname map and its upstream blocks "
            f"({', '.join(repr(name) for name in outside)})"
        ]
    entries = [entry for entry in route_map["block"] if entry["directive"] not in MAP_KEYWORDS]
    failures = [
        f"{entry['directive']!r} inside the hostname map is not a hostname entry"
        for entry in route_map["block"]
        if "block" in entry or entry["directive"] == "include"
    ]
    lines: dict[int, int] = {}  # line -> the span whose map entries hold it
    blocks: dict[int, int] = {}  # line -> the span whose upstream blocks hold it
    for number, span in enumerate(spans):
        lines.update(dict.fromkeys(span.lines, number))
        if span.blocks:
            blocks.update(dict.fromkeys(span.blocks, number))
    inside: list[list[dict[str, Any]]] = [[] for _ in spans]
    stray = 0
    for entry in entries:
        if entry["line"] in lines:
            inside[lines[entry["line"]]].append(entry)
        else:
            stray += 1
    if stray:
        failures.append("the hostname map holds lines of no deployment")
    owned: list[list[dict[str, Any]]] = [[] for _ in spans]
    for group in groups:
        owner = blocks.get(group["line"])
        held = [blocks.get(entry["line"]) for entry in group.get("block", ())]
        if owner is None or any(line != owner for line in held):
            failures.append(
                f"upstream {' '.join(group['args'])} (in {path}:{group['line']}) is not "
                "within one deployment's upstream blocks"
            )
        else:
            owned[owner].append(group)
    for span, found, groups_found in zip(spans, inside, owned, strict=True):
        failures.extend(_compare_routes(found, span.routes))
        failures.extend(_compare_pools(groups_found, span.pools, path))
        failures.extend(_named_pools(span.routes, span.pools))
    return failures


def _compare_pools(
    groups: list[dict[str, Any]], expected: Mapping[str, Sequence[str]], path: str
) -> list[str]:
    """The upstream blocks `groups` are exactly the groups `expected` (name -> servers): each
    once, its servers in order, each `server <address> max_fails=1 fail_timeout=10s;`."""
    if not groups and not expected:  # most deployments: every service has one address
        return []
    failures: list[str] = []
    counts: Counter[str] = Counter()
    for group in groups:
        name = " ".join(group["args"])
        where = f"{path}:{group['line']}"
        counts[name] += 1
        wanted = expected.get(name)
        if wanted is None:
            failures.append(f"upstream {name} (in {where}) is the pool of no route")
            continue
        servers: list[str] = []
        for entry in group.get("block", ()):
            if (
                entry["directive"] != "server"
                or "block" in entry
                or entry["args"][1:] != SERVER_PARAMETERS
            ):
                shown = " ".join([entry["directive"], *entry["args"]])
                failures.append(
                    f"upstream {name} may hold only 'server <address> "
                    f"{' '.join(SERVER_PARAMETERS)}' lines, not {shown!r} "
                    f"(in {path}:{entry['line']})"
                )
                continue
            servers.append(entry["args"][0])
        if servers != list(wanted):
            failures.append(
                f"upstream {name} (in {where}) has servers {servers}, not its pool's {list(wanted)}"
            )
    failures.extend(
        f"upstream {name} is defined {count} times"
        for name, count in sorted(counts.items())
        if count > 1 and name in expected
    )
    failures.extend(
        f"upstream {name}, a route's pool, is missing from the rendered config"
        for name in sorted(expected.keys() - counts.keys())
    )
    return failures


def _named_pools(routes: Mapping[str, str], pools: Mapping[str, Sequence[str]]) -> list[str]:
    """A route whose target names an upstream group (not an address: an address has a colon)
    names one of `pools`, and each of `pools` is named by some route."""
    groups = {pool for target in routes.values() if ":" not in (pool := target.rpartition("/")[2])}
    if not groups and not pools:  # most deployments: every service has one address
        return []
    return [
        f"upstream {pool}, the pool of a route, has no upstream block"
        for pool in sorted(groups - pools.keys())
    ] + [f"upstream {pool} is the pool of no route" for pool in sorted(pools.keys() - groups)]


def _lines(block: list[dict[str, Any]]) -> list[list[str]]:
    """A block's statements as [directive, *args] (a nested block makes it differ from any)."""
    return [
        [entry["directive"], *entry["args"], *(["{"] if "block" in entry else [])]
        for entry in block
    ]


def _check_data_map(found: list[dict[str, Any]], path: str) -> list[str]:
    """One data map (DATA_MAP; `found`: the maps that set its variable), holding exactly
    DATA_MAP_LINES: try_files serves the file it names, so it may name a shard or the 404
    page, nothing else."""
    if len(found) != 1:
        return [f"expected one 'map {' '.join(DATA_MAP)}' block, found {len(found)}"]
    where = f"{path}:{found[0]['line']}"
    if tuple(found[0]["args"]) != DATA_MAP:
        return [f"the map of {DATA_FILE} must be 'map {' '.join(DATA_MAP)}' (in {where})"]
    if _lines(found[0]["block"]) != DATA_MAP_LINES:
        wanted = "; ".join(" ".join(line) for line in DATA_MAP_LINES)
        return [f"the map {DATA_FILE} must hold exactly: {wanted} (in {where})"]
    return []


def _check_map_block(statement: dict[str, Any], where: str) -> list[str]:
    return [
        f"{entry['directive']!r} inside a map block is not allowed (in {where})"
        for entry in statement["block"]
        if entry["directive"] == "include" or "block" in entry
    ]


def _map_entries(entries: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for entry in entries:
        if entry["directive"] not in MAP_KEYWORDS:
            yield entry["directive"], " ".join(entry["args"])


def destination(target: str, servers: Sequence[str] = ()) -> str:
    """Where a route sends requests, as a plan compares routes: its map target, and the servers
    of the upstream group it names (when servers change, the map line stays the same)."""
    return " ".join((target, *servers)) if servers else target


def routes_in(payload: Mapping[str, Any], path: str) -> dict[str, str] | None:
    """hostname -> destination of the routes in a parsed config we wrote; None if not one of
    ours."""
    if payload.get("status") != "ok":
        return None
    for item in payload["config"]:
        if item["file"] != path:
            continue
        groups = {
            " ".join(statement["args"]): [
                entry["args"][0]
                for entry in statement.get("block", ())
                if entry["directive"] == "server" and entry["args"]
            ]
            for statement in item["parsed"]
            if statement["directive"] == "upstream"
        }
        for statement, _ in _walk(item["parsed"]):
            if statement["directive"] == "map" and tuple(statement["args"]) == ROUTE_MAP:
                return {
                    host: destination(target, groups.get(target.rpartition("/")[2], ()))
                    for host, target in _map_entries(statement["block"])
                }
    return None


def _compare_routes(entries: list[dict[str, Any]], expected: Mapping[str, str]) -> list[str]:
    found: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for host, target in _map_entries(entries):
        counts[host] += 1
        found[host] = target
    failures = [
        f"hostname {host} is mapped {count} times" for host, count in counts.items() if count > 1
    ]
    for host in sorted(expected.keys() - found.keys()):
        failures.append(f"route {host} is missing from the rendered config")
    for host in sorted(found.keys() - expected.keys()):
        failures.append(f"hostname {host} is in the rendered config but not in the routing table")
    for host in sorted(expected.keys() & found.keys()):
        if found[host] != expected[host]:
            failures.append(f"hostname {host} maps to {found[host]!r}, not {expected[host]!r}")
    return failures
