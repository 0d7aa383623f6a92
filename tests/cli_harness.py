"""devtest-router's main() run in-process, as the command-line tests run it: argv, a standard
input, an environment, and what it printed and returned."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from generator.cli.main import main


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """What it said on stderr, line by line."""
        return self.err.splitlines()


def run_main(
    argv: list[str], stdin: str | Mapping[str, Any] = "", environ: Mapping[str, str] | None = None
) -> Result:
    """main(argv) with `stdin` (text, or a snapshot written as JSON) and only `environ`."""
    text = stdin if isinstance(stdin, str) else json.dumps(stdin)
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), io.StringIO(text), out, err, dict(environ or {}))
    return Result(code, out.getvalue(), err.getvalue())
