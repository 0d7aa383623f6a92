"""Golden files: every case in fixtures/ through the real CLI, compared byte for byte.

A case is a folder fixtures/<case>/ named for the behaviour it pins down. It holds the input

    snapshot.json or snapshot.yaml   the registry as etcdwatch hands it over (or YAML by hand)
    config.yaml                      the settings (--config)

and what devtest-router prints for it:

    expected.conf                    stdout of `devtest-router render`
    expected-table.json              stdout of `devtest-router check --json`
    expected-problems.txt            stderr of `devtest-router render`: one line per problem
    expected-site/                   the site apply writes into site_dir (generator/site/pages.py):
                                     index.html, deployments.json and the 404 pages

After a change that is meant to change the output, regenerate and review what changed:

    make goldens   # = .venv/bin/pytest tests/test_golden.py --update-goldens
    git diff fixtures/

The expected files are never rewritten without that flag.
"""

from __future__ import annotations

import difflib
import functools
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from generator.cli.main import main
from generator.core.config import resolve
from generator.core.pipeline import build
from generator.core.render import TEMPLATE, environment
from generator.core.snapshot import loads
from generator.resources import data_dir, schema, template_loader
from generator.site import pages as site

if TYPE_CHECKING:
    from conftest import Goldens

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SNAPSHOTS = ("snapshot.json", "snapshot.yaml")
CONFIG = "config.yaml"
CONF, TABLE, PROBLEMS = "expected.conf", "expected-table.json", "expected-problems.txt"
EXPECTED = (CONF, TABLE, PROBLEMS)
SITE = "expected-site"
REGENERATE = "make goldens (.venv/bin/pytest tests/test_golden.py --update-goldens)"
PROBLEM_PREFIX = "devtest-router: problem: "

# Diffs of the hostile case hold 10,000-character lines: show enough to see, not all of it.
DIFF_LINE_WIDTH = 240
DIFF_MAX_LINES = 150


def case_names() -> list[str]:
    return sorted(entry.name for entry in FIXTURES.iterdir() if entry.is_dir())


CASES = case_names()


