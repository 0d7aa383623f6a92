"""Apply: the imperative shell that writes, tests, swaps and reloads, or shows the diff instead.

Order of a real apply, under a lock: remove what an apply cut short left (staged files) ->
compare with the file in place (identical, and the file last tested and reloaded: nothing to do)
-> stage the new text beside the target -> the gate: the check (crossplane parses the text back,
core/check.py), then nginx's test (`nginx -t`) of the staged file inside a throwaway wrapper ->
safety threshold -> keep a hard link to the file in place -> atomic rename -> nginx's test of
the whole installed config (test_command) -> reload -> record the file's digest as tested and
reloaded. If a test or the reload fails, the previous file is put back byte for byte and
nothing is reloaded: nginx keeps serving the routes it had.

An apply may be cut short anywhere (SIGKILL, a crash, a power cut). The record (`.<output
name>.tested` beside the output, written atomically only after a test and reload succeeded)
says which file nginx last took: when the file in place is not that one, the next apply tests
and reloads even if it would write the same bytes, and if that fails it puts back the file
recorded (kept as `.<output name>.previous`), if it has it.

The output is a regular file, or a symlink to one, written through (the file it points to is
replaced; the link stays); anything else is refused before a lock file is made.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from generator.core.check import Span, check, check_fragments, routes_in
from generator.core.config import Config
from generator.core.errors import ApplyError, InternalError, RefusedError, UsageError
from generator.core.pipeline import (
    Applied,
    Plan,
    Rendered,
    make_plan,
    plan_between,
    removal_refusal,
)
from generator.core.render import ROUTES_MARKER, UPSTREAMS_MARKER, UPSTREAMS_MARKER_POOL, Part
from generator.memory import no_gc
from generator.nginx.wrapper import Wrapper, run_command

NEW_FILE_MODE = 0o644
T = TypeVar("T")  # what apply_then's `after` returns


class Checker:
    """The check (crossplane parses the rendered config back: core/check.py), with memory.

    The file around the deployments' parts (the skeleton, small) is parsed every time; each
    deployment's part (its lines in the hostname map and its upstream blocks) is parsed once
    and remembered for as long as it stays the same, so a long-running watcher parses only what
    changed. Either way every byte of the file has been parsed back: the file is the skeleton
    with the lines spliced in at the one marker entry the skeleton's hostname map must hold,
    and the upstream blocks at the one marker block the skeleton must hold at http level.
    """

    def __init__(self) -> None:
        self._passed: set[Part] = set()
        # Digests of the parts an earlier process checked with this same check (its trust
        # file, see trust_file()): such a part is not parsed again. A changed part has another
        # digest, so it always is.
        self._trusted: frozenset[bytes] = frozenset()
        self._digests: dict[Part, bytes] = {}  # of the parts that passed last, once computed
        self.parsed = 0  # parts the last check parsed (the others were known to pass)
        self.loaded = False  # whether the trust file was read (once per checker)

    def trust(self, digests: frozenset[bytes]) -> None:
        """Take `digests` (a trust file's) as parts known to pass."""
        self._trusted = digests
        self.loaded = True

    def digests(self, parts: Sequence[Part]) -> list[bytes]:
        """The digests of `parts` (the ones that passed last), remembered for the next time."""
        known = self._digests
        found = [known.get(part) or part_digest(part) for part in parts]
        self._digests = dict(zip(parts, found, strict=True))
        return found

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
            rendered.public,
        )
        parts = rendered.fragments
        new = [part for part in parts if part not in self._passed]
        unchecked = new
        if self._trusted:
            known = {part: part_digest(part) for part in new}
            self._digests.update(known)  # the trust file written after this apply needs them
            unchecked = [part for part in new if known[part] not in self._trusted]
        self.parsed = len(unchecked)
        if not placed and any(part.blocks for part in parts):
            failures.append("the skeleton has no place for the upstream blocks")
        # Parts that passed together had no pool in common: only a part new since then can
        # share one (a trusted part too: it passed beside other parts than these).
        if any(part.pools for part in new):
            failures += _shared_pools(parts)
        if unchecked:
            failures += _check_in_parts(scratch, unchecked)
        if failures:
            _refuse(failures, config)
        self._passed = set(parts)
        if len(self._digests) > len(parts):  # only the passed parts' (dry runs save none)
            kept = self._digests
            self._digests = {part: kept[part] for part in parts if part in kept}


