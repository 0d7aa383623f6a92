"""Override templates for the tests that need a template the bundled one is not: the bundled
routes.conf.j2 with one piece of it replaced."""

from __future__ import annotations

from pathlib import Path

BUNDLED_TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "routes.conf.j2"


def override(tmp: Path, old: str, new: str) -> Path:
    """A template folder whose routes.conf.j2 is the bundled one with `old` replaced by `new`."""
    text = BUNDLED_TEMPLATE.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in the bundled template exactly once"
    folder = tmp / "templates"
    folder.mkdir()
    (folder / "routes.conf.j2").write_text(text.replace(old, new), encoding="utf-8")
    return folder
