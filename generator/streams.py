"""The standard streams a command writes to, passed in so tests need no patching."""

from __future__ import annotations

from typing import TextIO


class Streams:
    def __init__(self, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def say(self, message: str) -> None:
        """One line on stderr, prefixed with the program's name."""
        print(f"devtest-router: {message}", file=self.stderr, flush=True)