# --------------------------------------------------------------------------
# running the CLI


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def cli(argv: list[str], stdin: str = "") -> Run:
    """devtest-router in-process, with no DEVTEST_ROUTER_* variables from the caller's shell."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=stdout, stderr=stderr, environ={})
    return Run(code, stdout.getvalue(), stderr.getvalue())


def snapshot_path(case: Path) -> Path:
    found = [case / name for name in SNAPSHOTS if (case / name).is_file()]
    assert len(found) == 1, f"{case}: a case needs exactly one of {', '.join(SNAPSHOTS)}"
    assert (case / CONFIG).is_file(), f"{case}: a case needs a {CONFIG}"
    return found[0]


def produce(case: Path, stdin: str | None = None) -> dict[str, str]:
    """What the expected files of `case` should hold, freshly rendered.

    With `stdin`, the snapshot is read from standard input instead of the case's file.
    """
    snapshot = str(snapshot_path(case)) if stdin is None else "-"
    settings = ["--config", str(case / CONFIG), snapshot]
    render = cli(["render", *settings], stdin or "")
    assert render.code == 0, (
        f"{case.name}: `devtest-router render` exited {render.code}:\n{render.stderr}"
    )
    check = cli(["check", "--json", *settings], stdin or "")
    assert check.code == 0, (
        f"{case.name}: `devtest-router check --json` exited {check.code}:\n{check.stderr}"
    )
    produced = {CONF: render.stdout, TABLE: check.stdout, PROBLEMS: render.stderr}
    return produced | site_files(case, stdin)


@functools.cache
def _produced_once(case: Path) -> dict[str, str]:
    return produce(case)


def produced(case: Path) -> dict[str, str]:
    """produce(case), rendered once per process for every test that reads it (a copy); the
    tests that compare two renders make the second one with produce()."""
    return dict(_produced_once(case))


def site_files(case: Path, stdin: str | None = None) -> dict[str, str]:
    """The site apply would write for `case`: expected-site/<path> -> text. The same settings
    and pipeline as the CLI (no CLI command prints the site; apply writes it)."""
    config_file = case / CONFIG
    config = resolve(
        schema("config"), {}, {}, yaml.safe_load(config_file.read_text()), str(config_file)
    )
    path = snapshot_path(case)
    text = path.read_text(encoding="utf-8") if stdin is None else stdin
    rendered = build(
        loads(text, str(path)), config, schema("snapshot"), environment(template_loader())
    )
    files = site.render_site(rendered.table, config, site.environment(template_loader()))
    return {f"{SITE}/{name}": data.decode("utf-8") for name, data in files.items()}


def expected_names(case: Path) -> list[str]:
    """The expected files `case` holds: the three texts and every file under expected-site/."""
    folder = case / SITE
    found = (
        sorted(str(path.relative_to(case)) for path in folder.rglob("*") if path.is_file())
        if folder.is_dir()
        else []
    )
    return [*EXPECTED, *found]


# --------------------------------------------------------------------------
# comparing and rewriting


def _clip(line: str) -> str:
    body = line.rstrip("\n")
    if len(body) > DIFF_LINE_WIDTH:
        body = f"{body[:DIFF_LINE_WIDTH]}... [{len(body) - DIFF_LINE_WIDTH} more characters]"
    return body + "\n"


def mismatch(path: Path, actual: str) -> str | None:
    """None if `path` holds exactly the bytes of `actual`, else a report with a unified diff."""
    want = actual.encode("utf-8")
    try:
        have = path.read_bytes()
    except FileNotFoundError:
        return f"{path} is missing. Create it with: {REGENERATE}"
    if have == want:
        return None
    first = next(
        (i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b),
        min(len(have), len(want)),
    )
    diff = list(
        difflib.unified_diff(
            have.decode("utf-8", errors="replace").splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{path} (expected)",
            tofile=f"{path.name} (actual output)",
        )
    )
    shown = [_clip(line) for line in diff[:DIFF_MAX_LINES]]
    if len(diff) > DIFF_MAX_LINES:
        shown.append(f"... [{len(diff) - DIFF_MAX_LINES} more diff lines]\n")
    if not diff:
        shown.append("(no line differs: the files differ in line endings or invisible bytes)\n")
    return (
        f"{path} differs from the actual output (first at byte {first}; expected "
        f"{len(have)} bytes, got {len(want)}):\n{''.join(shown)}"
        f"If the new output is intended, regenerate with: {REGENERATE}\n"
        "and review the change with: git diff fixtures/"
    )


def compare(case: Path, actual: Mapping[str, str]) -> list[str]:
    """One report per expected file of `case` that does not hold `actual`, and one per
    expected file nothing produces any more; [] when all match."""
    reports = [report for name in actual if (report := mismatch(case / name, actual[name]))]
    reports.extend(
        f"{case / name} is no longer produced. Remove it with: {REGENERATE}"
        for name in expected_names(case)
        if name not in actual
    )
    return reports


def rewrite(case: Path, actual: Mapping[str, str]) -> list[Path]:
    """Write the expected files of `case` that differ from `actual` and remove those nothing
    produces; the ones rewritten or removed."""
    rewritten = []
    for name in expected_names(case):
        if name not in actual:
            (case / name).unlink()
            rewritten.append(case / name)
    for name in actual:
        if mismatch(case / name, actual[name]) is not None:
            (case / name).parent.mkdir(parents=True, exist_ok=True)
            (case / name).write_bytes(actual[name].encode("utf-8"))
            rewritten.append(case / name)
    return rewritten


def _diff(expected: str, actual: str, what: str) -> str:
    return "".join(
        _clip(line)
        for line in difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{what} (first)",
            tofile=f"{what} (second)",
        )
    )


def assert_same(first: Mapping[str, str], second: Mapping[str, str], why: str) -> None:
    assert first.keys() == second.keys(), f"{why}: other files"
    for name in first:
        assert first[name] == second[name], f"{why}: {name} differs\n" + _diff(
            first[name], second[name], name
        )


# --------------------------------------------------------------------------
# snapshot helpers


def load_snapshot(case: Path) -> dict[str, Any]:
    path = snapshot_path(case)
    return loads(path.read_text(encoding="utf-8"), str(path))


def reversed_order(value: Any) -> Any:
    """`value` with the keys of every mapping in it in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_order(value[key]) for key in reversed(list(value))}
    return value


