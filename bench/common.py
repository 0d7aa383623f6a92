"""What the benchmarks share: the settings they run under, the generator's entry points (looked up
at run time, so that the suite keeps working while the package's internals move), timers, the
machine's facts and the table of figures.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOMAIN = "bench.test"
# Debian's nginx (make deps installs nginx-light), wherever PATH or the sbin folders have it.
NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])) or (
    "/usr/sbin/nginx"
)
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# the generator, as the command line uses it


def config(**overrides: Any) -> Any:
    """A Config as `devtest-router` resolves it from flags (no environment, no file)."""
    from generator.core.config import resolve
    from generator.resources import schema

    flags = {"domain": DOMAIN, "listen": ["127.0.0.1:8080"], "nginx": NGINX, **overrides}
    return resolve(schema("config"), flags, {})


def templates() -> Any:
    from generator.core.render import environment
    from generator.resources import template_loader

    return environment(template_loader())


def snapshot_schema() -> dict[str, Any]:
    from generator.resources import schema

    return schema("snapshot")


def naive_build(snapshot: Mapping[str, Any], cfg: Any, env: Any) -> Any:
    """pipeline.build from scratch as the command line runs it (through the shell's build,
    which holds the garbage collector off, where there is one), whichever signature it has
    today (its third argument was a prepared SnapshotValidator, and is now the snapshot
    schema)."""
    from generator.core import pipeline

    third = list(inspect.signature(pipeline.build).parameters)[2]
    if third == "validator":
        from generator.core.validate import SnapshotValidator

        return pipeline.build(snapshot, cfg, SnapshotValidator(snapshot_schema()), env)
    engine = _engine_module()
    build = getattr(engine, "build", pipeline.build) if engine is not None else pipeline.build
    return build(snapshot, cfg, snapshot_schema(), env)


def checked_text(rendered: Any, cfg: Any) -> str:
    """apply.checked_text without any memory of earlier ones: the check (crossplane), cold."""
    from generator.nginx.apply import checked_text as check

    text: str = check(rendered, cfg)
    return text


def _engine_module() -> Any:
    """generator.watch.engine, or None while it does not exist."""
    try:
        return importlib.import_module("generator.watch.engine")
    except ModuleNotFoundError as error:
        if error.name != "generator.watch.engine":
            raise
        return None


def engine_class() -> Any:
    """generator.watch.engine.Engine, or None while it does not exist."""
    return getattr(_engine_module(), "Engine", None)


# ------------------------------------------------------------------------------------------------
# timing and memory


def measure(action: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def max_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or of its waited-for children), in MB."""
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory (VmHWM) afresh (Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """This process's peak resident memory since the last reset_peak_rss(), in MB."""
    try:
        return proc_status(os.getpid()).get("VmHWM")
    except OSError:
        return None


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a live process from /proc, in MB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (p95 of 50 values is the 48th smallest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


# Which phase a call into the package counts for, by the module that defines the function.
CATEGORIES = {
    "generator.core.validate": "validate",
    "generator.core.routing": "route",
    "generator.core.render": "render",
    "generator.core.snapshot": "id",  # snapshot_id, and the per-deployment canonical JSON
    "generator.core.check": "check: our rules",
}


class Attribution:
    """Splits a real pipeline.build (or Engine.build) and apply.checked_text into phases.

    While active, the functions that generator.core.pipeline, generator.watch.engine and
    generator.nginx.apply call from the validate, routing, render, snapshot and check modules
    (and the methods of the classes they use from there, e.g. SnapshotValidator.deployment), and
    crossplane.parse, are wrapped in timers. Only the outermost wrapped call is counted, so
    nothing counts twice. With memory=True (under tracemalloc) each category also gets the
    memory its calls left allocated. Whatever the builder does itself is the rest.
    """

    def __init__(self, memory: bool = False) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.retained: dict[str, int] = defaultdict(int)
        self.calls: Counter[str] = Counter()
        self.memory = memory
        self._depth = 0
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, category: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return function(*args, **kwargs)
            self._depth += 1
            before = tracemalloc.get_traced_memory()[0] if self.memory else 0
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[category] += time.perf_counter() - start
                self.calls[category] += 1
                if self.memory:
                    self.retained[category] += tracemalloc.get_traced_memory()[0] - before
                self._depth -= 1

        return timed

    def _patch(self, owner: Any, name: str, category: str) -> None:
        original = getattr(owner, name)
        self._undo.append((owner, name, original))
        setattr(owner, name, self._wrap(category, original))

    def __enter__(self) -> Attribution:
        import crossplane

        self._patch(crossplane, "parse", "check: crossplane parse")
        callers = ["generator.core.pipeline", "generator.nginx.apply"]
        if engine_class() is not None:
            callers.append("generator.watch.engine")
        seen_classes: set[type] = set()
        for caller in callers:
            module = importlib.import_module(caller)
            for name, value in list(vars(module).items()):
                category = CATEGORIES.get(getattr(value, "__module__", ""))
                if category is None or name.startswith("__"):
                    continue
                if inspect.isfunction(value):
                    self._patch(module, name, category)
                elif inspect.isclass(value) and value not in seen_classes:
                    seen_classes.add(value)
                    for attribute, member in list(vars(value).items()):
                        if inspect.isfunction(member) and not attribute.startswith("__"):
                            self._patch(value, attribute, category)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def split(self, total: float, categories: tuple[str, ...]) -> dict[str, float]:
        """Seconds per category, and `rest`: the part of `total` no wrapped call took."""
        parts = {category: self.seconds.get(category, 0.0) for category in categories}
        parts["rest"] = max(0.0, total - sum(parts.values()))
        return parts


@contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------------
# the machine


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not found"
    return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) / 1024 / 1024
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _first_line([NGINX, "-v"]),
        "etcd": _first_line(["etcd", "--version"]),
        "wrk": _first_line(["wrk", "--version"]),
    }


