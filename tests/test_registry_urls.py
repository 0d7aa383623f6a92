"""Registry URLs, opening a registry without contacting it, and the snapshot of etcd's keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.cli.exit_codes import code_of
from generator.core.errors import UsageError
from generator.registry.base import Endpoint, Tls
from generator.registry.etcd2 import EtcdV2Registry
from generator.registry.etcd3 import EtcdV3Registry
from generator.registry.file import FileRegistry
from generator.registry.keytree import build_snapshot
from generator.registry.open import open_registry, parse_url

# --------------------------------------------------------------------------------------------
# parse_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://127.0.0.1:2379", ("etcd2", (Endpoint("127.0.0.1", 2379),), False, "")),
        ("etcds://etcd.internal:2379", ("etcd2", (Endpoint("etcd.internal", 2379),), True, "")),
        # REGISTRY_URL as the original registration script uses it: plain v2 over HTTP(S)
        ("http://etcd:2379", ("etcd2", (Endpoint("etcd", 2379),), False, "")),
        ("https://etcd:2379/", ("etcd2", (Endpoint("etcd", 2379),), True, "/")),
        ("etcd3://10.0.0.1:2379", ("etcd3", (Endpoint("10.0.0.1", 2379),), False, "")),
        ("etcd3s://10.0.0.1:2379", ("etcd3", (Endpoint("10.0.0.1", 2379),), True, "")),
        (
            "etcd://a:2379,b:22379,c:32379",
            ("etcd2", (Endpoint("a", 2379), Endpoint("b", 22379), Endpoint("c", 32379)), False, ""),
        ),
        (
            "etcd3://[::1]:2379,[fd00::2]:2379",
            ("etcd3", (Endpoint("::1", 2379), Endpoint("fd00::2", 2379)), False, ""),
        ),
        ("etcd://h:1", ("etcd2", (Endpoint("h", 1),), False, "")),
        ("etcd://h:65535", ("etcd2", (Endpoint("h", 65535),), False, "")),
        ("file:registry.yaml", ("file", (), False, "registry.yaml")),
        ("file:///srv/registry.json", ("file", (), False, "/srv/registry.json")),
        ("file:relative/dir/r.yaml", ("file", (), False, "relative/dir/r.yaml")),
    ],
)
def test_parse_url(url: str, expected: tuple[object, ...]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "unknown scheme"),
        ("localhost:2379", "unknown scheme"),
        ("ftp://etcd:2379", "unknown scheme"),
        ("etcd2://etcd:2379", "unknown scheme"),
        ("etcd://", "is not HOST:PORT"),
        ("etcd://etcd", "is not HOST:PORT"),
        ("etcd://:2379", "is not HOST:PORT"),
        ("etcd://etcd:0", "is not HOST:PORT"),
        ("etcd://etcd:65536", "is not HOST:PORT"),
        ("etcd://etcd:port", "is not HOST:PORT"),
        ("etcd://etcd:-1", "is not HOST:PORT"),
        ("etcd://a:2379,", "is not HOST:PORT"),
        ("etcd3://a:2379,,b:2379", "is not HOST:PORT"),
        ("file:", "needs a path"),
        ("file://", "needs a path"),
    ],
)
def test_bad_url_is_one_usage_error_line(url: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_url(url)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
    assert code_of(caught.value) == 2


# Found while writing these tests: parse_url let these through, or failed with a traceback.
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("etcd://[::1", id="unclosed-ipv6-bracket-raises-ValueError"),
        pytest.param("etcd://user:pw@etcd:2379", id="credentials-become-part-of-the-host"),
        pytest.param("etcd://etcd:\u0662\u0663\u0667\u0669", id="non-ascii-digits-are-a-port"),
        pytest.param("etcd:// etcd:2379", id="space-in-host"),
    ],
)
def test_more_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        parse_url(url)


# --------------------------------------------------------------------------------------------
# open_registry: the right backend, and no connection until first use


def test_open_registry_picks_the_backend_without_connecting() -> None:
    # Port 9 (discard) on loopback: nothing answers, and nothing must be tried yet.
    v2 = open_registry("etcd://127.0.0.1:9,127.0.0.2:9")
    assert isinstance(v2, EtcdV2Registry)
    assert v2.description == "etcd v2 at 127.0.0.1:9,127.0.0.2:9"
    v2.close()
    v3 = open_registry("etcd3://127.0.0.1:9")
    assert isinstance(v3, EtcdV3Registry)
    assert v3.description == "etcd v3 at 127.0.0.1:9"
    v3.close()
    legacy = open_registry("http://127.0.0.1:9")
    assert isinstance(legacy, EtcdV2Registry)
    legacy.close()


def test_open_registry_file(tmp_path: Path) -> None:
    registry = open_registry(f"file:{tmp_path / 'r.yaml'}")
    assert isinstance(registry, FileRegistry)
    assert registry.path == tmp_path / "r.yaml"


@pytest.mark.parametrize("scheme", ["etcd", "etcd3"])
@pytest.mark.parametrize(
    ("tls", "says"),
    [
        (Tls(ca="/ca.pem"), "need a TLS registry URL"),
        (Tls(cert="/c.pem", key="/k.pem"), "need a TLS registry URL"),
        (Tls(user="root"), "needs both --etcd-user and DEVTEST_ROUTER_ETCD_PASSWORD"),
        (Tls(password="pw"), "needs both --etcd-user and DEVTEST_ROUTER_ETCD_PASSWORD"),
    ],
)
def test_inconsistent_tls_and_auth_options(scheme: str, tls: Tls, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_registry(f"{scheme}://127.0.0.1:9", tls)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("scheme", ["etcds", "etcd3s"])
def test_key_without_certificate(scheme: str) -> None:
    with pytest.raises(UsageError, match="--etcd-key needs --etcd-cert"):
        open_registry(f"{scheme}://127.0.0.1:9", Tls(key="/k.pem"))


@pytest.mark.parametrize("scheme", ["etcds", "etcd3s"])
def test_tls_options_on_a_tls_url_are_accepted(scheme: str) -> None:
    tls = Tls(ca="/ca.pem", cert="/c.pem", key="/k.pem", user="root", password="pw")
    open_registry(f"{scheme}://127.0.0.1:9", tls).close()


# --------------------------------------------------------------------------------------------
# build_snapshot


def test_build_snapshot_nests_keys_like_etcdwatch() -> None:
    pairs = [
        ("/deployment/feat-x/created", "2026-11-28T02:00:00Z"),
        ("/deployment/feat-x/service/web/ip", "10.0.3.7"),
        ("/deployment/feat-x/service/web/port", "32768"),
        ("/deployment/feat-x/service/api/ip", "10.0.3.8"),
        ("/deployment/feat-y/service/web/port", "80"),
    ]
    assert build_snapshot(pairs) == {
        "deployment": {
            "feat-x": {
                "created": "2026-11-28T02:00:00Z",
                "service": {
                    "web": {"ip": "10.0.3.7", "port": "32768"},
                    "api": {"ip": "10.0.3.8"},
                },
            },
            "feat-y": {"service": {"web": {"port": "80"}}},
        }
    }


def test_build_snapshot_empty() -> None:
    assert build_snapshot([]) == {"deployment": {}}


def test_build_snapshot_leaves_out_empty_directories() -> None:
    # etcd v2 keeps directories after their keys expire: a service whose TTL ran out is gone,
    # not half-written (which would be reported as a problem until someone cleaned up)
    pairs: list[tuple[str, str | None]] = [
        ("/deployment/feat-x/service/web", None),
        ("/deployment/feat-x/service/api/ip", "10.0.0.1"),
        ("/deployment/feat-y", None),
    ]
    assert build_snapshot(pairs) == {
        "deployment": {"feat-x": {"service": {"api": {"ip": "10.0.0.1"}}}}
    }


def test_build_snapshot_ignores_keys_outside_the_prefix() -> None:
    pairs: list[tuple[str, str | None]] = [
        ("/deployment", None),
        ("/deployment", "a value on the prefix itself"),
        ("/deploymentx/feat-x/created", "x"),
        ("/other/feat-x/created", "x"),
        ("deployment/feat-x/created", "no leading slash"),
        ("/deployment/", "empty branch"),
    ]
    assert build_snapshot(pairs) == {"deployment": {}}


def test_build_snapshot_directory_beats_leaf_in_either_order() -> None:
    leaf_first = [
        ("/deployment/feat-x/service", "stray"),
        ("/deployment/feat-x/service/web/ip", "10.0.3.7"),
    ]
    dir_first = list(reversed(leaf_first))
    expected = {"deployment": {"feat-x": {"service": {"web": {"ip": "10.0.3.7"}}}}}
    assert build_snapshot(leaf_first) == expected
    assert build_snapshot(dir_first) == expected


def test_build_snapshot_unslugified_branch_nests() -> None:
    pairs = [("/deployment/feature/foo/service/web/ip", "10.0.3.7")]
    assert build_snapshot(pairs) == {
        "deployment": {"feature": {"foo": {"service": {"web": {"ip": "10.0.3.7"}}}}}
    }
