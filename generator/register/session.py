"""One instance in one registry (Session: register, keep alive, deregister, one line each) and
the two ways `register` keeps one alive: as a sidecar until signalled, or wrapping CMD."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

from generator.cli.exit_codes import OK, REGISTRY, USAGE
from generator.core.errors import Error
from generator.core.model import RFC3339
from generator.register.discovery import Address
from generator.register.process import (
    CHILD_POLL,
    FORWARDED,
    STOPPING,
    Child,
    SignalWaiter,
    exit_status,
    how_it_ended,
    port_answers,
)
from generator.register.settings import Settings
from generator.registry.base import Entry, Registry
from generator.streams import Streams

PORT_POLL = 0.1  # seconds between connection attempts while CMD starts


def now() -> str:
    return datetime.now(UTC).strftime(RFC3339)


class Session:
    """One instance in one registry: register, keep alive, deregister, with one line each."""

    def __init__(
        self, registry: Registry, entry: Entry, ttl: int, streams: Streams, how: str
    ) -> None:
        self.registry, self.entry, self.ttl, self.streams = registry, entry, ttl, streams
        self.how = how  # where the address (and the instance id) came from, for the log line
        self.registered = False
        self.superseded = False  # a newer registration holds our instance: hands off
        self._failing = False

    @property
    def key(self) -> str:
        return self.entry.key

    def _say(self, message: str, level: str = "info") -> None:
        entry = self.entry
        self.streams.say(
            message,
            level,
            deployment=entry.deployment,
            service=entry.service,
            instance=entry.instance,
            key=self.key,
        )

    def register(self, how: str, refreshed: bool = True) -> None:
        self.registry.register(self.entry, self.ttl)
        self.registered = True
        if not self.ttl:
            ttl = "no ttl"
        elif refreshed:
            ttl = f"ttl {self.ttl}s, refreshed every {self.ttl / 3:g}s"
        else:
            ttl = (
                f"ttl {self.ttl}s, not refreshed: the keys expire unless written again "
                "(--ttl 0 keeps them)"
            )
        self._say(
            f"registered {self.key} -> {self.entry.address} ({how}) in "
            f"{self.registry.description}; {ttl}"
        )

    def keepalive(self) -> None:
        """Refresh the TTL (or register, if that has not worked yet); a failure is reported
        once and retried next time: a registry that is away for a while must not end the
        service. Once a newer registration holds the instance, nothing more is written."""
        if self.superseded or (self.registered and not self.ttl):
            return  # no TTL: nothing expires, nothing to refresh
        try:
            other = None
            if self.registered:
                other = self.registry.keepalive(self.entry, self.ttl)
            else:
                self.register(self.how)
        except Exception as error:  # anything at all: the service keeps running
            if not self._failing:
                what = str(error) if isinstance(error, Error) else f"internal error: {error!r}"
                step = "keepalive" if self.registered else "registration"
                self._say(
                    f"{step} failed, retrying every {retry(self.ttl):g}s (a registered entry "
                    f"expires {self.ttl}s after the last success): {what}",
                    "error",
                )
            self._failing = True
            return
        if other is not None:
            self.superseded = True
            self._say(
                f"{self.key} holds {other} now, not {self.entry.address}: a newer registration "
                f"with the same instance id {self.entry.instance} replaced this one, which "
                "stops refreshing it; give each container its own INSTANCE (or leave it unset)",
                "error",
            )
            return
        if self._failing:
            self._say(f"the registry answers again: {self.key} refreshed")
        self._failing = False

    def deregister(self) -> bool:
        if not self.registered:
            return True
        self.registered = False
        try:
            removal = self.registry.deregister(self.entry)
        except Error as error:
            expiry = f"; it expires within {self.ttl}s" if self.ttl else ""
            self._say(f"could not deregister {self.key}{expiry}: {error}", "error")
            return False
        if removal.other is not None:
            self._say(
                f"left {self.key} as it is: it holds {removal.other}, a newer registration's, "
                f"not {self.entry.address}"
            )
        else:
            self._say(f"deregistered {self.key} from {self.registry.description}")
        return True


def retry(ttl: int) -> float:
    """Seconds between keepalives (a third of the TTL), or between attempts to register."""
    return ttl / 3 if ttl else 5.0


def next_keepalive(ttl: int) -> float:
    return time.monotonic() + ttl / 3 if ttl else float("inf")


def sidecar(session: Session, streams: Streams) -> int:
    with SignalWaiter(FORWARDED) as waiter:
        session.register(session.how)
        due = next_keepalive(session.ttl)
        while True:
            timeout = None if due == float("inf") else due - time.monotonic()
            received = waiter.wait(timeout)
            stop = [signum for signum in received if signum in STOPPING]
            if stop:
                streams.say(f"{signal.Signals(stop[0]).name} received; deregistering")
                return OK if session.deregister() else REGISTRY
            if time.monotonic() >= due:
                session.keepalive()
                due = next_keepalive(session.ttl)


def wrap(session: Session, settings: Settings, address: Address, streams: Streams) -> int:
    command = settings.command
    check = settings.check_port or address.container_port
    if port_answers(check):  # someone else's server would be registered as CMD's
        streams.say(
            f"127.0.0.1:{check} already accepts connections before {command[0]} started: "
            "another process listens there and would be registered in its place; stop it or "
            "use another PORT (or --check-port)"
        )
        return USAGE
    with SignalWaiter((*FORWARDED, signal.SIGCHLD)) as waiter:
        try:
            child = Child(command)
        except OSError as error:
            missing = isinstance(error, FileNotFoundError)
            streams.say(f"cannot run {command[0]!r}: {error.strerror or error}")
            return 127 if missing else 126
        try:
            streams.say(
                f"started {command[0]} (pid {child.pid}); registering once 127.0.0.1:{check} "
                "accepts connections"
            )
            stopping = False
            # 1. wait for the port (or for CMD to exit, or for a signal)
            while not stopping:
                code = child.poll()
                if code is not None:
                    streams.say(
                        f"{command[0]} {how_it_ended(code)} before "
                        f"127.0.0.1:{check} accepted connections; not registered"
                    )
                    return exit_status(code)
                if port_answers(check):
                    break
                for signum in waiter.wait(PORT_POLL):
                    if signum in FORWARDED:
                        child.signal(signum)
                    if signum in STOPPING:
                        stopping = True
            # 2. register and keep alive until CMD exits or we are told to stop; a registry
            # that does not answer yet is retried while CMD keeps serving
            if not stopping:
                session.keepalive()
            due = time.monotonic() + retry(session.ttl)
            # A stop signal held back while the frontend drops this instance, and when it goes
            # on to CMD (see DEFAULT_DRAIN); a second stop signal goes on at once.
            held: tuple[int, float] | None = None
            while (code := child.poll()) is None:
                timeout = min(CHILD_POLL, due - time.monotonic())
                if held is not None:
                    timeout = min(timeout, held[1] - time.monotonic())
                for signum in waiter.wait(max(timeout, 0.0)):
                    first_stop = signum in STOPPING and not stopping
                    if signum in STOPPING:
                        stopping = True
                    if first_stop and session.registered:
                        name = signal.Signals(signum).name
                        later = f" in {settings.drain:g} s (--drain)" if settings.drain else ""
                        streams.say(f"{name} received; deregistering, then passing it on{later}")
                        session.deregister()  # first, so no new request is routed to CMD
                        if settings.drain:
                            held = (signum, time.monotonic() + settings.drain)
                            continue
                    if signum in FORWARDED:
                        child.signal(signum)
                        if signum in STOPPING:
                            held = None
                if held is not None and time.monotonic() >= held[1]:
                    child.signal(held[0])
                    held = None
                if not stopping and time.monotonic() >= due:
                    session.keepalive()
                    due = time.monotonic() + retry(session.ttl)
            streams.say(f"{command[0]} {how_it_ended(code)}")
            session.deregister()
            return exit_status(code)
        finally:
            if child.poll() is None:  # an unexpected error: do not leave CMD behind
                child.signal(signal.SIGTERM)
                child.wait(waiter)