def _shared_pools(parts: Sequence[Part]) -> list[str]:
    """Each part's blocks were read back as exactly its pools: no pool may be another's too
    (nginx refuses a second upstream block of one name)."""
    seen: set[str] = set()
    shared: set[str] = set()
    for pools in [part.pools for part in parts if part.pools]:  # few have any
        for name, _ in pools:
            (shared if name in seen else seen).add(name)
    return [f"upstream {name} is the pool of two deployments" for name in sorted(shared)]


def part_digest(part: Part) -> bytes:
    """What the check of `part` depends on, as a digest: its text and the routes and pools it
    must hold (sorted: a frozenset's order differs from process to process)."""
    digest = hashlib.sha256()
    pieces = [
        part.lines,
        part.blocks,
        *sorted(f"route\t{host}\t{target}" for host, target in part.routes),
        *sorted(f"pool\t{name}\t{' '.join(servers)}" for name, servers in part.pools),
    ]
    for piece in pieces:
        encoded = piece.encode("utf-8")
        digest.update(b"%d:" % len(encoded))  # its length first: no two cuts read the same
        digest.update(encoded)
    return digest.digest()


@functools.cache
def _check_version() -> str | None:
    """The first line of a trust file: which check its digests passed. Another version of
    devtest-router, of crossplane, or of the code that checks a part (the check, the wrapper
    crossplane parses in, this module), and none is trusted. None when that code cannot be
    read: then nothing is trusted and no trust file is written."""
    import crossplane

    from generator import __version__
    from generator.core import check as check_module
    from generator.nginx import wrapper

    code = hashlib.sha256()
    try:
        for module in (check_module.__file__, wrapper.__file__, __file__):
            code.update(Path(str(module)).read_bytes())
    except OSError:
        return None
    return (
        f"devtest-router {__version__} crossplane {crossplane.__version__} "
        f"check {code.hexdigest()[:16]}"
    )


def trust_file(target: Path) -> Path:
    """Beside the output: the digests of the parts of the last file that passed the check and
    nginx's tests, so that the next process (etcdwatch's child, a restarted watcher) parses
    only the parts that changed."""
    return target.with_name(f".{target.name}.checked")


def _load_trust(checker: Checker, target: Path) -> None:
    """Give `checker` the trust file's digests, once; none if it is missing, unreadable or
    from another check."""
    if checker.loaded:
        return
    text = _read(trust_file(target), quiet=True)
    lines = text.split("\n") if text else []
    digests: frozenset[bytes] = frozenset()
    if lines and _check_version() is not None and lines[0] == _check_version():
        with suppress(ValueError):
            digests = frozenset(bytes.fromhex(line) for line in lines[1:] if line)
    checker.trust(digests)


def _save_trust(checker: Checker, target: Path, parts: Sequence[Part]) -> None:
    """Write the trust file for `parts` (they passed the check and nginx's tests): atomically,
    and best effort (without it the next process parses every part, as a first one does)."""
    version = _check_version()
    if version is None:
        return
    text = "\n".join([version, *(d.hex() for d in checker.digests(parts))]) + "\n"
    try:
        staged = _stage(target.parent, target.name, text)
    except ApplyError:
        return
    try:
        os.chmod(staged, NEW_FILE_MODE)
        os.replace(staged, trust_file(target))
    except OSError:
        staged.unlink(missing_ok=True)


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
        raise RefusedError(
            f"the rendered config fails the check: {detail}; nothing was changed. Fix the "
            f"templates in {config.template_dir}"
        )
    raise InternalError(f"the rendered config does not match the routing table: {detail}")


