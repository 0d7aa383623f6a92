"""Fixtures for real nginx, etcd and HTTP backends (the logic lives in harness.py), the
Hypothesis profile (hypothesis_profiles.py) and the integration marker's rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis_profiles
import pytest
from harness import Backend, Etcd, Nginx, start_backends, start_cluster
from watch_harness import Frontend

# Fixtures that start a server (directly or through one of these): a test using one must be
# marked integration, so that `pytest -m "not integration"` starts none.
SERVER_FIXTURES = frozenset({"nginx", "backends", "etcd", "etcd_cluster", "frontend"})


def pytest_report_header() -> str:
    return f"hypothesis profile: {hypothesis_profiles.PROFILE} (HYPOTHESIS_PROFILE)"


_SERVERS = pytest.StashKey[frozenset[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the integration tests on one xdist worker, one after another (they bind ports and
    start processes), beside the others; note an unmarked test that uses a server fixture."""
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.xdist_group("integration"))
            continue
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if servers:
            item.stash[_SERVERS] = frozenset(servers)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before any fixture starts it, a test that starts a server without the marker."""
    servers = item.stash.get(_SERVERS, None)
    if servers:
        pytest.fail(
            f"{item.nodeid} uses {', '.join(sorted(servers))}, which start a server: "
            "mark it @pytest.mark.integration",
            pytrace=False,
        )


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """A started nginx with an empty conf.d in tmp_path/nginx."""
    server = Nginx(tmp_path / "nginx")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def backends() -> Iterator[Callable[..., dict[str, Backend]]]:
    """Factory: backends("web", "api") -> {"web": Backend, "api": Backend}."""
    started: list[Backend] = []

    def make(*names: str) -> dict[str, Backend]:
        made = start_backends(names)
        started.extend(made.values())
        return made

    try:
        yield make
    finally:
        for backend in started:
            backend.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A healthy single-member etcd (v2 enabled) in tmp_path/etcd."""
    member = Etcd(tmp_path / "etcd")
    try:
        member.start()
        yield member
    finally:
        member.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[Etcd]]:
    """A healthy three-member etcd cluster in tmp_path/etcd-cluster."""
    members = start_cluster(tmp_path / "etcd-cluster", n=3)
    try:
        yield members
    finally:
        for member in members:
            member.stop()


# --------------------------------------------------------------------------
# golden files (tests/test_golden.py): compared by default, rewritten only on request


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite fixtures/<case>/expected* from the current output instead of comparing; "
        "review the result with `git diff fixtures/`",
    )


@dataclass
class Goldens:
    """Whether golden files are rewritten in this run, and which ones were."""

    update: bool
    rewritten: list[Path] = field(default_factory=list)


_GOLDENS = pytest.StashKey[Goldens]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_GOLDENS] = Goldens(update=bool(config.getoption("--update-goldens")))


@pytest.fixture
def goldens(request: pytest.FixtureRequest) -> Goldens:
    return request.config.stash[_GOLDENS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    goldens = terminalreporter.config.stash.get(_GOLDENS, None)
    if goldens is None or not goldens.update:
        return
    terminalreporter.section("--update-goldens")
    for path in goldens.rewritten:
        terminalreporter.write_line(f"rewrote {path}")
    if goldens.rewritten:
        terminalreporter.write_line(
            f"{len(goldens.rewritten)} golden files rewritten: review them with "
            "`git diff fixtures/` before committing"
        )
    else:
        terminalreporter.write_line("every golden file already matched: nothing rewritten")


@pytest.fixture
def frontend(tmp_path: Path, nginx: Nginx) -> Iterator[Callable[..., Frontend]]:
    started: list[Frontend] = []

    def start(url: str, *extra: str) -> Frontend:
        made = Frontend(nginx, url, tmp_path, list(extra))
        made.start()
        started.append(made)
        return made

    try:
        yield start
    finally:
        for made in started:
            made.stop()
