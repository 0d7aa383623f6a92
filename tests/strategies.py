"""Hypothesis strategies for registry snapshots, as etcdwatch hands them over.

Two families:

* `arbitrary_snapshots`: etcdwatch-shaped JSON with hostile keys and leaves: every directory a
  dict with arbitrary text keys ('/', '$', ';', '{', quotes, newlines, unicode, lone surrogates
  as JSON's "\\ud800" escapes give them, empty, very long), every leaf a string or null, all
  under {"deployment": ...}. The keys the schema knows ("service", "ip", ...) are drawn often,
  so half-plausible entries reach routing, not just validation.
* `realistic_snapshots`: deployments as CI registers them: git-like branch names, a few service
  names, a mix of good and bad addresses, ports and creation times. A service is registered
  the seed's way (its own ip and port keys), as instances (instance/<id>/ip and port, as
  `register` writes them), or both; some instances are half-written, share an address, or
  have an id of the wrong shape.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

# Characters that mean something to nginx (or to a shell, or to a log line).
NGINX_SPECIAL = ";{}\"'$#\n\\"

SCHEMA_KEYS = ("deployment", "service", "created", "ip", "port", "instance")

# --------------------------------------------------------------------------
# arbitrary text

_hostile_chars = st.sampled_from(
    [
        *NGINX_SPECIAL,
        " ",
        "\t",
        "\r",
        "/",
        "\x00",
        "-",
        "_",
        ".",
        "*",
        "~",
        "é",
        "İ",
        "K",
        "ß",
        "\u200b",
        "\ufeff",
        "\U0001f600",
        "٣",
        "²",
    ]
)
_ascii = st.characters(codec="ascii")
_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

arbitrary_text: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=10),  # any unicode (Hypothesis leaves out surrogates here)
    st.text(st.one_of(_hostile_chars, _ascii), max_size=14),
    st.sampled_from(
        [
            "",
            " ",
            "web",
            "api",
            "x; include /etc/passwd;",
            "a}b{",
            '"q"',
            "$host",
            "a\nb",
            "\\x",
            "# comment",
            "feat/x",
            "../..",
            "*.example.com",
            "default",
            "hostnames",
        ]
    ),
    st.one_of(
        # very long: 30-600 characters, cheap to generate
        st.builds(
            lambda part, times: part * times, st.text(min_size=1, max_size=5), st.integers(30, 120)
        ),
        # lone surrogates: JSON can carry them ("\ud800"), so json.loads hands them over
        st.text(st.one_of(_surrogate, _ascii), min_size=1, max_size=4),
    ),
)

_keys = st.one_of(st.sampled_from([*SCHEMA_KEYS, "web", "api"]), arbitrary_text)


# --------------------------------------------------------------------------
# addresses, ports, times


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(address)


private_v4 = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"),
    st.ip_addresses(network="172.16.0.0/12"),
    st.ip_addresses(network="192.168.0.0/16"),
)
ula_v6 = st.ip_addresses(network="fc00::/7")
loopback = st.one_of(st.ip_addresses(network="127.0.0.0/8"), st.just(ipaddress.ip_address("::1")))
link_local = st.one_of(
    st.ip_addresses(network="169.254.0.0/16"), st.ip_addresses(network="fe80::/10")
)
special = st.sampled_from(
    [
        ipaddress.ip_address(text)
        for text in (
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "255.255.255.255",
            "169.254.169.254",
            "100.64.0.1",
            "fec0::1",
        )
    ]
)
public = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))

ipv4_addresses = st.one_of(
    private_v4,
    st.ip_addresses(network="127.0.0.0/8"),
    st.ip_addresses(network="169.254.0.0/16"),
    st.ip_addresses(v=4),
    st.sampled_from(
        [ipaddress.IPv4Address(t) for t in ("0.0.0.0", "224.0.0.1", "169.254.169.254")]
    ),
)


def _ipv6_forms(address: ipaddress.IPv6Address, form: int) -> str:
    if form == 1:
        return address.exploded
    if form == 2:
        return str(address).upper()
    return str(address)


_mapped = ipv4_addresses.map(lambda a: f"::ffff:{a}")
_mapped_hex = ipv4_addresses.map(lambda a: str(ipaddress.IPv6Address(f"::ffff:{a}")))

ip_strings: st.SearchStrategy[str] = st.one_of(
    private_v4.map(_text),
    private_v4.map(_text),  # twice: most registrations are good
    st.builds(_ipv6_forms, ula_v6, st.integers(0, 2)),
    loopback.map(_text),
    link_local.map(_text),
    special.map(_text),
    public.map(_text),
    _mapped,
    _mapped_hex,
    st.sampled_from(
        [
            "10.0.0",
            "10.0.0.256",
            "10.0.0.1.2",
            "010.0.0.1",
            "localhost",
            "",
            "fe80::1%eth0",
            "10.0.0.1\n",
            " 10.0.0.1",
            "10.0.0.1:80",
            "[fc00::1]",
            "1e10",
            "::ffff:",
            ":::",
        ]
    ),
    st.text(alphabet="0123456789abcdefABCDEF:.", min_size=1, max_size=20),
)

port_strings: st.SearchStrategy[str] = st.one_of(
    st.integers(1, 65535).map(str),
    st.integers(1, 65535).map(str),
    st.sampled_from(
        [
            "0",
            "65535",
            "65536",
            "99999",
            "",
            "-1",
            "80a",
            " 80",
            "80\n",
            "+80",
            "0080",
            "८०",
            "٨٠",
            "²",
            "8_0",
            "1e3",
        ]
    ),
    st.text(max_size=6),
)

# Instance ids: mostly of the right shape (what register picks: --instance, an ECS task id, a
# container's hostname, a random hex id), some not.
instance_ids: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["a", "b", "web-1", "web-2", "0123456789ab", "9f3c2d1e0b7a", "host.local"]),
    st.text(alphabet="0123456789abcdef", min_size=12, max_size=12),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    st.sampled_from(
        ["", "-a", ".a", "_a", "a/b", "a b", "a\n", "a;b", "é", "a" * 128, "a" * 129, "$x"]
    ),
)

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
# A small pool of instants, so that ties (also across different spellings) happen often.
_instants = st.integers(0, 5).map(lambda hours: _EPOCH + timedelta(hours=hours))


def _spell(moment: datetime, style: int) -> str:
    if style == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:  # the same instant at +02:00
        return (moment + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    if style == 2:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    return moment.strftime("%Y-%m-%d %H:%M:%S")  # no zone, a space: not RFC 3339 (refused)


created_strings: st.SearchStrategy[str] = st.one_of(
    st.builds(_spell, _instants, st.integers(0, 3)),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    ),
    st.sampled_from(
        ["2026", "2026-13-01T00:00:00Z", "yesterday", "", "0", "2026-01-01T25:00:00Z", "x" * 65]
    ),
    st.text(max_size=8),
)

# --------------------------------------------------------------------------
# (a) arbitrary etcdwatch-shaped JSON

leaves = st.one_of(st.none(), arbitrary_text, ip_strings, port_strings, created_strings)

trees: st.SearchStrategy[Any] = st.recursive(
    leaves, lambda children: st.dictionaries(_keys, children, max_size=4), max_leaves=12
)

_junk_services = st.dictionaries(
    _keys,
    st.one_of(
        trees,
        # complete-looking: both keys, each value plausible or junk, maybe a stray key beside them
        st.fixed_dictionaries(
            {
                "ip": st.one_of(private_v4.map(_text), ip_strings, leaves),
                "port": st.one_of(st.integers(1, 65535).map(str), port_strings, leaves),
            },
            optional={"ttl": leaves},
        ),
        st.fixed_dictionaries(
            {}, optional={"ip": st.one_of(leaves, trees), "port": st.one_of(leaves, trees)}
        ),
        # instances: ids of any shape, each directory plausible, half-written or junk
        st.fixed_dictionaries(
            {
                "instance": st.one_of(
                    st.dictionaries(
                        st.one_of(st.deferred(lambda: instance_ids), _keys),
                        st.one_of(
                            st.fixed_dictionaries(
                                {
                                    "ip": st.one_of(private_v4.map(_text), ip_strings),
                                    "port": st.one_of(st.integers(1, 65535).map(str), leaves),
                                },
                                optional={"ttl": leaves},
                            ),
                            trees,
                        ),
                        max_size=3,
                    ),
                    leaves,
                )
            },
            optional={"ip": st.one_of(private_v4.map(_text), leaves), "port": leaves},
        ),
    ),
    max_size=3,
)
_plausible_instance = st.fixed_dictionaries(
    {
        "ip": st.one_of(private_v4.map(_text), ula_v6.map(_text), st.deferred(lambda: ip_strings)),
        "port": st.one_of(st.integers(1, 65535).map(str), st.deferred(lambda: port_strings)),
    }
)
_plausible_services = st.dictionaries(
    _keys,
    st.one_of(
        _plausible_instance,
        # several instances (an upstream group), maybe beside the plain keys
        st.builds(
            lambda plain, instances: {**plain, "instance": instances},
            st.one_of(st.just({}), _plausible_instance),
            st.dictionaries(
                st.deferred(lambda: instance_ids), _plausible_instance, min_size=1, max_size=3
            ),
        ),
    ),
    min_size=1,
    max_size=3,
)
_junk_deployments = st.one_of(
    trees,
    # hostile names, plausible services: these reach routing and the rendered text
    st.fixed_dictionaries(
        {"service": _plausible_services}, optional={"created": st.one_of(created_strings, leaves)}
    ),
    st.fixed_dictionaries(
        {"service": st.one_of(_junk_services, _junk_services, trees)},
        optional={"created": st.one_of(created_strings, leaves, trees)},
    ),
    st.fixed_dictionaries(
        {},
        optional={"created": st.one_of(leaves, trees), "service": st.one_of(_junk_services, trees)},
    ),
)

arbitrary_snapshots: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda deployments, siblings: {**siblings, "deployment": deployments},
    st.dictionaries(_keys, _junk_deployments, max_size=6),
    st.dictionaries(_keys, st.one_of(st.none(), trees), max_size=2),
)

# Whatever else a snapshot file could hold: not an object, or no usable 'deployment' key.
outer_junk: st.SearchStrategy[Any] = st.one_of(
    leaves,
    st.lists(leaves, max_size=3),
    st.dictionaries(_keys, trees, max_size=3).filter(lambda d: "deployment" not in d),
    st.builds(lambda value: {"deployment": value}, st.one_of(leaves, st.lists(leaves, max_size=2))),
)

# --------------------------------------------------------------------------
# (b) realistic snapshots

_word = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    min_size=1,
    max_size=10,
)


@st.composite
def _git_name(draw: st.DrawFn) -> str:
    words = draw(st.lists(_word, min_size=1, max_size=4))
    separators = draw(st.lists(st.sampled_from("/-_."), min_size=len(words), max_size=len(words)))
    return words[0] + "".join(
        sep + word for sep, word in zip(separators[1:], words[1:], strict=True)
    )


branch_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(
        [
            "main",
            "master",
            "develop",
            "feature/login",
            "Feature/JIRA-123_login",
            "release/1.2.3",
            "fix/a.b",
            "renovate/npm-lodash-4.x",
            "dependabot/npm_and_yarn/lodash-4.17.21",
            "user/Ünïcødé",
            "HEAD",
            "-leading",
            "trailing/",
            "a" * 70,
            "feature/" + "x" * 60 + "/1",
            "feature/" + "x" * 60 + "/2",
            "日本語",
        ]
    ),
    _git_name(),
    st.text(max_size=12),
)

service_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["web", "api", "worker", "db", "WEB", "admin-ui", "api_v2", "Web"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10),
    st.text(max_size=6),
)

_instance = st.one_of(
    st.fixed_dictionaries({"ip": ip_strings, "port": port_strings}),
    st.fixed_dictionaries({"ip": ip_strings, "port": port_strings}),
    st.fixed_dictionaries({}, optional={"ip": ip_strings, "port": port_strings}),  # half-written
)


@st.composite
def _replicas(draw: st.DrawFn) -> dict[str, Any]:
    """A service registered as instances (register's layout), maybe beside its own ip and port
    keys; replicas often share an address (a compose scale on one host port is not one)."""
    ids = draw(st.lists(instance_ids, min_size=1, max_size=4, unique=True))
    shared = draw(st.fixed_dictionaries({"ip": private_v4.map(_text), "port": port_strings}))
    instances = {id: draw(st.one_of(_instance, st.just(shared))) for id in ids}
    plain = draw(st.one_of(st.just({}), _instance))
    return {**plain, "instance": instances}


services = st.one_of(
    st.fixed_dictionaries({"ip": ip_strings, "port": port_strings}),
    st.fixed_dictionaries({"ip": ip_strings, "port": port_strings}),
    st.fixed_dictionaries({}, optional={"ip": ip_strings, "port": port_strings}),  # half-written
    _replicas(),
    _replicas(),
    st.none(),
)

deployments = st.fixed_dictionaries(
    {},
    optional={
        "created": st.one_of(created_strings, created_strings, st.none()),
        "service": st.dictionaries(service_names, services, max_size=4),
    },
)

realistic_snapshots: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    branch_names, deployments, max_size=8
).map(lambda found: {"deployment": found})


# --------------------------------------------------------------------------
# collisions: names that slugify alike, and <branch>-<service> against <branch-service>


@st.composite
def colliding_snapshots(draw: st.DrawFn) -> dict[str, Any]:
    words = draw(
        st.lists(st.sampled_from(["feat", "x", "login", "api", "a1"]), min_size=1, max_size=3)
    )
    names: list[str] = []
    for _ in range(draw(st.integers(2, 4))):
        separators = [draw(st.sampled_from("-/_.+ ")) for _ in words[1:]]
        name = words[0] + "".join(
            sep + word for sep, word in zip(separators, words[1:], strict=True)
        )
        name = draw(st.sampled_from([name, name.upper(), name.title(), f"/{name}", f"{name}-"]))
        names.append(name)
    # a deployment whose default entry point is <names[0]>-web, i.e. names[0]'s web service
    names.append(draw(st.sampled_from([f"{names[0]}-web", f"{names[0]}/web", "unrelated"])))
    created = st.one_of(
        st.builds(_spell, _instants, st.integers(0, 3)), st.just(None), st.just("garbage")
    )
    found: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {
            "service": draw(
                st.dictionaries(
                    st.sampled_from(["web", "WEB", "api", "Web", "web-api"]),
                    st.fixed_dictionaries(
                        {"ip": private_v4.map(_text), "port": st.integers(1, 65535).map(str)}
                    ),
                    min_size=1,
                    max_size=3,
                )
            )
        }
        when = draw(created)
        if when is not None:
            entry["created"] = when
        found[name] = entry
    return {"deployment": found}
