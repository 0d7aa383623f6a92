"""Helpers for the site tests: routing tables with several instances a service, reading the
pages' links, and headless Chromium on loopback only.

Chromium is Debian's `chromium` package (scripts/install-deps installs it). It runs with its own
profile folder, resolves `localhost` and `*.localhost` to 127.0.0.1 and every other name to
nothing, and uses no proxy, so it contacts nothing but the loopback nginx of the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from harness import find_binary

from generator.core import routing
from generator.core.config import Config
from generator.core.model import Deployment, Instance, Member, RoutingTable, Service

InstanceSpec = tuple[str | None, str, int]  # (instance id or None: the ip/port keys, ip, port)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "build" / "test-artifacts"  # gitignored (build/)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-pings",
    "--no-proxy-server",
    "--host-resolver-rules=MAP localhost 127.0.0.1, MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND",
)


# --------------------------------------------------------------------------
# routing tables with instances: routing.build_table on validated deployments (what validation
# hands over once it reads .../service/<service>/instance/<id>/{ip,port})


def deployment(
    name: str,
    services: Mapping[str, Sequence[InstanceSpec]],
    created: datetime | None = None,
) -> Deployment:
    """A validated deployment whose services have the instances given, in the order given."""
    return Deployment(
        name,
        created,
        tuple(
            Service(service, tuple(Instance(id, ip, str(port)) for id, ip, port in instances))
            for service, instances in sorted(services.items())
        ),
        tuple(sorted(services)),
    )


def table(config: Config, *deployments: Deployment) -> RoutingTable:
    """The routing table of `deployments`, as the pipeline routes them."""
    return routing.build_table(deployments, config)


def with_members(
    table: RoutingTable, deployment: str, service: str, members: Sequence[Member]
) -> RoutingTable:
    """`table` with the routes of one service (its hostname and the default entry point) going
    to `members` instead."""
    members = tuple(members)
    routes = tuple(
        dataclasses.replace(route, members=members, pool=routing.pool(deployment, service, members))
        if (route.deployment, route.service) == (deployment, service)
        else route
        for route in table.routes
    )
    return RoutingTable(table.domain, routes, table.problems)


# --------------------------------------------------------------------------
# reading pages


@dataclass
class Page:
    """What a page holds that the tests read: its links and the text of its elements by id."""

    links: list[tuple[str, str]] = field(default_factory=list)  # (href, text)
    text_by_id: dict[str, str] = field(default_factory=dict)
    attributes: list[dict[str, str]] = field(default_factory=list)  # of every element
    text: str = ""


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._href: str | None = None
        self._link_text: list[str] = []
        self._ids: list[tuple[str, str, list[str]]] = []  # open elements with an id
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.page.attributes.append({"tag": tag, **values})
        if tag == "a" and "href" in values:
            self._href, self._link_text = values["href"], []
        if "id" in values:
            self._ids.append((tag, values["id"], []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.page.links.append((self._href, "".join(self._link_text).strip()))
            self._href = None
        if self._ids and self._ids[-1][0] == tag:
            _, ident, parts = self._ids.pop()
            self.page.text_by_id[ident] = "".join(parts).strip()

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        if self._href is not None:
            self._link_text.append(data)
        for _, _, parts in self._ids:
            parts.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = "".join(self._text)


def read_page(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page


# --------------------------------------------------------------------------
# headless Chromium


def chromium(url: str, profile: Path, *extra: str, timeout: float = 120) -> str:
    """Run headless Chromium on `url` with `extra` flags (e.g. --dump-dom); its stdout.

    Started in a session of its own and, if it overruns, stopped as that process group (its
    renderer and helper processes with it), never by name.
    """
    binary = find_binary("chromium")
    profile.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(profile),  # crash reports, caches and fonts' caches stay in the test's folder
        "XDG_CONFIG_HOME": str(profile / "config"),
        "XDG_CACHE_HOME": str(profile / "cache"),
    }
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile / 'user-data'}", *extra, url]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"chromium did not finish {url} within {timeout:g} s") from None
    if process.returncode != 0:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-20:])
        raise AssertionError(f"chromium exited {process.returncode} on {url}:\n{tail}")
    return out.decode("utf-8", errors="replace")


class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe: commands go to its fd 3
    and answers come from its fd 4, JSON messages each ended by a NUL byte
    (`--remote-debugging-pipe`). No debugging port is opened and no websocket library is
    needed; flags, profile and process group as chromium() above.

        with Browser(tmp_path / "chromium") as browser:
            tab = browser.tab()
            tab.navigate("http://localhost:8080/")
            tab.evaluate("document.title")
    """

    def __init__(self, profile: Path, *extra: str, timeout: float = 120) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next = 0
        binary = find_binary("chromium")
        profile.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HOME": str(profile),
            "XDG_CONFIG_HOME": str(profile / "config"),
            "XDG_CACHE_HOME": str(profile / "cache"),
        }
        argv = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile / 'user-data'}",
            "--remote-debugging-pipe",
            *extra,
            "about:blank",
        ]
        commands, self._commands = os.pipe()  # we write, Chromium reads (its fd 3)
        self._replies, replies = os.pipe()  # Chromium writes (its fd 4), we read
        ends = (commands, replies)

        def onto_3_and_4() -> None:  # in the child, before exec
            high = [os.dup(end) for end in ends]  # neither may be 3 or 4 while they move
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.log = profile / "chromium.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                pass_fds=(3, 4),
                preexec_fn=onto_3_and_4,  # before our reader thread starts
            )
        for end in ends:
            os.close(end)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._replies, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self._answers.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._answers.put(json.loads(message))

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: str = "") -> Any:
        """Send one command and wait for its answer; events that come first are kept."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._take(f"the answer to {method}")
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method: str, session: str = "", timeout: float | None = None) -> Any:
        """The first event `method` not yet waited for (of `session`), its params."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for number, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId", "") == session:
                    del self.events[number]
                    return event.get("params", {})
            self.events.append(self._take(f"event {method}", deadline - time.monotonic()))

    def _take(self, what: str, timeout: float | None = None) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=max(0.0, timeout or self.timeout))
        except queue.Empty:
            raise AssertionError(f"chromium: no {what} within {self.timeout:g} s") from None
        if answer is None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise AssertionError(f"chromium closed its pipe, waiting for {what}:\n{tail}")
        return answer

    def tab(self) -> Tab:
        """A new page, attached (its commands and events carry the session id)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Tab(self, session["sessionId"])

    def close(self) -> None:
        """Ask Chromium to quit; its process group is killed if it has not within 10 s."""
        if self.process.poll() is None:
            try:
                self._next += 1
                close = {"id": self._next, "method": "Browser.close", "params": {}}
                os.write(self._commands, json.dumps(close).encode() + b"\0")
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        os.close(self._commands)
        self._reader.join(timeout=10)
        os.close(self._replies)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Tab:
    """One page of a Browser."""

    browser: Browser
    session: str

    def send(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def navigate(self, url: str) -> None:
        """Load `url` and wait for its load event (every script of the page has run)."""
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Page.navigate", {"url": url})
        self.browser.wait_event("Page.loadEventFired", self.session)

    def evaluate(self, expression: str, wait: bool = False) -> Any:
        """The value of a JavaScript expression in the page (`wait`: of the promise it gives)."""
        found = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": wait},
        )
        if "exceptionDetails" in found:
            raise AssertionError(f"{expression}: {found['exceptionDetails']}")
        return found["result"].get("value")

    def press(self, key: str) -> None:
        """One key pressed and released, as a keyboard sends it to the focused element."""
        if key in KEYS:
            code, number, text = KEYS[key]
        else:  # a letter
            code, number, text = f"Key{key.upper()}", ord(key.upper()), key
        down = {"key": key, "code": code, "windowsVirtualKeyCode": number}
        if text:
            down |= {"text": text, "unmodifiedText": text}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", **down})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code})

    def type(self, text: str) -> None:
        for key in text:
            self.press(key)

    def exceptions(self) -> list[str]:
        """The page's uncaught JavaScript errors so far."""
        thrown = [
            event
            for event in self.browser.events
            if event.get("method") == "Runtime.exceptionThrown"
        ]
        return [str(event["params"]["exceptionDetails"]) for event in thrown]


# key -> (code, Windows virtual key code, text it types); letters and digits are worked out
KEYS = {
    "/": ("Slash", 191, "/"),
    "Escape": ("Escape", 27, ""),
    "-": ("Minus", 189, "-"),
    ".": ("Period", 190, "."),
    " ": ("Space", 32, " "),
    **{str(digit): (f"Digit{digit}", 48 + digit, str(digit)) for digit in range(10)},
}
