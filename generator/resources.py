"""Where the bundled schema/ and templates/ are: inside an installed wheel, or in the repo."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`schema` or `templates`: packaged under generator/_data by the wheel, else the repo's."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"devtest-router is installed without its {name}/ folder")


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema from schema/, e.g. schema("snapshot")."""
    with open(data_dir("schema") / f"{name}.schema.json", encoding="utf-8") as file:
        loaded: dict[str, Any] = json.load(file)
    return loaded


def template_loader(overrides: Sequence[Path] = ()) -> jinja2.FileSystemLoader:
    """Loads the bundled templates/, each file overridden by one of the same name in the
    folders of `overrides` (the user's template_dir), earlier first."""
    import jinja2  # on use: `snapshot` and `register` render nothing

    return jinja2.FileSystemLoader([*map(str, overrides), str(data_dir("templates"))])
