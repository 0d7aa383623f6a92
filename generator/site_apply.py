"""Apply for the site folder: write the pages (generator/site.py) that changed, remove stale ones.

Each file is written to a temporary file beside it and renamed over it, so nginx serves the old
page or the new one, never half of one. Only files whose bytes changed are written; a page of a
deployment that no longer routes is removed. A writer kept by a long-running process (the
watcher) remembers what each file was made of and compares that instead of reading the folder
again, so an apply renders and writes only the pages of what changed.

No fsync: the pages are made again from the registry at every apply, and a file a crash left
short differs from its page, so the next apply rewrites it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .config import Config
from .errors import ApplyError
from .model import RoutingTable
from .pipeline import no_gc
from .site import NOT_FOUND_DIR, Page, Renderer, pages

FILE_MODE = 0o644  # nginx's workers run as another user


@dataclass(frozen=True, slots=True)
class SitePlan:
    """The files of the site folder an apply writes (or would write) and removes."""

    written: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def changes(self) -> bool:
        return bool(self.written or self.removed)

    def summary(self) -> str:
        return f"{len(self.written)} site files written, {len(self.removed)} removed"


class SiteWriter:
    """Writes the site folder config.site_dir; keep one for as long as the process runs."""

    def __init__(self, config: Config, templates: jinja2.Environment) -> None:
        self.config = config
        self.folder = Path(config.site_dir)
        self._render = Renderer(config, templates)
        # relative path -> (the page, a digest of its bytes), as last written; None until the
        # first apply, which compares with the files in the folder instead
        self._known: dict[str, tuple[Page, bytes]] | None = None

    def plan(self, table: RoutingTable) -> SitePlan:
        """What apply would write and remove (a dry run: nothing is written)."""
        try:
            with no_gc():
                wanted = pages(table)
                changed, _ = self._compare(wanted)
            stale = self._stale(wanted)
        except OSError as error:
            raise ApplyError(f"cannot read the site in {self.folder}: {_reason(error)}") from None
        return SitePlan(tuple(path for path, _ in changed), tuple(stale))

    def apply(self, table: RoutingTable) -> SitePlan:
        """Write the pages of `table` that changed and remove stale ones, or raise ApplyError."""
        try:
            with no_gc():  # many small objects, no cycles (see pipeline.no_gc)
                wanted = pages(table)
                changed, known = self._compare(wanted)
            stale = self._stale(wanted)
            self._known = None  # until every write is done: a failure means "read the folder"
            (self.folder / NOT_FOUND_DIR).mkdir(parents=True, exist_ok=True)
            for path, data in changed:
                _replace(self.folder / path, data)
            for path in stale:
                (self.folder / path).unlink(missing_ok=True)
        except OSError as error:
            raise ApplyError(
                f"cannot write the site in {self.folder}: {_reason(error)}; the "
                "nginx config is in place, its pages are not (is site_dir writable?)"
            ) from None
        self._known = known
        return SitePlan(tuple(path for path, _ in changed), tuple(stale))

    def _compare(
        self, wanted: Mapping[str, Page]
    ) -> tuple[list[tuple[str, bytes]], dict[str, tuple[Page, bytes]]]:
        """The files whose bytes differ from what is in place, with their bytes; and what
        every file is made of once they are written."""
        changed: list[tuple[str, bytes]] = []
        known: dict[str, tuple[Page, bytes]] = {}
        for path, page in wanted.items():
            kept = None if self._known is None else self._known.get(path)
            if kept is not None and kept[0] == page:
                known[path] = kept  # made of the same page: the same bytes, not rendered again
                continue
            data = self._render(page)
            digest = _digest(data)
            known[path] = (page, digest)
            if kept is not None:
                same = kept[1] == digest
            else:
                same = self._known is None and _read(self.folder / path) == data
            if not same:
                changed.append((path, data))
        return changed, known

    def _stale(self, wanted: Mapping[str, Page]) -> list[str]:
        """Pages in place that `wanted` does not hold: only files of our own layout, never
        anything else someone keeps in the folder."""
        if self._known is not None:
            return sorted(self._known.keys() - wanted.keys())
        try:
            names = sorted(entry.name for entry in os.scandir(self.folder / NOT_FOUND_DIR))
        except FileNotFoundError:
            return []
        found = (f"{NOT_FOUND_DIR}/{name}" for name in names if _is_page(name))
        return [path for path in found if path not in wanted]


def _is_page(name: str) -> bool:
    return name.endswith(".html") and not name.startswith(".")


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _replace(path: Path, data: bytes) -> None:
    """`data` at `path` by a rename from a temporary file in the same folder (atomic)."""
    descriptor, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(staged, FILE_MODE)
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
