"""Services with several instances (issue 9): nginx -t on their upstream groups, and the warm
re-apply after one instance changes.

    python bench/replicas.py --services 10000 --instances 3      # JSON on stdout

A registry of N services (three a deployment, as synthetic.registry makes them), each with M
instances at distinct private addresses (synthetic.replicated): one `upstream` block of M
servers per service, N blocks, and a map line per route naming its group.

- cold: the pipeline from scratch and the check (as bench/pipeline.py's cold pass,
  without the split into phases), then the file written; its size.
- nginx -t: bench/pipeline.py's nginx_test on the written file, in the apply's wrapper: wall
  time (median of 3) and peak memory, beside nginx -t on an empty file.
- warm: generator.watch.engine.Engine, a first build of the whole registry, then one instance of
  one deployment's web service replaced at a time (a rolling redeploy's step: the group's
  servers change, no map line does), 5 times: engine.build + engine.check, against the naive
  rebuild (pipeline from scratch + the check) of the same snapshot; the texts must be equal.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import pipeline as pipeline_bench
import synthetic

WARM_CHANGES = 5


def run(services: int, count: int) -> dict[str, Any]:

    from generator.core.pipeline import plan_between
    from generator.watch.engine import Engine

    cfg = common.config()
    env = common.templates()
    data = synthetic.replicated(services, count)

    def naive(snapshot: dict[str, Any]) -> Any:
        return common.naive_build(snapshot, cfg, env)

    result: dict[str, Any] = {
        "services": services,
        "instances": count,
        "deployments": len(data["deployment"]),
    }
    with tempfile.TemporaryDirectory(prefix="devtest-bench-") as name:
        folder = Path(name)
        gc.collect()
        start = time.perf_counter()
        rendered = naive(data)
        text = common.checked_text(rendered, cfg)
        result["cold_seconds"] = time.perf_counter() - start
        output = folder / "devtest-router.conf"
        pipeline_bench.write_file(output, text)
        result["routes"] = len(rendered.table.routes)
        result["upstream_blocks"] = text.count("\nupstream ")
        result["servers"] = text.count(" max_fails=1 fail_timeout=10s;")
        result["bytes"] = len(text.encode())
        del rendered, text
        gc.collect()
        result["nginx_t"] = pipeline_bench.nginx_test(folder, output)

    changed = data
    for number in range(WARM_CHANGES):
        changed = synthetic.replaced_instance(changed, 7919 * number)
    gc.collect()
    start = time.perf_counter()
    rebuilt = naive(changed)
    common.checked_text(rebuilt, cfg)
    naive_seconds = time.perf_counter() - start

    engine = Engine(cfg, common.snapshot_schema(), env)
    gc.collect()
    start = time.perf_counter()
    previous = engine.build(data)
    engine.check(previous)
    first = time.perf_counter() - start
    steps: list[float] = []
    plans: list[list[int]] = []  # each change's routes added, removed, changed
    snapshot = data
    for number in range(WARM_CHANGES):
        snapshot = synthetic.replaced_instance(snapshot, 7919 * number)
        gc.collect()
        start = time.perf_counter()
        warm = engine.build(snapshot)
        engine.check(warm)
        steps.append(time.perf_counter() - start)
        plan = plan_between(previous, warm)
        plans.append([len(plan.added), len(plan.removed), len(plan.changed)])
        previous = warm
    result["warm"] = {
        "seconds": common.median(steps),
        "all_seconds": steps,
        "first_build_seconds": first,
        "naive_seconds": naive_seconds,
        "same_bytes": warm.text == rebuilt.text,
        "plans_added_removed_changed": plans,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=3)
    args = parser.parse_args()
    json.dump(run(args.services, args.instances), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
