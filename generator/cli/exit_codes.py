"""devtest-router's exit codes in one place: what each means (the help epilogs' table) and which
errors end a command with it (main() maps them through `code_of`). `register` returns the
codes it does not raise from here too, and prints its help's table with `epilog`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from generator.core.errors import Error, InternalError, SiteError, TemplateProblem, UsageError
from generator.register.discovery import MetadataUnavailable
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
    meaning: str  # its line in the help epilogs and in docs/operations.md
    errors: tuple[type[BaseException], ...] = ()  # ended with this code (and their subclasses)


TABLE: tuple[ExitCode, ...] = (
    ExitCode(OK, "applied, or nothing to do"),
    ExitCode(CHANGES, "apply --dry-run: changes found; wait: the route did not answer in time"),
    ExitCode(USAGE, "usage or configuration error", (UsageError, TemplateProblem)),
    ExitCode(
        INTERNAL,
        "internal error: a bug in devtest-router (please report it)",
        (InternalError,),  # and any exception that is not an Error (see main)
    ),
    ExitCode(
        REGISTRY,
        "the registry (etcd, or the registry file) cannot be reached or read",
        (RegistryUnavailable,),
    ),
    ExitCode(
        SITE,
        "the config was applied (or was up to date), but the site's pages could not be "
        "written into site_dir",
        (SiteError,),
    ),
    ExitCode(
        ADDRESS,
        "register: its own address could not be found (the ECS task metadata or EC2 instance "
        "metadata cannot be reached, or gives no usable address): nothing was registered",
        (MetadataUnavailable,),
    ),
    ExitCode(
        REFUSED,
        "unusable snapshot, or a check, nginx test, reload or safety threshold refused: "
        "nothing was changed",
        (Error,),  # every other Error: SnapshotError, RefusedError, ApplyError
    ),
    ExitCode(INTERRUPTED, "interrupted", (KeyboardInterrupt,)),
)

EXIT_CODES: Mapping[int, str] = {entry.code: entry.meaning for entry in TABLE}
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


def epilog(codes: Iterable[int] | None = None, meanings: Mapping[int, str] | None = None) -> str:
    """The "exit codes:" table of a command's help: `codes` (default: every code) with their
    meanings from the table, or from `meanings` where it has one (a command's own wording). A
    meaning of several lines continues under its first."""
    own = meanings or {}
    lines = ["exit codes:"]
    for code in EXIT_CODES if codes is None else codes:
        first, *rest = (own.get(code) or EXIT_CODES[code]).split("\n")
        lines.append(f"  {code:>3}  {first}")
        lines.extend(f"{'':7}{line}" for line in rest)
    return "\n".join(lines)
