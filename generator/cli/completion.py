"""`devtest-router completion bash|zsh`: a shell completion script, made from the parser by shtab,
so it names every command and flag the parser has, and completes file and folder names where a
flag takes one."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import shtab

# What a flag's metavar says it takes: file names, folder names.
_PATHS = {"FILE": shtab.FILE, "DIR": shtab.DIRECTORY, "SNAPSHOT": shtab.FILE}


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every action of the parser and of its commands."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (bash or zsh)."""
    for action in _actions(parser):
        if isinstance(action.metavar, str) and action.metavar in _PATHS:
            action.complete = _PATHS[action.metavar]  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)
