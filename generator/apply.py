"""Apply: the imperative shell that writes, tests, swaps and reloads, or shows the diff instead.

Order of a real apply, under a lock: compare with the file in place (identical: nothing to do) ->
stage the new text beside the target -> crossplane gate -> `nginx -t` on the staged file inside a
throwaway wrapper -> safety threshold -> keep a hard link to the file in place -> atomic rename ->
test the whole installed config -> reload. If a test or the reload fails, the previous file is
put back byte for byte and nothing is reloaded: nginx keeps serving the routes it had.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .check import Span, check, check_fragments, routes_in
from .config import Config
from .errors import ApplyError, CheckError, InternalError, UsageError
from .memory import no_gc
from .nginx import Wrapper, run_command
from .pipeline import Plan, Rendered, make_plan, plan_between, removal_refusal
from .render import ROUTES_MARKER, UPSTREAMS_MARKER, UPSTREAMS_MARKER_POOL, Part

NEW_FILE_MODE = 0o644


class Checker:
    """The crossplane gate, with memory.

    The file around the deployments' parts (the skeleton, small) is parsed every time; each
    deployment's part (its lines in the hostname map and its upstream blocks) is parsed once
    and remembered for as long as it stays the same, so a long-running watcher parses only what
    changed. Either way every byte of the file has been parsed back: the file is the skeleton
    with the lines spliced in at the one marker entry the skeleton's hostname map must hold,
    and the upstream blocks at the one marker block the skeleton must hold at http level.
    """

    def __init__(self) -> None:
        self._passed: set[Part] = set()

    def __call__(self, rendered: Rendered, config: Config, scratch: Path) -> None:
        with no_gc():  # crossplane makes a dict per statement, and no cycles
            self._check(rendered, config, scratch)

    def _check(self, rendered: Rendered, config: Config, scratch: Path) -> None:
        marker = ROUTES_MARKER.split()
        # A template without the upstreams marker renders only while no part has blocks.
        placed = UPSTREAMS_MARKER in rendered.skeleton
        failures = check(
            _parse(scratch / "skeleton", rendered.skeleton),
            {marker[0]: marker[1].rstrip(";")},
            config,
            str(scratch / "skeleton" / "included.conf"),
            {UPSTREAMS_MARKER_POOL: ()} if placed else {},
        )
        parts = rendered.fragments
        unchecked = [part for part in parts if part not in self._passed]
        if not placed and any(part.blocks for part in parts):
            failures.append("the skeleton has no place for the upstream blocks")
        # Parts that passed together had no pool in common: only a new part can share one.
        if any(part.pools for part in unchecked):
            failures += _shared_pools(parts)
        if unchecked:
            failures += _check_in_parts(scratch, unchecked)
        if failures:
            _refuse(failures, config)
        self._passed = set(parts)


def _shared_pools(parts: Sequence[Part]) -> list[str]:
    """Each part's blocks were read back as exactly its pools: no pool may be another's too
    (nginx refuses a second upstream block of one name)."""
    seen: set[str] = set()
    shared: set[str] = set()
    for pools in [part.pools for part in parts if part.pools]:  # few have any
        for name, _ in pools:
            (shared if name in seen else seen).add(name)
    return [f"upstream {name} is the pool of two deployments" for name in sorted(shared)]


# Unchecked parts longer than this (in characters) are parsed in two processes at once when
# this process may fork (no other thread): crossplane's lexer reads a character at a time, and
# a cold 100,000-route file is 8 MB of it. Each part is a real crossplane parse, as one is.
PARALLEL_FROM = 200_000

Unchecked = Sequence[Part]


def _check_in_parts(scratch: Path, unchecked: Unchecked) -> list[str]:
    """check_fragments over `unchecked`, in two processes when it is long (see PARALLEL_FROM)."""
    size = sum(len(part.lines) + len(part.blocks) for part in unchecked)
    if size < PARALLEL_FROM or threading.active_count() > 1 or not hasattr(os, "fork"):
        return _check_part(scratch / "routes", unchecked)
    half, middle = 0, 0
    while middle < len(unchecked) and half < size // 2:
        half += len(unchecked[middle].lines) + len(unchecked[middle].blocks)
        middle += 1
    read, write = os.pipe()
    try:
        child = os.fork()
    except OSError:  # no process to spare (pids.max, memory): parse it all here instead
        os.close(read)
        os.close(write)
        return _check_part(scratch / "routes", unchecked)
    if child == 0:  # pragma: no cover - the child reports through the pipe
        status = 1
        try:
            os.close(read)
            try:
                found: list[str] | dict[str, str] = _check_part(
                    scratch / "routes-2", unchecked[middle:]
                )
            except Exception as error:  # its cause goes to the parent, not a traceback here
                found = {"error": f"{type(error).__name__}: {error}"}
            with os.fdopen(write, "w", encoding="utf-8") as pipe:
                json.dump(found, pipe)
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    try:
        failures = _check_part(scratch / "routes-1", unchecked[:middle])
    finally:
        with os.fdopen(read, encoding="utf-8") as pipe:
            answer = pipe.read()
        _, status = os.waitpid(child, 0)
    second = json.loads(answer) if status == 0 else {"error": f"wait status {status}"}
    if isinstance(second, dict):
        raise InternalError(
            f"the process checking half of the routes failed ({second['error']}); nothing was "
            "changed"
        )
    return failures + list(second)


_NO_POOLS: Mapping[str, Sequence[str]] = {}  # never changed: the pools of most parts


def _check_part(folder: Path, unchecked: Unchecked) -> list[str]:
    """crossplane's parse of deployments' lines inside one hostname map, followed by their
    upstream blocks, checked. (Lines are counted as crossplane counts them: by newlines.)"""
    text = ["map $host $devtest_route {\n", "    hostnames;\n"]
    text.extend(part.lines for part in unchecked)
    text.append("}\n")
    text.extend(part.blocks for part in unchecked)
    counts = [part.lines.count("\n") for part in unchecked]
    line = 3  # the first line of the first part's lines
    after = line + sum(counts) + 1  # and of its blocks
    spans = []
    for part, lines in zip(unchecked, counts, strict=True):
        blocks = part.blocks.count("\n") if part.blocks else 0
        pools: Mapping[str, Sequence[str]] = dict(part.pools) if part.pools else _NO_POOLS
        spans.append(
            Span(range(line, line + lines), dict(part.routes), range(after, after + blocks), pools)
        )
        line += lines
        after += blocks
    return check_fragments(_parse(folder, "".join(text)), str(folder / "included.conf"), spans)


def _parse(folder: Path, text: str) -> dict[str, Any]:
    """crossplane's payload for `text` included in a wrapper's http block, in `folder`."""
    folder.mkdir()
    included = folder / "included.conf"
    included.write_text(text, encoding="utf-8")
    wrapper = Wrapper(folder, included)
    wrapper.write()
    return wrapper.parse()


def _refuse(failures: list[str], config: Config) -> None:
    detail = "; ".join(failures[:5]) + (
        f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
    )
    if config.template_dir:  # an override template is the likelier culprit than we are
        raise CheckError(
            f"the rendered config fails the check: {detail}; nothing was changed. Fix the "
            f"templates in {config.template_dir}"
        )
    raise InternalError(f"the rendered config does not match the routing table: {detail}")


def gate(rendered: Rendered, config: Config, staged: Path, scratch: Path, checker: Checker) -> None:
    """The crossplane gate, then nginx's own test on the staged file; raises if either refuses."""
    checker(rendered, config, scratch)
    _require_tls_files(config)
    (scratch / "nginx").mkdir()
    wrapper = Wrapper(scratch / "nginx", staged)
    wrapper.write()
    passed, said = wrapper.test(config.nginx, config.command_timeout)
    if not passed:
        raise CheckError(f"nginx rejects the rendered config; nothing was changed\n{_indent(said)}")


