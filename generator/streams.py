"""The standard streams a command writes to, passed in so tests need no patching.

Log lines (what `say` writes to stderr) are one line per event: plain text for a person by
default, or one JSON object per line (--log-format json, for a log shipper). Each has a level;
lines below the log level are not written (-q: warnings and errors only; -v: debug lines too).
Output a command is asked for (render's config, check's table, a dry run's diff) goes to stdout
as it is, whatever the level.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Protocol, TextIO

LOG_FORMATS = ("plain", "json")
LEVELS = ("debug", "info", "warning", "error")  # from the least to the most serious


class Log(Protocol):
    def __call__(self, message: str, level: str = "info", /, **fields: object) -> None:
        """One log line: what happened, how bad (debug, info, warning, error), and facts a
        script can filter on (registry_index, snapshot, deployment, ...)."""


def format_line(
    message: str, level: str, fields: dict[str, object], log_format: str, now: datetime
) -> str:
    """A log line without its newline. Plain text keeps only the message (which already says
    what the fields say); JSON has time, level, message and the fields."""
    if log_format != "json":
        return f"devtest-router: {message}"
    record: dict[str, object] = {
        "time": now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level,
        "message": message,
    }
    for key, value in fields.items():
        if key not in record and value is not None:
            record[key] = value
    # ensure_ascii: a name with a lone surrogate still makes a line that every parser reads
    return json.dumps(record, default=str)


def shown(level: str, log_level: str) -> bool:
    """Whether a line of `level` is written at the log level `log_level` (an unknown log level
    counts as info: the settings refuse it, in a line that must be seen)."""
    lowest = LEVELS.index(log_level) if log_level in LEVELS else LEVELS.index("info")
    return level not in LEVELS or LEVELS.index(level) >= lowest


class Streams:
    def __init__(
        self,
        stdin: TextIO,
        stdout: TextIO,
        stderr: TextIO,
        log_format: str = "plain",
        log_level: str = "info",
    ) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.log_format = log_format
        self.log_level = log_level

    @property
    def verbose(self) -> bool:
        """Debug lines are written: worth the work of making them."""
        return self.log_level == "debug"

    def say(self, message: str, level: str = "info", /, **fields: object) -> None:
        """One line on stderr (see format_line), unless its level is below the log level."""
        if not shown(level, self.log_level):
            return
        line = format_line(message, level, fields, self.log_format, datetime.now(UTC))
        print(line, file=self.stderr, flush=True)