_HOSTILE = re.compile(r"[;{}\"'$#\\\s]|[^\x00-\x7f]|\.\./")


def registry_strings(value: Any) -> Iterator[str]:
    """Every key and string leaf of a snapshot."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from registry_strings(item)
    elif isinstance(value, str):
        yield value


def hostile_strings(snapshot: Any) -> set[str]:
    """Registry strings that must never reach the config raw: those with nginx syntax,
    whitespace, non-ASCII or path traversal in them, or longer than a DNS label.

    Shorter than 5 characters, a string turns up by chance (`m n` in `example.com n-...`): give
    hostile names in fixtures at least 5 characters.
    """
    return {
        text
        for text in registry_strings(snapshot)
        if len(text) >= 5 and (_HOSTILE.search(text) or len(text) > 63)
    }


# --------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_golden(case: str, goldens: Goldens) -> None:
    """render and check --json print exactly the expected files (or rewrite them on request)."""
    folder = FIXTURES / case
    actual = produced(folder)
    if goldens.update:
        rewritten = rewrite(folder, actual)
        goldens.rewritten.extend(rewritten)
        for path in rewritten:
            print(f"--update-goldens: rewrote {path}")
        return
    mismatches = compare(folder, actual)
    if mismatches:
        pytest.fail("\n\n".join(mismatches), pytrace=False)


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_render_twice_gives_the_same_bytes(case: str) -> None:
    folder = FIXTURES / case
    assert_same(produced(folder), produce(folder), f"{case}: a second run")


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_registry_order_does_not_matter(case: str) -> None:
    """etcd lists keys in no promised order: reversing every mapping changes no byte."""
    folder = FIXTURES / case
    snapshot = load_snapshot(folder)
    flipped = reversed_order(snapshot)
    if len(snapshot["deployment"]) > 1:
        assert list(flipped["deployment"]) != list(snapshot["deployment"])
    assert_same(
        produced(folder),
        produce(folder, stdin=json.dumps(flipped, ensure_ascii=False)),
        f"{case}: the snapshot with every mapping in reverse order (read from standard input)",
    )


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_render_reports_the_problems_of_check_one_line_each(case: str) -> None:
    actual = produced(FIXTURES / case)
    table = json.loads(actual[TABLE])
    assert actual[PROBLEMS].splitlines() == [
        f"{PROBLEM_PREFIX}{problem['key']}: {problem['message']} [{problem['code']}]"
        for problem in table["problems"]
    ], f"{case}: render's stderr is not one line per problem that check --json lists"


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_no_raw_registry_string_reaches_the_config(case: str) -> None:
    """Names and values from the registry reach nginx only as checked labels and addresses.

    A hostile string that is also template text (e.g. `$host`) proves nothing either way, so
    strings found in the bundled template are not held against the case.
    """
    folder = FIXTURES / case
    conf = produced(folder)[CONF]
    template = (data_dir("templates") / TEMPLATE).read_text(encoding="utf-8")
    leaked = sorted(
        text
        for text in hostile_strings(load_snapshot(folder))
        if text in conf and text not in template
    )
    assert not leaked, f"{case}: raw registry strings in the config: {leaked!r}"[:2000]