def gate(rendered: Rendered, config: Config, staged: Path, scratch: Path, checker: Checker) -> None:
    """The gate: the check (crossplane), then nginx's test of the staged file; raises if either
    refuses."""
    checker(rendered, config, scratch)
    _require_tls_files(config)
    (scratch / "nginx").mkdir()
    wrapper = Wrapper(scratch / "nginx", staged)
    wrapper.write()
    passed, said = wrapper.test(config.nginx, config.command_timeout)
    if not passed:
        raise RefusedError(
            f"nginx rejects the rendered config; nothing was changed\n{_indent(said)}"
        )


def _require_tls_files(config: Config) -> None:
    """The certificate and key must be readable: nginx reads them at every test and reload.
    nginx's test would refuse a missing one too, but in lines of its own about its wrapper."""
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


def require_basic_auth_file(config: Config) -> None:
    """basic_auth_file must be readable and hold users (user:hash lines): nginx's test never
    reads it, and its workers read it at every request, so a missing or broken file would
    turn every protected request into a 500. Its lines are never shown: they hold hashes."""
    path = config.basic_auth_file
    if path is None:
        return
    fix = (
        "make it with `htpasswd -c FILE USER` (apache2-utils) or user:$(openssl passwd -apr1) "
        "lines, or fix basic_auth_file; nothing was changed"
    )
    try:
        with open(path, "rb") as file:
            text = file.read()
    except OSError as error:
        raise UsageError(
            f"setting basic_auth_file: cannot read {path} ({error.strerror}); nginx's workers "
            "must read it too: fix the path or the file's permissions; nothing was changed"
        ) from None
    users = 0
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, colon, hashed = line.partition(b":")
        if not colon or not user or not hashed or any(c in user for c in b" \t"):
            raise UsageError(
                f"setting basic_auth_file: line {number} of {path} is not user:hash (not "
                f"shown: it may hold a password); {fix}"
            )
        users += 1
    if not users:
        raise UsageError(f"setting basic_auth_file: {path} holds no user:hash line; {fix}")


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
    """The rendered text once it passed the check: crossplane has read it back as the routing
    table (no nginx's test)."""
    with tempfile.TemporaryDirectory(prefix="devtest-router-") as folder:
        (checker or Checker())(rendered, config, Path(folder))
    return rendered.text


def plan(
    rendered: Rendered,
    config: Config,
    checker: Checker | None = None,
    known: Known | None = None,
    recent: Sequence[Applied] = (),
) -> Plan:
    """Dry run: the gate (the check and nginx's test) and the safety threshold, as a real apply
    runs them, on a copy in a temporary folder; changes nothing.
    `recent`: the safety threshold's window, as for apply()."""
    require_basic_auth_file(config)
    target = output_file(config)
    current = _read(target)
    confirmed = current is not None and _recorded(target) == _digest(current)
    checker = checker or Checker()
    _load_trust(checker, target)
    with tempfile.TemporaryDirectory(prefix="devtest-router-") as folder:
        scratch = Path(folder)
        staged = scratch / "rendered.conf"
        staged.write_text(rendered.text, encoding="utf-8")
        result = _checked_plan(
            rendered, config, current, staged, scratch, checker, known, "", recent
        )
    return result if confirmed or current is None else _unconfirmed(result)


def apply(
    rendered: Rendered,
    config: Config,
    checker: Checker | None = None,
    known: Known | None = None,
    recent: Sequence[Applied] = (),
) -> Plan:
    """Install `rendered` at config.output and reload nginx, or raise with the old file intact.

    `recent`: the applies of the safety threshold's window (removal_refusal), oldest first.

    A long-running caller passes the same `checker` every time and, as `known`, what it
    applied last.
    """
    return apply_then(rendered, config, _nothing, checker, known, recent)[0]