def source_state() -> dict[str, Any]:
    """Which generator the numbers belong to: the commit and any uncommitted changes to it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
            ).stdout.rstrip()
        except OSError:
            return ""

    dirty = git("status", "--short", "--", "generator", "templates", "schema").splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": dirty,
        "fingerprint": fingerprint(),
    }


def fingerprint() -> str:
    """A hash of the generator's code, templates and schemas as they are on disk now: if it
    changes during a run (someone editing), the figures mix two versions."""
    digest = hashlib.sha256()
    for folder in ("generator", "templates", "schema"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# figures


@dataclass
class Figure:
    key: str  # stable name in results.json
    figure: str  # what is measured, for people
    value: float | None  # None: not measured (see note)
    unit: str  # "s", "MB", "count", ...
    target: float | None = None  # the value must be <= target
    confd: str = ""
    baseline: str = ""  # what the value is divided by
    baseline_value: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    target_text: str = ""  # the target column when there is no target value yet
    before: str = ""  # what the issue measured for us before (issue 14's "ours" column)
    headline: bool = False  # one of issue 14's figures: what the user waits for

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline_value:
            return None
        return self.value / self.baseline_value

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value <= self.target

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit in ("MB", "MiB"):
        return f"{value:.0f} {unit}"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:g} {unit}"


def table(figures: list[Figure], markdown: bool = False, headline: bool = False) -> str:
    """The figures as a table; headline=True: issue 14's columns (confd, and ours before)."""
    last = "ours before (issue 14)" if headline else "ratio to naive baseline (baseline)"
    rows = [("figure", "value", "target", "confd", last)]
    for item in figures:
        value = show(item.value, item.unit) if item.value is not None else (item.note or "-")
        if item.value is None and (len(value) > 40 or "\n" in value):
            value = "not measured (see its note)"
        if item.met is not None:
            value += "" if item.met else " (missed)"
        target = f"<= {show(item.target, item.unit)}" if item.target is not None else ""
        if item.target == 0:
            target = "0"
        target = target or item.target_text
        ratio = ""
        if item.ratio is not None:
            ratio = f"{item.ratio:.2f}x ({item.baseline}: {show(item.baseline_value, item.unit)})"
        elif item.baseline:
            ratio = f"({item.baseline})"
        rows.append((item.figure, value, target, item.confd, item.before if headline else ratio))
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]
        ]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for number, row in enumerate(rows):
        out.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if number == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
