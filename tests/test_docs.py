"""The docs stay true to the code: the configuration reference is generated from the schema and
the parser, the operations guide lists every exit code the CLI has, and the security notes list
every network the upstream guard always refuses."""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

import pytest

from generator.cli.exit_codes import EXIT_CODES
from generator.cli.parser import build_parser
from generator.cli.reference import main, reference, setting_flags
from generator.core.config import ENV_PREFIX, resolve
from generator.core.errors import UsageError
from generator.core.routing import ALWAYS_REFUSED
from generator.resources import schema

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_reference_is_up_to_date(tmp_path: Path) -> None:
    written = tmp_path / "configuration.md"
    assert main(["--output", str(written)]) == 0  # what `make docs` runs
    now = written.read_text(encoding="utf-8")
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    if committed != now:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    now.splitlines(keepends=True),
                    "docs/configuration.md",
                    "what the schema and the flags say now",
                )
            )[:40]
        )
        pytest.fail(f"docs/configuration.md is out of date: run `make docs`\n{diff}")


def test_every_setting_has_a_section_with_its_variable_and_flags() -> None:
    properties = schema("config")["properties"]
    parser = build_parser()
    text = reference(schema("config"), parser)
    sections = dict(re.findall(r"^### (\S+)\n(.*?)(?=^##)", text, re.MULTILINE | re.DOTALL))
    assert list(sections) == list(properties)
    flags = setting_flags(parser, properties)
    assert "--listen ADDRESS" in [flag.usage for flag in flags["listen"]]
    assert "allowed_networks" not in flags  # it has no flag; the reference must say so
    for key, section in sections.items():
        assert f"`{ENV_PREFIX}{key.upper()}`" in section
        for flag in flags.get(key, ()):
            assert f"`{flag.usage}`" in section
        if key not in flags:
            assert "**flag:** none" in section


@pytest.mark.parametrize("key", list(schema("config")["properties"]))
def test_the_documented_variable_is_the_one_config_reads(key: str) -> None:
    variable = f"{ENV_PREFIX}{key.upper()}"
    with pytest.raises(UsageError, match=f"from environment variable {variable} "):
        resolve(schema("config"), {}, {variable: "\x07"})


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    parser.add_argument("--log-format")  # before the command
    commands = parser.add_subparsers(dest="command")
    watch = commands.add_parser("watch")
    watch.add_argument("--config")
    watch.add_argument("--metrics-listen", metavar="ADDRESS")
    watch.add_argument("--tls", dest="tls_on", action="store_const", const=True)
    watch.add_argument("--listen", action="append", metavar="ADDRESS")
    registry = watch.add_argument_group("registry")
    registry.add_argument("--registry", metavar="URL", help="where <branch> keys live (etcd|file)")
    wait = commands.add_parser("wait")  # no --config: its --metrics-listen is another thing
    wait.add_argument("--metrics-listen", metavar="URL")
    wait.add_argument("--listen", action="append", metavar="ADDRESS")
    wait.add_argument_group("registry").add_argument("--registry", metavar="URL", help="x")
    return parser


def test_reference_handles_any_new_key_generically() -> None:
    toy_schema = {
        "properties": {
            "metrics_listen": {
                "description": "Serve /metrics at <host>:<port>; empty: off.",
                "type": ["string", "null"],
                "default": None,
                "pattern": "^(|[0-9.]+:[0-9]+)$",
            },
            "tls_on": {"description": "TLS for *.<domain>.", "type": "boolean", "default": False},
            "listen": {
                "type": "array",
                "default": ["80"],
                "minItems": 1,
                "items": {"type": "string", "enum": ["80", "443"]},
            },
            "log_format": {"type": "string", "default": "plain", "enum": ["plain", "json"]},
            "site_dir": {"description": "Where the index goes.", "type": "string", "default": "/x"},
        }
    }
    text = reference(toy_schema, _toy_parser())
    assert "`--metrics-listen ADDRESS` (watch)" in text
    assert "--metrics-listen URL" not in text  # wait reads no settings
    assert "`--tls` (watch)" in text
    assert (
        "`--listen ADDRESS` (watch, repeatable; also taken by wait, which reads no config" in text
    )
    assert "`--log-format LOG_FORMAT` (before the command)" in text
    assert "Serve /metrics at `<host>:<port>`; empty: off." in text
    assert "TLS for `*.<domain>`." in text
    assert "- **type:** string or null" in text
    assert "- **type:** list of strings" in text
    assert 'at least 1 item; each item: one of `"80"`, `"443"`' in text
    assert 'one of `"plain"`, `"json"`' in text
    assert "`DEVTEST_ROUTER_LOG_FORMAT`" in text
    assert "### log_format" in text
    assert "### site_dir\n\nWhere the index goes.\n" in text
    assert "- **flag:** none: set it in the config file or the environment" in text
    # a | stays inside its table cell
    assert "| `--registry URL` | watch, wait | where `<branch>` keys live (`etcd\\|file`) |" in text


