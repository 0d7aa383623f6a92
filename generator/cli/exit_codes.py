"""devtest-router's exit codes in one place: what each means (the top-level help's table, and
docs/operations.md), which errors end a command with it (main() maps them through `code_of`),
and the one line a command's help gives (`summary`: only the codes that command returns).
`register` returns the codes it does not raise from here too.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from generator.core.errors import (
    Error,
    InternalError,
    MetadataUnavailable,
    SiteError,
    TemplateProblem,
    UsageError,
)
from generator.registry.base import RegistryUnavailable

OK = 0
CHANGES = 1  # apply --dry-run found changes; wait gave up
USAGE = 2
INTERNAL = 3
REGISTRY = 4
SITE = 5
ADDRESS = 6  # register: its own address (the cloud metadata) could not be found
REFUSED = 123
INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class ExitCode:
    code: int
    short: str  # a few words for a command's help line (`summary`)
    meaning: str  # its line in the top-level help and in docs/operations.md
    errors: tuple[type[BaseException], ...] = ()  # ended with this code (and their subclasses)


TABLE: tuple[ExitCode, ...] = (
    ExitCode(OK, "ok", "applied, or nothing to do"),
    ExitCode(
        CHANGES,
        "changes found",
        "apply --dry-run: changes found; wait: the route did not answer in time",
    ),
    ExitCode(USAGE, "usage", "usage or configuration error", (UsageError, TemplateProblem)),
    ExitCode(
        INTERNAL,
        "a bug",
        "internal error: a bug in devtest-router (please report it)",
        (InternalError,),  # and any exception that is not an Error (see main)
    ),
    ExitCode(
        REGISTRY,
        "registry unreachable",
        "the registry (etcd, or the registry file) cannot be reached or read",
        (RegistryUnavailable,),
    ),
    ExitCode(
        SITE,
        "site not written",
        "the config was applied (or was up to date), but the site's pages could not be "
        "written into site_dir",
        (SiteError,),
    ),
    ExitCode(
        ADDRESS,
        "own address not found",
        "register: its own address could not be found (the ECS task metadata or EC2 instance "
        "metadata cannot be reached, or gives no usable address): nothing was registered",
        (MetadataUnavailable,),
    ),
    ExitCode(
        REFUSED,
        "refused",
        "unusable snapshot, or a check, nginx test, reload or safety threshold refused: "
        "nothing was changed",
        (Error,),  # every other Error: SnapshotError, RefusedError, ApplyError
    ),
    ExitCode(INTERRUPTED, "interrupted", "interrupted", (KeyboardInterrupt,)),
)

EXIT_CODES: Mapping[int, str] = {entry.code: entry.meaning for entry in TABLE}
_SHORT: Mapping[int, str] = {entry.code: entry.short for entry in TABLE}
_ERRORS: Mapping[type[BaseException], int] = {
    error: entry.code for entry in TABLE for error in entry.errors
}


def code_of(error: BaseException) -> int:
    """The exit code `error` ends a command with: its nearest class in the table; INTERNAL for
    an exception that is not one of ours (a bug)."""
    for kind in type(error).__mro__:
        if kind in _ERRORS:
            return _ERRORS[kind]
    return INTERNAL


def epilog() -> str:
    """The "exit codes:" table of the top-level help: every code with its meaning."""
    lines = ["exit codes:"]
    lines.extend(f"  {entry.code:>3}  {entry.meaning}" for entry in TABLE)
    return "\n".join(lines)


def summary(codes: Iterable[int], own: Mapping[int, str] | None = None, also: str = "") -> str:
    """A command's help line: the codes it returns besides 3 (a bug) and 130 (interrupted),
    which every command may, each in a few words (the table's, or `own`'s), and `also` (a code
    that is not in the table, such as a wrapped command's status)."""
    words = own or {}
    said = [f"{code} {words.get(code) or _SHORT[code]}" for code in codes]
    if also:
        said.append(also)
    line = f"exit codes: {'; '.join(said)}. Every code: devtest-router --help"
    return textwrap.fill(line, 79, subsequent_indent="  ", break_on_hyphens=False)