def _nothing() -> None:
    return None


def apply_then(
    rendered: Rendered,
    config: Config,
    after: Callable[[], T],
    checker: Checker | None = None,
    known: Known | None = None,
    recent: Sequence[Applied] = (),
) -> tuple[Plan, T]:
    """apply, then `after`: the plan and what `after` returned.

    `after` runs under the same lock once the file in place is the rendered one (installed and
    reloaded, or there already): the site is written from the same routing table, and two
    applies never interleave their pages. If it raises, the config stays applied.
    """
    require_basic_auth_file(config)  # even when the file in place is the rendered one
    target = output_file(config)
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(
            f"output {target}: the folder {folder} does not exist; create it or set output"
        )
    with _locked(folder / f".{target.name}.lock"):
        _remove_staged(folder, target.name, time.time())
        current = _read(target)
        recorded = _recorded(target)
        confirmed = current is not None and recorded == _digest(current)
        if confirmed:
            # an apply cut short after its record left the file it replaced: no longer needed
            _previous(target).unlink(missing_ok=True)
            if current == rendered.text:
                done = after()
                return Plan(current, rendered.text, len(rendered.table.routes), (), (), ()), done
        # Not the file last tested and reloaded (an apply was cut short): is the file it
        # replaced, kept as .previous, that one? Then a failure puts it back. Either way the
        # record goes first, so an apply cut short again is finished by the next one again.
        keep_previous = False
        if not confirmed and recorded is not None:
            kept = _read(_previous(target), quiet=True)
            keep_previous = current is not None and kept is not None and _digest(kept) == recorded
            _forget(target)
        checker = checker or Checker()
        _load_trust(checker, target)
        with tempfile.TemporaryDirectory(prefix="devtest-router-") as temporary:
            scratch = Path(temporary)
            staged = _stage(folder, target.name, rendered.text)
            try:
                result = _checked_plan(
                    rendered, config, current, staged, scratch, checker, known,
                    "; nothing was changed", recent,
                )  # fmt: skip
                _install(staged, target, config, rendered.text, keep_previous)
            finally:
                staged.unlink(missing_ok=True)
        _save_trust(checker, target, rendered.fragments)
        if current is not None and not confirmed:
            result = _unconfirmed(result)
        done = after()
    return result, done


@dataclass(frozen=True, slots=True)
class Unconfirmed(Plan):
    """A plan over a file in place that was not the last one tested and reloaded (an apply was
    cut short, or none recorded it yet): applying it tests and reloads, even the same bytes."""

    @property
    def changes(self) -> bool:
        return True

    def summary(self) -> str:
        return (
            Plan.summary(self) + ", and the file in place had not been tested and reloaded "
            "(an apply cut short, or the first apply since an upgrade)"
        )


def _unconfirmed(result: Plan) -> Plan:
    return Unconfirmed(**{field.name: getattr(result, field.name) for field in fields(result)})


def output_file(config: Config) -> Path:
    """The file apply writes for config.output: the output itself, or the file a symlink
    points to (written through: the link stays). Anything but a regular file, or a path where
    one can be made, is refused (a FIFO hangs a read, a device is read forever or replaced by
    a file), before a lock file is made beside it."""
    given = Path(config.output)
    target = given
    if given.is_symlink():
        try:
            target = given.resolve()
        except (OSError, RuntimeError):  # a loop (RuntimeError before Python 3.13)
            target = given
    try:
        status = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return target
    except OSError as error:  # a symlink loop, a folder we may not search
        raise UsageError(
            f"output {given}: {error.strerror}; set output to a regular file, or to a path "
            "where one can be created; nothing was changed"
        ) from None
    if not stat.S_ISREG(status.st_mode):
        shown = given if target == given else f"{given} (a symlink to {target})"
        raise UsageError(
            f"output {shown} is a {file_kind(status.st_mode)}, not a regular file: set output "
            "to a regular file, or to a path where one can be created; nothing was changed"
        )
    return target