def test_operations_guide_lists_every_exit_code() -> None:
    guide = (DOCS / "operations.md").read_text(encoding="utf-8")
    listed = {int(code) for code in re.findall(r"^\| `(\d+)` \|", guide, re.MULTILINE)}
    assert listed == set(EXIT_CODES), "docs/operations.md differs from cli/exit_codes.py"


def test_security_notes_list_every_always_refused_network() -> None:
    notes = (DOCS / "security.md").read_text(encoding="utf-8")
    section = notes.split("**Always refused**")[1].split("\n\n")[1]
    listed = set(re.findall(r"^ *\| `([0-9a-f:./]+)` \|", section, re.MULTILINE))
    assert listed == {str(network) for network, _ in ALWAYS_REFUSED}, (
        "docs/security.md: the always-refused table differs from routing.ALWAYS_REFUSED"
    )


# --------------------------------------------------------------------------
# docs/architecture.md: the drawing of the layout and the path that runs name real code

ARCHITECTURE = DOCS / "architecture.md"
PACKAGE = DOCS.parent / "generator"


def drawn_modules(text: str) -> set[str]:
    """The module files the layout block (the fenced block that starts with `generator/`)
    draws, as paths below generator/: a line `name/` opens a package, `a.py, b.py` names files."""
    block = text.split("```\ngenerator/\n", 1)[1].split("```", 1)[0]
    found: set[str] = set()
    package = ""
    for line in block.splitlines():
        first = line.split()[0] if line.split() else ""
        indent = len(line) - len(line.lstrip())
        if first.endswith("/"):
            package = first
            continue
        if indent == 2:
            package = ""
        names = re.match(r"\s*([\w.]+\.py(?:, [\w.]+\.py)*)", line)
        assert names, f"a layout line that names no module: {line!r}"
        found.update(package + name for name in names.group(1).split(", "))
    return found


def test_the_layout_drawing_is_the_package() -> None:
    real = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert drawn_modules(ARCHITECTURE.read_text(encoding="utf-8")) == real


def test_the_functions_architecture_names_exist() -> None:
    import importlib

    names = set(re.findall(r"`(generator(?:\.\w+)+)`", ARCHITECTURE.read_text(encoding="utf-8")))
    assert len(names) >= 10  # the path that runs names its stage functions
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                found: object = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                found = getattr(found, attribute, None)
            if found is None:
                missing.append(name)
            break
    assert missing == []


def test_drawn_modules_reads_packages_and_lists() -> None:
    block = "```\ngenerator/\n  core/   x\n    a.py   y\n    b.py, c.py   z\n  top.py   t\n```"
    assert drawn_modules(block) == {"core/a.py", "core/b.py", "core/c.py", "top.py"}


# --------------------------------------------------------------------------
# links: the README and the docs reach every page, and every relative link lands

ROOT = DOCS.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def headings(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercased, punctuation but `-` and `_`
    dropped, spaces to `-` (headings inside fenced blocks are none)."""
    found: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def links(text: str) -> list[str]:
    """The link targets of a page's prose (not of its code blocks and code spans)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return LINK.findall(re.sub(r"`[^`\n]*`", "", prose))


def broken_links(page: Path) -> list[str]:
    """The relative links of page whose file, or heading, does not exist."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
            continue
        if anchor and linked.suffix == ".md":
            anchors = headings(linked.read_text(encoding="utf-8"))
            if anchor not in anchors:
                broken.append(target)
    return broken


def test_headings_are_anchored_as_github_does() -> None:
    text = "# A: b\n```\n# not one\n```\n## An absent /deployment prefix: --allow-empty\n### x_y z"
    assert headings(text) == {"a-b", "an-absent-deployment-prefix---allow-empty", "x_y-z"}


def test_every_relative_link_lands() -> None:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "deploy" / "README.md"]
    pages += sorted(DOCS.glob("*.md"))
    broken = {str(page.relative_to(ROOT)): broken_links(page) for page in pages}
    assert {page: links for page, links in broken.items() if links} == {}


def test_the_readme_and_the_docs_index_link_every_page() -> None:
    """What moved out of the README into docs/ stays reachable from it."""
    pages = {path.name for path in DOCS.glob("*.md")} - {"README.md"}
    readme = set(links((ROOT / "README.md").read_text(encoding="utf-8")))
    index = set(links((DOCS / "README.md").read_text(encoding="utf-8")))
    assert sorted(p for p in pages if f"docs/{p}" not in readme) == []
    assert sorted(p for p in pages if p not in index) == []
