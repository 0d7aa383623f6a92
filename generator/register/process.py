"""The wrapped command: signals as events, CMD in its own process group, its exit status (IO)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

from generator.secret import child_environment

CHILD_POLL = 1.0  # longest sleep while CMD runs (SIGCHLD wakes us sooner)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPING = (signal.SIGTERM, signal.SIGINT)


class SignalWaiter:
    """Signals as events: the handlers only note them (through the wakeup fd) and wait() sleeps
    until one arrives or the timeout passes. Main thread only."""

    def __init__(self, signums: Sequence[int]) -> None:
        self.signums = tuple(signums)
        self._old: dict[int, Any] = {}
        self._old_fd = -1
        self._read = self._write = -1

    def __enter__(self) -> SignalWaiter:
        self._read, self._write = os.pipe()  # not inherited by CMD (O_CLOEXEC)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in self.signums:
            self._old[signum] = signal.signal(signum, self._note)
        return self

    @staticmethod
    def _note(signum: int, frame: FrameType | None) -> None:
        pass  # the wakeup fd carries the signal's number to wait()

    def wait(self, timeout: float | None) -> list[int]:
        """The signals received since the last call (oldest first), after at most `timeout`."""
        wait = None if timeout is None else max(0.0, timeout)
        select.select([self._read], [], [], wait)
        try:
            return list(os.read(self._read, 4096))
        except BlockingIOError:
            return []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)


def exit_status(returncode: int) -> int:
    """A shell's $? for a child's return code: 128+N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def how_it_ended(returncode: int) -> str:
    """'exited with status 3', or 'was killed by SIGTERM (status 143)'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (status {exit_status(returncode)})"
    return f"exited with status {returncode}"


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A preexec step that makes the child get SIGTERM when `parent` dies, even of SIGKILL
    (Linux's PR_SET_PDEATHSIG); None where there is no prctl (not Linux).

    Without it, a wrapper killed with SIGKILL (nothing of it runs any more: no deregistration,
    no signal passed on) would leave CMD serving in its own process group, unregistered, until
    someone finds it. The kernel signals CMD alone (a stop signal the wrapper passes on goes to
    CMD's whole group); CMD's own children get what CMD does to them on SIGTERM. The death
    signal is tied to the thread that forked: CMD is started from the main thread, which lives
    as long as the wrapper. A prctl that fails (a sandbox forbidding it) leaves CMD as before.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(128 + signal.SIGTERM)

    return die_with_parent


class Child:
    """CMD in its own process group (signals go to the group, once, from us) with our stdio,
    without the secret variables (secret.child_environment), and SIGTERMed if we die."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = tuple(command)
        self.proc = subprocess.Popen(
            self.command,
            process_group=0,
            env=child_environment(),
            preexec_fn=_dies_with(os.getpid()),  # safe: the wrapper has one thread
        )
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        """The child's return code once it has exited. As PID 1 (a container's init), also
        reap whatever orphans were handed to us."""
        if os.getpid() == 1 and self.proc.returncode is None:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == self.pid:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.pid, signum)

    def wait(self, waiter: SignalWaiter) -> int:
        """Wait for the child to exit, still forwarding signals; its return code."""
        while (code := self.poll()) is None:
            for signum in waiter.wait(CHILD_POLL):
                if signum in FORWARDED:
                    self.signal(signum)
        return code
