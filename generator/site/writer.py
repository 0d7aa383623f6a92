"""Apply for the site folder: write the pages (site/pages.py) that changed, remove stale ones.

Each file is written to a temporary file beside it and renamed over it, so nginx serves the old
page or the new one, never half of one. Only files whose bytes changed are written; a shard no
deployment is in any more is removed, and so are the per-deployment 404 pages
(not-found/<label>.html) of versions before the shards. A writer kept by a long-running process
(the watcher) remembers what each file was made of and compares that instead of reading the
folder again, so an apply renders and writes only the pages of what changed.

No fsync: the pages are made again from the registry at every apply, and a file a crash left
short differs from its page, so the next apply rewrites it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from generator.core.config import Config
from generator.core.errors import ApplyError, SiteError, UsageError
from generator.core.model import DeploymentKey, Problem, Route, RoutingTable
from generator.core.names import key_path
from generator.core.render import by_deployment
from generator.core.site_layout import DOCUMENT, INDEX, NOT_FOUND, NOT_FOUND_DIR, shard, shard_path
from generator.core.words import counted
from generator.memory import no_gc
from generator.nginx.apply import file_kind
from generator.site.pages import (
    Listing,
    Renderer,
    document_line,
    key_paths,
    listing,
    owners,
    pages,
    shard_line,
    shard_text,
)
from generator.sorted_keys import update_sorted

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
        return f"{counted(len(self.written), 'site file')} written, {len(self.removed)} removed"


class SiteWriter:
    """Writes the site folder config.site_dir; keep one for as long as the process runs.

    It keeps, per deployment, its routes as last written (compared by identity: the pipeline
    keeps a deployment's routes while they stay the same), its listing, its row of the index
    and its line of deployments.json, and a digest of each file written; an apply renders the
    rows of the deployments that changed, and the index, deployments.json and the shards of
    the 404 page's data that hold them from the kept rows and lines. A fresh writer is the cold
    run: the same code with every deployment new. An instance that comes, goes or moves
    changes its routes' members, so the pipeline hands over a new tuple, and the listing, which
    holds the members, differs: the row is rendered again.
    """

    def __init__(self, config: Config, templates: jinja2.Environment) -> None:
        self.config = config
        self.folder = Path(config.site_dir)
        _require_folder(self.folder)
        self._render = Renderer(config, templates)
        self._reset()

    def _reset(self) -> None:
        # relative path -> a digest of its bytes, as last written; None until the first apply,
        # which compares with the files in the folder instead
        self._known: dict[str, bytes] | None = None
        self._routes: Mapping[DeploymentKey, tuple[Route, ...]] = {}
        self._paths: dict[str, DeploymentKey] = {}  # registry key -> deployment
        self._owned: dict[DeploymentKey, tuple[Problem, ...]] = {}
        self._problems: tuple[Problem, ...] | None = None
        self._listed: dict[DeploymentKey, Listing] = {}
        self._rows: dict[DeploymentKey, Markup] = {}
        self._lines: dict[DeploymentKey, str] = {}
        self._shard_lines: dict[DeploymentKey, str] = {}
        self._keys: list[DeploymentKey] = []  # sorted
        self._shards: dict[str, set[DeploymentKey]] = {}  # shard -> the listed deployments in it
        self._count: int | None = None  # routes

    def plan(self, table: RoutingTable) -> SitePlan:
        """What apply would write and remove (a dry run: nothing is written)."""
        try:
            with no_gc():
                wanted = pages(table, self.config.access_control)
                changed = []
                for path, page in wanted.items():
                    data = self._render(page)
                    if self._known is not None:
                        same = self._known.get(path) == _digest(data)
                    else:
                        same = _read(self.folder / path) == data
                    if not same:
                        changed.append(path)
            if self._known is not None:
                stale = sorted(self._known.keys() - wanted.keys())
            else:
                stale = self._in_folder(wanted.keys())
        except OSError as error:
            raise ApplyError(f"cannot read the site in {self.folder}: {_reason(error)}") from None
        return SitePlan(tuple(changed), tuple(stale))

    def apply(
        self,
        table: RoutingTable,
        routes: Mapping[DeploymentKey, tuple[Route, ...]] | None = None,
    ) -> SitePlan:
        """Write the pages of `table` that changed and remove stale ones, or raise ApplyError.

        `routes` is render.by_deployment(table), from a caller that keeps it (the pipeline)."""
        try:
            with no_gc():  # many small objects, no cycles (see memory.no_gc)
                try:
                    wanted, gone = self._update(table, routes)
                    changed, known = self._compare(wanted)
                    stale = self._stale(gone)
                except BaseException:  # a template or the folder fails: what is kept may be
                    self._reset()  # half new, so the next apply starts cold, from the folder
                    raise
            self._known = None  # until every write is done: a failure means "read the folder"
            (self.folder / NOT_FOUND_DIR).mkdir(parents=True, exist_ok=True)
            for path, data in changed:
                _replace(self.folder / path, data)
            for path in stale:
                (self.folder / path).unlink(missing_ok=True)
                known.pop(path, None)
        except OSError as error:
            raise SiteError(
                f"cannot write the site in {self.folder}: {_reason(error)}; the nginx config is "
                "applied and nginx serves its routes, but the index and 404 pages are not "
                "written: make site_dir writable (or free space); the next apply writes them"
            ) from None
        self._known = known
        return SitePlan(tuple(path for path, _ in changed), tuple(stale))

    def _update(
        self, table: RoutingTable, routes: Mapping[DeploymentKey, tuple[Route, ...]] | None
    ) -> tuple[dict[str, bytes], set[str]]:
        """Take in `table`: the pages that may have changed, with their bytes, and the paths
        of the pages that went (every page when nothing is known of what was written)."""
        if routes is None:
            routes = by_deployment(table)
        kept = self._routes
        touched = [key for key, value in routes.items() if kept.get(key) is not value]
        added = [key for key in touched if key not in kept]
        removed = []
        if len(kept) + len(added) > len(routes):
            removed = [key for key in kept.keys() - routes.keys()]
        self._routes = routes
        for key in removed:
            del self._paths[key_path("deployment", key[1])]
        self._paths.update(key_paths(added))
        dirty = {*touched, *removed}
        if added or removed or table.problems is not self._problems:
            owned = owners(table.problems, self._paths)
            dirty.update(
                key
                for key in owned.keys() | self._owned.keys()
                if owned.get(key) != self._owned.get(key)
            )
            self._owned = owned
        problems_changed = self._problems != table.problems
        self._problems = table.problems

        changed = False  # a row (and so a line of deployments.json) changed
        shards: set[str] = set()  # the shards whose deployments' lines changed
        for key in dirty:
            value = routes.get(key)
            name = shard(key[0])
            if value is None:
                if self._listed.pop(key, None) is not None:
                    del self._rows[key], self._lines[key], self._shard_lines[key]
                    self._shards[name].discard(key)
                    changed = True
                    shards.add(name)
                continue
            listed = listing(key, value, self._owned.get(key, ()), self.config.access_control)
            if self._listed.get(key) != listed:
                self._listed[key] = listed
                self._rows[key] = self._render.row(listed)
                self._lines[key] = document_line(listed)
                changed = True
                line = shard_line(listed)
                if self._shard_lines.get(key) != line:
                    self._shard_lines[key] = line
                    self._shards.setdefault(name, set()).add(key)
                    shards.add(name)
        update_sorted(self._keys, dirty, self._listed)

        count = len(table.routes)
        everything = self._known is None
        wanted: dict[str, bytes] = {}
        if everything or changed or problems_changed or count != self._count:
            ordered = [self._listed[key] for key in self._keys]
            wanted[INDEX] = self._render.index(
                ordered, [self._rows[key] for key in self._keys], table.problems, count
            )
            wanted[DOCUMENT] = self._render.document(
                [self._lines[key] for key in self._keys], table.problems
            )
        self._count = count
        if everything:
            wanted[NOT_FOUND] = self._render.not_found()
            shards = set(self._shards)
        gone = set()
        for name in shards:
            held = sorted(self._shards[name])
            if held:
                wanted[shard_path(name)] = shard_text([self._shard_lines[key] for key in held])
            else:
                del self._shards[name]
                gone.add(shard_path(name))
        return wanted, gone

    def _compare(
        self, wanted: Mapping[str, bytes]
    ) -> tuple[list[tuple[str, bytes]], dict[str, bytes]]:
        """The files whose bytes differ from what is in place, with their bytes; and the digest
        of every file once they are written."""
        changed: list[tuple[str, bytes]] = []
        known = dict(self._known or {})
        for path, data in sorted(wanted.items()):
            digest = _digest(data)
            if self._known is not None:
                same = self._known.get(path) == digest
            else:
                same = _read(self.folder / path) == data
            known[path] = digest
            if not same:
                changed.append((path, data))
        return changed, known

    def _stale(self, gone: Iterable[str]) -> list[str]:
        """Pages in place that are no longer wanted: only files of our own layout, never
        anything else someone keeps in the folder."""
        if self._known is not None:
            return sorted(path for path in gone if path in self._known)
        return self._in_folder({shard_path(name) for name in self._shards})

    def _in_folder(self, wanted: Container[str]) -> list[str]:
        """The pages in the folder that `wanted` does not hold."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.folder / NOT_FOUND_DIR))
        except FileNotFoundError:
            return []
        found = (f"{NOT_FOUND_DIR}/{name}" for name in names if _is_page(name))
        return [path for path in found if path not in wanted]


def _require_folder(folder: Path) -> None:
    """site_dir must be a folder, or a path where one can be made (at the first apply)."""
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise UsageError(
            f"site_dir {folder}: {_reason(error)}; set site_dir to a folder nginx can read "
            "(it is made if missing); nothing was changed"
        ) from None
    if not stat.S_ISDIR(mode):
        raise UsageError(
            f"site_dir {folder} is a {file_kind(mode)}, not a folder: set site_dir to a folder "
            "nginx can read (it is made if missing); nothing was changed"
        )


def _is_page(name: str) -> bool:
    """A file of our layout in not-found/: a shard, or a 404 page of a version before them."""
    return name.endswith((".json", ".html")) and not name.startswith(".")


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