def file_kind(mode: int) -> str:
    """What a file of st_mode `mode` is, in words."""
    kinds = (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _checked_plan(
    rendered: Rendered,
    config: Config,
    current: str | None,
    staged: Path,
    scratch: Path,
    checker: Checker | None,
    known: Known | None,
    refused_suffix: str,
    recent: Sequence[Applied] = (),
) -> Plan:
    """What dry run and apply share: the gate on the staged file (the check, then nginx's
    test), the plan against the file in place, and the safety threshold."""
    gate(rendered, config, staged, scratch, checker or Checker())
    if known is not None and current is not None and known.text == current:
        result = plan_between(known, rendered)
    else:
        routes = current_routes(Path(config.output), current, scratch / "current")
        result = make_plan(current, routes, rendered)
    refusal = removal_refusal(result, config, recent)
    if refusal:
        raise RefusedError(refusal + refused_suffix)
    return result


def _install(
    staged: Path, target: Path, config: Config, text: str, keep_previous: bool = False
) -> None:
    """Swap `staged` (holding `text`) in, test, reload and record it; or put back what was in
    place (with `keep_previous`: the file kept as .previous, the last one tested and reloaded)."""
    previous = _swap(staged, target, keep_previous)
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
    _record(target, text)
    if previous is not None:
        previous.unlink(missing_ok=True)


def _read(path: Path, quiet: bool = False) -> str | None:
    """The text of the regular file at `path`, None if there is none; anything but a regular
    file is refused without waiting for it (O_NONBLOCK: a FIFO) or reading it. `quiet`: None
    instead of raising (our own side files)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if quiet:
            return None
        raise ApplyError(f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(descriptor, encoding="utf-8") as file:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            if quiet:
                return None
            raise UsageError(
                f"output {path} is a {file_kind(mode)}, not a regular file: set output to a "
                "regular file, or to a path where one can be created; nothing was changed"
            )
        try:
            return file.read()
        except (OSError, UnicodeDecodeError) as error:
            if quiet:
                return None
            raise ApplyError(f"cannot read {path}: {error}") from None


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def _record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.tested")


def _recorded(target: Path) -> str | None:
    """The digest of the file last tested and reloaded at `target`, if recorded."""
    text = _read(_record_path(target), quiet=True)
    return text.strip() if text else None


def _record(target: Path, text: str) -> None:
    """Record `text` as tested and reloaded: atomically, and only once both succeeded. Best
    effort: without a record (a full disk) the next apply only tests and reloads once more."""
    try:
        staged = _stage(target.parent, target.name, _digest(text) + "\n")
    except ApplyError:
        return
    try:
        os.chmod(staged, NEW_FILE_MODE)
        os.replace(staged, _record_path(target))
        _sync_folder(target.parent)
    except OSError:
        staged.unlink(missing_ok=True)


def _forget(target: Path) -> None:
    """Remove the record (durably): until a test and reload succeed, nothing is recorded."""
    _record_path(target).unlink(missing_ok=True)
    _sync_folder(target.parent)


def _remove_staged(folder: Path, name: str, before: float) -> None:
    """Remove the staged files an apply cut short left (ours only: by the name _stage gives
    them, and older than `before`, when this apply took the lock; nobody else stages while
    the lock is held). Best effort: one that stays is harmless."""
    ours = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.staged")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not ours.fullmatch(entry.name):
            continue
        with suppress(OSError):
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(status.st_mode) and status.st_mtime < before:
                os.unlink(entry.path)


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


def _swap(staged: Path, target: Path, keep_previous: bool = False) -> Path | None:
    """Rename the staged file over the target, keeping the target's mode and owner.

    Returns a hard link to the file that was in place (None if there was none), to restore it;
    with `keep_previous`, the .previous file already there instead (the last one tested).
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
        previous = _previous(target)
        if keep_previous:
            os.replace(staged, target)
            _sync_folder(target.parent)
            return previous
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
