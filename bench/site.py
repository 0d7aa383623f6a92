"""The site write alone: from an empty folder, by a fresh writer over a kept folder, and warm.

    .venv/bin/python bench/site.py --deployments 10000 [--runs 3] [--profile]

A registry of `--deployments` deployments of `--services` services each (`web` and the others
of bench/synthetic.py, one instance each; with the default entry point, services + 1 routes a
deployment: 10,000 x 9 -> 100,000 routes) is built once; then, `--runs` times:

- empty: a fresh SiteWriter.apply into an emptied site folder (the one-shot from scratch);
- kept: a fresh SiteWriter.apply of the table with one deployment changed, over that folder
  (the one-shot with the site kept: it reads each file to compare);
- warm: that writer applies the first table again (the watcher after one change), with the
  routes kept by identity as the pipeline keeps them.

It prints each median (and every run), the files written by each, and the files and bytes in
the folder. --profile: cProfile of one empty and one warm apply, the top of each.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import synthetic


def registry(deployments: int, services: int) -> dict[str, Any]:
    names = (synthetic.DEFAULT_SERVICE, *synthetic.OTHER_SERVICES)[:services]
    found = {}
    for index in range(deployments):
        rng = random.Random(f"0/deployment/{index}")
        found[synthetic.slug(synthetic.branch_name(index))] = {
            "created": "2026-11-01T00:00:00Z",
            "service": {
                name: {"ip": synthetic.private_ipv4(rng), "port": str(rng.randrange(32768, 61000))}
                for name in names
            },
        }
    return {"deployment": found}


def folder_size(folder: str) -> tuple[int, int]:
    files = [Path(top, name) for top, _, names in os.walk(folder) for name in names]
    return len(files), sum(path.stat().st_size for path in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=10000)
    parser.add_argument("--services", type=int, default=9)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    from generator.core.render import by_deployment
    from generator.resources import template_loader
    from generator.site import pages
    from generator.site.writer import SiteWriter

    data = registry(args.deployments, args.services)
    changed = synthetic.changed_one(data, 7)
    with tempfile.TemporaryDirectory(prefix="devtest-bench-site-") as top:
        config = common.config(site_dir=str(Path(top) / "site"))
        env = common.templates()
        table = common.naive_build(data, config, env).table
        other = common.naive_build(changed, config, env).table
        first = by_deployment(table)
        second = {  # as the pipeline hands them over: equal routes keep their tuple
            key: first[key] if first.get(key) == value else value
            for key, value in by_deployment(other).items()
        }
        templates = pages.environment(template_loader([]))
        print(f"{len(table.routes)} routes, {args.deployments} deployments")
        seconds: dict[str, list[float]] = {"empty": [], "kept": [], "warm": []}
        written: dict[str, int] = {}
        for _ in range(args.runs):
            shutil.rmtree(config.site_dir, ignore_errors=True)
            steps = [
                ("empty", SiteWriter(config, templates), table, first),
                ("kept", SiteWriter(config, templates), other, second),
            ]
            steps.append(("warm", steps[1][1], table, first))
            for name, writer, applied, routes in steps:
                start = time.perf_counter()
                plan = writer.apply(applied, routes)
                seconds[name].append(time.perf_counter() - start)
                written[name] = len(plan.written) + len(plan.removed)
        for name, runs in seconds.items():
            listed = ", ".join(f"{value:.2f}" for value in runs)
            print(
                f"{name}: median {statistics.median(runs):.2f} s ({listed}); "
                f"{written[name]} files written or removed"
            )
        files, size = folder_size(config.site_dir)
        print(f"site folder: {files} files, {size / 1e6:.1f} MB")
        for name in ("index.html", "deployments.json"):
            print(f"  {name}: {(Path(config.site_dir) / name).stat().st_size / 1e6:.1f} MB")
        if args.profile:
            import cProfile
            import pstats

            shutil.rmtree(config.site_dir, ignore_errors=True)
            writer = SiteWriter(config, templates)
            for name, applied, routes in (("empty", table, first), ("warm", other, second)):
                profile = cProfile.Profile()
                profile.runcall(writer.apply, applied, routes)
                print(f"--- {name}")
                pstats.Stats(profile).sort_stats("cumulative").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