def _require_tls_files(config: Config) -> None:
    """The certificate and key must be readable: nginx reads them at every test and reload.
    Its own test would refuse a missing one too, but in lines of its own about its wrapper."""
    for setting in ("tls_certificate", "tls_certificate_key"):
        path = getattr(config, setting)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise UsageError(
                f"setting {setting}: cannot read {path} ({error.strerror}); nginx must read it: "
                "fix the path or the file's permissions; nothing was changed"
            ) from None


def current_routes(target: Path, current: str | None, scratch: Path) -> dict[str, str]:
    """The routes of the file in place, read back by crossplane ({} if it is not one of ours)."""
    if current is None:
        return {}
    scratch.mkdir()
    wrapper = Wrapper(scratch, target)
    wrapper.write()
    return routes_in(wrapper.parse(), str(target)) or {}


# What a long-running caller applied last, so that it need not parse its own last file back to
# learn what an apply removes: when the file in place is still its text, the plan is the change
# between the two (pipeline.plan_between).
Known = Rendered


def checked_text(rendered: Rendered, config: Config, checker: Checker | None = None) -> str:
    """The rendered text once crossplane has read it back as the routing table (no nginx)."""
    with tempfile.TemporaryDirectory(prefix="devtest-router-") as folder:
        (checker or Checker())(rendered, config, Path(folder))
    return rendered.text


