"""The edge towards nginx: a minimal wrapper config, crossplane's parse of it, nginx's own test."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane

from generator.secret import child_environment

DEFAULT_TIMEOUT = 120.0  # seconds; the command_timeout setting's default
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Wrapper:
    """A throwaway nginx.conf in `folder` whose http block includes `included` and nothing else.

    It keeps its pid, logs and temp paths in `folder`, so testing needs no root and touches
    nothing of the running nginx.
    """

    folder: Path
    included: Path

    @property
    def path(self) -> Path:
        return self.folder / "nginx.conf"

    def write(self) -> Path:
        temp = "\n".join(
            f"    {name}_temp_path {_quoted(self.folder / name)};" for name in TEMP_PATHS
        )
        self.path.write_text(
            f"pid {_quoted(self.folder / 'nginx.pid')};\n"
            f"error_log {_quoted(self.folder / 'error.log')};\n"
            "events {}\n"
            "http {\n"
            f"{temp}\n"
            f"    include {_quoted(self.included)};\n"
            "}\n",
            encoding="utf-8",
        )
        return self.path

    def parse(self) -> dict[str, Any]:
        """crossplane's payload for the wrapper and the included file, contexts and args checked."""
        payload: dict[str, Any] = crossplane.parse(
            str(self.path), comments=False, check_ctx=True, check_args=True, strict=False
        )
        return payload

    def test(self, nginx: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
        """Run `nginx -t` on the wrapper; (passed, what nginx said)."""
        try:
            binary = shlex.split(nginx)
        except ValueError as error:
            return False, f"cannot split the nginx setting {nginx!r}: {error}"
        return run(
            [
                *binary,
                "-t",
                "-q",
                "-p",
                str(self.folder),
                "-c",
                str(self.path),
                "-e",
                str(self.folder / "error.log"),
            ],
            timeout,
        )


def run(argv: list[str], timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """Run a command: (exit 0?, its stdout and stderr). A missing binary fails; it never raises.

    The command starts without the secret variables (secret.child_environment), with no
    standard input (nothing can wait for a keyboard), in a process group of its own. One that
    has not finished within `timeout` seconds is killed with everything it started (the whole
    group: a `sh -c` and its children alike), and the caller goes on at once, so a hung
    command never holds the apply lock longer than the timeout.
    """
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=child_environment(),
            process_group=0,
        )
    except FileNotFoundError:
        return False, f"{argv[0]}: command not found"
    except PermissionError:
        return False, f"{argv[0]}: permission denied"
    except OSError as error:
        return False, f"{argv[0]}: {error.strerror}"
    with child:
        try:
            said, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return False, (
                f"{shlex.join(argv)}: no answer within {timeout:g} s (command_timeout); "
                "killed it and every process it started"
            )
        except BaseException:  # interrupted (Ctrl-C): the command goes too, as it would
            _kill_group(child)
            raise
    return child.returncode == 0, said.strip()


def _kill_group(child: subprocess.Popen[str]) -> None:
    """SIGKILL the child's process group and reap the child. Its output is not read further: a
    process that left the group may still hold the pipe open."""
    with suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def run_command(command: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """Run a configured command line (test_command, reload_command) without a shell."""
    try:
        argv = shlex.split(command)
    except ValueError as error:
        return False, f"cannot split {command!r}: {error}"
    if not argv:
        return False, "empty command"
    return run(argv, timeout)
