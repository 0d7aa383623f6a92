"""Fixtures for real nginx, etcd and HTTP backends; the logic lives in harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Backend, Etcd, Nginx, start_backends, start_cluster


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