def plan(
    rendered: Rendered, config: Config, checker: Checker | None = None, known: Known | None = None
) -> Plan:
    """Dry run: every check a real apply runs, on a copy in a temporary folder; changes nothing."""
    target = Path(config.output)
    current = _read(target)
    with tempfile.TemporaryDirectory(prefix="devtest-router-") as folder:
        scratch = Path(folder)
        staged = scratch / "rendered.conf"
        staged.write_text(rendered.text, encoding="utf-8")
        return _checked_plan(rendered, config, current, staged, scratch, checker, known, "")


def apply(
    rendered: Rendered,
    config: Config,
    checker: Checker | None = None,
    known: Known | None = None,
    after: Callable[[], object] | None = None,
) -> Plan:
    """Install `rendered` at config.output and reload nginx, or raise with the old file intact.

    A long-running caller passes the same `checker` every time and, as `known`, what it
    applied last. `after` runs under the same lock once the file in place is
    the rendered one (installed, or there already): the site is written from the same routing
    table, and two applies never interleave their pages.
    """
    target = Path(config.output)
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(
            f"output {target}: the folder {folder} does not exist; create it or set output"
        )
    with _locked(folder / f".{target.name}.lock"):
        current = _read(target)
        if current == rendered.text:
            if after is not None:
                after()
            return Plan(current, rendered.text, len(rendered.table.routes), (), (), ())
        with tempfile.TemporaryDirectory(prefix="devtest-router-") as temporary:
            scratch = Path(temporary)
            staged = _stage(folder, target.name, rendered.text)
            try:
                result = _checked_plan(
                    rendered, config, current, staged, scratch, checker, known,
                    "; nothing was changed",
                )  # fmt: skip
                _install(staged, target, config)
            finally:
                staged.unlink(missing_ok=True)
        if after is not None:
            after()
    return result


def _checked_plan(
    rendered: Rendered,
    config: Config,
    current: str | None,
    staged: Path,
    scratch: Path,
    checker: Checker | None,
    known: Known | None,
    refused_suffix: str,
) -> Plan:
    """What dry run and apply share: both gates on the staged file, the plan against the file
    in place, and the safety threshold."""
    gate(rendered, config, staged, scratch, checker or Checker())
    if known is not None and current is not None and known.text == current:
        result = plan_between(known, rendered)
    else:
        routes = current_routes(Path(config.output), current, scratch / "current")
        result = make_plan(current, routes, rendered)
    refusal = removal_refusal(result, config)
    if refusal:
        raise CheckError(refusal + refused_suffix)
    return result


def _install(staged: Path, target: Path, config: Config) -> None:
    previous = _swap(staged, target)
    for step, command in (("test", config.test_command), ("reload", config.reload_command)):
        passed, said = run_command(command, config.command_timeout)
        if not passed:
            _restore(target, previous)
            back = "the previous file is back in place" if previous else "it was removed again"
            raise ApplyError(
                f"{command!r} failed after installing {target}; {back} and nginx was not "
                f"reloaded\n{_indent(said)}"
                if step == "test"
                else f"{command!r} failed; the new {target} was taken back: {back}\n{_indent(said)}"
            )
    if previous is not None:
        previous.unlink(missing_ok=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ApplyError(f"cannot read {path}: {error}") from None


def _stage(folder: Path, name: str, text: str) -> Path:
    """The new text in a temporary file beside the target (same file system: rename is atomic).

    Its name does not end in .conf, so an `include conf.d/*.conf` never picks it up.
    """
    try:
        descriptor, name_staged = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".staged")
    except OSError as error:
        raise ApplyError(f"cannot write in {folder}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:  # e.g. the disk is full: leave nothing behind
        Path(name_staged).unlink(missing_ok=True)
        raise ApplyError(f"cannot write in {folder}: {error.strerror}") from None
    return Path(name_staged)


def _swap(staged: Path, target: Path) -> Path | None:
    """Rename the staged file over the target, keeping the target's mode and owner.

    Returns a hard link to the file that was in place (None if there was none), to restore it.
    """
    previous: Path | None = None
    try:
        status = target.stat()
    except FileNotFoundError:
        os.chmod(staged, NEW_FILE_MODE)
    else:
        os.chmod(staged, stat.S_IMODE(status.st_mode))
        with suppress(PermissionError):  # not root: the file stays ours, as it was before
            os.chown(staged, status.st_uid, status.st_gid)
        previous = target.with_name(f".{target.name}.previous")
        previous.unlink(missing_ok=True)
        try:
            os.link(target, previous)
        except OSError:  # a file system without hard links
            shutil.copy2(target, previous)
    os.replace(staged, target)
    _sync_folder(target.parent)
    return previous


def _restore(target: Path, previous: Path | None) -> None:
    if previous is None:
        target.unlink(missing_ok=True)
    else:
        os.replace(previous, target)
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize applies to one target: a second run waits for the first to finish."""
    try:
        file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise ApplyError(f"cannot lock {path}: {error.strerror}") from None
    with file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines()) or "  (no output)"
