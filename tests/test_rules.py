"""Issue 10, the rules of settings and snapshot values: every setting validated with its real
rule, malformed snapshot content a problem (never an internal error), and the addresses that
are refused whatever allowed_networks says.

Everything runs generator.cli.main.main() in-process (as test_cli does) or calls the pure functions;
no server is started.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples
from test_cli import CLEAN, cli, one_error_line
from test_routing import config

from generator.core.errors import SnapshotError, UsageError
from generator.core.routing import ALWAYS_REFUSED, guard
from generator.core.snapshot import loads
from generator.core.validate import SnapshotValidator, parse_time, validate
from generator.register import settings as register
from generator.registry.open import parse_url
from generator.resources import schema, template_loader

HUGE = "9" * 5000  # past Python's int-string limit (4,300 digits)

# --------------------------------------------------------------------------------------------
# Low 1: nan and inf are refused for every number setting, from every entry point


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
@pytest.mark.parametrize(
    "variable", ["QUIET_PERIOD", "MAX_WAIT", "MAX_REMOVED_FRACTION", "RESYNC_INTERVAL"]
)
def test_a_number_setting_from_the_environment_must_be_finite(variable: str, value: str) -> None:
    result = cli("render", stdin=CLEAN, environ={f"DEVTEST_ROUTER_{variable}": value})
    one_error_line(result, 2, variable.lower(), f"DEVTEST_ROUTER_{variable}", "finite")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_number_setting_from_the_config_file_must_be_finite(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"quiet_period: {value}\n", encoding="utf-8")
    result = cli("render", "--config", str(path), stdin=CLEAN)
    one_error_line(result, 2, "quiet_period", str(path), "finite")


@pytest.mark.parametrize("flag", ["--quiet-period", "--max-wait", "--removal-grace"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_number_flag_of_watch_must_be_finite(tmp_path: Path, flag: str, value: str) -> None:
    registry = f"file:{tmp_path / 'registry.json'}"  # never read: the settings stop it first
    result = cli("watch", "--registry", registry, flag, value)
    one_error_line(result, 2, flag, "finite")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf", "1e999"])
def test_wait_timeout_is_a_finite_number_0_or_more(value: str) -> None:
    result = cli("wait", "--name", "b", "--frontend", "http://127.0.0.1:9", f"--timeout={value}")
    one_error_line(result, 2, "--timeout", "a finite number, 0 (one try) or more")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_register_drain_is_a_finite_number(value: str) -> None:
    with pytest.raises(UsageError, match="drain"):
        register.parse_drain(value, "--drain")


@pytest.mark.parametrize("text", [HUGE, "0" * 5000 + "80", "99999"])
def test_register_port_of_many_digits_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="not a port number"):
        register.parse_port(text, "PORT", "PORT")


def test_register_ttl_of_many_digits_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="TTL"):
        register.parse_ttl(HUGE, "DEVTEST_ROUTER_TTL")


def test_an_integer_setting_of_many_digits_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("render", stdin=CLEAN, environ={"DEVTEST_ROUTER_REMOVAL_GUARD_MIN_ROUTES": HUGE})
    one_error_line(result, 2, "removal_guard_min_routes", "DEVTEST_ROUTER_REMOVAL_GUARD_MIN")
    path = tmp_path / "config.yaml"
    path.write_text(f"removal_guard_min_routes: {HUGE}\n", encoding="utf-8")
    result = cli("render", "--config", str(path), stdin=CLEAN)
    one_error_line(result, 2, "removal_guard_min_routes", str(path))


# --------------------------------------------------------------------------------------------
# Low 8: listen addresses, domains and the registry URL's path


BAD_LISTEN = ["99999", "0", "65536", "080", "999.999.999.999:80", "[:::::]:80", "1.2.3.4:0"]


@pytest.mark.parametrize("value", BAD_LISTEN)
@pytest.mark.parametrize("command", ["check", "render", "apply"])
def test_a_listen_address_is_checked_with_its_rule(
    command: str, value: str, tmp_path: Path
) -> None:
    extra = ["--output", str(tmp_path / "out.conf")] if command == "apply" else []
    extra += ["--reload-command", "true"] if command == "apply" else []
    result = cli(command, *extra, "--listen", value, stdin=CLEAN)
    line = one_error_line(result, 2, "listen", value, "PORT", "IPV4:PORT", "[IPV6]:PORT")
    assert "1-65535" in line or "not an IP" in line
    assert result.out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "99999", "999.999.999.999:443", "[:::::]:443"])
def test_a_tls_listen_address_is_checked_with_its_rule(value: str) -> None:
    one_error_line(
        cli("check", stdin=CLEAN, environ={"DEVTEST_ROUTER_TLS_LISTEN": value}),
        2,
        "tls_listen",
        value,
        "DEVTEST_ROUTER_TLS_LISTEN",
    )


@pytest.mark.parametrize(
    "value", ["80", "8080", "65535", "127.0.0.1:8080", "0.0.0.0:80", "[::]:80", "[::1]:8080"]
)
def test_good_listen_addresses_still_pass(value: str) -> None:
    assert cli("check", "--listen", value, stdin=CLEAN).code == 0


@pytest.mark.parametrize("value", ["com", "1.2.3.4", "10.0.0.1", "dev.123"])
@pytest.mark.parametrize("command", ["check", "render", "apply"])
def test_a_domain_needs_a_dot_and_is_no_ip_address(
    command: str, value: str, tmp_path: Path
) -> None:
    extra = ["--output", str(tmp_path / "out.conf")] if command == "apply" else []
    extra += ["--reload-command", "true"] if command == "apply" else []
    result = cli(command, *extra, "--domain", value, stdin=CLEAN)
    one_error_line(result, 2, "domain", value, "--domain", "dot")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["localhost", "dev.example.com", "a.b", "x1.dev-1.io"])
def test_good_domains_still_pass(value: str) -> None:
    assert cli("check", "--domain", value, stdin=CLEAN).code == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2379/v2/keys/otherprefix",
        "http://127.0.0.1:2379/deployment",
        "etcd://127.0.0.1:2379/x",
        "etcd3://127.0.0.1:2379//",
        "etcd://127.0.0.1:2379/?prefix=x",
        "etcd://127.0.0.1:2379#x",
    ],
)
def test_a_registry_url_path_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_url(url)
    message = str(caught.value)
    assert "/deployment" in message and "fixed" in message
    assert "\n" not in message
    result = cli("snapshot", "--registry", url)
    one_error_line(result, 2, "fixed at /deployment")


@pytest.mark.parametrize("url", ["http://127.0.0.1:2379", "http://127.0.0.1:2379/"])
def test_a_registry_url_without_a_path_or_with_slash_is_taken(url: str) -> None:
    assert parse_url(url)[0] == "etcd2"


# --------------------------------------------------------------------------------------------
# Low 5: more internal errors that were bad input


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        (None, "value-too-large"),  # 4,301 digits are more than max_value_bytes' 4096
        ("8192", "bad-port"),  # within the limit, the number is read as text: not a port
    ],
)
def test_a_json_port_of_more_than_4300_digits_is_a_port_problem(
    limit: str | None, code: str
) -> None:
    snapshot = {
        "deployment": {
            **CLEAN["deployment"],
            "b": {"service": {"web": {"ip": "10.0.0.1", "port": 1}}},
        }
    }
    text = json.dumps(snapshot).replace('"port": 1}', f'"port": {HUGE}}}')
    environ = {"DEVTEST_ROUTER_MAX_VALUE_BYTES": limit} if limit else {}
    result = cli("check", "--json", stdin=text, environ=environ)
    assert result.code == 0, result.err
    problems = json.loads(result.out)["problems"]
    assert [(p["key"], p["code"]) for p in problems] == [
        ("/deployment/b", "no-services"),
        ("/deployment/b/service/web/port", code),
    ]
    assert len(problems[1]["message"]) < 400


@pytest.mark.parametrize(
    ("limit", "code"), [(None, "value-too-large"), ("8192", "bad-port")]
)  # as for JSON above
def test_a_yaml_port_of_more_than_4300_digits_is_a_port_problem(
    limit: str | None, code: str
) -> None:
    text = f"deployment:\n  b:\n    service:\n      web: {{ip: 10.0.0.1, port: {HUGE}}}\n"
    environ = {"DEVTEST_ROUTER_MAX_VALUE_BYTES": limit} if limit else {}
    result = cli("check", "--json", stdin=text, environ=environ)
    assert result.code == 0, result.err
    assert code in [p["code"] for p in json.loads(result.out)["problems"]]


def test_a_config_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"domain: caf\xe9.example.com\n")
    result = cli("render", "--config", str(path), stdin=CLEAN)
    one_error_line(result, 2, str(path), "UTF-8")


# --------------------------------------------------------------------------------------------
# Low 9: a key given twice in a snapshot


def checked(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    result = cli("check", "--json", "--allow-loopback", stdin=text)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    hosts = sorted(route["host"] for route in document["routes"])
    return hosts, [(p["key"], p["code"], p["message"]) for p in document["problems"]]


GOOD_MASTER = '"master": {"service": {"web": {"ip": "10.0.0.5", "port": "8080"}}}'


@pytest.mark.parametrize(
    ("body", "key", "values"),
    [
        (
            '"b": {"service": {"web": {"ip": "169.254.169.254", "ip": "10.0.0.1", "port": "80"}}}',
            "/deployment/b/service/web/ip",
            ("169.254.169.254", "10.0.0.1"),
        ),
        (
            '"b": {"service": {"web": {"ip": "10.0.0.1", "port": "80", "port": "81"}}}',
            "/deployment/b/service/web/port",
            ("80", "81"),
        ),
        (
            '"b": {"service": {"web": {"instance": {"i": {"ip": "10.0.0.2", "port": "80",'
            ' "ip": "10.0.0.3"}}}}}',
            "/deployment/b/service/web/instance/i/ip",
            ("10.0.0.2", "10.0.0.3"),
        ),
        (
            '"b": {"service": {"web": {"ip": "10.0.0.1", "port": "80"}}}, '
            '"b": {"service": {"web": {"ip": "10.0.0.2", "port": "80"}}}',
            "/deployment/b",
            ("a directory", "a directory"),
        ),
        (
            '"b": {"created": "2026-01-01T00:00:00Z", "created": "2020-01-01T00:00:00Z",'
            ' "service": {"web": {"ip": "10.0.0.1", "port": "80"}}}',
            "/deployment/b/created",
            ("2026-01-01T00:00:00Z", "2020-01-01T00:00:00Z"),
        ),
    ],
)
def test_a_key_given_twice_in_json_skips_its_deployment(
    body: str, key: str, values: tuple[str, str]
) -> None:
    hosts, problems = checked('{"deployment": {' + GOOD_MASTER + ", " + body + "}}")
    assert hosts == ["master-web.localhost", "master.localhost"]  # the others still route
    assert [(k, code) for k, code, _ in problems] == [(key, "duplicate-key")]
    message = problems[0][2]
    assert all(value in message for value in values), message
    assert "the deployment is skipped" in message


def test_a_key_given_twice_in_yaml_skips_its_deployment() -> None:
    text = (
        "deployment:\n"
        "  master: {service: {web: {ip: 10.0.0.5, port: '8080'}}}\n"
        "  b:\n"
        "    service:\n"
        "      web:\n"
        "        ip: 169.254.169.254\n"
        "        port: '80'\n"
        "        ip: 10.0.0.1\n"
    )
    hosts, problems = checked(text)
    assert hosts == ["master-web.localhost", "master.localhost"]
    assert [(k, code) for k, code, _ in problems] == [
        ("/deployment/b/service/web/ip", "duplicate-key")
    ]
    assert "169.254.169.254" in problems[0][2] and "10.0.0.1" in problems[0][2]


def test_a_key_given_twice_in_yaml_through_a_merge_key_is_no_duplicate() -> None:
    # YAML's << merge is how a hand-written file shares keys: an explicit key overrides it
    text = (
        "base: &base {ip: 10.0.0.1, port: '80'}\n"
        "deployment:\n"
        "  b: {service: {web: {<<: *base, port: '81'}}}\n"
    )
    hosts, problems = checked(text)
    assert hosts == ["b-web.localhost", "b.localhost"]
    assert problems == []


@pytest.mark.parametrize(
    "text",
    ['{"deployment": {}, "deployment": {}}', "deployment: {}\ndeployment: {}\n"],
)
def test_the_deployment_key_given_twice_makes_the_snapshot_unusable(text: str) -> None:
    with pytest.raises(SnapshotError, match="twice"):
        loads(text)


def test_a_duplicate_decides_the_same_on_a_kept_pipeline() -> None:
    # the watcher keeps work per deployment by content: a deployment with a duplicate must not
    # be taken for the same deployment without it
    from generator.core.render import environment
    from generator.watch.engine import Build

    pipeline = Build(config(), schema("snapshot"), environment(template_loader()))
    good = '{"deployment": {"b": {"service": {"web": {"ip": "10.0.0.1", "port": "80"}}}}}'
    twice = good.replace('"ip": "10.0.0.1"', '"ip": "169.254.169.254", "ip": "10.0.0.1"')
    assert [r.host for r in pipeline(loads(good)).table.routes]
    assert pipeline(loads(twice)).table.routes == ()
    assert [r.host for r in pipeline(loads(good)).table.routes]


# --------------------------------------------------------------------------------------------
# Low 10: created is RFC 3339 exactly; a port is an integer without leading zeros


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01",
        "20260101T000000",
        "2026-W01-1",
        "2026-01-01T00:00:00",  # no offset: RFC 3339 requires one
        "2026-01-01 00:00:00Z",  # a space for T
        "2026-01-01T00:00Z",  # no seconds
        "2026-01-01T00:00:00+0100",  # an offset without its colon
        "2026-01-01T00:00:00+01",
        "2026-001T00:00:00Z",  # ordinal date
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00Z\n",
        "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # non-ASCII digits
        "2026-01-01T24:00:00Z",
        "2026-02-30T00:00:00Z",
    ],
)
def test_created_that_is_not_rfc_3339_is_refused(text: str) -> None:
    assert parse_time(text) is None
    deployments, problems = validate(
        {
            "deployment": {
                "b": {"created": text, "service": {"w": {"ip": "10.0.0.1", "port": "80"}}}
            }
        },
        SnapshotValidator(schema("snapshot")),
    )
    assert deployments[0].created is None
    assert [(p.key, p.code) for p in problems] == [("/deployment/b/created", "bad-created")]
    assert "RFC 3339" in problems[0].message


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00"),
        ("2026-01-01t00:00:00z", "2026-01-01T00:00:00+00:00"),
        ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00+00:00"),
        ("2025-12-31T23:00:00-01:00", "2026-01-01T00:00:00+00:00"),
        ("2026-01-01T00:00:00.123456Z", "2026-01-01T00:00:00.123456+00:00"),
        ("2026-01-01T00:00:00.5+00:00", "2026-01-01T00:00:00.500000+00:00"),
    ],
)
def test_rfc_3339_times_are_read(text: str, utc: str) -> None:
    parsed = parse_time(text)
    assert parsed is not None and parsed.isoformat() == utc


def test_date_u_output_is_a_valid_created() -> None:
    import subprocess

    text = subprocess.run(
        ["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert parse_time(text) is not None


@pytest.mark.parametrize("port", ["080", "0080", "00001", "0"])
def test_a_port_with_a_leading_zero_is_a_bad_port(port: str) -> None:
    _, problems = validate(
        {"deployment": {"b": {"service": {"w": {"ip": "10.0.0.1", "port": port}}}}},
        SnapshotValidator(schema("snapshot")),
    )
    assert ("/deployment/b/service/w/port", "bad-port") in [(p.key, p.code) for p in problems]
    assert isinstance(guard("10.0.0.1", port, config()), str)


@pytest.mark.parametrize("port", ["010", "0x50", "1:20", "8_0", "0o120"])
def test_a_yaml_port_is_read_as_written_not_as_octal_or_sexagesimal(port: str) -> None:
    text = f"deployment:\n  b:\n    service:\n      web: {{ip: 10.0.0.1, port: {port}}}\n"
    result = cli("check", "--json", stdin=text)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["routes"] == []
    assert "bad-port" in [p["code"] for p in document["problems"]]


def test_a_yaml_port_written_as_a_plain_integer_still_routes() -> None:
    text = "deployment:\n  b:\n    service:\n      web: {ip: 10.0.0.1, port: 8080}\n"
    result = cli("check", "--json", stdin=text)
    assert [r["upstream"] for r in json.loads(result.out)["routes"]] == ["10.0.0.1:8080"] * 2


@pytest.mark.parametrize("port", ["1", "80", "8080", "65535"])
def test_ports_without_leading_zeros_pass(port: str) -> None:
    assert not isinstance(guard("10.0.0.1", port, config()), str)


# --------------------------------------------------------------------------------------------
# Low 11: metadata addresses are refused whatever allowed_networks says

WIDE: dict[str, Any] = {"allowed_networks": ["0.0.0.0/0", "::/0"]}


@pytest.mark.parametrize(
    "ip",
    [
        "::a9fe:a9fe",  # IPv4-compatible (deprecated, RFC 4291)
        "::169.254.169.254",
        "::ffff:0:a9fe:a9fe",  # IPv4-translated (RFC 2765)
        "::ffff:0:169.254.169.254",
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 (RFC 8215)
        "64:ff9b:1:a9fe:a9:fe00::",  # the same prefix, the /48 layout
        "100.100.100.200",  # Alibaba Cloud's metadata service
        "::ffff:100.100.100.200",
        "64:ff9b::6464:64c8",
        "192.0.0.192",  # Oracle Cloud's metadata service
        "2002:c000:00c0::1",  # 6to4 of 192.0.0.192
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "fd00:ec2::254",
    ],
)
def test_metadata_addresses_are_refused_whatever_allowed_networks_says(ip: str) -> None:
    why = guard(ip, "80", config(**WIDE, allow_loopback=True))
    assert isinstance(why, str) and "always refused" in why, (ip, why)


@pytest.mark.parametrize(
    "ip", ["10.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2001:db8::1", "100.100.100.201"]
)
def test_wide_allowed_networks_still_route_other_addresses(ip: str) -> None:
    assert not isinstance(guard(ip, "80", config(**WIDE)), str), ip


def test_an_ipv4_compatible_address_is_judged_as_its_ipv4_host() -> None:
    # ::a00:1 is 10.0.0.1 in the deprecated IPv4-compatible form: it passes the default
    # networks only if both forms do, and the IPv6 form lies in none of them
    assert isinstance(guard("::a00:1", "80", config()), str)
    assert isinstance(guard("::7f00:1", "80", config(**WIDE)), str)  # 127.0.0.1: loopback
    assert not isinstance(guard("::1", "80", config(**WIDE, allow_loopback=True)), str)


def test_every_always_refused_host_network_is_documented_in_security_md() -> None:
    listed = {str(network) for network, _ in ALWAYS_REFUSED}
    for network in ("64:ff9b:1::/48", "100.100.100.200/32", "192.0.0.192/32"):
        assert network in listed
        assert ipaddress.ip_network(network)


IPV4_REFUSED = [network for network, _ in ALWAYS_REFUSED if network.version == 4]


@settings(max_examples=examples(300), derandomize=True, deadline=None, database=None)
@given(st.sampled_from(IPV4_REFUSED), st.integers(0, 2**32 - 1))
def test_every_ipv6_form_of_an_always_refused_ipv4_host_is_refused(
    network: ipaddress.IPv4Network, bits: int
) -> None:
    host = ipaddress.IPv4Address(int(network.network_address) | (bits & int(network.hostmask)))
    value = int(host)
    forms = [
        str(host),
        f"::ffff:{host}",  # IPv4-mapped
        str(ipaddress.IPv6Address((0xFFFF << 32) + value)),  # IPv4-translated
        # IPv4-compatible (not ::1: that is IPv6's loopback, never 0.0.0.1)
        *([str(ipaddress.IPv6Address(value))] if value != 1 else []),
        str(ipaddress.IPv6Address((0x64FF9B << 96) + value)),  # NAT64
        str(ipaddress.IPv6Address((0x2002 << 112) + (value << 80))),  # 6to4
    ]
    wide = config(**WIDE, allow_loopback=True)
    for form in forms:
        why = guard(form, "80", wide)
        assert isinstance(why, str) and "always refused" in why, (form, why)
