"""The trust file: a new process (etcdwatch's child, a restarted watcher) parses again only
the parts of the file that changed since the last apply that passed the check and nginx's
tests. A changed part is always parsed: its digest is another."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from generator import resources
from generator.core.config import Config, resolve
from generator.core.errors import ApplyError, InternalError
from generator.core.pipeline import build
from generator.core.render import Fragment, environment
from generator.nginx import apply
from generator.nginx.apply import Checker, trust_file

TEMPLATES = environment(resources.template_loader())
SCHEMA = resources.schema("snapshot")


def config(folder: Path) -> Config:
    """Applies into `folder`, with `true` as nginx's test and reload (no nginx needed: the
    check, crossplane's parse-back, is what the trust file is about)."""
    return resolve(
        resources.schema("config"),
        {
            "domain": "dev.test",
            "allow_loopback": True,
            "output": str(folder / "routes.conf"),
            "site_dir": str(folder / "site"),
            "test_command": "true",
            "reload_command": "true",
            "force": True,  # the safety threshold is not what this is about
        },
        {},
    )


def snapshot(ports: dict[str, int]) -> dict[str, Any]:
    return {
        "deployment": {
            name: {"service": {"web": {"ip": "127.0.0.1", "port": str(port)}}}
            for name, port in ports.items()
        }
    }


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.dictionaries(strategies.branch_names, st.integers(8000, 8005), min_size=1, max_size=6),
    st.dictionaries(strategies.branch_names, st.integers(8000, 8005), min_size=1, max_size=6),
)
def test_a_new_process_parses_exactly_the_parts_that_changed(
    tmp_path_factory: pytest.TempPathFactory, before: dict[str, int], after: dict[str, int]
) -> None:
    folder = tmp_path_factory.mktemp("trust")
    settings_ = config(folder)
    first = build(snapshot(before), settings_, SCHEMA, TEMPLATES)
    apply.apply(first, settings_, Checker())
    assert trust_file(Path(settings_.output)).is_file()

    second = build(snapshot(after), settings_, SCHEMA, TEMPLATES)
    checker = Checker()  # a new process's: it knows only the trust file
    apply.apply(second, settings_, checker)
    changed = [part for part in second.fragments if part not in first.fragments]
    assert checker.parsed == len(changed)
    assert Path(settings_.output).read_text(encoding="utf-8") == second.text


def test_a_forged_part_is_parsed_and_refused_though_its_deployment_was_trusted(
    tmp_path: Path,
) -> None:
    settings_ = config(tmp_path)
    good = build(snapshot({"a": 8001, "b": 8002}), settings_, SCHEMA, TEMPLATES)
    apply.apply(good, settings_, Checker())
    # the same table, but a's lines say something else: another digest, so parsed, refused
    first, *rest = good.fragments
    forged = first._replace(lines=Fragment(first.lines.replace("127.0.0.1:8001", "127.0.0.1:9")))
    bad = dataclasses.replace(good, fragments=(forged, *rest))
    checker = Checker()
    with pytest.raises(InternalError, match="maps to"):
        apply.plan(bad, settings_, checker)
    assert checker.parsed == 1


def test_a_trust_file_of_another_check_trusts_nothing(tmp_path: Path) -> None:
    settings_ = config(tmp_path)
    rendered = build(snapshot({"a": 8001, "b": 8002, "c": 8003}), settings_, SCHEMA, TEMPLATES)
    apply.apply(rendered, settings_, Checker())
    checker = Checker()
    apply.plan(rendered, settings_, checker)
    assert checker.parsed == 0  # all three known to pass
    path = trust_file(Path(settings_.output))
    version, *digests = path.read_text(encoding="utf-8").splitlines()
    assert len(digests) == 3
    path.write_text("\n".join([version + " (another)", *digests]) + "\n", encoding="utf-8")
    checker = Checker()
    apply.plan(rendered, settings_, checker)
    assert checker.parsed == 3
    path.write_text(version + "\nnot hex\n", encoding="utf-8")  # a broken file: ignored
    checker = Checker()
    apply.plan(rendered, settings_, checker)
    assert checker.parsed == 3


def test_a_refused_apply_writes_no_trust(tmp_path: Path) -> None:
    settings_ = dataclasses.replace(config(tmp_path), test_command="false")
    rendered = build(snapshot({"a": 8001}), settings_, SCHEMA, TEMPLATES)
    with pytest.raises(ApplyError, match="failed"):
        apply.apply(rendered, settings_, Checker())
    assert not trust_file(Path(settings_.output)).exists()


def test_a_trusted_part_is_held_to_the_pools_of_the_parts_beside_it(tmp_path: Path) -> None:
    # Parts that passed together share no upstream pool. A trusted part passed beside other
    # parts than today's: it must still be held to theirs.
    settings_ = config(tmp_path)
    replicas = {"ip": "127.0.0.1", "port": "8001"}, {"ip": "127.0.0.1", "port": "8002"}
    two = {"service": {"web": {"instance": {"i1": replicas[0], "i2": replicas[1]}}}}
    rendered = build({"deployment": {"a": two}}, settings_, SCHEMA, TEMPLATES)
    (part,) = rendered.fragments
    assert part.pools, "a service of two instances has an upstream pool"
    # another deployment's part naming the same pool (hostnames z-web, z instead of a-web, a)
    twin = part._replace(
        lines=Fragment(part.lines.replace(" a-web.", " z-web.").replace(" a.", " z.")),
        routes=frozenset((host.replace("a", "z", 1), target) for host, target in part.routes),
    )
    checker = Checker()
    checker.trust(frozenset({apply.part_digest(part)}))  # as from a trust file
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    checker(dataclasses.replace(rendered, fragments=(twin,)), settings_, tmp_path / "1")
    with pytest.raises(InternalError, match="is the pool of two deployments"):
        checker(dataclasses.replace(rendered, fragments=(part, twin)), settings_, tmp_path / "2")
