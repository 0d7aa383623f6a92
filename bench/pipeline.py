"""The pipeline without nginx running: cold, per phase, and warm after one change.

    python bench/pipeline.py --routes 10000 [--warm]      # one size, JSON on stdout

Run by bench/run.py once per size, each in a fresh process, so that the peak resident memory
(getrusage's ru_maxrss) belongs to that size alone and the nginx -t child is the only child.

Cold is what `devtest-router render > FILE` does in a fresh process: load (snapshot.loads on
the JSON text), build (pipeline.build from scratch: validate, route, render), check
(apply.checked_text: crossplane parses the text back and it must be the routing table), write
(write, fsync, rename). The build and the check are split into phases by timing the calls the
pipeline makes into validate, routing, render, snapshot, check and crossplane (see
common.Attribution). A second pass under tracemalloc gives each phase's peak memory.

nginx -t then tests the written file inside the same minimal wrapper the apply uses
(generator.nginx.wrapper.Wrapper): wall time and the child's peak memory.

The naive baseline of the cold pipeline is a bare regenerate in the same process: json.loads,
one f-string line per route, write. No validation, no routing rules, no check: what the
original regenerate.py did, and the floor any generator pays. Its ratio says what validation,
routing and the check cost, in a unit that does not depend on how fast or busy the machine is.

Warm (--warm): with generator.watch.engine.Engine, a first build of the whole registry, then one
deployment changed at a time (5 times): engine.build + engine.check, against the naive baseline
pipeline.build + apply.checked_text on the same changed snapshot; the two texts must be equal.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import synthetic

BUILD_PHASES = ("validate", "route", "render", "id")
CHECK_PHASES = ("check: crossplane parse", "check: our rules")
WARM_CHANGES = 5


def write_file(path: Path, text: str) -> None:
    """As apply stages a file: write, fsync, rename over the target."""
    staged = path.with_name(f".{path.name}.staged")
    with open(staged, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staged, path)


def cold(text: str, folder: Path, cfg: Any, env: Any) -> tuple[dict[str, Any], str]:
    """One cold pass, timed; (phases in seconds, the text written)."""
    from generator.core.snapshot import loads

    phases: dict[str, float] = {}
    peaks: dict[str, float | None] = {}
    common.reset_peak_rss()
    data, phases["load"] = common.measure(lambda: loads(text, "synthetic"))
    peaks["load"] = common.peak_rss_mb()
    with common.Attribution() as split:
        common.reset_peak_rss()
        rendered, build = common.measure(lambda: common.naive_build(data, cfg, env))
        peaks["build"] = common.peak_rss_mb()
        build_parts = split.split(build, BUILD_PHASES)
        checked = split.seconds.copy()
        common.reset_peak_rss()
        _, check = common.measure(lambda: common.checked_text(rendered, cfg))
        peaks["check"] = common.peak_rss_mb()
        check_parts = {
            name: split.seconds.get(name, 0.0) - checked.get(name, 0.0) for name in CHECK_PHASES
        }
        check_parts["rest"] = max(0.0, check - sum(check_parts.values()))
    output = folder / "devtest-router.conf"
    common.reset_peak_rss()
    _, phases["write"] = common.measure(lambda: write_file(output, rendered.text))
    peaks["write"] = common.peak_rss_mb()
    result = {
        "load": phases["load"],
        "build": build,
        "build_parts": build_parts,
        "check": check,
        "check_parts": check_parts,
        "write": phases["write"],
        "total": phases["load"] + build + check + phases["write"],
        "routes": len(rendered.table.routes),
        "problems": len(rendered.table.problems),
        "bytes": len(rendered.text.encode()),
        "wrapped_calls": sum(split.calls.values()),
        "peak_rss_mb": peaks,  # the process's peak resident memory during each phase
    }
    return result, rendered.text


def cold_memory(text: str, folder: Path, cfg: Any, env: Any) -> dict[str, Any]:
    """The same pass under tracemalloc: per phase, the peak above what was allocated when the
    phase began, and what the phase left allocated. (Times under tracemalloc are not used.)"""
    from generator.core.snapshot import loads

    gc.collect()
    found: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    with common.traced():
        steps = [
            ("load", lambda: loads(text, "synthetic")),
            ("build", lambda: common.naive_build(kept["load"], cfg, env)),
            ("check", lambda: common.checked_text(kept["build"], cfg)),
            ("write", lambda: write_file(folder / "memory.conf", kept["build"].text)),
        ]
        with common.Attribution(memory=True) as split:
            for name, step in steps:
                start = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                kept[name] = step()
                current, peak = tracemalloc.get_traced_memory()
                found[name] = {
                    "peak_mb": (peak - start) / common.MB,
                    "retained_mb": (current - start) / common.MB,
                }
            found["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / common.MB
        found["build_retained_mb"] = {
            name: split.retained.get(name, 0) / common.MB for name in BUILD_PHASES
        }
    kept.clear()
    gc.collect()
    return found


def floor(text: str, folder: Path) -> float:
    """The naive baseline: json.loads, an f-string line per route, write."""

    def regenerate() -> None:
        data = json.loads(text)
        lines = ['map $host $devtest_route {\n    hostnames;\n    default "";\n']
        for name, value in sorted(data["deployment"].items()):
            services = value.get("service") or {}
            for service, entry in sorted(services.items()):
                target = f"{name}/{service}/{entry['ip']}:{entry['port']}"
                lines.append(f"    {name}-{service}.{common.DOMAIN} {target};\n")
                if service == "web":
                    lines.append(f"    {name}.{common.DOMAIN} {target};\n")
        lines.append("}\n")
        write_file(folder / "naive.conf", "".join(lines))

    return min(common.measure(regenerate)[1] for _ in range(3))


# Runs argv and prints its peak memory in KiB. A child forked from this process would inherit
# our own peak as its ru_maxrss (Linux keeps the larger at exec), so a small process forks it.
_PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def child_peak_mb(argv: list[str]) -> float:
    """Peak resident memory of `argv` run by a small process (GNU time, else a bare Python)."""
    if Path("/usr/bin/time").exists():
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", *argv], capture_output=True, text=True, check=False
        )
        return int(done.stderr.strip().splitlines()[-1]) / 1024
    done = subprocess.run(
        [sys.executable, "-S", "-c", _PEAK, *argv], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip()) / 1024


def nginx_argv(wrapper: Any) -> list[str]:
    """The argv of wrapper.test(nginx), as generator.nginx.wrapper.Wrapper builds it."""
    folder = str(wrapper.folder)
    return [
        common.NGINX, "-t", "-q", "-p", folder, "-c", str(wrapper.path),
        "-e", str(wrapper.folder / "error.log"),
    ]  # fmt: skip


def nginx_test(folder: Path, output: Path) -> dict[str, Any]:
    """nginx -t on `output` in the apply's wrapper (Wrapper.test, as the apply runs it), three
    times, and the same on an empty file (the cost of nginx -t itself); each one's peak memory
    from a run of the same command line under child_peak_mb."""
    from generator.nginx.wrapper import Wrapper

    found: dict[str, Any] = {}
    empty = folder / "empty.conf"
    empty.write_text("", encoding="utf-8")
    for name, included in (("empty", empty), ("full", output)):
        (folder / name).mkdir()
        wrapper = Wrapper(folder / name, included)
        wrapper.write()
        times = []
        for _ in range(3):
            (passed, said), seconds = common.measure(lambda w=wrapper: w.test(common.NGINX))
            if not passed:
                return {"error": said}
            times.append(seconds)
        found[name] = {
            "seconds": common.median(times),
            "max_rss_mb": child_peak_mb(nginx_argv(wrapper)),
        }
    return {
        "seconds": found["full"]["seconds"],
        "max_rss_mb": found["full"]["max_rss_mb"],
        "empty_seconds": found["empty"]["seconds"],
        "empty_max_rss_mb": found["empty"]["max_rss_mb"],
    }


def warm(data: dict[str, Any], cfg: Any, env: Any) -> dict[str, Any]:
    """One change at a time through the Engine, against the naive rebuild of the same snapshot."""
    engine_class = common.engine_class()
    result: dict[str, Any] = {}
    changed = data
    for number in range(WARM_CHANGES):
        changed = synthetic.changed_one(changed, 7919 * number)
    naive_times = []
    for _ in range(1 if len(data["deployment"]) > 5000 else 3):
        gc.collect()
        start = time.perf_counter()
        naive = common.naive_build(changed, cfg, env)
        common.checked_text(naive, cfg)
        naive_times.append(time.perf_counter() - start)
    result["naive_seconds"] = common.median(naive_times)
    if engine_class is None:
        result["engine"] = None
        return result
    engine = engine_class(cfg, common.snapshot_schema(), env)
    gc.collect()
    start = time.perf_counter()
    engine.check(engine.build(data))
    result["first_build_seconds"] = time.perf_counter() - start
    steps = []
    snapshot = data
    parts: list[dict[str, float]] = []
    for number in range(WARM_CHANGES):
        snapshot = synthetic.changed_one(snapshot, 7919 * number)
        gc.collect()
        with common.Attribution() as split:
            start = time.perf_counter()
            rendered = engine.build(snapshot)
            engine.check(rendered)
            seconds = time.perf_counter() - start
        steps.append(seconds)
        parts.append(split.split(seconds, BUILD_PHASES + CHECK_PHASES))
    result["engine"] = {
        "seconds": common.median(steps),
        "all_seconds": steps,
        "parts_of_median": parts[steps.index(sorted(steps)[len(steps) // 2])],
        "same_bytes": rendered.text == naive.text,
    }
    if not result["engine"]["same_bytes"]:  # the engine, or the files changed meanwhile?
        again = common.naive_build(snapshot, cfg, env)
        result["engine"]["same_bytes_as_a_second_naive_build"] = rendered.text == again.text
        result["engine"]["naive_builds_agree"] = again.text == naive.text
    return result


def run(snapshot_path: Path, with_warm: bool) -> dict[str, Any]:
    cfg = common.config()
    env = common.templates()
    common.snapshot_schema()
    text = snapshot_path.read_text(encoding="utf-8")
    gc.collect()
    before_rss = common.max_rss_mb()
    result: dict[str, Any] = {"rss_before_mb": before_rss}
    spent: dict[str, float] = {}  # how long each part of this benchmark took, for planning
    with tempfile.TemporaryDirectory(prefix="devtest-bench-") as name:
        folder = Path(name)
        start = time.perf_counter()
        result["cold"], written = cold(text, folder, cfg, env)
        result["max_rss_mb"] = common.max_rss_mb()
        gc.collect()
        result["floor_seconds"] = floor(text, folder)
        result["nginx_t"] = nginx_test(folder, folder / "devtest-router.conf")
        del written
        gc.collect()
        spent["cold, floor, nginx -t"] = time.perf_counter() - start
        start = time.perf_counter()
        result["memory"] = cold_memory(text, folder, cfg, env)
        spent["tracemalloc pass"] = time.perf_counter() - start
        if with_warm:
            from generator.core.snapshot import loads

            start = time.perf_counter()
            result["warm"] = warm(loads(text), cfg, env)
            spent["warm"] = time.perf_counter() - start
    result["bench_seconds"] = spent
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, required=True)
    parser.add_argument("--snapshot", type=Path, help="the JSON snapshot (default: generate it)")
    parser.add_argument("--warm", action="store_true", help="also warm re-apply after one change")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="devtest-bench-") as name:
        path = args.snapshot
        if path is None:
            path = Path(name) / "snapshot.json"  # made by another process: not in our peak
            subprocess.run(
                [sys.executable, str(common.BENCH / "synthetic.py"), "--routes", str(args.routes),
                 "--out", str(path)],
                check=True,
            )  # fmt: skip
        result = run(path, args.warm)
    result["routes_asked"] = args.routes
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
